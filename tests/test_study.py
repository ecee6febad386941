"""The study runner, the plain MLP family and ResNets without shortcuts."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import study as study_lib
from gwtn_jax.train import checkpoint


def test_an_mlp_sows_every_layer_and_runs_between_points():
  model = models.get_model('mlp8', num_classes=3, width_multiplier=0.125)
  assert model.hidden() == 16
  points = model.points()
  assert [p.name for p in points] == [f'layer_{i}' for i in range(1, 9)]
  assert [p.name for p in points if p.stage_end] == ['layer_4', 'layer_8']
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
  variables = model.init(jax.random.key(1), x, train=False)
  assert set(variables['params']) == {f'dense_{i}' for i in range(1, 9)} | {'head'}
  logits, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  sown = model.read_points(state['intermediates'])
  assert list(sown) == [p.name for p in points] and logits.shape == (2, 3)
  # The bottom up to layer 3, then the rest from there, is the whole network.
  mid = model.apply(variables, x, train=False, stop_at='layer_3')
  np.testing.assert_allclose(mid, sown['layer_3'], rtol=1e-6)
  top = model.apply(variables, mid, train=False, start_after='layer_3')
  np.testing.assert_allclose(top, logits, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='model.width_multiplier=0.1 gives 12.8 hidden units'):
    models.get_model('mlp4', num_classes=3, width_multiplier=0.1).hidden()


def test_a_resnet_without_shortcuts_is_the_plain_network_of_the_same_layers():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  plain = models.get_model('cifar_resnet8', num_classes=4, shortcuts=False)
  residual = models.get_model('cifar_resnet8', num_classes=4)
  v_plain = nn.meta.unbox(plain.init(jax.random.key(1), x, train=False))
  v_res = nn.meta.unbox(residual.init(jax.random.key(1), x, train=False))
  # The same layers but the projection shortcuts.
  flat = lambda v: set(checkpoint.flat_shapes(v['params']))
  assert {p for p in flat(v_res) if 'proj_' not in p} == flat(v_plain)
  # A plain block's last norm starts at scale 1 (a residual one at 0, the identity).
  assert float(v_plain['params']['stage1_block1_layers']['bn2']['scale'].mean()) == 1.0
  assert float(v_res['params']['stage1_block1_layers']['bn2']['scale'].mean()) == 0.0
  _, state = plain.apply(v_plain, x, train=False, mutable=['intermediates'])
  stem = state['intermediates']['stem'][0]
  block = state['intermediates']['stage1_block1'][0]
  assert float(jnp.abs(block).sum()) > 0 and not np.allclose(block, stem)


def _study(fields, study):
  """The tiny config on a thin MLP with `fields` overridden, and `study` as its study."""
  c = tiny_config('', **{'model.name': 'mlp2', 'thin_width': 0.25, **fields})
  c.study.update(study)
  return c


def _study_config(**overrides):
  return _study({'seeds': (0, 1)}, {
      'axis': 'model.num_layers', 'label': 'depth',
      'settings': ({'model.num_layers': 2, 'imitate.steps_per_point': 2},
                   {'model.num_layers': 4, 'imitate.steps_per_point': 1}), **overrides})


def test_a_study_runs_each_setting_and_writes_its_tables(tmp_path, capsys):
  workdir = str(tmp_path / 'study')
  result = study_lib.run(_study_config(), workdir)
  on_disk = json.load(open(os.path.join(workdir, 'study.json')))
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk['axis'] == 'model.num_layers' and on_disk['metric'] == 'accuracy'
  assert [s['value'] for s in on_disk['settings']] == [2, 4]
  for setting in on_disk['settings']:
    networks = setting['networks']
    assert {'thin_scratch', 'thin_kd', 'thin_gwtn', 'wide'} <= set(networks)
    for name, row in networks.items():
      seeds = 1 if name == 'wide' else 2
      assert len(row['per_seed']) == seeds, name
      assert row['mean'] == pytest.approx(np.mean(row['per_seed']))
      assert row['loss'] == pytest.approx(np.mean(row['loss_per_seed'])) and row['loss'] > 0
      assert row['params'] > 0 and row['flops'] > 0 and row['train_steps'] > 0
    # Equal thin budgets at each depth (2 points x 2 steps, 4 x 1, + fine-tuning).
    assert networks['thin_scratch']['train_steps'] == networks['thin_gwtn']['train_steps']
    assert setting['teacher'] == ''  # a depth changes the teacher: each trains its own
  for index, value in enumerate((2, 4)):
    assert os.path.exists(os.path.join(study_lib.setting_dir(workdir, index, value), 'stages',
                                       'wide', 'result.json'))
  deeper = on_disk['settings'][1]['networks']['thin_gwtn']['params']
  assert deeper > on_disk['settings'][0]['networks']['thin_gwtn']['params']
  table = open(os.path.join(workdir, 'study.md')).read()
  assert '| depth | thin_scratch | thin_kd | thin_gwtn' in table
  assert open(os.path.join(workdir, 'study.png'), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  # Rerun: every setting is loaded, nothing trains again, the same numbers.
  capsys.readouterr()
  again = study_lib.run(_study_config(), workdir)
  assert again == result
  assert 'step 1/' not in capsys.readouterr().out


def _budget_study(**overrides):
  return _study({'model.num_layers': 2, 'seeds': (0,)}, {
      'axis': 'imitate.steps_per_point',
      'settings': (1, {'imitate.steps_per_point': 2, 'finetune.steps': 3}), **overrides})


def test_a_study_of_later_stages_trains_the_teacher_once(tmp_path, capsys):
  workdir = str(tmp_path / 'study')
  result = study_lib.run(_budget_study(), workdir)
  first = os.path.join(study_lib.setting_dir(workdir, 0, 1), 'stages', 'wide')
  second = study_lib.setting_dir(workdir, 1, 2)
  assert [s['teacher'] for s in result['settings']] == ['', first]
  assert not os.path.exists(os.path.join(second, 'stages', 'wide'))
  saved = json.load(open(os.path.join(second, 'config.json')))
  assert saved['teacher_dir'] == first and 'wide' not in saved['stages']
  wide = [s['networks']['wide'] for s in result['settings']]
  assert wide[0] == wide[1]  # the one teacher, reported in both settings
  gwtn = [s['networks']['thin_gwtn']['train_steps'] for s in result['settings']]
  assert gwtn[1] > gwtn[0]
  # A rerun loads everything, the shared teacher included.
  capsys.readouterr()
  assert study_lib.run(_budget_study(), workdir) == result
  assert 'step 1/' not in capsys.readouterr().out


def test_a_teacher_is_shared_only_where_it_would_train_alike(tmp_path):
  workdir = str(tmp_path)
  def shared(config, **kwargs):
    runs = study_lib.shared_teachers(config, workdir, study_lib.setting_configs(config),
                                     **kwargs)
    return [bool(r.teacher_dir) for r in runs]
  assert shared(_budget_study()) == [False, True]
  assert shared(_budget_study(share_teacher=False)) == [False, False]
  # A field of the teacher's own stage, a top-level field, another teacher snapshot: its own.
  for setting in ({'imitate.steps_per_point': 2, 'wide.steps': 5},
                  {'imitate.steps_per_point': 2, 'batch_size': 8},
                  {'imitate.steps_per_point': 2, 'imitate.teacher_step': 2}):
    assert shared(_budget_study(settings=(1, setting))) == [False, False], setting
  # A setting that trained its own teacher before (a resumed study) keeps it, unless the
  # study starts over.
  own = os.path.join(study_lib.setting_dir(workdir, 1, 2), 'stages', 'wide')
  os.makedirs(own)
  open(os.path.join(own, 'result.json'), 'w').write('{}')
  assert shared(_budget_study()) == [False, False]
  assert shared(_budget_study(), start_over=True) == [False, True]


def test_a_bad_study_is_refused_before_any_setting_runs(tmp_path):
  for overrides, match in (
      ({'settings': ()}, 'study.settings is empty'),
      ({'axis': 'model.no_such_field', 'settings': (1, 2)}, "'model.no_such_field' is not a"),
      ({'settings': ({'imitate.steps_per_point': 2},)}, 'does not set the axis'),
      ({'settings': (2, 2)}, 'takes a value twice'),
      ({'settings': (2, 0.5)}, r'study: model.num_layers=0.5 does not fit the field'),
      ({'settings': (2, -1)}, r'study setting model.num_layers=-1: model.depth=-1 must be')):
    with pytest.raises(config_lib.ConfigError, match=match):
      study_lib.run(_study_config(**overrides), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'settings')


def test_depth_and_shortcut_fields_are_refused_where_nothing_reads_them(tmp_path):
  for overrides, match in (
      ({'model.num_layers': 4}, r'model.num_layers=4 .*on a ResNet'),
      ({'model.name': 'mlp4', 'model.shortcuts': False}, r'model.shortcuts=False .*on an MLP'),
  ):
    with pytest.raises(config_lib.ConfigError, match=match):
      config_lib.validate(tiny_config('', **overrides), None, data=False)
  with pytest.raises(config_lib.ConfigError, match=r'model.shortcuts=False .*on a BERT'):
    config_lib.validate(tiny_config('bert', **{'model.shortcuts': False}), None, data=False)
  # Read where they apply.
  config_lib.validate(tiny_config('', **{'model.name': 'mlp4', 'model.num_layers': 3}), None,
                      data=False)
  config_lib.validate(tiny_config('', **{'model.shortcuts': False}), None, data=False)


@pytest.mark.parametrize('name, arg', [
    ('mlp', ''), ('mlp', 'deep'), ('mlp', 'budget'), ('mlp', 'smoke'), ('mlp', 'variants'),
    ('mlp', 'variants,smoke'), ('resnet', ''), ('resnet', 'plain'), ('resnet', 'plain,smoke'),
    ('resnet', 'variants'), ('resnet', 'variants,smoke'),
    ('bert', ''), ('bert', 'smoke')])
def test_the_depth_study_configs_check_every_setting(name, arg):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs',
                      f'study_depth_{name}.py')
  spec = importlib.util.spec_from_file_location(f'study_depth_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  settings = study_lib.setting_configs(config)
  assert len(settings) >= 2
  for value, setting in settings:
    config_lib.validate(setting, None, data=False)
    stages = config_lib.stages_of(setting)
    assert {'thin_scratch', 'thin_kd', 'imitate', 'finetune'} <= set(stages), value
  if name == 'mlp' and arg in ('', 'deep'):
    # The same imitation budget at every depth, split over the layers.
    budgets = {s.model.num_layers * s.imitate.steps_per_point for _, s in settings}
    assert budgets == {module.IMITATION_STEPS}
    assert [v for v, _ in settings] == list(module.DEPTHS) + ([module.DEEP] if arg else [])


def test_a_variant_study_names_its_settings_and_sets_only_their_fields():
  c = _study_config(axis='variant', settings=(
      {'variant': 'plain'}, {'variant': 'slow lower layers', 'imitate.lower_lr': 0.1}))
  (v0, s0), (v1, s1) = study_lib.setting_configs(c)
  assert (v0, v1) == ('plain', 'slow lower layers')
  assert s0.imitate.lower_lr == 1.0 and s1.imitate.lower_lr == 0.1
  assert s0.model == s1.model and not s1.study.axis
  assert study_lib.setting_dir('W', 1, v1) == os.path.join('W', 'settings', '1-slow_lower_layers')
  with pytest.raises(config_lib.ConfigError, match="non-string 'variant'"):
    study_lib.setting_configs(_study_config(axis='variant', settings=({'variant': 3},)))
  with pytest.raises(config_lib.ConfigError, match="does not set the axis 'variant'"):
    study_lib.setting_configs(_study_config(axis='variant', settings=({'imitate.lower_lr': 0.1},)))


def test_the_demo_budget_ladder_scales_every_thin_arm_alike():
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'fashion_mnist.py')
  spec = importlib.util.spec_from_file_location('fashion_mnist', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  settings = study_lib.setting_configs(module.get_config('budget'))
  thin_steps = []
  for _, setting in settings:
    config_lib.validate(setting, None, data=False)
    steps = {s: config_lib.stage_steps(setting, s, models.get_model(
        setting.model.name, num_classes=10, width_multiplier=setting.thin_width))
             for s in ('thin_scratch', 'thin_kd', 'imitate', 'finetune')}
    assert steps['thin_scratch'] == steps['thin_kd'] == steps['imitate'] + steps['finetune']
    thin_steps.append(steps['thin_scratch'])
  assert thin_steps == [1800, 5400, 18000]
