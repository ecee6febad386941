"""The bad-input contract, row by row: one line on stderr, exit status 2, no traceback, within
30 seconds, and nothing already written changed.

Every row is a real command line of `python -m gwtn_jax.main` or `python -m gwtn_jax.plan`, run
through the command's own `app.run` and flag parser (`tests/bad_inputs_driver.py` runs a
command's rows in one process, so JAX is imported once per command, not once per row). A row
may first write files (a workdir of an earlier run, a broken config file, a vocabulary); they
are hashed before and after. A new field or file joins the contract by one row in `ROWS`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_config
from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax.config import workdir as workdir_lib
from gwtn_jax.data import idx as idx_lib
from test_data import make_idx_folder

pytestmark = pytest.mark.xdist_group('bad_inputs')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = '--config=tests/tiny_config.py'
FMNIST = TINY + ':fmnist'
BERT = TINY + ':bert'
DEADLINE_S = 30


@dataclasses.dataclass(frozen=True)
class Row:
  """One bad input: the command line (`{dir}` is the row's own folder) and the line expected.

  Attributes:
    id: the test id.
    argv: the arguments (after the program).
    expect: a substring of the one error line.
    setup: writes the row's files into its folder before the run (None: nothing).
    command: 'gwtn_jax.main' or 'gwtn_jax.plan'.
  """
  id: str
  argv: tuple[str, ...]
  expect: str
  setup: Callable[[str], None] | None = None
  command: str = 'gwtn_jax.main'


def _write(path: str, text: str | bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(text.encode() if isinstance(text, str) else text)


def _config_json() -> str:
  return tiny_config.get_config('fmnist').to_json_best_effort(indent=1, sort_keys=True)


def _trained(folder: str, config_json: bool = True, result: str = '{"steps": 4}') -> None:
  """A workdir as a finished run leaves it, for the checks that read it before anything else:
  its config.json and a finished stage's record (the checks never open the checkpoints)."""
  wd = os.path.join(folder, 'wd')
  if config_json:
    _write(os.path.join(wd, 'config.json'), _config_json())
  _write(os.path.join(wd, 'stages', 'wide', 'result.json'), result)
  _write(os.path.join(wd, 'stages', 'wide', 'checkpoints', '4', 'x'), 'state')


def _file(name: str, text: str | bytes):
  return lambda folder: _write(os.path.join(folder, name), text)


def _wide(**fields) -> tuple[str, ...]:
  return tuple(f'--config.wide.optimizer.{k}={v}' for k, v in fields.items())


WD = '--workdir={dir}/wd'
KD_ONLY = '--config.stages=("thin_kd",)'


def _idx(folder: str, damage: str) -> None:
  """A small IDX folder (tests/test_data.py's), then one file damaged."""
  root = make_idx_folder(os.path.join(folder, 'idx'), n_train=40, n_test=20, hw=(28, 28),
                         bad_label_at=7 if damage == 'label' else None)
  images = os.path.join(root, idx_lib.IDX_FILES[('train', 'images')] + '.gz')
  with open(images, 'rb') as f:
    whole = f.read()
  if damage == 'truncated':
    _write(images, whole[:len(whole) // 2])
  elif damage == 'not_gzip':
    _write(images, b'plain bytes named .gz')


def _stage(folder: str, width: float = 1.0, damage: str = '') -> None:
  """A finished stage folder of the tiny fmnist ResNet at `width` (its network zeros), as a
  teacher_dir; `damage`: 'metadata' removes the checkpoint's metadata, 'unfinished' the
  result."""
  model = models.get_model('cifar_resnet8', num_classes=10, width_multiplier=width,
                           stem_strides=2)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 28, 28, 1)))
  variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                           nn.meta.unbox({c: shapes[c] for c in ('params', 'batch_stats')}))
  stage = os.path.join(folder, 'teacher')
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(stage, 'final'), variables)
  if damage == 'metadata':
    os.remove(os.path.join(stage, 'final', '_METADATA'))
  if damage != 'unfinished':
    _write(os.path.join(stage, 'result.json'), '{"steps": 4}')


TEACHER = '--config.teacher_dir={dir}/teacher'

