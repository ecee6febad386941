"""The one train loop every stage and every method runs in.

`run_stage` takes a method (what is trained, its loss, what is frozen) and does the rest the same
way for all: the sharded state, the jitted steps (one compile per phase), the data, eval,
metrics, checkpoints and resume. A stage folder holds:

  checkpoints/<step>/   orbax: the train state and the run metadata (eval history, wall time)
  final/                orbax: the variables of the network the stage produced (`method.export`)
  result.json           written last: the stage is finished and is never run again
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gwtn_jax import storage
from gwtn_jax.methods import base
from gwtn_jax.methods import tasks as tasks_lib
from gwtn_jax.parallel import mesh as mesh_lib
from gwtn_jax.train import checkpoint as checkpoint_lib
from gwtn_jax.train import flops as flops_lib
from gwtn_jax.train import layout
from gwtn_jax.train import metrics as metrics_lib
from gwtn_jax.train import optim
from gwtn_jax.train import preemption as preemption_lib
from gwtn_jax.train import state as state_lib

RESULT_FILE = layout.RESULT_FILE


class NonFiniteError(RuntimeError):
  """A NaN or Inf in the loss or the gradients, with the stage and the step, in one line."""


@dataclasses.dataclass
class StageSpec:
  """What `run_stage` needs to know of a stage besides the method.

  Attributes:
    name: unique in the run, e.g. 'wide' or 'seed1/thin_kd'; names logs and metrics.
    method: the recipe.
    model: the network `method.export` gives variables of (to restore the stage's output).
    task: what that network does (`gwtn_jax.methods.tasks`): its inputs' shapes.
    optimizer: the stage's optimizer config.
    batch_size / eval_batch_size: global batch sizes.
    init_seed: the key the method initializes from (the same for every thin stage of a seed,
      so that the controls and GWTN start from the same thin weights).
    data_seed: the data order and augmentation.
    log_every / eval_every / checkpoint_every / keep_checkpoints: in steps.
    checkpoint_timeout_s: the longest a checkpoint write may hold the loop.
    on_nonfinite: 'stop' (the run ends with an error naming the step; nothing non-finite is
      ever saved) or 'skip' (the step is not applied, and is counted and reported).
    snapshot_steps: steps after which the produced network is also kept
      (`layout.output_dir(stage_dir, step)`), for a later stage that imitates it there.
    peak_flops: one device's peak FLOP/s, for the MFU (0: none shown).
    profile_steps: (start, stop): a `jax.profiler` trace of those steps (1-based, inclusive)
      under `profile_dir` of `run_stage`; () none.
  """
  name: str
  method: base.Method
  model: nn.Module
  task: tasks_lib.Task
  optimizer: Any
  batch_size: int
  eval_batch_size: int
  init_seed: int
  data_seed: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int = 2
  checkpoint_timeout_s: float = 600.0
  on_nonfinite: str = 'stop'
  snapshot_steps: tuple[int, ...] = ()
  peak_flops: float = 0.0
  profile_steps: tuple[int, ...] = ()


@dataclasses.dataclass
class StageResult:
  name: str
  variables: Mapping[str, Any]   # the produced network's variables, sharded
  metrics: dict[str, float]      # final eval
  history: list[dict[str, Any]]  # [{'step', 'phase', 'metrics'}] eval curve
  steps: int
  wall_s: float
  curve_metric: str
  model: nn.Module               # the produced network (for its FLOPs in the report)
  summary: Any = None            # what the method says of its result (JSON), e.g. DAN's widths
  snapshots: Mapping[int, Any] = dataclasses.field(default_factory=dict)  # step -> variables
  # examples/s (tokens/s), model TFLOP/s per device and MFU of the stage's training.
  throughput: Mapping[str, float] = dataclasses.field(default_factory=dict)


def _train_step(state: state_lib.TrainState, batch, teacher, *, method: base.Method,
                phase: base.Phase, tx: optax.GradientTransformation, rng: jax.Array):
  """One step of any method: loss, gradients, the frozen parts held still, the update."""
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    return method.loss(phase, params, state.model_state, teacher, batch, step_rng)

  (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  mask = method.trainable(phase, {'params': state.params, **state.model_state})
  if mask is not None:
    # Zero gradients leave frozen parameters out of the backward pass (XLA drops what is
    # unused); zeroing the updates too keeps weight decay and momentum from moving them.
    grads = base.tree_where(mask['params'], grads, jax.tree.map(jnp.zeros_like, grads))
    # Frozen modules keep their statistics, whatever the forward computed.
    model_state = {c: base.tree_where(mask[c], tree, state.model_state[c]) if c in mask else tree
                   for c, tree in model_state.items()}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if mask is not None:  # and a multiplier scales the parameter's learning rate
    updates = base.tree_scale(mask['params'], updates)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A non-finite step changes nothing but the step counter, so the state stays the last good
  # one whatever the policy; the loop stops the run or counts the skip.
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                            model_state=keep(model_state, state.model_state),
                            opt_state=keep(opt_state, state.opt_state))
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                 nonfinite_loss=~jnp.isfinite(loss), nonfinite_grads=~jnp.isfinite(grad_norm))
  return new_state, metrics


def make_optimizer(method: base.Method, optimizer, rng: jax.Array, sample, init=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The stage's optimizer over its phases (`optim.make_optimizer`); LAMB learns which
  parameter leaves stack layers from the method's (abstract) variables."""
  stacked = (state_lib.stacked_layers(method, rng, sample, init)
             if optimizer.name == 'lamb' else None)
  return optim.make_optimizer(optimizer, [p.steps for p in method.phases()], stacked)


def step_model_flops(method: base.Method, phase: base.Phase, tx: optax.GradientTransformation,
                     rng: jax.Array, mesh: Mesh, rules, state, batch, teacher) -> float:
  """The model FLOPs of one train step of the phase (`gwtn_jax.train.flops`: its matrix
  products and convolutions, scanned layers counted per layer, frozen parts' gradients not
  counted), traced as `jit_train_step` traces it; arrays or abstract ones."""
  step = mesh_lib.under_rules(
      functools.partial(_train_step, method=method, phase=phase, tx=tx, rng=rng), mesh, rules)
  return flops_lib.count(step, state, batch, teacher)


def _model_flops(progress, method, phase, tx, rng, mesh, rules, state, batch, teacher) -> float:
  """`step_model_flops`, or 0 with a warning: a count that fails never stops a run."""
  try:
    return step_model_flops(method, phase, tx, rng, mesh, rules, state, batch, teacher)
  except Exception as e:  # pylint: disable=broad-except
    progress.message(f'warning: no model FLOPs for {phase.name} ({storage.one_line(e)}); '
                     'TFLOP/s and MFU not shown')
    return 0.0


def jit_train_step(method: base.Method, phase: base.Phase, tx: optax.GradientTransformation,
                   rng: jax.Array, mesh: Mesh, rules, state_shardings, teacher_shardings):
  """The phase's step, jitted with explicit shardings and the state donated.

  It is traced under the rules, so the models' activation constraints apply.
  """
  return jax.jit(
      mesh_lib.under_rules(
          functools.partial(_train_step, method=method, phase=phase, tx=tx, rng=rng),
          mesh, rules),
      in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), teacher_shardings),
      out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
      donate_argnums=(0,))


