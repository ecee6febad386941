"""Layerwise imitation, GWTN's stage 2: the thin network learns the wide one's intermediates.

Imitated points are the thin network's stem and block outputs (`granularity='block'`) or the
last block of each stage (`'stage'`, the paper's ImageNet recipe). Thin point i is compared with
teacher point `layer_map[i]` (identity by default) by the mean squared error, on
LayerNorm-normalized features if asked; where the widths differ, a learned 1x1 projection
takes the thin output up to the teacher's width for the loss only, and is dropped afterwards.

Schedules:
- progressive (the paper's): one phase per point, bottom to top. Phase l puts the loss on
  point l (`loss_on='current'`) or on every point <= l (`'cumulative'`), and runs both networks
  only up to the points it needs, so early phases are cheap. Lower layers train along
  (`freeze_lower=False`) or stay fixed.
- one_shot: every point at once, for comparison.

Inputs: the thin network reads its own previous output (`inputs='own'`), or each thin block
reads the teacher's previous point (`'teacher'`, as in LIT), through a learned 1x1
down-projection where the widths differ.

Only what a phase uses trains in it: thin modules beyond the current point and the
projections of other points get no update (not even weight decay). The points below the
current one train at `lower_lr` times the phase's learning rate (1 by default; MobileBERT's
0.1; 0 freezes them).

Recipe variants (config fields, measured in the README's "When does GWTN pay?"):
- `projection='pair'`: the paper's Figure 1. Thin point i feeds block i+1 through its
  up-projection and a learned down-projection (a linear map of rank at most the thin width),
  and `export` merges the pair exactly into block i+1's first linear map (the model's
  `merge_input_map`: MLPs, and ResNets without shortcuts, where a block reads its input
  through a linear map alone).
- `bn_refresh_steps`: a last phase in which only the thin network's BatchNorm statistics move,
  re-estimated on its own forward (after imitation with teacher inputs, its blocks have seen
  the teacher's features, not their own).
- `loss_scale`: a factor on the imitation loss.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gwtn_jax.methods import base
from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks as tasks_lib
from gwtn_jax.methods.distill import Distill
from gwtn_jax.methods.supervised import Supervised


PROJECTIONS = ('up', 'pair')


def candidate_points(model: nn.Module, granularity: str) -> list[str]:
  """The points a network offers for imitation, bottom to top: every imitated point
  (`'block'`), or the end of every stage (`'stage'`).

  Raises:
    ValueError: one line naming `imitate.granularity` for a model without stages (BERT).
  """
  if granularity == 'stage':
    ends = [p.name for p in model.points() if p.stage_end]
    if not ends:
      raise ValueError("imitate.granularity='stage' applies to ResNets; a BERT imitates every "
                       "layer: use 'block'")
    return ends
  return [p.name for p in model.points() if p.imitated]


def num_imitated_points(thin: nn.Module, config) -> int:
  """How many points stage 2 imitates (one phase each): what equal budgets count with."""
  return len(candidate_points(thin, config.granularity))


def imitated_points(thin: nn.Module, wide: nn.Module, config) -> list[tuple[str, str]]:
  """The (thin point, teacher point) pairs imitated, bottom to top.

  Args:
    thin: the thin network.
    wide: the teacher.
    config: the `imitate` config (granularity, layer_map, point_weights).

  Raises:
    ValueError: one line naming `imitate.layer_map` or `imitate.point_weights`.
  """
  thin_points = candidate_points(thin, config.granularity)
  wide_points = candidate_points(wide, config.granularity)
  layer_map = list(config.layer_map)
  if not layer_map:
    if len(thin_points) != len(wide_points):
      raise ValueError(
          f'imitate.layer_map is empty (identity) but the thin network has {len(thin_points)} '
          f'points and the teacher {len(wide_points)}; give a layer_map of {len(thin_points)} '
          'teacher point indices')
    layer_map = list(range(len(thin_points)))
  if len(layer_map) != len(thin_points):
    raise ValueError(f'imitate.layer_map has {len(layer_map)} entries; the thin network has '
                     f'{len(thin_points)} imitated points ({config.granularity} granularity)')
  for i, m in enumerate(layer_map):
    if not isinstance(m, int) or not 0 <= m < len(wide_points):
      raise ValueError(f'imitate.layer_map[{i}]={m!r} points outside the teacher, whose '
                       f'{config.granularity} points are 0..{len(wide_points) - 1}')
  if any(b < a for a, b in zip(layer_map, layer_map[1:])):
    raise ValueError(f'imitate.layer_map={tuple(layer_map)} must not decrease: imitation runs bottom to top')
  if config.point_weights and len(config.point_weights) != len(thin_points):
    raise ValueError(f'imitate.point_weights has {len(config.point_weights)} entries; '
                     f'{len(thin_points)} points are imitated')
  if any(w < 0 for w in config.point_weights):
    raise ValueError(f'imitate.point_weights={tuple(config.point_weights)} must be >= 0')
  if config.point_weights and not any(w > 0 for w in config.point_weights):
    raise ValueError(f'imitate.point_weights={tuple(config.point_weights)} are all zero: '
                     'nothing would be imitated')
  return [(thin_points[i], wide_points[m]) for i, m in enumerate(layer_map)]


def _projection(rng: jax.Array, in_width: int, out_width: int, zero: bool) -> nn.LogicallyPartitioned:
  """A 1x1 projection kernel, annotated for sharding like a conv kernel.

  Up-projections (for the loss) start at zero: a random one makes the fastest first descent
  the shrinking of the thin features, which kills the thin block's ReLUs for good (measured on
  the Fashion-MNIST demo: 99% zeros after 50 steps, the loss stuck at the teacher's energy).
  From zero, the first steps fit the projection to the thin features instead. Down-projections
  (inputs) start LeCun-normal, so the thin block reads a non-degenerate input from the start.
  """
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.LogicallyPartitioned(init(rng, (in_width, out_width), jnp.float32),
                                 ('conv_in', 'conv_out'))


def _project(kernel: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.einsum('...c,cd->...d', x, kernel.astype(x.dtype))


def layer_norm(x: jax.Array) -> jax.Array:
  """The normalization of `imitate.normalize`: LayerNorm without parameters, in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-6)


