"""The methods side by side in one pipeline: AN, DAN -> AN, LIT, KD and GWTN at equal budget,
their report rows, their errors, and exact resume after a stop in each new method's stage."""

import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from gwtn_jax import builders
from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import pipeline
from gwtn_jax.train import loop
from gwtn_jax.train import preemption as preemption_lib

# The tiny wide network has 16/32/64 channels: the paper's threshold of 64 masks nothing.
SMALL = {'adjoined.threshold': 16, 'dan.threshold': 16}


def test_every_method_at_equal_budget_in_one_report(tmp_path):
  config = tiny_config(method='compare', thin_width=1.0, wide_width=1.0, **SMALL)
  config.model.wide_name = 'cifar_resnet20'  # LIT: a deeper teacher of the same widths
  config.imitate.granularity = 'stage'       # GWTN: its 3 stages to the teacher's 3
  report = pipeline.run(config, str(tmp_path))
  assert set(report) == {'wide', 'thin_scratch', 'thin_kd', 'thin_imitated', 'thin_gwtn',
                         'thin_lit', 'small_an', 'small_scratch'}
  budget = {key: report[key]['train_steps'] for key in report if key not in ('wide', 'thin_imitated')}
  assert set(budget.values()) == {8}, budget  # imitation 3 x 2 + fine-tuning 2
  for key, row in report.items():
    assert 0.0 <= row['metrics']['accuracy'] <= 1.0 and np.isfinite(row['metrics']['loss']), key
  # AN's small network is the wide architecture cut by cf = 4 where more than 16 channels:
  # fewer parameters and FLOPs than the wide network, and counted as the extracted network.
  exp = builders.build_experiment(config)
  _, small_model = builders.build_method(config, 'adjoined', exp)
  assert report['small_an']['params'] < report['wide']['params']
  assert report['small_an']['flops'] < report['wide']['flops']
  small = loop.load_stage_output(str(tmp_path / 'stages' / 'seed0' / 'adjoined'), small_model,
                                 exp.task, exp.mesh, exp.rules)
  assert sum(x.size for x in jax.tree.leaves(small['params'])) == report['small_an']['params']
  # AN's control trains the same small network alone.
  assert report['small_scratch']['params'] == report['small_an']['params']
  assert report['small_scratch']['flops'] == report['small_an']['flops']
  with open(tmp_path / 'report.md') as f:
    md = f.read()
  assert '| small_an |' in md and '| thin_lit |' in md


def test_dan_finds_widths_that_an_then_trains(tmp_path):
  config = tiny_config(method='dan', **SMALL)
  report = pipeline.run(config, str(tmp_path))
  assert set(report) == {'small_dan'}
  found = loop.read_result(str(tmp_path / 'stages' / 'seed0' / 'dan'))['summary']
  plan = models.WidthPlan(**found)
  exp = builders.build_experiment(config)
  _, model = builders.build_method(config, 'dan_adjoined', exp, found=found)
  assert model.widths == plan
  wide = exp.wide.width_plan()
  assert all(a <= b for a, b in zip(plan.out, wide.out))
  # The report counts the found network.
  variables = loop.load_stage_output(str(tmp_path / 'stages' / 'seed0' / 'dan_adjoined'), model,
                                     exp.task, exp.mesh, exp.rules)
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == report['small_dan']['params']


def _final(stage_dir, model, exp):
  return jax.device_get(loop.load_stage_output(stage_dir, model, exp.task, exp.mesh, exp.rules))


@pytest.mark.parametrize('method, stage', [('lit', 'lit'), ('adjoined', 'adjoined'),
                                           ('dan', 'dan')])
