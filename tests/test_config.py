"""Bad input is refused before anything is compiled, in one line naming the field or path."""

import os
import re
import subprocess
import sys

import ml_collections
import pytest

from conftest import tiny_config
from gwtn_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def refused(config, workdir, match):
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    config_lib.validate(config, workdir)
  assert '\n' not in str(info.value)
  return str(info.value)


BAD = [
    ({'model.name': 'resnet5'}, r"model.name='resnet5' is unknown; choose one of: .*resnet50"),
    ({'data.name': 'mnist2'}, r"data.name='mnist2': the tfds dataset mnist2 is not prepared"),
    ({'thin_width': 0.3}, r'thin_width=0.3 gives .* channels'),
    ({'wide_width': 1.1}, r'wide_width=1.1 gives .* channels'),
    ({'imitate.layer_map': (0, 1, 2, 7)}, r'imitate.layer_map\[3\]=7 points outside the teacher'),
    ({'imitate.layer_map': (0, 1)}, r'imitate.layer_map has 2 entries'),
    ({'imitate.granularity': 'layer'}, r'imitate.granularity='),
    ({'imitate.inputs': 'both'}, r'imitate.inputs='),
    ({'imitate.point_weights': (1.0, 2.0)}, r'imitate.point_weights has 2 entries'),
    ({'stages': ('imitate', 'wide')}, r'out of order'),
    ({'stages': ('wide', 'probe')}, r"'probe' starts from the output of 'imitate'"),
    ({'stages': ('wide', 'pretrain')}, r"'pretrain' is unknown"),
    ({'stages': ('thin_kd',)}, r'teacher_dir is empty'),
    ({'stages': ('thin_kd',), 'teacher_dir': '/nonexistent/wide'}, r'teacher_dir=/nonexistent/wide'),
    ({'wide.optimizer.name': 'lars'}, r"wide.optimizer.name='lars' is unknown"),
    ({'finetune.optimizer.schedule': 'exponential'}, r"finetune.optimizer.schedule='exponential'"),
    ({'wide.optimizer.learning_rate': -1.0}, r'wide.optimizer.learning_rate=-1.0 must be > 0'),
    ({'finetune.alpha': 1.5}, r'finetune.alpha=1.5 must be in \[0, 1\]'),
    ({'wide.steps': 0}, r'wide.steps=0 must be a positive integer'),
    ({'batch_size': 12, 'mesh.num_devices': 8}, r'batch_size=12 is not divisible by the 8 data-parallel'),
    ({'mesh.shape': {'data': 3, 'fsdp': 1, 'tensor': 1}}, r'mesh.shape=.* needs 3 devices'),
    ({'model.dtype': 'float64'}, r"model.dtype='float64'"),
    ({'seeds': ()}, r'seeds=\(\) must be a non-empty'),
    ({'seeds': (0, 0)}, r'seeds=\(0, 0\) repeats a seed'),
    ({'thin_width': 2.0}, r'wide_width=1.0 is below thin_width=2.0'),
    ({'eval_batch_size': 30, 'mesh.num_devices': 8}, r'eval_batch_size=30 is not divisible by the 8'),
    ({'imitate.steps_per_point': -2}, r'imitate.steps_per_point=-2 must be an integer >= 0'),
    ({'probe.steps': -1}, r'probe.steps=-1 must be a positive integer'),
    ({'finetune.temperature': 0.0}, r'finetune.temperature=0.0 must be > 0'),
    ({'wide.optimizer.decay_boundaries': (0.5, 1.5)}, r'wide.optimizer.decay_boundaries=.* fractions'),
    ({'wide.optimizer.warmup_steps': -1}, r'wide.optimizer.warmup_steps=-1 must be an integer >= 0'),
    ({'wide.optimizer.momentum': 1.0}, r'wide.optimizer.momentum=1.0 must be in \[0, 1\)'),
    ({'wide.optimizer.weight_decay_on': 'biases'}, r'wide.optimizer.weight_decay_on='),
    ({'keep_checkpoints': 0}, r'keep_checkpoints=0 must be a positive integer'),
    ({'log_every': 0}, r'log_every=0 must be a positive integer'),
    ({'on_nonfinite': 'ignore'}, r"on_nonfinite='ignore' must be 'stop' or 'skip'"),
    ({'mesh.shape': {'data': -1, 'fsdp': -1, 'tensor': 1}}, r'only one axis may be -1'),
    ({'mesh.shape': {'data': -1, 'model': 2}}, r'mesh.shape has unknown axes'),
    ({'mesh.num_devices': 16}, r'mesh.num_devices=16 but only 8 devices exist'),
    ({'data.num_train_examples': -5}, r'data.num_train_examples=-5 must be >= 0'),
    ({'data.synthetic_image_shape': (8, 8)}, r'data.synthetic_image_shape='),
    ({'imitate.point_weights': (1.0, -1.0, 1.0, 1.0)}, r'imitate.point_weights=.* must be >= 0'),
    ({'imitate.schedule': 'random'}, r"imitate.schedule='random'"),
]