# The key of the BatchNorm re-estimation phase (`imitate.bn_refresh_steps`).
BN_REFRESH = 'bn_refresh'


class Imitation(base.Method):
  """GWTN stage 2 (see the module docstring).

  Args:
    thin: the thin network (the student).
    wide: the teacher; its variables arrive with every step.
    task: how both networks read a batch (`gwtn_jax.methods.tasks`).
    config: the `imitate` config.
  """

  curve_metric = 'imitation_loss'

  def __init__(self, thin: nn.Module, wide: nn.Module, task: tasks_lib.Task, config):
    self.thin, self.wide, self.task, self.config = thin, wide, task, config
    self.points = imitated_points(thin, wide, config)
    self.weights = tuple(float(w) for w in config.point_weights) or (1.0,) * len(self.points)
    thin_ch = {p.name: p.channels for p in thin.points()}
    wide_ch = {p.name: p.channels for p in wide.points()}
    # Up-projections (thin -> teacher width) for the loss only.
    self.up = {tp: (thin_ch[tp], wide_ch[wp]) for tp, wp in self.points if thin_ch[tp] != wide_ch[wp]}
    # Down-projections (teacher -> thin width) that feed a thin block the teacher's output.
    # With projection='pair', the down-projections (teacher width -> thin width) after the
    # up-projection of every point but the last, feeding the next thin block.
    self.down = {}
    self.pair = config.projection == 'pair'
    if config.inputs == 'teacher' or self.pair:
      for tp, wp in self.points[:-1]:
        if thin_ch[tp] != wide_ch[wp]:
          self.down[tp] = (wide_ch[wp], thin_ch[tp])
    # The thin modules that produce each imitated point: with stage granularity, every block
    # of the stage.
    records = thin.points()
    order = [p.name for p in records]
    self._segments, self._segment_points = [], []
    start = 0
    for tp, _ in self.points:
      end = order.index(tp) + 1
      self._segments.append(tuple(m for p in records[start:end] for m in p.modules))
      self._segment_points.append(tuple(order[start:end]))
      start = end
    # Modules whose parameters stack several points' layers (a scanned BERT's 'encoder'):
    # their masks are per slice, in the order of the slices.
    self._stacked = {}
    for p in records:
      if p.layer is not None:
        for m in p.modules:
          self._stacked.setdefault(m, []).append(p.name)

  # --- Phases --------------------------------------------------------------------------------

  def phases(self):
    if self.config.schedule == 'one_shot':
      phases = [base.Phase('all_points', self.config.steps, key=None)]
    else:
      phases = [base.Phase(tp, self.config.steps_per_point, key=l)
                for l, (tp, _) in enumerate(self.points)]
    if self.config.bn_refresh_steps:
      phases.append(base.Phase('bn_refresh', self.config.bn_refresh_steps, key=BN_REFRESH))
    return phases

  def _active(self, phase: base.Phase) -> list[int]:
    if phase.key == BN_REFRESH:  # evaluated as the last phase is
      phase = self.phases()[-2]
    if phase.key is None:
      return list(range(len(self.points)))
    if self.config.loss_on == 'cumulative':
      return list(range(phase.key + 1))
    return [phase.key]

  def _segment_scales(self, phase: base.Phase) -> dict[int, float]:
    """segment index -> its learning-rate multiplier in the phase (absent: it does not
    train)."""
    active = self._active(phase)
    if self.config.inputs == 'own':
      used = range(max(active) + 1)
    else:
      used = active
    lower = 0.0 if self.config.freeze_lower else float(self.config.lower_lr)
    scales = {i: 1.0 if phase.key is None or i >= phase.key else lower for i in used}
    return {i: v for i, v in scales.items() if v > 0}

  # --- Variables -----------------------------------------------------------------------------

  def init(self, rng, batch, init=None):
    # The thin network starts from the same key as the other thin stages of this seed.
    student = base.overlay(self.task.init(self.thin, rng, batch), init)
    keys = iter(jax.random.split(jax.random.fold_in(rng, 1), len(self.up) + len(self.down) + 1))
    params = {
        'student': student['params'],
        'up': {tp: _projection(next(keys), *widths, zero=True) for tp, widths in self.up.items()},
        'down': {tp: _projection(next(keys), *widths, zero=False)
                 for tp, widths in self.down.items()},
    }
    return {'params': params, **{k: v for k, v in student.items() if k != 'params'}}

  def trainable(self, phase, variables):
    params = variables['params']
    mark = lambda tree, on: jax.tree.map(lambda _: on, tree)
    if phase.key == BN_REFRESH:  # the statistics move, nothing else
      return {'params': mark(params, False),
              **{c: mark(tree, True) for c, tree in variables.items() if c != 'params'}}
    scales = self._segment_scales(phase)
    module_scale = {m: v for i, v in scales.items() for m in self._segments[i]}
    point_scale = {p: v for i, v in scales.items() for p in self._segment_points[i]}
    active = self._active(phase)
    # A multiplier of 1 or 0 is a plain bool, so that an unscaled phase masks as before.
    flag = lambda v: bool(v) if v in (0.0, 1.0) else float(v)

    def student_mask(name):
      if name not in self._stacked:
        return flag(module_scale.get(name, 0.0))
      slices = np.array([point_scale.get(p, 0.0) for p in self._stacked[name]])
      return flag(slices[0]) if (slices == slices[0]).all() else slices

    def up_mask(i):
      if i in active:  # its loss is on
        return True
      # A pair's maps belong to the block they feed (merged into it at export).
      return flag(scales.get(i + 1, 0.0)) if self.pair else False

    def down_mask(i):
      if self.pair:
        return flag(scales.get(i + 1, 0.0))
      return i + 1 in active  # feeds an active thin block the teacher's point

    index = {tp: i for i, (tp, _) in enumerate(self.points)}
    params_mask = {
        'student': {name: mark(sub, student_mask(name))
                    for name, sub in params['student'].items()},
        'up': {tp: mark(k, up_mask(index[tp])) for tp, k in params['up'].items()},
        'down': {tp: mark(k, down_mask(index[tp])) for tp, k in params['down'].items()},
    }
    # The student's other collections (BatchNorm statistics): frozen modules keep theirs.
    state_mask = {collection: {name: mark(sub, student_mask(name)) for name, sub in tree.items()}
                  for collection, tree in variables.items() if collection != 'params'}
    return {'params': params_mask, **state_mask}

  def export(self, variables, teacher=None):
    params = dict(variables['params']['student'])
    if self.pair:  # each pair's composite into the block it feeds: the same function
      for tp, kernel in variables['params']['down'].items():
        params = self.thin.merge_input_map(params, tp, variables['params']['up'][tp] @ kernel)
    last_thin, last_wide = self.points[-1]
    thin_last_block = [p.name for p in self.thin.points() if p.imitated][-1]
    wide_last_block = [p.name for p in self.wide.points() if p.imitated][-1]
    # Only a linear head (a ResNet's) merges exactly; a BERT's MLM head keeps its own.
    if (self.config.init_head_from_teacher and teacher is not None
        and 'head' in teacher['params'] and 'head' in params
        and last_thin == thin_last_block and last_wide == wide_last_block):
      # Average pooling commutes with the 1x1 projection, so the teacher's head composed with
      # the last projection is exactly the head that reads the projected thin features.
      kernel = teacher['params']['head']['kernel']
      if last_thin in self.up:
        kernel = variables['params']['up'][last_thin] @ kernel
      params['head'] = {'kernel': kernel, 'bias': teacher['params']['head']['bias']}
    return {'params': params, **{k: v for k, v in variables.items() if k != 'params'}}

  # --- Loss ----------------------------------------------------------------------------------

  def _point_losses(self, phase, params, state, teacher, batch, train, rng=None):
    """Per-example losses of the active points, and the thin network's new state."""
    active = self._active(phase)
    order = [p.name for p in self.wide.points()]
    needed = [self.points[i][1] for i in active]
    if self.config.inputs == 'teacher':
      needed += [self.points[i - 1][1] for i in active if i > 0]
    wide_stop = max(needed, key=order.index)
    _, wide_out = self.task.forward(self.wide, teacher, batch, train=False, stop_at=wide_stop,
                                    mutable=['intermediates'])
    targets = {name: jax.lax.stop_gradient(v)
               for name, v in self.wide.read_points(wide_out['intermediates']).items()}

    def segment(i, x, state):
      """Thin segment i (from point i - 1, whose output or stand-in is x, to point i)."""
      start = self.points[i - 1][0] if i > 0 else None
      step_rng = None if rng is None else jax.random.fold_in(rng, i)
      y, out = self.task.forward(self.thin, {'params': params['student'], **state}, batch,
                                 train=train, rng=step_rng, inputs=x, start_after=start,
                                 stop_at=self.points[i][0])
      return y, {**state, **out}

    outputs = {}
    if self.pair:  # block by block, each reading the previous point through its pair
      x = None
      for i in range(max(active) + 1):
        thin_point = self.points[i][0]
        outputs[thin_point], state = segment(i, x, state)
        x = outputs[thin_point]
        if thin_point in self.down:
          x = _project(params['down'][thin_point], _project(params['up'][thin_point], x))
    elif self.config.inputs == 'own':
      top = self.points[max(active)][0]
      _, out = self.task.forward(self.thin, {'params': params['student'], **state}, batch,
                                 train=train, rng=rng, stop_at=top, mutable=['intermediates'])
      points = self.thin.read_points(out.pop('intermediates'))
      outputs = {self.points[i][0]: points[self.points[i][0]] for i in active}
      state = {**state, **out}
    else:  # each active segment reads the teacher's previous point
      for i in active:
        x = None
        if i > 0:
          prev_thin, prev_wide = self.points[i - 1]
          x = targets[prev_wide]
          if prev_thin in self.down:
            x = _project(params['down'][prev_thin], x)
        outputs[self.points[i][0]], state = segment(i, x, state)

    positions = self.task.position_weights(batch)
    losses = {}
    for i in active:
      thin_point, wide_point = self.points[i]
      s, t = outputs[thin_point], targets[wide_point]
      if thin_point in self.up:
        s = _project(params['up'][thin_point], s)
      if s.shape != t.shape:
        raise ValueError(f'imitate: thin point {thin_point} {s.shape} does not match teacher point '
                         f'{wide_point} {t.shape}; check imitate.layer_map')
      if self.config.normalize:
        s, t = layer_norm(s), layer_norm(t)
      losses[thin_point] = base.feature_mse(s, t, positions)  # padding is not imitated
    weights = jnp.asarray([self.weights[i] for i in active])
    total = sum(w * losses[self.points[i][0]] for w, i in zip(weights, active)) / jnp.maximum(
        jnp.sum(weights), 1e-12)
    return total, losses, state

  def loss(self, phase, params, state, teacher, batch, rng):
    if phase.key == BN_REFRESH:
      # The thin network's own forward in train mode: its BatchNorm statistics move.
      _, new_state = self.task.forward(self.thin, {'params': params['student'], **state}, batch,
                                       train=True, rng=rng)
      return jnp.zeros((), jnp.float32), ({**state, **new_state}, {})
    total, losses, new_state = self._point_losses(phase, params, state, teacher, batch,
                                                  train=True, rng=rng)
    metrics = {f'mse/{name}': jnp.mean(v) for name, v in losses.items()}
    return self.config.loss_scale * jnp.mean(total), (new_state, metrics)

  def eval_metrics(self, phase, variables, teacher, batch):
    state = {k: v for k, v in variables.items() if k != 'params'}
    total, losses, _ = self._point_losses(phase, variables['params'], state, teacher, batch,
                                          train=False)
    mask = batch['mask']
    sums = {f'mse/{name}': jnp.sum(v * mask) for name, v in losses.items()}
    sums.update(imitation_loss=jnp.sum(total * mask), count=jnp.sum(mask))
    return sums


