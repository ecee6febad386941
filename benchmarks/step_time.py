r"""Step time and examples/s of each stage's train step, and of the teacher's forward alone.

  python benchmarks/step_time.py --config=configs/fashion_mnist.py
  python benchmarks/step_time.py --config=configs/fashion_mnist.py --steps=50 \
      --config.imitate.inputs=teacher
  python benchmarks/step_time.py --config=configs/shakespeare_bert.py

Every stage's real step (the one the loop jits, with the config's mesh and shardings) runs on
the same global batch of real data from the config's dataset. Progressive imitation is shown at
its first, middle and last phase, since its cost grows with depth. A BERT config's downstream
stage is timed for the thin and the wide network, on a batch of the downstream task. Times are medians over
`--repeats` timed runs of `--steps` steps, after a compile and warm-up.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed run.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per step (the median is shown).')
flags.mark_flags_as_required(['config'])


def _time(fn, steps: int, repeats: int) -> float:
  """Median seconds per call of `fn` (which must block until its work is done)."""
  fn()  # compile and warm up
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    runs.append((time.perf_counter() - start) / steps)
  return statistics.median(runs)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from gwtn_jax import builders, config_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import registry  # pylint: disable=g-import-not-at-top
  from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop, optim  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  with tempfile.TemporaryDirectory() as tmp:
    config_lib.validate(config, tmp)
  exp = builders.build_experiment(config)
  mesh, rules, wide, task = exp.mesh, exp.rules, exp.wide, exp.task
  batch_size = config.batch_size

  def first_batch(data):
    return mesh_lib.put_global_batch(
        next(data.train_batches(global_batch_size=batch_size, seed=0)), mesh)

  batch = first_batch(exp.data)
  teacher = loop.init_model_variables(wide, task, mesh, rules, jax.random.key(0))
  teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher)

  print(f'{config.model.name}: thin width {config.thin_width}, wide width {config.wide_width}; '
        f'global batch {batch_size}; mesh {dict(mesh.shape)}; {jax.devices()[0].platform}')
  print(f'{"step":34s} {"ms/step":>9s} {"examples/s":>11s}')

  def row(name, seconds):
    print(f'{name:34s} {1e3 * seconds:9.2f} {batch_size / seconds:11.0f}', flush=True)

  forward = jax.jit(lambda v, b: task.outputs(wide, v, b, train=False)[0])
  row('teacher forward (wide, inference)',
      _time(lambda: forward(teacher, batch).block_until_ready(), _STEPS.value, _REPEATS.value))

  down_batch = first_batch(exp.downstream.data) if exp.downstream else None
  for label, stage, method, stage_task in builders.stage_methods(config, exp):
    stage_batch = down_batch if stage == 'downstream' else batch
    stage_sample = stage_task.sample_batch()
    phases = list(method.phases())
    if len(phases) > 2:
      phases = [phases[0], phases[len(phases) // 2], phases[-1]]
    tx, _ = optim.make_optimizer(config[stage].optimizer, [p.steps for p in method.phases()])
    rng = jax.random.key(0)
    _, shardings = state_lib.abstract_state(method, tx, rng, stage_sample, None, mesh, rules)
    uses_teacher = registry.get(stage).teacher
    for phase in phases:
      state = [state_lib.create_state(method, tx, rng, stage_sample, None, shardings)]
      step = loop.jit_train_step(method, phase, tx, rng, mesh, rules, shardings,
                                 teacher_shardings if uses_teacher else None)

      def run(step=step, state=state, uses_teacher=uses_teacher, stage_batch=stage_batch):
        state[0], metrics = step(state[0], stage_batch, teacher if uses_teacher else None)
        jax.block_until_ready(metrics)

      name = label if len(method.phases()) == 1 else f'{label}:{phase.name}'
      row(name, _time(run, _STEPS.value, _REPEATS.value))


if __name__ == '__main__':
  app.run(main)
