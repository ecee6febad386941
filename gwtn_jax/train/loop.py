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
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from gwtn_jax.methods import base
from gwtn_jax.parallel import mesh as mesh_lib
from gwtn_jax.train import checkpoint as checkpoint_lib
from gwtn_jax.train import metrics as metrics_lib
from gwtn_jax.train import optim
from gwtn_jax.train import state as state_lib

RESULT_FILE = 'result.json'


@dataclasses.dataclass
class StageSpec:
  """What `run_stage` needs to know of a stage besides the method.

  Attributes:
    name: unique in the run, e.g. 'wide' or 'seed1/thin_kd'; names logs and metrics.
    method: the recipe.
    model: the network `method.export` gives variables of (to restore the stage's output).
    optimizer: the stage's optimizer config.
    batch_size / eval_batch_size: global batch sizes.
    init_seed: the key the method initializes from (the same for every thin stage of a seed,
      so that the controls and GWTN start from the same thin weights).
    data_seed: the data order and augmentation.
    log_every / eval_every / checkpoint_every / keep_checkpoints: in steps.
  """
  name: str
  method: base.Method
  model: nn.Module
  optimizer: Any
  batch_size: int
  eval_batch_size: int
  init_seed: int
  data_seed: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int = 2


@dataclasses.dataclass
class StageResult:
  name: str
  variables: Mapping[str, Any]   # the produced network's variables, sharded
  metrics: dict[str, float]      # final eval
  history: list[dict[str, Any]]  # [{'step', 'phase', 'metrics'}] eval curve
  steps: int
  wall_s: float
  curve_metric: str


def _sample_batch(data) -> dict[str, np.ndarray]:
  """A one-example batch for initialization (only its shapes matter)."""
  return {'image': np.zeros((1,) + tuple(data.info.image_shape), np.float32),
          'label': np.zeros((1,), np.int32)}


def _train_step(state: state_lib.TrainState, batch, teacher, *, method: base.Method,
                phase: base.Phase, tx: optax.GradientTransformation, rng: jax.Array):
  """One step of any method: loss, gradients, the frozen parts held still, the update."""
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    return method.loss(phase, params, state.model_state, teacher, batch, step_rng)

  (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  mask = method.trainable(phase, state.params)
  if mask is not None:
    # Zero gradients leave frozen parameters out of the backward pass (XLA drops what is
    # unused); zeroing the updates too keeps weight decay and momentum from moving them.
    grads = base.tree_where(mask, grads, jax.tree.map(jnp.zeros_like, grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if mask is not None:
    updates = base.tree_where(mask, updates, jax.tree.map(jnp.zeros_like, updates))
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  return new_state, metrics


def jit_train_step(method: base.Method, phase: base.Phase, tx: optax.GradientTransformation,
                   rng: jax.Array, mesh: Mesh, state_shardings, teacher_shardings):
  """The phase's step, jitted with explicit shardings and the state donated."""
  return jax.jit(
      functools.partial(_train_step, method=method, phase=phase, tx=tx, rng=rng),
      in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), teacher_shardings),
      out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
      donate_argnums=(0,))


def _eval_step(variables, batch, teacher, *, method: base.Method, phase: base.Phase):
  return method.eval_metrics(phase, variables, teacher, batch)


def _variables(state: state_lib.TrainState) -> dict[str, Any]:
  return {'params': state.params, **state.model_state}


def model_abstract_variables(model: nn.Module, sample, mesh: Mesh, rules):
  """Shapes and shardings of a plain network's variables (for restoring a stage's output)."""
  boxed = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                         sample['image'])
  shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
  shapes = nn.meta.unbox(boxed)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def load_stage_output(stage_dir: str, model: nn.Module, sample, mesh: Mesh, rules):
  """Restores a finished stage's network straight into this mesh's shardings."""
  target = model_abstract_variables(model, sample, mesh, rules)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.abspath(os.path.join(stage_dir, 'final')), target)


def read_result(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, payload: Any) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)