# ----------------------------------------------------------------------------------------------
# GWTN's stages (gwtn_jax.methods.registry): stage 2 (imitate), its probe, stage 3 (finetune).


def _imitate_length(config, thin: nn.Module) -> int:
  if config.imitate.schedule == 'one_shot':
    steps = config.imitate.steps
  else:
    steps = config.imitate.steps_per_point * num_imitated_points(thin, config.imitate)
  return steps + config.imitate.bn_refresh_steps


def _check_imitate(config, thin: nn.Module, wide: nn.Module) -> None:
  if config.imitate.schedule == 'one_shot':
    steps = config.imitate.steps
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
      raise ValueError(f'imitate.steps={steps!r} must be a positive integer')
  else:  # every phase has the whole schedule over its own steps
    warmup, phase = config.imitate.optimizer.warmup_steps, config.imitate.steps_per_point
    if warmup > phase:
      raise ValueError(f'imitate.optimizer.warmup_steps={warmup} is longer than a phase '
                       f'(imitate.steps_per_point={phase}): no phase would reach its learning '
                       'rate')
  cfg = config.imitate
  if not (isinstance(cfg.lower_lr, (int, float)) and 0 <= cfg.lower_lr <= 1):
    raise ValueError(f'imitate.lower_lr={cfg.lower_lr!r} must be in [0, 1]')
  if cfg.freeze_lower and cfg.lower_lr != 1:
    raise ValueError(f'imitate.freeze_lower=True and imitate.lower_lr={cfg.lower_lr}: choose '
                     'one (freeze_lower is lower_lr=0)')
  if not (isinstance(cfg.loss_scale, (int, float)) and cfg.loss_scale > 0):
    raise ValueError(f'imitate.loss_scale={cfg.loss_scale!r} must be > 0')
  steps = cfg.bn_refresh_steps
  if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
    raise ValueError(f'imitate.bn_refresh_steps={steps!r} must be an integer >= 0')
  if steps and not issubclass(getattr(thin, 'norm', type(None)), nn.BatchNorm):
    raise ValueError(f'imitate.bn_refresh_steps={steps}: the thin network '
                     f'({type(thin).__name__}) has no BatchNorm statistics to re-estimate')
  if cfg.projection not in PROJECTIONS:
    raise ValueError(f'imitate.projection={cfg.projection!r} must be one of {PROJECTIONS}')
  if cfg.projection == 'pair':
    if cfg.inputs != 'own':
      raise ValueError("imitate.projection='pair' feeds each thin block its own previous "
                       "point: it needs imitate.inputs='own'")
    why = getattr(thin, 'input_map_merge_refusal', lambda: 'it has no merge_input_map')()
    if why:
      raise ValueError(f"imitate.projection='pair' cannot merge exactly into this thin "
                       f'network: {why}')
  imitated_points(thin, wide, config.imitate)