def _eval_step(variables, batch, teacher, *, method: base.Method, phase: base.Phase):
  return method.eval_metrics(phase, variables, teacher, batch)


def _variables(state: state_lib.TrainState) -> dict[str, Any]:
  return {'params': state.params, **state.model_state}


def model_abstract_variables(model: nn.Module, task: tasks_lib.Task, mesh: Mesh, rules):
  """Shapes and shardings of a plain network's variables (for restoring a stage's output)."""
  boxed = jax.eval_shape(functools.partial(task.init, model), jax.random.key(0),
                         task.sample_batch())
  shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
  shapes = nn.meta.unbox(boxed)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_model_variables(model: nn.Module, task: tasks_lib.Task, mesh: Mesh, rules, rng):
  """A plain network's freshly initialized variables, created straight into this mesh's
  shardings (a random teacher for benchmarks; heads a converted checkpoint lacks)."""
  target = model_abstract_variables(model, task, mesh, rules)
  return jax.jit(lambda r: nn.meta.unbox(task.init(model, r, task.sample_batch())),
                 out_shardings=jax.tree.map(lambda s: s.sharding, target))(rng)


def load_stage_output(stage_dir: str, model: nn.Module, task: tasks_lib.Task, mesh: Mesh,
                      rules, step: int | None = None):
  """Restores a finished stage's network (or its snapshot at `step`) straight into this
  mesh's shardings."""
  target = model_abstract_variables(model, task, mesh, rules)
  return checkpoint_lib.restore_final(layout.output_dir(stage_dir, step), target)


