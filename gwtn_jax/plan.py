r"""Pod sizing ahead of time: compiles every stage's real step for N devices and prints its memory.

  python -m gwtn_jax.plan --config=configs/bert_base.py --devices=256
  python -m gwtn_jax.plan --config=configs/resnet50_imagenet.py --devices=256 \
      --config.mesh.shape.fsdp=8 --config.mesh.shape.data=-1

Each stage's train step (the same jitted function, shardings and donation as the loop) is
lowered for abstract inputs on a mesh of N virtual CPU devices built from the config's mesh and
rules, and compiled. Per device and per stage it prints the parameters, the optimizer state,
the teacher's parameters, the batch, XLA's temporaries (`compiled.memory_analysis()`), the
model FLOPs of one step per device (`gwtn_jax.train.flops`: the step's matrix products and
convolutions, scanned layers counted per layer, which XLA's cost analysis counts once), and
whether the total fits the HBM of a v4 (32 GiB), v5e (16 GiB) and v5p (95 GiB) chip. No data
is read and nothing is allocated.

The figures are compiled by XLA's CPU backend: the parameters, optimizer state, teacher and
batch are exact (they follow from the shardings) and so are the model FLOPs (they follow from
the program); the temporaries are an estimate of what the TPU compiler will do (its fusion and
rematerialization differ).
"""

from __future__ import annotations

import dataclasses
import math
import os

from absl import flags
from ml_collections import config_flags

from gwtn_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_DEVICES = flags.DEFINE_integer('devices', 8, 'Devices (chips) of the slice to plan for.')
_PHASES = flags.DEFINE_enum('phases', 'ends', ['ends', 'all'],
                            'Progressive imitation: compile its first and last phase, or all.')
flags.mark_flags_as_required(['config'])

GIB = 2**30
CHIPS = {'v4': 32 * GIB, 'v5e': 16 * GIB, 'v5p': 95 * GIB}


@dataclasses.dataclass
class StagePlan:
  """Per-device memory (bytes) and FLOPs of one stage's step."""
  stage: str
  params: int
  opt_state: int
  teacher: int
  batch: int
  temp: int
  flops: float

  @property
  def total(self) -> int:
    return self.params + self.opt_state + self.teacher + self.batch + self.temp


def _per_device_bytes(tree) -> int:
  """The largest per-device footprint of a tree of sharded abstract arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * leaf.dtype.itemsize
  return total


def plan(config, all_phases: bool = False) -> list[StagePlan]:
  """Compiles every stage's step of `config` on the mesh of `config.mesh`; see the module doc."""
  import jax  # pylint: disable=g-import-not-at-top
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import registry  # pylint: disable=g-import-not-at-top
  from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  exp = builders.build_experiment(config, static=True)
  mesh, rules = exp.mesh, exp.rules
  teacher = loop.model_abstract_variables(exp.wide, exp.task, mesh, rules)
  teacher_bytes = _per_device_bytes(teacher)
  teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher)

  def abstract_batch(task, batch_size):
    sharding = mesh_lib.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding)
            for k, v in task.sample_batch().items()}

  plans = []
  for label, stage, method, task in builders.stage_methods(config, exp):
    batch_size = config_lib.stage_value(config, stage, 'batch_size')
    batch = abstract_batch(task, batch_size)
    phases = list(method.phases())
    rng = jax.random.key(0)
    tx, _ = loop.make_optimizer(method, config[stage].optimizer, rng, task.sample_batch())
    state, shardings = state_lib.abstract_state(method, tx, rng, task.sample_batch(), None,
                                                mesh, rules)
    uses_teacher = registry.get(stage).teacher
    if not all_phases and len(phases) > 2:
      phases = [phases[0], phases[-1]]
    for phase in phases:
      step = loop.jit_train_step(method, phase, tx, rng, mesh, rules, shardings,
                                 teacher_shardings if uses_teacher else None)
      compiled = step.lower(state, batch, teacher if uses_teacher else None).compile()
      memory = compiled.memory_analysis()
      name = label if len(method.phases()) == 1 else f'{label}:{phase.name}'
      plans.append(StagePlan(
          stage=name, params=_per_device_bytes(state.params),
          opt_state=_per_device_bytes(state.opt_state) + _per_device_bytes(state.model_state),
          teacher=teacher_bytes if uses_teacher else 0, batch=_per_device_bytes(batch),
          temp=int(getattr(memory, 'temp_size_in_bytes', 0) or 0),
          flops=loop.step_model_flops(method, phase, tx, rng, mesh, rules, state, batch,
                                      teacher if uses_teacher else None) / mesh.size))
  return plans


def format_plans(plans: list[StagePlan], config, num_devices: int) -> str:
  from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  sizes = mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), num_devices)
  lines = [
      f'{config.model.name}: thin width {config.thin_width:g}, wide width {config.wide_width:g}, '
      f'{config.model.dtype}; {num_devices} devices, mesh {sizes}',
      'Per device, GiB (parameters, optimizer state, teacher and batch exact; temporaries '
      'compiled by XLA:CPU, an estimate of the TPU compile); model TFLOP of one step:',
      f'{"stage":28s} {"params":>8s} {"opt":>8s} {"teacher":>8s} {"batch":>8s} {"temp":>8s} '
      f'{"total":>8s} {"TFLOP/step":>11s}  fits',
  ]
  for p in plans:
    fits = ' '.join(f'{chip}:{"yes" if p.total <= hbm else "NO"}' for chip, hbm in CHIPS.items())
    lines.append(
        f'{p.stage:28s} {p.params / GIB:8.3f} {p.opt_state / GIB:8.3f} {p.teacher / GIB:8.3f} '
        f'{p.batch / GIB:8.3f} {p.temp / GIB:8.3f} {p.total / GIB:8.3f} {p.flops / 1e12:11.3f}'
        f'  {fits}')
  return '\n'.join(lines)


def _parse_flags(argv):
  return cli.parse_flags(argv, _CONFIG)


def main(argv):
  del argv  # cli.parse_flags refused any positional word
  num_devices = _DEVICES.value
  if num_devices < 1:
    cli.refuse(f'--devices={num_devices} must be >= 1')
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', num_devices)
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  config.mesh.num_devices = num_devices
  try:
    config_lib.validate(config, workdir=None, data=False)
  except config_lib.ConfigError as e:
    cli.refuse(str(e))
  plans = plan(config, all_phases=_PHASES.value == 'all')
  print(format_plans(plans, config, num_devices), flush=True)


def run() -> None:
  """The console script (`gwtn-plan`): the same as `python -m gwtn_jax.plan`."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  cli.run(__name__, main, _parse_flags)


if __name__ == '__main__':
  run()
