"""LIT: teacher-fed sections, what phase 1 freezes, the loss's parts, and its errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import one_train_step
from conftest import tiny_config
from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import pipeline
from gwtn_jax.methods import base
from gwtn_jax.methods import lit
from gwtn_jax.methods import tasks

TASK = tasks.ImageClassification((8, 8, 1))


def _lit_config(**overrides):
  return ml_collections.ConfigDict(dict(dict(sections=0, beta=0.75, alpha=0.95, temperature=6.0),
                                        **overrides))


@functools.lru_cache(maxsize=None)
def _setup():
  """A cifar_resnet20 teacher (3 blocks a stage) and a cifar_resnet8 student (1 a stage)."""
  student = models.get_model('cifar_resnet8', num_classes=4, width_multiplier=0.5)
  teacher_model = models.get_model('cifar_resnet20', num_classes=4, width_multiplier=0.5)
  images = jax.random.normal(jax.random.key(2), (8, 8, 8, 1))
  teacher = nn.meta.unbox(TASK.init(teacher_model, jax.random.key(3), {'image': images}))
  # Non-trivial statistics, so that 'keeps the teacher's statistics' can fail.
  teacher['batch_stats'] = jax.tree.map(lambda x: x + 0.5, teacher['batch_stats'])
  method = lit.Lit(student, teacher_model, TASK, steps=1, config=_lit_config())
  batch = {'image': images, 'label': jnp.arange(8) % 4}
  variables = nn.meta.unbox(method.init(jax.random.key(0), batch, teacher))
  return method, teacher, variables, batch


def test_sections_are_the_stages_or_equal_groups():
  method, _, _, _ = _setup()
  assert method.stem == method.teacher_stem == 'stem'
  assert method.sections == [('stage1_block1', 'stage1_block3'), ('stage2_block1', 'stage2_block3'),
                             ('stage3_block1', 'stage3_block3')]
  bert = lambda layers: models.get_bert('bert_tiny', vocab_size=50, num_layers=layers)
  assert lit.lit_sections(bert(2), bert(4)) == ('embeddings', 'embeddings',
                                                [('layer_1', 'layer_2'), ('layer_2', 'layer_4')])
  assert lit.lit_sections(bert(2), bert(4), 1)[2] == [('layer_2', 'layer_4')]


def test_stem_and_head_are_the_teachers_and_do_not_move():
  method, teacher, variables, batch = _setup()
  for name in method.frozen:
    jax.tree.map(np.testing.assert_array_equal, variables['params'][name], teacher['params'][name])
  tx = optax.sgd(0.5, momentum=0.9)
  state, new, metrics = one_train_step(method, variables, tx, batch, teacher)
  assert np.isfinite(float(metrics['loss']))
  for name in state.params:
    moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params[name]),
                                                         jax.tree.leaves(new.params[name])))
    assert moved == (name not in method.frozen), name
  # The stem's BatchNorm keeps the teacher's statistics; the sections' statistics train.
  jax.tree.map(np.testing.assert_array_equal, new.model_state['batch_stats']['stem_bn'],
               teacher['batch_stats']['stem_bn'])
  assert not np.array_equal(new.model_state['batch_stats']['stage2_block1_layers']['bn1']['mean'],
                            state.model_state['batch_stats']['stage2_block1_layers']['bn1']['mean'])


def test_no_gradient_reaches_the_teacher():
  method, teacher, variables, batch = _setup()
  state = {'batch_stats': variables['batch_stats']}
  loss = lambda t: method.loss(method.phases()[0], variables['params'], state, t, batch,
                               jax.random.key(0))[0]
  grads = jax.grad(loss)(teacher)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_each_section_reads_the_teachers_tensor_and_the_loss_mixes_kd_and_ir():
  method, teacher, variables, batch = _setup()
  state = {'batch_stats': variables['batch_stats']}
  loss, (_, metrics) = method.loss(method.phases()[0], variables['params'], state, teacher, batch,
                                   jax.random.key(0))
  _, out = TASK.forward(method.teacher, teacher, batch, train=False, mutable=['intermediates'])
  t = method.teacher.read_points(out['intermediates'])
  # Section 2 by hand: the student's stage 2 on the teacher's stage-1 output.
  y, _ = TASK.forward(method.student, variables, batch, train=True, inputs=t['stage1_block3'],
                      start_after='stage1_block1', stop_at='stage2_block1')
  expected = jnp.mean(base.feature_mse(y, t['stage2_block3']))
  np.testing.assert_allclose(metrics['ir/stage2_block1'], expected, rtol=1e-5)
  # ... which is not what the student's own stage-1 output would give.
  own, _ = TASK.forward(method.student, variables, batch, train=True, stop_at='stage2_block1')
  assert abs(float(jnp.mean(base.feature_mse(own, t['stage2_block3']))) - float(expected)) > 1e-4
  ir = sum(metrics[f'ir/{s}'] for s, _ in method.sections)
  np.testing.assert_allclose(metrics['ir'], ir, rtol=1e-5)
  kd_total = 0.05 * metrics['task_loss'] + 0.95 * metrics['kd']
  np.testing.assert_allclose(loss, (0.75 * kd_total + 0.25 * ir) / 2, rtol=1e-5)


def test_bert_lit_one_real_step():
  """A 4-layer BERT teacher, a 2-layer student: one phase-1 step trains, the embeddings and
  the MLM head stay the teacher's."""
  seq = 16
  task = tasks.MaskedLM(seq, 3)
  student = models.get_bert('bert_tiny', vocab_size=60, num_layers=2, dropout_rate=0.0,
                            attention_dropout_rate=0.0)
  teacher_model = models.get_bert('bert_tiny', vocab_size=60, num_layers=4, dropout_rate=0.0,
                                  attention_dropout_rate=0.0)
  batch = task.sample_batch()
  rng = np.random.default_rng(0)
  batch = {k: np.repeat(v, 4, axis=0) for k, v in batch.items()}
  batch['input_ids'] = rng.integers(5, 60, batch['input_ids'].shape).astype(np.int32)
  batch['mlm_weights'][:, :3] = 1.0
  teacher = nn.meta.unbox(task.init(teacher_model, jax.random.key(1), batch))
  method = lit.Lit(student, teacher_model, task, steps=1, config=_lit_config())
  variables = nn.meta.unbox(method.init(jax.random.key(0), batch, teacher))
  tx = optax.adam(1e-2)
  state, new, metrics = one_train_step(method, variables, tx, batch, teacher)
  assert np.isfinite(float(metrics['loss'])) and float(metrics['ir']) > 0
  jax.tree.map(np.testing.assert_array_equal, new.params['embedder'], teacher['params']['embedder'])
  assert not np.array_equal(new.params['encoder_layer_1']['mlp']['wi']['kernel'],
                            state.params['encoder_layer_1']['mlp']['wi']['kernel'])