ROWS = [
    # 1. A wrong result reported as a right one.
    Row('stages_without_config_json', (FMNIST, WD, '--config.wide_width=2'), 'but no config.json',
        setup=lambda d: _trained(d, config_json=False)),
    Row('changed_config_in_trained_workdir', (FMNIST, WD, '--config.wide_width=2'),
        'was started with another config', setup=_trained),
    Row('teacher_dir_with_wide_stage', (FMNIST, WD, '--config.teacher_dir={dir}',
                                        '--config.stages=("wide","thin_kd")'),
        'teacher_dir would be ignored'),
    Row('adam_field_with_sgd', (FMNIST, WD, *_wide(b2=0.98)),
        "wide.optimizer.b2=0.98 has no effect with wide.optimizer.name='sgd'"),
    Row('sgd_field_with_adamw', (FMNIST, WD, *_wide(name='adamw', nesterov=True)),
        "wide.optimizer.nesterov=True has no effect with wide.optimizer.name='adamw'"),
    Row('step_field_with_cosine', (FMNIST, WD, *_wide(decay_factor=0.5)),
        "decay_factor=0.5 has no effect with wide.optimizer.schedule='cosine'"),
    Row('image_size_without_imagenet', (FMNIST, WD, '--config.data.image_size=128'),
        'data.image_size=128 has no effect'),
    Row('synthetic_field_with_real_data', (FMNIST, WD, '--config.data.synthetic_num_classes=7'),
        'data.synthetic_num_classes=7 has no effect'),
    Row('bert_field_on_a_resnet', (FMNIST, WD, '--config.model.nsp_head=True'),
        'model.nsp_head=True has no effect on a ResNet'),
    Row('resnet_field_on_a_bert', (BERT, WD, '--config.model.num_filters=8'),
        "model.num_filters=8 has no effect on a BERT"),
    Row('one_shot_field_with_progressive', (FMNIST, WD, '--config.imitate.steps=50'),
        "imitate.steps=50 has no effect with imitate.schedule='progressive'"),
    Row('progressive_field_with_one_shot', (FMNIST, WD, '--config.imitate.schedule=one_shot',
                                            '--config.imitate.freeze_lower=True'),
        'imitate.freeze_lower=True has no effect'),
    # 2. Values that cannot work.
    Row('adamw_negative_eps', (FMNIST, WD, *_wide(name='adamw', eps=-1e-8)),
        'wide.optimizer.eps=-1e-08 must be > 0'),
    Row('negative_grad_clip', (FMNIST, WD, *_wide(grad_clip_norm=-1.0)),
        'wide.optimizer.grad_clip_norm=-1.0 must be >= 0'),
    Row('infinite_learning_rate', (FMNIST, WD, *_wide(learning_rate='inf')),
        'wide.optimizer.learning_rate=inf must be finite'),
    Row('nan_temperature', (FMNIST, WD, '--config.thin_kd.temperature=nan'),
        'thin_kd.temperature=nan must be finite'),
    Row('warmup_longer_than_stage', (FMNIST, WD, *_wide(warmup_steps=5)),
        'wide.optimizer.warmup_steps=5 is longer than the stage (4 steps)'),
    Row('warmup_longer_than_a_phase', (FMNIST, WD, '--config.imitate.optimizer.warmup_steps=3'),
        'imitate.optimizer.warmup_steps=3 is longer than a phase'),
    Row('adamw_b2_above_one', (FMNIST, WD, *_wide(name='adamw', b2=1.5)),
        'wide.optimizer.b2=1.5 must be in [0, 1)'),
    Row('negative_final_lr_fraction', (FMNIST, WD, *_wide(final_lr_fraction=-0.1)),
        'final_lr_fraction=-0.1 must be in [0, 1]'),
    Row('zero_decay_factor', (FMNIST, WD, *_wide(schedule='step', decay_factor=0.0)),
        'decay_factor=0.0 must be in (0, 1]'),
    Row('point_weights_all_zero', (FMNIST, WD, '--config.imitate.point_weights=(0.,0.,0.,0.)'),
        'are all zero'),
    Row('width_that_cannot_fit', (FMNIST, WD, '--config.wide_width=1000'),
        'wide_width=1000 gives the wide network'),
    Row('negative_eval_every_of_a_stage_not_run', (FMNIST, WD, '--config.lit.eval_every=-5'),
        'lit.eval_every=-5 must be an integer >= 0'),
    Row('negative_num_devices', (FMNIST, WD, '--config.mesh.num_devices=-1'),
        'mesh.num_devices=-1 must be an integer >= 0'),
    Row('processes_without_coordinator', (FMNIST, WD, '--num_processes=2', '--process_id=1'),
        'without --coordinator_address'),
    Row('negative_seed', (FMNIST, WD, '--config.seeds=(-1,)'), 'seeds=(-1,) must be'),
    Row('negative_wide_seed', (FMNIST, WD, '--config.seed=-3'), 'seed=-3 must be an integer >= 0'),
    Row('fewer_classes_than_the_data', (FMNIST, WD, '--config.model.num_classes=3'),
        'model.num_classes=3 is below the 10 classes'),
    # 4. Data broken in the middle: found at start-up.
    Row('idx_truncated_gz', (FMNIST, WD, '--config.data.dir={dir}/idx'),
        'truncated or corrupt', setup=lambda d: _idx(d, 'truncated')),
    Row('idx_not_gzip', (FMNIST, WD, '--config.data.dir={dir}/idx'), 'not a readable gzip file',
        setup=lambda d: _idx(d, 'not_gzip')),
    Row('idx_label_out_of_range', (FMNIST, WD, '--config.data.dir={dir}/idx'),
        'example 7 has label 12, outside [0, 10)', setup=lambda d: _idx(d, 'label')),
    # 5. Teacher folders that are not what they claim.
    Row('teacher_is_a_thin_stage', (FMNIST, WD, KD_ONLY, TEACHER), 'is it a thin stage',
        setup=lambda d: _stage(d, width=0.5)),
    Row('teacher_of_another_architecture', (FMNIST, WD, KD_ONLY, TEACHER,
                                            '--config.model.wide_name=cifar_resnet20'),
        'holds another architecture', setup=_stage),
    Row('teacher_final_truncated', (FMNIST, WD, KD_ONLY, TEACHER), 'network holds no arrays',
        setup=lambda d: _stage(d, damage='metadata')),
    Row('teacher_unfinished', (FMNIST, WD, KD_ONLY, TEACHER), 'no result.json there',
        setup=lambda d: _stage(d, damage='unfinished')),
    # 3. Tracebacks where a line is owed.
    Row('config_syntax_error', ('--config={dir}/c.py', WD), 'c.py:2: SyntaxError',
        setup=_file('c.py', 'def get_config():\n  return (\n')),
    Row('config_import_error', ('--config={dir}/c.py', WD), 'c.py:1: ModuleNotFoundError',
        setup=_file('c.py', 'import no_such_module\n')),
    Row('config_that_raises', ('--config={dir}/c.py', WD), "c.py:2: RuntimeError: boom",
        setup=_file('c.py', 'def get_config():\n  raise RuntimeError("boom")\n')),
    Row('config_file_missing', ('--config={dir}/none.py', WD), 'no such file'),
    Row('config_unknown_field', (FMNIST, WD, '--config.modle.name=x'), "no such field 'modle'"),
    Row('config_unknown_preset', (TINY + ':nope', WD), "unknown argument 'nope'"),
    Row('extra_positional_word', (FMNIST, WD, 'now'), "unexpected argument 'now'"),
    Row('workdir_missing', (FMNIST,), '--workdir is required'),
    Row('empty_config_json', (FMNIST, WD), 'config.json (the config the workdir was started '
        'with) cannot be read: it is empty', setup=_file('wd/config.json', '')),
    Row('corrupt_config_json', (FMNIST, WD), 'cannot be read: not JSON',
        setup=_file('wd/config.json', '{"seed": ')),
    Row('corrupt_result_json', (FMNIST, WD), 'result.json (the record of the finished stage wide)',
        setup=lambda d: _trained(d, result='{"steps":')),
    Row('vocab_binary', (BERT, WD, '--config.data.vocab_file={dir}/vocab.txt'), 'is not UTF-8',
        setup=_file('vocab.txt', b'\x00\xff\xfe\x01')),
    Row('vocab_empty', (BERT, WD, '--config.data.vocab_file={dir}/vocab.txt'), 'is empty',
        setup=_file('vocab.txt', '')),
    Row('vocab_without_special_tokens', (BERT, WD, '--config.data.vocab_file={dir}/vocab.txt'),
        'lacks the tokens', setup=_file('vocab.txt', 'a\nb\nc\n')),
    Row('text_cache_is_a_file', (BERT, WD, '--config.data.cache_dir={dir}/cache'), 'is a file',
        setup=_file('cache', 'not a folder')),
    # The planner's command line.
    Row('plan_without_config', (), '--config is required', command='gwtn_jax.plan'),
    Row('plan_devices_not_a_number', (FMNIST, '--devices=abc'), 'flag --devices=abc',
        command='gwtn_jax.plan'),
    Row('plan_zero_devices', (FMNIST, '--devices=0'), '--devices=0 must be >= 1',
        command='gwtn_jax.plan'),
    Row('plan_unknown_field', (FMNIST, '--config.nope=1'), "no such field 'nope'",
        command='gwtn_jax.plan'),
    Row('plan_unknown_preset', (TINY + ':nope', '--devices=2'), "unknown argument 'nope'",
        command='gwtn_jax.plan'),
    Row('plan_extra_word', (FMNIST, 'x'), "unexpected argument 'x'", command='gwtn_jax.plan'),
]