@pytest.mark.parametrize('overrides, match', BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_configs_are_refused(overrides, match, tmp_path):
  refused(tiny_config(**overrides), str(tmp_path), match)


def test_the_tiny_config_is_accepted(tmp_path):
  config_lib.validate(tiny_config(), str(tmp_path))


def test_missing_fashion_mnist_names_the_apt_command(tmp_path):
  message = refused(tiny_config(**{'data.name': 'fashion_mnist_idx', 'data.dir': str(tmp_path / 'none')}),
                    str(tmp_path / 'wd'), 'data.dir=')
  assert 'apt-get install dataset-fashion-mnist' in message


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  refused(tiny_config(), str(blocker / 'workdir'), r'--workdir=.* is not a writable folder')


def run_main(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'gwtn_jax.main', *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.mark.parametrize('args, match', [
    (['--config.model.name=resnet5'], "model.name='resnet5' is unknown"),
    (['--config.batch_size=abc'], "--config.batch_size=abc: invalid literal for int()"),
    (['--config.wide.optimizer.nam=sgd'], "no such field 'nam' (did you mean \"name\"?)"),
    (['--config=configs/no_such_config.py'], '--config: no such file configs/no_such_config.py'),
    (['--config=configs/fashion_mnist.py:fast'], "unknown argument 'fast'"),
    (['--config.thin_width=0.3'], 'thin_width=0.3 gives'),
    (['--config.data.dir=/nonexistent/fmnist'], 'apt-get install dataset-fashion-mnist'),
])
def test_main_exits_2_with_one_line(args, match, tmp_path):
  result = run_main('--config=configs/fashion_mnist.py', f'--workdir={tmp_path}/wd', *args)
  # (a later --config replaces the first)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and match in lines[0], result.stderr
  assert not os.path.exists(tmp_path / 'wd' / 'stages')


# ----------------------------------------------------------------------------------
# One source for every default: the schema.


def test_the_schema_imports_no_jax():
  # Config files import the schema (through config_lib and recipes); it must not load JAX.
  code = ('import sys; import gwtn_jax.config_lib, gwtn_jax.recipes; '
          'from gwtn_jax.config import schema; '
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'flax', 'grain', 'optax', 'tensorflow')))")
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]', result.stdout


def _data_sections():
  from gwtn_jax.data import classify  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import images  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import text  # pylint: disable=g-import-not-at-top
  return [(images, 'data', config_lib.base_config().data),
          (text, 'data', config_lib.text_data_config()),
          (classify, 'downstream', config_lib.downstream_config())]


def test_every_field_the_data_modules_read_is_in_the_schema_without_a_default_of_theirs():
  for module, prefix, section in _data_sections():
    name = module.__name__
    assert set(module.FIELDS) <= set(section), (name, set(module.FIELDS) - set(section))
    module._parse(section)  # pylint: disable=protected-access
    # With any one field missing the module refuses the config: it has no default to use.
    for field in module.FIELDS:
      partial = section.to_dict()
      del partial[field]
      with pytest.raises(ValueError, match=rf'^{prefix}\.{field} is missing; ') as info:
        module._parse(ml_collections.ConfigDict(partial))  # pylint: disable=protected-access
      assert '\n' not in str(info.value)
  # The image and text sections hold nothing the modules do not read.
  for module, _, section in _data_sections()[:2]:
    assert set(module.FIELDS) == set(section), module.__name__


def test_no_data_module_keeps_a_default_helper():
  folder = os.path.join(REPO, 'gwtn_jax', 'data')
  for name in sorted(os.listdir(folder)):
    if name.endswith('.py'):
      source = open(os.path.join(folder, name)).read()
      assert '_get(' not in source, name
      assert not re.search(r'getattr\(config\w*, [^()]*,', source), name


def test_dataset_dependent_defaults_come_from_the_dataset_table():
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import images  # pylint: disable=g-import-not-at-top
  data = config_lib.base_config().data
  assert (data.dir, data.eval_split) == ('', '')  # '' = the dataset's own
  for name, entry in datasets.IMAGE_DATASETS.items():
    opts = images._parse(_with(data, name=name))  # pylint: disable=protected-access
    assert opts.eval_split == entry.eval_split and opts.dir == entry.default_dir, name
  assert images._parse(_with(data, name='imagenet2012')).eval_split == 'validation'  # pylint: disable=protected-access
  assert images._parse(_with(data)).dir == '/usr/share/datasets/fashion-mnist'  # pylint: disable=protected-access
  assert images._parse(_with(data, eval_split='train')).eval_split == 'train'  # pylint: disable=protected-access
  assert tuple(images.NAMES) == tuple(datasets.IMAGE_DATASETS)
  # The planner's shapes and classes are the table's (imagenet2012 and synthetic: the config's).
  for name, shape, classes in [('fashion_mnist_idx', (28, 28, 1), 10),
                               ('fashion_mnist', (28, 28, 1), 10), ('cifar10', (32, 32, 3), 10),
                               ('imagenet2012', (96, 96, 3), 1000),
                               ('synthetic', (8, 8, 1), 4)]:
    config = config_lib.base_config()
    config.data.update(name=name, image_size=96)
    info = builders.static_data_info(config)
    assert (info.image_shape, info.num_classes) == (shape, classes), name


def _with(section, **fields):
  copy = ml_collections.ConfigDict(section.to_dict())
  copy.update(fields)
  return copy


def test_the_mesh_rules_name_every_model_axis_in_a_fixed_order():
  from gwtn_jax.models import bert_layers  # pylint: disable=g-import-not-at-top
  from gwtn_jax.models import resnet  # pylint: disable=g-import-not-at-top
  names = [name for name, _ in config_lib.mesh_config('data').rules]
  assert names == ['batch', 'conv_in', 'conv_out', 'features', 'classes', 'vocab', 'embed',
                   'heads', 'kv', 'mlp', 'layers', 'act_length', 'act_embed', 'act_heads',
                   'act_kv', 'act_mlp', 'act_vocab', 'act_height', 'act_width', 'act_channels']
  used = (set(resnet.CONV_KERNEL_AXES + resnet.BN_AXES + resnet.HEAD_KERNEL_AXES
              + resnet.HEAD_BIAS_AXES + resnet.ACTIVATION_AXES + bert_layers.LOGICAL_AXES
              + bert_layers.ACTIVATION_AXES) - {None})
  assert used == set(names)
