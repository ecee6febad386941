"""The BERT pipeline: MLM pre-training, imitation of the layers, KD on the MLM distribution, the
downstream task for every network, the report; the MLM task itself; the BERT configs."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import pipeline
from gwtn_jax import report as report_lib
from gwtn_jax.methods import base
from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks
from gwtn_jax.methods.imitation import Imitation
from gwtn_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKS = {'wide', 'thin_scratch', 'thin_kd', 'thin_imitated', 'thin_gwtn'}
FINE_TUNED = NETWORKS - {'thin_imitated'}


@pytest.fixture(scope='module')
def bert_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('bert'))
  return workdir, pipeline.run(tiny_config('bert'), workdir)


def test_every_bert_stage_and_the_report(bert_run):
  workdir, report = bert_run
  assert set(report) == NETWORKS | {report_lib.DOWNSTREAM_TASK}
  task = report[report_lib.DOWNSTREAM_TASK]
  assert task['name'] == 'verse_prose' and task['num_classes'] == 2
  assert task['chance_accuracy'] == pytest.approx(0.5)  # balanced classes
  for key in NETWORKS:
    row = report[key]
    expected = {'mlm_accuracy', 'mlm_loss'}
    if key in FINE_TUNED:
      expected |= {'downstream_accuracy', 'downstream_loss'}
      assert row['downstream_steps'] == 2, key
    assert set(row['metrics']) == expected, key
    assert 0 <= row['metrics']['mlm_accuracy'] <= 1 and np.isfinite(row['metrics']['mlm_loss'])
    assert row['flops'] > 0 and row['params'] > 0
  # Equal budgets: 3 points (embeddings, 2 layers) x 2 imitation steps + 2 fine-tuning steps.
  assert report['thin_gwtn']['train_steps'] == report['thin_scratch']['train_steps'] == 8
  # The wide BERT (hidden 128) against the thin one (hidden 64): same depth, more of all.
  assert report['wide']['params'] > report['thin_gwtn']['params']
  assert report['wide']['flops'] > report['thin_gwtn']['flops']
  # Pre-training moved the MLM loss below the uniform guess over the vocabulary.
  vocab = json.load(open(os.path.join(workdir, 'config.json')))['data']['vocab_size']
  assert report['wide']['metrics']['mlm_loss'] < np.log(vocab)
  for where in ('downstream/wide', 'seed0/downstream/thin_gwtn', 'seed0/downstream/thin_kd',
                'seed0/downstream/thin_scratch', 'seed0/imitate'):
    assert os.path.exists(os.path.join(workdir, 'stages', where, loop.RESULT_FILE)), where
  with open(os.path.join(workdir, 'report.md')) as f:
    md = f.read()
  assert 'downstream_accuracy' in md and 'chance (majority class) accuracy 0.5000' in md


def test_a_finished_bert_run_is_loaded_not_rerun(bert_run):
  workdir, report = bert_run
  path = os.path.join(workdir, 'stages', 'seed0', 'downstream', 'thin_gwtn', loop.RESULT_FILE)
  stamp = os.stat(path).st_mtime_ns
  assert pipeline.run(tiny_config('bert'), workdir) == report
  assert os.stat(path).st_mtime_ns == stamp


def test_downstream_starts_from_the_pretrained_encoder(bert_run):
  """The fine-tuned network's first step starts from stage 3's encoder, not a fresh one."""
  workdir, _ = bert_run
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  config = tiny_config('bert')
  exp = builders.build_experiment(config)
  gwtn = loop.load_stage_output(os.path.join(workdir, 'stages', 'seed0', 'finetune'), exp.thin,
                                exp.task, exp.mesh, exp.rules)
  method, _ = builders.build_method(config, 'downstream', exp, role='thin')
  variables = nn.meta.unbox(method.init(jax.random.key(0), exp.downstream.task.sample_batch(),
                                        gwtn))
  np.testing.assert_array_equal(variables['params']['embedder']['word']['embedding'],
                                gwtn['params']['embedder']['word']['embedding'])
  assert 'mlm_head' not in variables['params'] and 'classifier' in variables['params']


# --- The MLM task -------------------------------------------------------------------------------


def _mlm_batch(rng, b=3, t=16, vocab=50):
  k1, k2 = jax.random.split(rng)
  ids = jax.random.randint(k1, (b, t), 5, vocab)
  chosen = jax.random.uniform(k2, (b, t)) < 0.2
  chosen = chosen.at[:, 1].set(True)  # at least one per row
  return {'input_ids': ids, 'token_type_ids': jnp.zeros_like(ids),
          'attention_mask': jnp.ones_like(ids), 'mlm_labels': jnp.where(chosen, ids, -1),
          'mlm_weights': chosen.astype(jnp.float32), 'mask': jnp.ones((b,))}


def test_mlm_head_at_the_masked_positions_equals_the_full_head():
  model = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=0.5,
                         dropout_rate=0.0, attention_dropout_rate=0.0)
  batch = _mlm_batch(jax.random.key(0))
  task = tasks.MaskedLM(seq_len=16, max_predictions=16)
  variables = task.init(model, jax.random.key(1), batch)
  logits, _ = task.outputs(model, variables, batch, train=False)
  full = model.apply(variables, batch['input_ids'], head='mlm')
  loss, metrics = task.loss(logits, batch)
  # By hand: mean cross-entropy of the full head's logits over the chosen positions.
  logp = jax.nn.log_softmax(full)
  nll = -jnp.take_along_axis(logp, jnp.maximum(batch['mlm_labels'], 0)[..., None], -1)[..., 0]
  w = batch['mlm_weights']
  assert float(loss) == pytest.approx(float(jnp.sum(nll * w) / jnp.sum(w)), rel=1e-5)
  correct = (jnp.argmax(full, -1) == batch['mlm_labels']) * w
  assert float(metrics['mlm_accuracy']) == pytest.approx(float(jnp.sum(correct) / jnp.sum(w)))
  sums = task.eval_sums(logits, batch)
  assert float(sums['count']) == float(jnp.sum(w))
  assert float(sums['mlm_loss']) == pytest.approx(float(jnp.sum(nll * w)), rel=1e-5)
  # KD on the MLM distribution: zero against itself, positive against another network.
  assert float(task.kd(logits, logits, batch, 1.0)) == pytest.approx(0.0, abs=1e-6)
  other, _ = task.outputs(model, task.init(model, jax.random.key(2), batch), batch, train=False)
  assert float(task.kd(logits, other, batch, 1.0)) > 0


def test_scanned_bert_imitation_trains_only_the_current_layers():
  """Under nn.scan the layers share one stacked tree: the masks are per layer."""
  thin = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=0.5, scan_layers=True,
                         dropout_rate=0.0, attention_dropout_rate=0.0)
  wide = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=1.0, scan_layers=True,
                         dropout_rate=0.0, attention_dropout_rate=0.0)
  task = tasks.MaskedLM(seq_len=16, max_predictions=16)
  batch = _mlm_batch(jax.random.key(0))
  cfg = config_lib.base_config().imitate
  cfg.update(freeze_lower=True)
  method = Imitation(thin, wide, task, cfg)
  assert [p.name for p in method.phases()] == ['embeddings', 'layer_1', 'layer_2']
  params = nn.meta.unbox(method.init(jax.random.key(0), batch))['params']
  mask = method.trainable(method.phases()[1], {'params': params})['params']
  for leaf in jax.tree.leaves(mask['student']['encoder']):
    np.testing.assert_array_equal(leaf, [True, False])
  assert not any(jax.tree.leaves(mask['student']['embedder']))
  # Applied to a tree: slice 0 takes the new values, slice 1 keeps the old.
  kernel = params['student']['encoder']['mlp']['wi']['kernel']
  mixed = base.tree_where(np.array([True, False]), kernel + 1, kernel)
  np.testing.assert_array_equal(mixed[0], kernel[0] + 1)
  np.testing.assert_array_equal(mixed[1], kernel[1])
  teacher = nn.meta.unbox(task.init(wide, jax.random.key(3), batch))
  loss, (_, metrics) = method.loss(method.phases()[2], params, {}, teacher, batch, None)
  assert np.isfinite(float(loss)) and set(metrics) == {'mse/layer_2'}


def test_teacher_fed_bert_imitation_runs_each_layer_on_the_teacher_output():
  thin = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=0.5,
                         dropout_rate=0.0, attention_dropout_rate=0.0)
  wide = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=1.0,
                         dropout_rate=0.0, attention_dropout_rate=0.0)
  task = tasks.MaskedLM(seq_len=16, max_predictions=16)
  batch = _mlm_batch(jax.random.key(0))
  cfg = config_lib.base_config().imitate
  cfg.update(inputs='teacher')
  method = Imitation(thin, wide, task, cfg)
  variables = nn.meta.unbox(method.init(jax.random.key(0), batch))
  teacher = nn.meta.unbox(task.init(wide, jax.random.key(3), batch))
  params = variables['params']
  # Layer 2's loss by hand: the teacher's layer 1, projected down, through thin layer 2.
  _, inter = wide.apply(teacher, batch['input_ids'], stop_at='layer_2', mutable=['intermediates'])
  points = wide.read_points(inter['intermediates'])
  x = points['layer_1'] @ params['down']['layer_1']
  y = thin.apply({'params': params['student']}, x, start_after='layer_1', stop_at='layer_2')
  expected = jnp.mean(jnp.square(y @ params['up']['layer_2'] - points['layer_2']))
  loss, _ = method.loss(method.phases()[2], params, {}, teacher, batch, None)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)


# --- Configs ------------------------------------------------------------------------------------


def _refused(config, tmp_path, match):
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    config_lib.validate(config, str(tmp_path))
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('overrides, match', [
    ({'imitate.granularity': 'stage'}, r"imitate.granularity='stage' applies to ResNets"),
    ({'thin_width': 0.3}, r'thin_width=0.3 gives 38.4 hidden units'),
    ({'data.seq_len': 64}, r'data.seq_len=64 exceeds model.max_position=32'),
    ({'data.name': 'tfds', 'data.plays': (), 'data.tfds_name': 'no_such_text_dataset',
      'data.dir': '/nonexistent'},
     r"data.tfds_name='no_such_text_dataset'.*not prepared.*--config.data.name=shakespeare"),
    ({'downstream.name': 'sentiment'}, r"downstream.name='sentiment'"),
    ({'model.dropout_rate': 1.0}, r'model.dropout_rate=1.0 must be in \[0, 1\)'),
])
def test_bad_bert_configs_are_refused(overrides, match, tmp_path):
  _refused(tiny_config('bert', **overrides), tmp_path, match)


def test_downstream_needs_a_bert(tmp_path):
  config = tiny_config(stages=registry.methods()['gwtn'] + ('downstream',))
  _refused(config, tmp_path, r"'downstream' fine-tunes BERTs.*'cifar_resnet8' is not a BERT")


def _main(*args, timeout=120):
  return subprocess.run([sys.executable, '-m', 'gwtn_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_bert_base_without_its_data_says_how_to_get_it(tmp_path):
  done = _main('--config=configs/bert_base.py', f'--workdir={tmp_path}',
               f'--config.data.dir={tmp_path}/no_tfds')
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  assert 'tfds build wikipedia/20230601.en' in lines[0]
  assert '--config.data.name=shakespeare' in lines[0]


@pytest.mark.parametrize('name', ['configs/bert_base.py', 'configs/bert_base.py:smoke',
                                  'configs/bert_base.py:devices=256',
                                  'configs/shakespeare_bert.py',
                                  'configs/shakespeare_bert.py:smoke'])
def test_bert_configs_build(name):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path, _, arg = name.partition(':')
  module = config_flags.config_flags._LoadConfigModule('c', path)  # pylint: disable=protected-access
  config = module.get_config(arg)
  assert config_lib.is_text(config)
  assert 'downstream' in config_lib.stages_of(config)
  # Equal budgets: the controls get what imitation and stage 3 get.
  model = models.get_bert(config.model.name, vocab_size=100)
  points = model.num_layers + 1
  assert (config_lib.stage_steps(config, 'thin_scratch', model)
          == points * config.imitate.steps_per_point + config.finetune.steps)
  if arg == 'devices=256':
    assert config.batch_size == 8192
    assert config.batch_size * config.wide.steps >= 256 * 1_000_000
    # LAMB at the pod's batch: NVIDIA's 6e-3 at 65,536, by the square-root rule.
    for stage in ('wide', 'thin_scratch', 'thin_kd', 'finetune'):
      assert config[stage].optimizer.name == 'lamb', stage
    assert config.wide.optimizer.learning_rate == pytest.approx(6e-3 * (8192 / 65536) ** 0.5)
    assert config.wide.optimizer.warmup_steps == math.ceil(0.2843 * config.wide.steps)
  elif 'smoke' not in arg:
    assert config.wide.optimizer.name == 'adamw'
  if name == 'configs/bert_base.py':
    # BERT-Base thin, the wide one 4/3 as wide: hidden 1024, 16 heads, FFN 4096.
    wide = models.get_bert('bert_base', vocab_size=100, width_multiplier=config.wide_width)
    dims = wide.dims()
    assert (dims.hidden, dims.num_heads, dims.intermediate) == (1024, 16, 4096)
    assert config.wide.steps == 1_000_000 and config.batch_size == 256


def test_a_deeper_teacher_needs_and_takes_a_layer_map(tmp_path):
  """A 4-layer teacher (bert_mini) for a 2-layer student (bert_tiny): layer i -> 2i."""
  config = tiny_config('bert', **{'model.wide_name': 'bert_mini', 'wide_width': 1.0})
  _refused(config, tmp_path, r'imitate.layer_map is empty \(identity\) but the thin network has '
           r'3 points and the teacher 5')
  config.imitate.layer_map = (0, 2, 4)
  config_lib.validate(config, str(tmp_path))
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  thin = builders.build_model(config, 'thin', 0, vocab_size=300)
  wide = builders.build_model(config, 'wide', 0, vocab_size=300)
  assert (thin.num_layers, wide.num_layers) == (2, 4)
  method = Imitation(thin, wide, tasks.MaskedLM(32, 5), config.imitate)
  assert method.points == [('embeddings', 'embeddings'), ('layer_1', 'layer_2'),
                           ('layer_2', 'layer_4')]
  # Widths 64 -> 256: every point gets an up-projection for the loss.
  assert method.up == {p: (64, 256) for p in ('embeddings', 'layer_1', 'layer_2')}