def read_result(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, RESULT_FILE)
  if not storage.exists(path):
    return None
  return json.loads(storage.read_text(path))


def _write_json(path: str, payload: Any) -> None:
  if jax.process_index() == 0:
    storage.write_text(path, json.dumps(payload, indent=1))


def _mean_metrics(pending: list[dict[str, float]]) -> dict[str, float]:
  return {k: float(np.mean([m[k] for m in pending])) for k in pending[0]
          if not k.startswith('nonfinite_')}


class _NonFiniteCheck:
  """Fetches step metrics and applies the non-finite policy to them."""

  def __init__(self, name: str, policy: str, checkpoints: checkpoint_lib.StageCheckpoints,
               progress: metrics_lib.Progress, skipped: int):
    self.name, self.policy, self.checkpoints, self.progress = name, policy, checkpoints, progress
    self.skipped = skipped

  def __call__(self, pending: list[tuple[int, dict[str, jax.Array]]]) -> list[dict[str, float]]:
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), metrics in zip(pending, fetched):
      bad = [q for q, flag in (('loss', metrics['nonfinite_loss']),
                               ('gradients', metrics['nonfinite_grads'])) if flag]
      if not bad:
        continue
      if self.policy == 'skip':
        self.skipped += 1
        self.progress.message(f'skipped step {step}: non-finite {" and ".join(bad)} '
                              f'({self.skipped} skipped so far)')
        continue
      latest = self.checkpoints.latest_step()
      where = (f'the last good checkpoint (step {latest}) stays the latest' if latest is not None
               else 'no checkpoint of this stage was written')
      raise NonFiniteError(
          f'{self.name}: non-finite {" and ".join(bad)} at step {step} (loss {metrics["loss"]}, '
          f'gradient norm {metrics["grad_norm"]}); stopped without saving it: {where}. '
          'Lower the learning rate or set on_nonfinite=skip')
    return fetched


class _Evaluator:
  """Jitted eval over the whole eval split, summed on device and divided once."""

  def __init__(self, method, data, mesh, rules, eval_batch_size, state_shardings,
               teacher_shardings):
    self.method, self.data, self.mesh, self.rules = method, data, mesh, rules
    self.batch_size = eval_batch_size
    self._shardings = (_variables(state_shardings), mesh_lib.batch_sharding(mesh), teacher_shardings)
    self._compiled = {}

  def __call__(self, phase, state, teacher) -> dict[str, float]:
    if phase not in self._compiled:
      self._compiled[phase] = jax.jit(
          mesh_lib.under_rules(functools.partial(_eval_step, method=self.method, phase=phase),
                               self.mesh, self.rules),
          in_shardings=self._shardings, out_shardings=mesh_lib.replicated(self.mesh))
    step = self._compiled[phase]
    total = None
    for local in self.data.eval_batches(global_batch_size=self.batch_size):
      sums = step(_variables(state), mesh_lib.put_global_batch(local, self.mesh), teacher)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    count = max(float(total.pop('count')), 1.0)
    return {k: float(v) / count for k, v in total.items()}