def _mean_metrics(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
  fetched = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


class _Evaluator:
  """Jitted eval over the whole eval split, summed on device and divided once."""

  def __init__(self, method, data, mesh, eval_batch_size, state_shardings, teacher_shardings):
    self.method, self.data, self.mesh = method, data, mesh
    self.batch_size = eval_batch_size
    self._shardings = (_variables(state_shardings), mesh_lib.batch_sharding(mesh), teacher_shardings)
    self._compiled = {}

  def __call__(self, phase, state, teacher) -> dict[str, float]:
    if phase not in self._compiled:
      self._compiled[phase] = jax.jit(
          functools.partial(_eval_step, method=self.method, phase=phase),
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
              teacher: Mapping[str, Any] | None = None,
              init: Mapping[str, Any] | None = None) -> StageResult:
  """Runs (or resumes, or just loads) one stage.

  Args:
    spec: the stage.
    data: an `ImageData` (anything with `info`, `train_batches`, `eval_batches`).
    mesh: the device mesh; rules: the logical-axis rules.
    stage_dir: the stage's folder in the workdir.
    writer_dir: the stage's TensorBoard folder.
    teacher: the teacher's variables (already sharded), for methods that read one.
    init: variables of an earlier stage that the method starts from.

  Returns:
    The stage's result; a finished stage is loaded, not run again.
  """
  sample = _sample_batch(data)
  done = read_result(stage_dir)
  if done is not None:
    variables = load_stage_output(stage_dir, spec.model, sample, mesh, rules)
    return StageResult(spec.name, variables, done['metrics'], done['history'], done['steps'],
                       done['wall_s'], done['curve_metric'])

  method = spec.method
  phases = list(method.phases())
  total_steps = sum(p.steps for p in phases)
  period = phases[0].steps if len(phases) > 1 else None
  tx, schedule = optim.make_optimizer(spec.optimizer, total_steps, period)
  rng = jax.random.key(spec.init_seed)
  abstract, shardings = state_lib.abstract_state(method, tx, rng, sample, init, mesh, rules)
  teacher_shardings = None if teacher is None else jax.tree.map(lambda x: x.sharding, teacher)

  os.makedirs(stage_dir, exist_ok=True)
  checkpoints = checkpoint_lib.StageCheckpoints(os.path.join(stage_dir, 'checkpoints'),
                                                keep=spec.keep_checkpoints)
  progress = metrics_lib.Progress(spec.name, total_steps, 0, spec.batch_size)
  history: list[dict[str, Any]] = []
  wall_before = 0.0
  if checkpoints.latest_step() is not None:
    state, meta = checkpoints.restore(abstract)
    history, wall_before = meta['history'], meta['wall_s']
    progress.message(f'resuming at step {int(state.step)}/{total_steps} from {checkpoints.directory}')
  else:
    state = state_lib.create_state(method, tx, rng, sample, init, shardings)
  step = int(state.step)
  progress = metrics_lib.Progress(spec.name, total_steps, step, spec.batch_size)
  started = time.time()
  wall = lambda: wall_before + time.time() - started

  writer = metrics_lib.MetricWriter(writer_dir)
  evaluate = _Evaluator(method, data, mesh, spec.eval_batch_size, shardings, teacher_shardings)
  batches = data.train_batches(global_batch_size=spec.batch_size, seed=spec.data_seed,
                               start_step=step)
  phase_end = 0
  last_metrics: dict[str, float] = {}
  try:
    for phase in phases:
      phase_start, phase_end = phase_end, phase_end + phase.steps
      if step >= phase_end:
        continue
      train_step = jit_train_step(method, phase, tx, rng, mesh, shardings, teacher_shardings)
      pending = []
      while step < phase_end:
        batch = mesh_lib.put_global_batch(next(batches), mesh)
        state, step_metrics = train_step(state, batch, teacher)
        step += 1
        pending.append(step_metrics)
        if step % spec.log_every == 0 or step == phase_end:
          scalars = _mean_metrics(pending)
          pending = []
          scalars['learning_rate'] = float(schedule(step - 1))
          writer.write_scalars(step, {f'train/{k}': v for k, v in scalars.items()})
          shown = {k: scalars[k] for k in ('loss', 'accuracy') if k in scalars}
          rate = progress.update(step, shown, phase.name if len(phases) > 1 else '')
          writer.write_scalars(step, {'train/examples_per_second': rate})
        if step % spec.eval_every == 0 or step == phase_end:
          last_metrics = evaluate(phase, state, teacher)
          history.append({'step': step, 'phase': phase.name, 'metrics': last_metrics})
          writer.write_scalars(step, {f'eval/{k}': v for k, v in last_metrics.items()})
          progress.message(f'eval at step {step}: ' +
                           ' '.join(f'{k} {v:.4g}' for k, v in last_metrics.items()))
        if step % spec.checkpoint_every == 0 or step == total_steps:
          checkpoints.save(step, state, {'history': history, 'wall_s': wall()})
    if not last_metrics:
      # Resumed at the very end: the final eval was not kept, so do it again.
      last_metrics = evaluate(phases[-1], state, teacher)
    checkpoints.wait()
    variables = method.export(_variables(state), teacher)
    final_dir = os.path.abspath(os.path.join(stage_dir, 'final'))
    if not os.path.exists(final_dir):
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(final_dir, variables)
    wall_s = wall()
    _write_json(os.path.join(stage_dir, RESULT_FILE), {
        'name': spec.name, 'steps': total_steps, 'wall_s': wall_s, 'metrics': last_metrics,
        'history': history, 'curve_metric': method.curve_metric})
  finally:
    checkpoints.close()
    writer.close()
  progress.message(f'done: {total_steps} steps in {wall_s:.0f}s; ' +
                   ' '.join(f'{k} {v:.4g}' for k, v in last_metrics.items()))
  return StageResult(spec.name, variables, last_metrics, history, total_steps, wall_s,
                     method.curve_metric)