def test_a_stop_mid_stage_resumes_bitwise(tmp_path, monkeypatch, method, stage):
  """A preemption stop (the SIGTERM path) at step 2 of the new method's stage, then a rerun:
  the final network is bitwise the uninterrupted run's (dropout, Gumbel noise, lambda's
  counter and the BatchNorm statistics all resume)."""
  def config():
    c = tiny_config(method=method, **SMALL)
    if method == 'lit':
      c.thin_width = c.wide_width = 1.0
      c.model.wide_name = 'cifar_resnet20'
    return c

  straight = str(tmp_path / 'straight')
  pipeline.run(config(), straight)

  def stop_at_2(self, step):
    if step >= 2:
      self.signal_name = 'SIGTERM'
    return self.signal_name is not None

  stopped = str(tmp_path / 'stopped')
  with monkeypatch.context() as m:
    m.setattr(preemption_lib.Preemption, 'should_stop',
              lambda self, step: stop_at_2(self, step) if os.path.basename(
                  self.current) == stage else False)
    m.setattr(preemption_lib.Preemption, 'current', '', raising=False)
    original = loop.run_stage

    def tracking(spec, **kwargs):
      kwargs['preemption'].current = spec.name
      return original(spec, **kwargs)

    m.setattr(loop, 'run_stage', tracking)
    with pytest.raises(preemption_lib.StopRequested, match=f'seed0/{stage}: stopped'):
      pipeline.run(config(), stopped)
  pipeline.run(config(), stopped)

  exp = builders.build_experiment(config())
  for name in config_lib.stages_of(config()):
    if name == 'wide':
      continue
    found = None
    if name == 'dan_adjoined':
      found = loop.read_result(os.path.join(straight, 'stages', 'seed0', 'dan'))['summary']
    _, model = builders.build_method(config(), name, exp, found=found)
    a = _final(os.path.join(straight, 'stages', 'seed0', name), model, exp)
    b = _final(os.path.join(stopped, 'stages', 'seed0', name), model, exp)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('overrides, match', [
    (dict(method='adjoined', **SMALL, **{'adjoined.cf': 3}),
     r'adjoined.cf=3 does not divide the 32 channels of stage2_stream'),
    (dict(method='adjoined', **{'adjoined.cf': 0}), r'adjoined.cf=0 must be an integer >= 1'),
    (dict(method='dan'), r'dan.threshold=64: no conv of the wide network has more input and '
                         r'output channels'),
    (dict(method='dan', **{'dan.threshold': 16, 'dan.tau_end': 9.0}),
     r'dan.tau_start=5.0, dan.tau_end=9.0: need 0 < tau_end <= tau_start'),
    (dict(stages=('dan_adjoined',)),
     r"stages: 'dan_adjoined' starts from the output of 'dan', which is not in stages"),
])
def test_bad_adjoined_configs_are_refused_in_one_line(tmp_path, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    config_lib.validate(tiny_config(**overrides), str(tmp_path))
  assert '\n' not in str(error.value)


def test_adjoined_networks_are_for_resnets(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match=r"stages: 'adjoined' \(Adjoined Networks\) applies to ResNets"):
    config_lib.validate(tiny_config('bert', method='adjoined'), str(tmp_path))


@pytest.mark.parametrize('name', [
    'configs/fashion_mnist.py', 'configs/compare_fashion_mnist.py',
    'configs/compare_fashion_mnist.py:smoke', 'configs/lit_cifar.py',
    'configs/lit_cifar.py:compare', 'configs/adjoined_imagenet.py',
    'configs/adjoined_imagenet.py:dan', 'configs/resnet50_imagenet.py',
    'configs/resnet50_imagenet.py:mesh=fsdp'])
def test_image_configs_are_valid_and_budgets_equal(name):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path, _, arg = name.partition(':')
  module = config_flags.config_flags._LoadConfigModule('c', path)  # pylint: disable=protected-access
  config = module.get_config(arg)
  if 'mesh=fsdp' in arg:
    config.mesh.shape.update(fsdp=8)
  config_lib.validate(config, None, data=False)
  exp = builders.build_experiment(config, static=True)
  stages = config_lib.stages_of(config)
  steps = {s: builders.build_method(config, s, exp)[0] for s in stages}
  steps = {s: sum(p.steps for p in m.phases()) for s, m in steps.items()}
  budgets = []
  if 'finetune' in stages:
    budgets.append(steps['imitate'] + steps['finetune'])
  if 'lit_finetune' in stages:
    budgets.append(steps['lit'] + steps['lit_finetune'])
  budgets += [steps[s] for s in ('thin_scratch', 'thin_kd', 'adjoined', 'small_scratch')
              if s in stages]
  assert len(set(budgets)) <= 1, budgets
