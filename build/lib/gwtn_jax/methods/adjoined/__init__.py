"""Adjoined Networks (AN) and Differentiable Adjoined Networks (DAN) of Nath et al., for ResNets.

**AN.** One parameter tree holds a big ResNet and a small one adjoined to it: the small network
uses the first C / cf filters (and the first input channels) of every masked conv, sliced for
real so that it costs the small FLOPs, with BatchNorm layers of its own, and shares the head.
The models stay plain: the small network is a plain ResNet of its widths run on a slice of the
big one's variables (`network.read`). The loss is

    CE(big, y) + lambda * KL(p_big || p_small),

at temperature 1 and without a stop-gradient: the big network learns from the small one too.
lambda = min(4 (e / E)^2, 1) for epoch e (0-based) of E, so it changes once per epoch. Both
networks run BatchNorm in training mode, each on its own statistics. Eval scores the small
network (the product: `accuracy`, `loss`; the big one's as `big_*`), and `export` gives the
small network extracted as a plain ResNet (`network.extract`): a stage's `model` for
restoring it is `model.clone(widths=small)`.

**Masking rule.** A conv is masked (its output cut to C_out / cf) iff its big input and output
both have more than 64 channels. Residual adds need one width per residual stream, so the rule
is applied per width group (`widths.width_groups`): a group is reduced iff every conv that
writes it, projection shortcuts aside, has more than 64 input and output channels (the image
counts as not: the stem is never reduced); a projection's output follows its stream. On
ResNet-50 that is exactly the paper's conv-level rule (every projection agrees there with its
stage's last conv); on basic-block nets a projection from 64 channels follows its reduced
stream (ResNet-18's stage 2), which the residual add requires.

**DAN.** Every group the AN rule reduces gets learnable logits over the widths {C, C/2, C/4}
(those that are integers) in `params['width_logits'][group]`, starting at zero (uniform; our
choice). The DAN network runs the full kernels and multiplies each group's channels, after its
own BatchNorm and before the ReLU / residual add (the norm class `network.MaskedBatchNorm`), by m = sum_j w_j 1[c < C_j], w a
Gumbel-softmax sample at temperature tau (the argmax one-hot at eval, so the masked channels
are exactly 0). The loss is

    CE(big, y) + lambda * (KL(p_big || p_dan) + gamma * expected FLOPs / full FLOPs),

the expected FLOPs summed once per conv: k^2 H_out W_out E[c_in] E[c_out], E[c] = sum_j p_j C_j
with p = softmax(logits) (a group without logits: its width). Convs only: the head, BatchNorm
and pooling are left out. Dividing by the same count at full widths makes gamma scale-free.
tau decays exponentially from tau0 to tau_min over the stage; tau0 = 5, tau_min = 0.5 and
gamma = 1 are our choices (DESIGN.md gives none). The read-out takes each group's argmax
(`dan_widths`) and is the stage's `summary`; AN then retrains those widths. `export` gives the
big network alone (a plain ResNet).
The optimizer is the loop's: its weight decay, if any, applies to the logits too.

**Step counter.** The loop does not pass the step to a loss, and lambda and tau need it, so it
lives in the state: `{'adjoined': {'step': int32}}`, advanced by the loss, checkpointed and
resumed with the rest. A step the loop skips for a non-finite loss keeps the old state, so the
counter then lags the loop's step by the skipped steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from gwtn_jax.methods import base
from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks as tasks_lib
from gwtn_jax.methods.adjoined import network as network_lib
from gwtn_jax.methods.adjoined import widths
from gwtn_jax.methods.adjoined.widths import MASK_THRESHOLD
from gwtn_jax.methods.adjoined.widths import adjoined_groups
from gwtn_jax.methods.adjoined.widths import adjoined_widths
from gwtn_jax.methods.adjoined.widths import channel_mask
from gwtn_jax.methods.adjoined.widths import dan_choices
from gwtn_jax.methods.adjoined.widths import dan_widths
from gwtn_jax.methods.adjoined.widths import expected_flops
from gwtn_jax.methods.supervised import Supervised
from gwtn_jax.models import resnet

COUNTER = 'adjoined'  # the collection of the step counter
LOGITS = 'width_logits'  # DAN's params entry: group -> logits over its widths


# --- Schedules ---------------------------------------------------------------------------------

def lambda_schedule(step: Any, steps_per_epoch: int, epochs: int) -> jax.Array:
  """lambda = min(4 (e / E)^2, 1), e = floor(step / steps_per_epoch) the epoch, E = epochs."""
  epoch = jnp.asarray(step) // steps_per_epoch
  return jnp.minimum(4.0 * (epoch / epochs) ** 2, 1.0).astype(jnp.float32)


def tau_schedule(step: Any, steps: int, tau0: float, tau_min: float) -> jax.Array:
  """Exponential decay from tau0 at step 0 to tau_min at step `steps` (then constant)."""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(steps, 1), 0.0, 1.0)
  return (tau0 * (tau_min / tau0) ** progress).astype(jnp.float32)


# --- Methods -----------------------------------------------------------------------------------

def _overlay_subset(fresh: dict[str, Any], given: base.Variables | None) -> dict[str, Any]:
  """`base.overlay` for given variables that hold part of the fresh ones.

  A plain big network's variables go into the adjoined tree; the small network's BatchNorm
  layers (and DAN's logits) start fresh.
  """
  if given is None:
    return fresh
  flat_given = traverse_util.flatten_dict(nn.meta.unbox(dict(given)))
  flat_fresh = traverse_util.flatten_dict(fresh)
  unknown = [path for path in flat_given if path not in flat_fresh]
  if unknown:
    raise ValueError(f'init: {"/".join(unknown[0])} is not a variable of the adjoined network')
  part = traverse_util.unflatten_dict({path: flat_fresh[path] for path in flat_given})
  merged = base.overlay(part, traverse_util.unflatten_dict(flat_given))
  flat_fresh.update(traverse_util.flatten_dict(merged))
  return traverse_util.unflatten_dict(flat_fresh)


class _AdjoinedMethod(base.Method):
  """What AN and DAN share: the two forwards, the loss, the counter, eval."""

  def __init__(self, model: resnet.ResNet, task: tasks_lib.Task, steps: int,
               steps_per_epoch: int, epochs: int | None):
    if steps_per_epoch < 1:
      raise ValueError(f'steps_per_epoch={steps_per_epoch} must be >= 1')
    epochs = math.ceil(steps / steps_per_epoch) if epochs is None else epochs
    if epochs < 1:
      raise ValueError(f'epochs={epochs} must be >= 1')
    self.model, self.task, self.steps = model, task, steps
    self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
    self.curve_metric = task.curve_metric

  # What AN and DAN fill in.

  def _adjoined(self, params: Any, network: dict[str, Any], step: jax.Array,
                rng: jax.Array | None) -> tuple[resnet.ResNet, dict[str, Any]]:
    """The adjoined network as a plain model and its variables, read from `network` (the
    tree; rng None: eval)."""
    raise NotImplementedError

  def _twin_model(self) -> resnet.ResNet:
    """The plain model whose fresh norms start the adjoined network's own."""
    raise NotImplementedError

  def _penalty(self, params: Any, step: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
    del params, step
    return 0.0, {}

  def _fresh_params(self) -> dict[str, Any]:
    return {}

  # The contract.

  def phases(self):
    return [base.Phase('train', self.steps)]

  def init(self, rng, batch, init=None):
    variables = dict(self.task.init(self.model, rng, batch))
    twins = network_lib.twins(self.task.init(self._twin_model(), rng, batch))
    for collection, tree in twins.items():
      flat = traverse_util.flatten_dict(dict(variables[collection]))
      flat.update(traverse_util.flatten_dict(tree))
      variables[collection] = traverse_util.unflatten_dict(flat)
    variables = _overlay_subset(variables, init)
    variables['params'] = {**variables['params'], **self._fresh_params()}
    variables[COUNTER] = {'step': jnp.zeros((), jnp.int32)}
    return variables

  def _network(self, params, stats) -> dict[str, Any]:
    return {'params': {k: v for k, v in params.items() if k != LOGITS}, 'batch_stats': stats}

  def model_variables(self, variables: base.Variables) -> dict[str, Any]:
    """The big network alone: the variables of the plain `model` (no twin norms, logits or
    counter)."""
    return network_lib.big(self._network(variables['params'], variables['batch_stats']))

  def loss(self, phase, params, state, teacher, batch, rng):
    del phase, teacher
    step = state[COUNTER]['step']
    network = self._network(params, state['batch_stats'])
    big, updates = self.task.forward(self.model, network, batch, train=True)
    network['batch_stats'] = updates['batch_stats']
    model, variables = self._adjoined(params, network, step, rng)
    small, updates = self.task.forward(model, variables, batch, train=True)
    stats = network_lib.write(network['batch_stats'], updates['batch_stats'])
    task_loss, metrics = self.task.loss(big, batch)
    _, small_metrics = self.task.loss(small, batch)
    # Temperature 1, no stop-gradient: the KL trains the big network too.
    kl = self.task.kd(small, big, batch, 1.0)
    penalty, extra = self._penalty(params, step)
    weight = lambda_schedule(step, self.steps_per_epoch, self.epochs)
    loss = task_loss + weight * (kl + penalty)
    state = {**state, 'batch_stats': stats, COUNTER: {'step': step + 1}}
    metrics = dict(metrics, task_loss=task_loss, kl=kl, small_accuracy=small_metrics['accuracy'],
                   **{'lambda': weight}, **extra)
    return loss, (state, metrics)

  def eval_metrics(self, phase, variables, teacher, batch):
    del phase, teacher
    network = self._network(variables['params'], variables['batch_stats'])
    model, adjoined = self._adjoined(variables['params'], network, variables[COUNTER]['step'],
                                     None)
    small, _ = self.task.forward(model, adjoined, batch, train=False)
    big, _ = self.task.forward(self.model, network, batch, train=False)
    big_sums = {f'big_{k}': v for k, v in self.task.eval_sums(big, batch).items() if k != 'count'}
    return dict(self.task.eval_sums(small, batch), **big_sums)


class Adjoined(_AdjoinedMethod):
  """AN: the big network and the adjoined small one of widths `small` (module docstring).

  Args:
    model: the big ResNet.
    task: an image classification task.
    steps: the length of the stage.
    small: the small network's widths (`adjoined_widths(model, cf)`, or DAN's read-out).
    steps_per_epoch: steps of one epoch (lambda changes once per epoch).
    epochs: E of the lambda schedule (None: ceil(steps / steps_per_epoch)).

  Raises:
    ValueError: one line, for a `small` that does not fit `model` or bad schedule values.
  """

  def __init__(self, model: resnet.ResNet, task: tasks_lib.Task, steps: int,
               small: resnet.WidthPlan, steps_per_epoch: int, epochs: int | None = None):
    super().__init__(model, task, steps, steps_per_epoch, epochs)
    model.check_widths(small, 'small', within=model.width_plan())
    self.small = small
    self.small_model = model.clone(widths=small)

  def _adjoined(self, params, network, step, rng):
    del params, step, rng
    return self.small_model, network_lib.read(self.small_model, network)

  def _twin_model(self):
    return self.small_model

  def export(self, variables, teacher=None):
    """The small network's variables, as a plain ResNet of widths `small`."""
    del teacher
    return network_lib.read(self.small_model, variables)


class Dan(_AdjoinedMethod):
  """DAN: AN with learnt widths per group and a FLOPs penalty (module docstring).

  Args:
    model: the big ResNet.
    task: an image classification task (its image shape sizes the FLOPs count).
    steps: the length of the stage (tau reaches tau_min at its end).
    steps_per_epoch: steps of one epoch (lambda changes once per epoch).
    epochs: E of the lambda schedule (None: ceil(steps / steps_per_epoch)).
    gamma: weight of the FLOPs ratio inside the lambda term.
    tau0: the Gumbel-softmax temperature at step 0.
    tau_min: the temperature at the last step.

  Raises:
    ValueError: one line, for a network with no group to search or bad schedule values.
  """

  def __init__(self, model: resnet.ResNet, task: tasks_lib.Task, steps: int,
               steps_per_epoch: int, epochs: int | None = None, gamma: float = 1.0,
               tau0: float = 5.0, tau_min: float = 0.5, threshold: int = MASK_THRESHOLD):
    super().__init__(model, task, steps, steps_per_epoch, epochs)
    self.threshold = threshold
    self.choices = dan_choices(model, threshold)
    if not self.choices:
      raise ValueError(f'Dan: no conv of this network has more than {threshold} input and '
                       'output channels, so there is no width to search')
    if not 0 < tau_min <= tau0:
      raise ValueError(f'tau0={tau0}, tau_min={tau_min}: need 0 < tau_min <= tau0')
    self.image_shape = tuple(task.image_shape)
    self.gamma, self.tau0, self.tau_min = gamma, tau0, tau_min
    self.full_flops = float(expected_flops(model, self.image_shape, {}, threshold))

  def masks(self, logits: Mapping[str, jax.Array], step: jax.Array,
            rng: jax.Array | None) -> dict[str, jax.Array]:
    """group -> channel mask: a Gumbel-softmax sample (rng None: the argmax, hard)."""
    tau = tau_schedule(step, self.steps, self.tau0, self.tau_min)
    masks = {}
    for k, (group, choices) in enumerate(self.choices.items()):
      if rng is None:
        weights = jax.nn.one_hot(jnp.argmax(logits[group]), len(choices))
      else:
        noise = jax.random.gumbel(jax.random.fold_in(rng, k), logits[group].shape)
        weights = jax.nn.softmax((logits[group] + noise) / tau)
      masks[group] = channel_mask(choices, weights)
    return masks

  def _adjoined(self, params, network, step, rng):
    masks = widths.norm_masks(self.model, self.masks(params[LOGITS], step, rng))
    return network_lib.masked(self.model, masks), network_lib.read(self.model, network)

  def _twin_model(self):
    return self.model

  def _fresh_params(self):
    return {LOGITS: {g: jnp.zeros((len(c),), jnp.float32) for g, c in self.choices.items()}}

  def _penalty(self, params, step):
    ratio = (expected_flops(self.model, self.image_shape, params[LOGITS], self.threshold)
             / self.full_flops)
    tau = tau_schedule(step, self.steps, self.tau0, self.tau_min)
    return self.gamma * ratio, {'flops_ratio': ratio, 'tau': tau}

  def read_out(self, variables: base.Variables) -> resnet.WidthPlan:
    """The found widths: every group's argmax (`dan_widths`)."""
    return dan_widths(self.model, jax.device_get(variables['params'][LOGITS]), self.threshold)

  def export(self, variables, teacher=None):
    """The big network alone, a plain ResNet (the search's product is `summary`'s widths)."""
    del teacher
    return self.model_variables(variables)

  def summary(self, variables):
    """The read-out widths (JSON), from which AN then trains the found network."""
    return dataclasses.asdict(self.read_out(variables))


# ----------------------------------------------------------------------------------------------
# AN's and DAN's stages (gwtn_jax.methods.registry). The wide architecture is the big network;
# the small one is adjoined to it. With steps -1 each is as long as GWTN's stages 2 + 3.


def _epoch_steps(ctx: registry.BuildContext) -> int:
  """The stage's epoch in steps: its `epoch_steps`, else one pass over the train split."""
  if ctx.config[ctx.stage].epoch_steps:
    return ctx.config[ctx.stage].epoch_steps
  if ctx.exp.data is None:  # planning: lambda's schedule does not change the memory
    return 1
  return max(1, ctx.exp.data.info.num_train // ctx.batch_size)


def _an_widths(config, big: resnet.ResNet) -> resnet.WidthPlan:
  """AN's small network: `adjoined.cf` wherever convs exceed `adjoined.threshold` channels."""
  return adjoined_widths(big, config.adjoined.cf, config.adjoined.threshold)


def _check_epoch_steps(config, stage: str) -> None:
  if config[stage].epoch_steps < 0:
    raise ValueError(f'{stage}.epoch_steps={config[stage].epoch_steps} must be >= 0 '
                     '(0: one pass)')


def _check_images(config, thin, stage: str) -> None:
  if not isinstance(thin, resnet.ResNet):
    raise ValueError(f"stages: '{stage}' (Adjoined Networks) applies to ResNets; "
                     f'model.name={config.model.name!r} is a BERT')


def _check_an_widths(config, wide) -> None:
  try:
    _an_widths(config, wide)
  except ValueError as e:  # names `cf=...`
    raise ValueError(f'adjoined.{e}') from None


def _check_stage(stage: str, epochs: bool = True, an_widths: bool = True):
  def check(config, thin, wide) -> None:
    _check_images(config, thin, stage)
    if epochs:
      _check_epoch_steps(config, stage)
    if an_widths:
      _check_an_widths(config, wide)
  return check


def _check_dan(config, thin, wide) -> None:
  _check_stage('dan', an_widths=False)(config, thin, wide)
  c = config.dan
  if not 0 < c.tau_end <= c.tau_start:
    raise ValueError(f'dan.tau_start={c.tau_start}, dan.tau_end={c.tau_end}: need '
                     '0 < tau_end <= tau_start')
  if c.gamma < 0:
    raise ValueError(f'dan.gamma={c.gamma} must be >= 0')
  if not adjoined_groups(wide, c.threshold):
    raise ValueError(f'dan.threshold={c.threshold}: no conv of the wide network has more input '
                     'and output channels, so there is no width to search')


def _build_adjoined(ctx: registry.BuildContext):
  wide = ctx.exp.wide
  small = (resnet.WidthPlan(**ctx.found) if ctx.found is not None
           else _an_widths(ctx.config, wide))  # planning DAN's: AN's cf widths stand in
  method = Adjoined(wide, ctx.exp.task, ctx.steps, small, _epoch_steps(ctx))
  return method, wide.clone(widths=small)


def _build_small_scratch(ctx: registry.BuildContext):
  small = ctx.exp.wide.clone(widths=_an_widths(ctx.config, ctx.exp.wide))
  return Supervised(small, ctx.exp.task, ctx.steps), small


def _build_dan(ctx: registry.BuildContext):
  c = ctx.config.dan
  return Dan(ctx.exp.wide, ctx.exp.task, ctx.steps, _epoch_steps(ctx), gamma=c.gamma,
             tau0=c.tau_start, tau_min=c.tau_end, threshold=c.threshold), ctx.exp.wide


_EQUAL = registry.BUDGET_ROLES
registry.stage(name='adjoined', order=80, build=_build_adjoined, steps_as=_EQUAL,
               check=_check_stage('adjoined'), report='small_an',
               claims=(('small_scratch', 'AN claims better'),))
# AN's control: its small network (the same widths) trained alone, as long.
registry.stage(name='small_scratch', order=90, build=_build_small_scratch, steps_as=_EQUAL,
               check=_check_stage('small_scratch', epochs=False),
               report='small_scratch')
registry.method('adjoined', 30, ('adjoined', 'small_scratch'))
registry.stage(name='dan', order=100, build=_build_dan, steps_as=_EQUAL, check=_check_dan)
# AN retraining of the widths DAN found (its summary).
registry.stage(name='dan_adjoined', order=110, build=_build_adjoined, arch_from='dan',
               steps_as=_EQUAL, check=_check_stage('dan_adjoined'),
               report='small_dan')
registry.method('dan', 40, ('dan', 'dan_adjoined'), compared=False)