def _snapshot(folder: str) -> dict[str, str]:
  """path -> hash of every file under `folder` (the probe a check writes is gone after it)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
  """Runs every row (one driver process per command) and returns {id: (row, result, before,
  after)}."""
  root = str(tmp_path_factory.mktemp('bad_inputs'))
  before, plans = {}, {}
  for row in ROWS:
    folder = os.path.join(root, row.id)
    os.makedirs(folder)
    if row.setup:
      row.setup(folder)
    before[row.id] = _snapshot(folder)
    plans.setdefault(row.command, []).append(
        {'id': row.id, 'argv': [a.replace('{dir}', folder) for a in row.argv]})
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join(
      [REPO, os.path.join(REPO, 'tests'), os.environ.get('PYTHONPATH', '')]))
  results = {}
  for command, rows in plans.items():
    rows_file, out_file = os.path.join(root, f'{command}.rows.json'), os.path.join(
        root, f'{command}.out.json')
    with open(rows_file, 'w') as f:
      json.dump(rows, f)
    done = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'bad_inputs_driver.py'),
                           command, rows_file, out_file], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out_file) as f:
      results.update(json.load(f))
  return {row.id: (row, results[row.id], before[row.id],
                   _snapshot(os.path.join(root, row.id))) for row in ROWS}


@pytest.mark.parametrize('row_id', [row.id for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(outcomes, row_id):
  row, result, before, after = outcomes[row_id]
  lines = [l for l in result['stderr'].splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith('error: ')]
  assert not result['traceback'], result['stderr']
  assert result['status'] == 2, result['stderr']
  assert len(errors) == 1 and len(lines) <= 2, result['stderr']
  assert row.expect in errors[0], errors[0]
  assert result['seconds'] < DEADLINE_S, result['seconds']
  assert after == before  # nothing written changed (nor was anything added)


def test_every_config_field_a_row_sets_exists():
  # A row that set a field its config lacks would test the unknown-field path by accident.
  for row in ROWS:
    preset = [a.split(':', 1)[1] if ':' in a else '' for a in row.argv
              if a.startswith(TINY)]
    if not preset or row.id.endswith(('unknown_field', 'unknown_preset')):
      continue
    config = tiny_config.get_config(preset[0])
    for arg in row.argv:
      if arg.startswith('--config.'):
        node = config
        for part in arg[len('--config.'):].split('=')[0].split('.'):
          assert part in node, (row.id, arg)
          node = node[part]


def test_a_teacher_of_the_configs_wide_network_is_accepted(tmp_path):
  # The control of the teacher rows: the same folder at the config's width passes the check.
  _stage(str(tmp_path))
  config = tiny_config.get_config('fmnist')
  config.stages = ('thin_kd',)
  config.teacher_dir = str(tmp_path / 'teacher')
  config_lib.validate(config, None)
  config.wide_width = 2.0
  with pytest.raises(config_lib.ConfigError, match='is it a thin stage, or another width'):
    config_lib.validate(config, None)
  # The planner reads no teacher (it sizes a config on a machine without the files).
  config_lib.validate(config, None, data=False)


def test_a_workdir_where_nothing_trained_takes_a_new_config(tmp_path):
  # A run refused after it wrote config.json (e.g. a data file found broken) left nothing
  # trained: the corrected rerun is not refused as a changed config.
  wd = tmp_path / 'wd'
  old = tiny_config.get_config('fmnist')
  _write(str(wd / 'config.json'), old.to_json_best_effort())
  _write(str(wd / 'stages' / 'wide' / 'checkpoints' / '.keep'), '')  # a stage folder, no step
  new = tiny_config.get_config('fmnist')
  new.data.dir = str(tmp_path / 'fixed')
  workdir_lib.check_workdir_config(new, str(wd))
  # Once a stage holds a checkpoint step, the same change is refused.
  os.remove(wd / 'stages' / 'wide' / 'checkpoints' / '.keep')
  _write(str(wd / 'stages' / 'wide' / 'checkpoints' / '2' / 'x'), 'state')
  with pytest.raises(config_lib.ConfigError, match=r'was started with another config: data.dir'):
    workdir_lib.check_workdir_config(new, str(wd))
  assert json.loads((wd / 'config.json').read_text()) == json.loads(old.to_json_best_effort())


def test_a_config_written_before_a_default_moved_still_matches(tmp_path):
  # A workdir started before the schema gained synthetic_seed, when data.dir's default was the
  # Debian folder rather than '' (the dataset's own): the same run today is not "changed".
  config = tiny_config.get_config('fmnist')
  config.data.dir = ''
  old = json.loads(config.to_json_best_effort())
  old['data']['dir'] = '/usr/share/datasets/fashion-mnist'
  old['data']['eval_split'] = 'test'
  del old['data']['synthetic_seed']
  wd = tmp_path / 'wd'
  _write(str(wd / 'config.json'), json.dumps(old))
  _write(str(wd / 'stages' / 'wide' / 'result.json'), '{"steps": 4}')
  workdir_lib.check_workdir_config(config, str(wd))
  config.data.synthetic_seed = 3  # a real change still is one
  with pytest.raises(config_lib.ConfigError, match=r'data.synthetic_seed \(0 -> 3\)'):
    workdir_lib.check_workdir_config(config, str(wd))
