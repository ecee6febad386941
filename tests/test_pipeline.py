"""The whole pipeline: every stage through the real loop, the report, 1 vs 8 devices.

Resume after kill -9 and the other interruptions: test_reliability.py.
"""

import json
import os
import numpy as np
import pytest

from conftest import tiny_config
from gwtn_jax import pipeline
from gwtn_jax.train import loop

KEYS = {'wide', 'thin_scratch', 'thin_kd', 'thin_imitated', 'thin_gwtn'}


def test_every_stage_and_the_report(tmp_path):
  workdir = str(tmp_path)
  report = pipeline.run(tiny_config(seeds=(0, 1)), workdir)
  assert set(report) == KEYS
  for key, row in report.items():
    assert isinstance(row['params'], int) and row['params'] > 0, key
    assert isinstance(row['flops'], int) and row['flops'] > 0, key
    assert isinstance(row['train_steps'], int) and isinstance(row['wall_s'], float), key
    assert set(row['metrics']) == {'accuracy', 'loss'}, key
    assert 0.0 <= row['metrics']['accuracy'] <= 1.0 and np.isfinite(row['metrics']['loss']), key
  # Equal budgets: the controls get as many steps as imitation (4 points x 2) + fine-tuning (2).
  assert report['thin_gwtn']['train_steps'] == 10
  assert report['thin_scratch']['train_steps'] == report['thin_kd']['train_steps'] == 10
  assert report['thin_imitated']['train_steps'] == 8
  assert report['wide']['train_steps'] == 4
  # One thin architecture for every thin row; the wide one is bigger and costlier.
  thin_params = {report[k]['params'] for k in KEYS - {'wide'}}
  assert len(thin_params) == 1 and report['wide']['params'] > thin_params.pop()
  assert report['wide']['flops'] > report['thin_gwtn']['flops']
  # Two seeds: mean and spread.
  assert report['thin_gwtn']['seeds'] == 2 and len(report['thin_gwtn']['per_seed']) == 2
  accs = [s['accuracy'] for s in report['thin_scratch']['per_seed']]
  assert report['thin_scratch']['metrics']['accuracy'] == pytest.approx(np.mean(accs))
  assert report['thin_scratch']['spread']['accuracy'] == pytest.approx(np.std(accs))
  # Each training stage's throughput, measured over its training alone: examples/s, model
  # TFLOP/s per device and MFU against this CPU's measured matmul rate.
  assert set(report['thin_gwtn']['throughput']) == {'imitate', 'finetune'}
  for key, row in report.items():
    for stage, speed in row['throughput'].items():
      assert {'examples_per_second', 'tflops_per_device', 'mfu'} <= set(speed), (key, stage)
      assert speed['examples_per_second'] > 0 and 0 < speed['mfu'] < 1, (key, stage, speed)
  assert report['wide']['throughput']['wide']['tflops_per_device'] > 0

  with open(os.path.join(workdir, 'report.json')) as f:
    assert json.load(f) == report
  with open(os.path.join(workdir, 'report.md')) as f:
    md = f.read()
  assert all(f'| {k} |' in md for k in KEYS)
  assert '| thin_gwtn | imitate |' in md and 'model TFLOP/s per device | MFU |' in md
  with open(os.path.join(workdir, 'curves.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  events = os.listdir(os.path.join(workdir, 'tensorboard', 'wide'))
  assert any(name.startswith('events.out.tfevents') for name in events)
  assert os.path.exists(os.path.join(workdir, 'tensorboard', 'seed1', 'imitate'))

  # A finished pipeline is not run again: every stage is loaded from its folder.
  results = [os.path.join(workdir, 'stages', s, loop.RESULT_FILE)
             for s in ('wide', 'seed0/imitate', 'seed1/finetune')]
  stamps = [os.stat(p).st_mtime_ns for p in results]
  again = pipeline.run(tiny_config(seeds=(0, 1)), workdir)
  assert again == report
  assert [os.stat(p).st_mtime_ns for p in results] == stamps


def test_one_and_eight_devices_agree(tmp_path):
  """The same stage on a 1-device mesh and on 8 data-parallel devices: same losses."""
  reports = []
  for devices in (1, 8):
    config = tiny_config(**{'mesh.num_devices': devices, 'stages': ('wide',)})
    reports.append(pipeline.run(config, str(tmp_path / f'd{devices}')))
  one, eight = (r['wide']['metrics'] for r in reports)
  assert one['loss'] == pytest.approx(eight['loss'], rel=1e-4)
  assert one['accuracy'] == pytest.approx(eight['accuracy'], abs=1e-6)


def test_profile_steps_write_a_trace_of_those_steps(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  pipeline.run(tiny_config(stages=('wide', 'thin_scratch'), profile_steps=(2, 3),
                           profile_stages=('wide',)), workdir)
  runs = os.path.join(workdir, 'profile', 'wide', 'plugins', 'profile')
  (run,) = os.listdir(runs)
  names = os.listdir(os.path.join(runs, run))
  assert any(n.endswith('.xplane.pb') for n in names), names
  (trace,) = [n for n in names if n.endswith('.trace.json.gz')]
  with gzip.open(os.path.join(runs, run, trace)) as f:
    events = json.load(f)['traceEvents']
  assert any('train_step' in str(e.get('name', '')) or 'jit' in str(e.get('name', ''))
             for e in events), len(events)
  # Only the stages asked for.
  assert not os.path.exists(os.path.join(workdir, 'profile', 'seed0'))


@pytest.mark.parametrize('overrides, match', [
    ({'profile_steps': (3, 2)}, r'profile_steps=\(3, 2\) must be \(\) or \(start, stop\)'),
    ({'profile_steps': (0, 2)}, r'profile_steps=\(0, 2\)'),
    ({'profile_stages': ('lit',)}, r"profile_stages: 'lit' is not one of the stages run"),
])
def test_bad_profile_settings_are_refused(overrides, match):
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config(**overrides), None, data=False)