def run_stage(spec: StageSpec, *, data, mesh: Mesh, rules, stage_dir: str, writer_dir: str,
              profile_dir: str = '', teacher: Mapping[str, Any] | None = None,
              init: Mapping[str, Any] | None = None,
              preemption: preemption_lib.Preemption | None = None) -> StageResult:
  """Runs (or resumes, or just loads) one stage.

  Args:
    spec: the stage.
    data: the stage's data (`ImageData`, `TextData`, `ClassifyData`: anything with
      `train_batches` and `eval_batches` giving the batches of `spec.task`).
    mesh: the device mesh; rules: the logical-axis rules.
    stage_dir: the stage's folder in the workdir.
    writer_dir: the stage's TensorBoard folder.
    profile_dir: where `spec.profile_steps` are traced.
    teacher: the teacher's variables (already sharded), for methods that read one.
    init: variables of an earlier stage that the method starts from.
    preemption: asked after every step whether to save and stop (SIGTERM, SIGINT).

  Returns:
    The stage's result; a finished stage is loaded, not run again.

  Raises:
    preemption_lib.StopRequested: after saving, when a stop was asked for.
    NonFiniteError: a NaN or Inf in the loss or gradients under the 'stop' policy.
    checkpoint_lib.CheckpointError: a checkpoint could not be written.
  """
  sample = spec.task.sample_batch()
  method = spec.method
  phases = list(method.phases())
  total_steps = sum(p.steps for p in phases)
  done = read_result(stage_dir)
  if done is not None:
    if done['steps'] != total_steps:
      checkpoint_lib.warn(f'{spec.name} finished at {done["steps"]} steps; the config now asks '
                          f'for {total_steps}, which is ignored: a finished stage is never run '
                          'again (use a new workdir to run it longer)')
    variables = load_stage_output(stage_dir, spec.model, spec.task, mesh, rules)
    snapshots = {n: load_stage_output(stage_dir, spec.model, spec.task, mesh, rules, step=n)
                 for n in spec.snapshot_steps}
    return StageResult(spec.name, variables, done['metrics'], done['history'], done['steps'],
                       done['wall_s'], done['curve_metric'], spec.model, done.get('summary'),
                       snapshots, done.get('throughput', {}))

  rng = jax.random.key(spec.init_seed)
  tx, schedule = make_optimizer(method, spec.optimizer, rng, sample, init)
  abstract, shardings = state_lib.abstract_state(method, tx, rng, sample, init, mesh, rules)
  teacher_shardings = None if teacher is None else jax.tree.map(lambda x: x.sharding, teacher)

  storage.makedirs(stage_dir)
  checkpoints = checkpoint_lib.StageCheckpoints(os.path.join(stage_dir, layout.CHECKPOINTS_DIR),
                                                keep=spec.keep_checkpoints,
                                                timeout_s=spec.checkpoint_timeout_s)
  history: list[dict[str, Any]] = []
  wall_before, skipped = 0.0, 0
  restored = checkpoints.restore_latest_good(abstract)
  if restored is not None:
    state, meta = restored
    history, wall_before, skipped = meta['history'], meta['wall_s'], meta.get('skipped_steps', 0)
  else:
    state = state_lib.create_state(method, tx, rng, sample, init, shardings)
  step = int(state.step)
  progress = metrics_lib.Progress(spec.name, total_steps, step, spec.batch_size,
                                  tokens_per_example=spec.task.tokens_per_example,
                                  num_devices=mesh.size, peak=spec.peak_flops)
  if restored is not None:
    progress.message(f'resuming at step {step}/{total_steps} from {checkpoints.directory}')
  check = _NonFiniteCheck(spec.name, spec.on_nonfinite, checkpoints, progress, skipped)
  started = time.time()
  wall = lambda: wall_before + time.time() - started
  meta = lambda: {'history': history, 'wall_s': wall(), 'skipped_steps': check.skipped}

  writer = metrics_lib.MetricWriter(writer_dir)
  profiler = metrics_lib.Profiler(profile_dir, spec.profile_steps if profile_dir else ())
  evaluate = _Evaluator(method, data, mesh, rules, spec.eval_batch_size, shardings, teacher_shardings)
  batches = data.train_batches(global_batch_size=spec.batch_size, seed=spec.data_seed,
                               start_step=step)
  phase_end = 0
  last_metrics: dict[str, float] = {}
  snapshots = {n: load_stage_output(stage_dir, spec.model, spec.task, mesh, rules, step=n)
               for n in spec.snapshot_steps if n <= step}  # kept before a resume
  try:
    for phase in phases:
      phase_end += phase.steps
      if step >= phase_end:
        continue
      train_step = jit_train_step(method, phase, tx, rng, mesh, rules, shardings,
                                  teacher_shardings)
      unchecked, fetched = [], []
      step_flops = None
      while step < phase_end:
        batch = mesh_lib.put_global_batch(next(batches), mesh)
        first = step_flops is None
        if first:
          step_flops = _model_flops(progress, method, phase, tx, rng, mesh, rules, state,
                                    batch, teacher)
        profiler.before_step(step + 1)
        state, step_metrics = train_step(state, batch, teacher)
        step += 1
        profiler.after_step(step, state)
        if first:  # the phase's compile is not training time
          jax.block_until_ready(state.step)
          progress.restart_clock(step)
        unchecked.append((step, step_metrics))
        save = step % spec.checkpoint_every == 0 or step == total_steps
        stop = preemption is not None and preemption.should_stop(step)
        log = step % spec.log_every == 0 or step == phase_end
        snapshot = step in spec.snapshot_steps
        if log or save or stop or snapshot:
          # Every step is checked before anything is logged or saved.
          fetched += check(unchecked)
          unchecked = []
        if log:
          scalars = _mean_metrics(fetched)
          fetched = []
          scalars['learning_rate'] = float(schedule(step - 1))
          writer.write_scalars(step, {f'train/{k}': v for k, v in scalars.items()})
          shown = {k: scalars[k] for k in ('loss', 'accuracy') if k in scalars}
          rates = progress.update(step, shown, phase.name if len(phases) > 1 else '',
                                  step_flops=step_flops)
          writer.write_scalars(step, {f'train/{k}': v for k, v in rates.items()})
        evaluated = step % spec.eval_every == 0 or step == phase_end
        if evaluated:
          last_metrics = evaluate(phase, state, teacher)
          history.append({'step': step, 'phase': phase.name, 'metrics': last_metrics})
          writer.write_scalars(step, {f'eval/{k}': v for k, v in last_metrics.items()})
          progress.message(f'eval at step {step}: ' +
                           ' '.join(f'{k} {v:.4g}' for k, v in last_metrics.items()))
        if snapshot:  # written before any later checkpoint, so a resume past it finds it
          # A copy: the next step donates the state's buffers.
          snapshots[step] = jax.tree.map(jnp.copy, method.export(_variables(state), teacher))
          checkpoint_lib.save_final(layout.output_dir(stage_dir, step), snapshots[step])
        if save or stop:
          checkpoints.save(step, state, meta())
        if evaluated or snapshot or save:
          progress.restart_clock(step)
        if stop and step < total_steps:
          checkpoints.wait()
          raise preemption_lib.StopRequested(
              f'{spec.name}: stopped by {preemption.signal_name} at step {step}/{total_steps}; '
              f'checkpoint saved in {checkpoints.directory}; rerun the same command to resume')
    if not last_metrics:
      # Resumed at the very end: the final eval was not kept, so do it again.
      last_metrics = evaluate(phases[-1], state, teacher)
    checkpoints.wait()
    summary = method.summary(_variables(state))
    variables = method.export(_variables(state), teacher)
    checkpoint_lib.save_final(layout.output_dir(stage_dir), variables)
    wall_s = wall()
    _write_json(os.path.join(stage_dir, RESULT_FILE), {
        'name': spec.name, 'steps': total_steps, 'wall_s': wall_s, 'metrics': last_metrics,
        'history': history, 'curve_metric': method.curve_metric,
        'skipped_steps': check.skipped, 'summary': summary, 'throughput': progress.summary()})
  finally:
    profiler.stop()
    checkpoints.close()
    writer.close()
  progress.message(f'done: {total_steps} steps in {wall_s:.0f}s; ' +
                   ' '.join(f'{k} {v:.4g}' for k, v in last_metrics.items()) +
                   (f'; {check.skipped} non-finite steps skipped' if check.skipped else ''))
  return StageResult(spec.name, variables, last_metrics, history, total_steps, wall_s,
                     method.curve_metric, spec.model, summary, snapshots, progress.summary())