def test_lit_through_the_pipeline_and_the_report(tmp_path):
  config = tiny_config(method='lit', thin_width=1.0, wide_width=1.0)
  config.model.wide_name = 'cifar_resnet20'
  report = pipeline.run(config, str(tmp_path))
  assert set(report) == {'wide', 'thin_lit'}
  # Equal budget: LIT's two phases are as long as GWTN's stages 2 (4 points x 2) and 3 (2).
  assert report['thin_lit']['train_steps'] == 10
  assert report['thin_lit']['params'] < report['wide']['params']


@pytest.mark.parametrize('overrides, match', [
    (dict(method='nope'), r"method='nope' is unknown; choose one of \('gwtn', 'kd', 'lit'"),
    (dict(method='lit', **{'lit.sections': 2}),
     r"lit.sections=2 does not divide the student's 3 blocks/layers into equal sections"),
    (dict(method='lit'), r"lit: the student's stem has 8 channels and the teacher's stem 16"),
    (dict(method='lit', **{'lit.beta': 1.5}), r'lit.beta=1.5 must be in \[0, 1\]'),
    (dict(stages=('wide', 'lit_finetune')),
     r"stages: 'lit_finetune' starts from the output of 'lit', which is not in stages"),
])
def test_bad_lit_configs_are_refused_in_one_line(tmp_path, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    config_lib.validate(tiny_config(**overrides), str(tmp_path))
  assert '\n' not in str(error.value)


def test_bert_lit_through_the_pipeline_with_its_downstream_task(tmp_path):
  """A 4-layer teacher (bert_mini at a quarter: hidden 64), a 2-layer student (bert_tiny at a
  half: hidden 64), two sections; both then fine-tuned on the downstream task."""
  config = tiny_config('bert', method='lit', thin_width=0.5, wide_width=0.25)
  config.model.wide_name = 'bert_mini'
  report = pipeline.run(config, str(tmp_path))
  from gwtn_jax import report as report_lib  # pylint: disable=g-import-not-at-top
  rows = report_lib.networks(report)
  assert set(rows) == {'wide', 'thin_lit'}
  assert rows['thin_lit']['params'] < rows['wide']['params']
  for row in rows.values():
    assert {'mlm_accuracy', 'mlm_loss', 'downstream_accuracy'} <= set(row['metrics'])
  # As long as GWTN's stages 2 (3 points x 2 steps) and 3 (2 steps) would be.
  assert rows['thin_lit']['train_steps'] == 8
