"""The pod planner: every stage's step compiled for N devices, its memory per device."""

import os
import subprocess
import sys

from conftest import tiny_config
from gwtn_jax import config_lib
from gwtn_jax import plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plans(kind, preset):
  # The stages that differ in what they hold: the wide one, the teacher's students, the
  # imitation phases and the downstream networks (a classifier head on each).
  config = tiny_config(kind, stages=('wide', 'thin_kd', 'imitate', 'downstream'))
  config.mesh = config_lib.mesh_config(preset)
  config.mesh.num_devices = 8
  return {p.stage: p for p in plan.plan(config)}


def test_fsdp_splits_parameters_and_optimizer_state_over_the_devices():
  data, fsdp = _plans('bert', 'data'), _plans('bert', 'fsdp')
  assert data.keys() == fsdp.keys()
  # Every stage, both ends of progressive imitation, and the two downstream fine-tunings.
  assert {'wide', 'thin_kd', 'imitate:embeddings', 'imitate:layer_2', 'downstream_thin',
          'downstream_wide'} == set(data)
  for stage in data:
    d, f = data[stage], fsdp[stage]
    assert d.params > 0 and d.flops > 0 and d.total >= d.params + d.opt_state
    # Replicated parameters cost each device all of them; under FSDP about an eighth (the
    # position table and the biases of the class heads are not split).
    assert f.params < d.params / 4, stage
    assert f.opt_state < d.opt_state / 4, stage
  # Only the stages that read the teacher hold it; under FSDP it is split too.
  assert data['downstream_thin'].teacher == 0 and data['thin_kd'].teacher > 0
  assert fsdp['thin_kd'].teacher < data['thin_kd'].teacher / 4
  # The wide network's step holds more than the thin one's.
  assert data['wide'].params > data['thin_kd'].params


def test_the_command_prints_the_plan_and_refuses_bad_input():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  done = subprocess.run(
      [sys.executable, '-m', 'gwtn_jax.plan', '--config=tests/tiny_config.py', '--devices=4',
       "--config.stages=('wide','thin_kd','imitate','finetune')"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  out = done.stdout
  assert "4 devices, mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in out
  for stage in ('wide', 'thin_kd', 'imitate:stem', 'finetune'):
    assert any(line.startswith(stage + ' ') and 'v5e:yes' in line for line in out.splitlines()), out
  done = subprocess.run(
      [sys.executable, '-m', 'gwtn_jax.plan', '--config=tests/tiny_config.py', '--devices=3'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      'error: wide.batch_size=16 is not divisible by the 3 data-parallel devices (mesh data x fsdp)']


def test_scanned_and_unrolled_layers_plan_the_same_model_flops():
  plans = []
  for scan in (True, False):
    config = tiny_config('bert', stages=('wide', 'imitate'), **{'model.scan_layers': scan})
    config.mesh.num_devices = 4
    plans.append({p.stage: p.flops for p in plan.plan(config)})
  assert plans[0].keys() == plans[1].keys() and all(v > 0 for v in plans[0].values())
  for stage, flops in plans[0].items():
    assert flops == plans[1][stage], stage
  # A later imitation phase runs more of both networks.
  assert plans[0]['imitate:layer_2'] > plans[0]['imitate:embeddings']


def test_lamb_is_planned_like_adam():
  sizes = {}
  for name in ('adamw', 'lamb'):
    config = tiny_config('bert', stages=('wide',), **{'model.scan_layers': True})
    config.wide.optimizer = config_lib.optimizer_config(name=name, learning_rate=1e-3)
    config.mesh.num_devices = 2
    (p,) = plan.plan(config)
    sizes[name] = (p.params, p.opt_state, p.flops)
  # The same moments (the trust ratio keeps no state) and the same products.
  assert sizes['lamb'] == sizes['adamw']