def _build_imitate(ctx: registry.BuildContext):
  return Imitation(ctx.exp.thin, ctx.exp.wide, ctx.exp.task, ctx.config.imitate), ctx.exp.thin


def _build_probe(ctx: registry.BuildContext):
  thin = ctx.exp.thin
  return Supervised(thin, ctx.exp.task, ctx.steps, trainable_modules=thin.head_modules()), thin


def _build_finetune(ctx: registry.BuildContext):
  cfg = ctx.config.finetune
  return Distill(ctx.exp.thin, ctx.exp.wide, ctx.exp.task, ctx.steps, alpha=cfg.alpha,
                 temperature=cfg.temperature), ctx.exp.thin


registry.stage(name='imitate', order=30, build=_build_imitate, teacher=True, thin_init=True,
               budget_role='imitation', length=_imitate_length, check=_check_imitate)
# The thin network right after imitation, its head fitted on frozen features: for the report,
# not part of GWTN's budget.
registry.stage(name='probe', order=40, build=_build_probe, init_from='imitate',
               report='thin_imitated', report_budget=('imitate',), color='tab:purple',
               label='thin_imitated (probe)', curve_after='imitate')
registry.stage(name='finetune', order=50, build=_build_finetune, teacher=True,
               init_from='imitate', budget_role='finetuning', report='thin_gwtn',
               report_budget=('imitate', 'finetune'), downstream=True,
               claims=(('thin_scratch', 'GWTN claims better'), ('thin_kd', 'GWTN claims better')),
               color='tab:green', label='thin_gwtn (imitate + finetune)', curve_after='imitate')
registry.method('gwtn', 0, ('imitate', 'probe', 'finetune'), includes=('scratch', 'kd'))
