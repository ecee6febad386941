"""Layerwise imitation: the loss, the truncated phases, what trains, the layer map, the head."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import report
from gwtn_jax.methods import base
from gwtn_jax.methods import tasks
from gwtn_jax.methods.imitation import Imitation, imitated_points
from gwtn_jax.train import loop
from gwtn_jax.train import state as state_lib

SHAPE = (2, 8, 8, 1)
TASK = tasks.ImageClassification(SHAPE[1:])


def imitate_config(**overrides) -> ml_collections.ConfigDict:
  cfg = config_lib.base_config().imitate
  cfg.update(overrides)
  return cfg


def resnet(depth=8, width=1.0):
  return models.get_model(f'cifar_resnet{depth}', num_classes=4, width_multiplier=width)


@functools.lru_cache(maxsize=None)
def teacher_variables(depth=8, width=1.0):
  model = resnet(depth, width)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(3), jnp.zeros(SHAPE))
  # Non-trivial running statistics, so that eval mode is not the identity on BatchNorm.
  batch = jax.random.normal(jax.random.key(4), (16,) + SHAPE[1:])
  _, updates = model.apply(variables, batch, train=True, mutable=['batch_stats'])
  return jax.tree.map(np.asarray, nn.meta.unbox({'params': variables['params'], **updates}))


def batch(n=4, labels=True):
  images = jax.random.normal(jax.random.key(7), (n,) + SHAPE[1:])
  out = {'image': images, 'mask': jnp.ones((n,))}
  if labels:
    out['label'] = jnp.arange(n) % 4
  return out


def unboxed_init(method, init=None):
  variables = method.init(jax.random.key(0), batch(), init)
  return nn.meta.unbox(variables)


@pytest.mark.parametrize('inputs', ['own', 'teacher'])
@pytest.mark.parametrize('normalize', [False, True])
@pytest.mark.parametrize('granularity', ['block', 'stage'])
def test_exact_copy_has_zero_loss(inputs, normalize, granularity):
  wide = resnet()
  teacher = teacher_variables()
  method = Imitation(wide, wide, TASK, imitate_config(inputs=inputs, normalize=normalize,
                                                granularity=granularity))
  variables = unboxed_init(method, init=teacher)
  assert not method.up and not method.down  # equal widths: no projections
  for phase in method.phases() + [base.Phase('all', 1, key=None)]:
    sums = method.eval_metrics(phase, variables, teacher, batch())
    assert float(sums['imitation_loss']) == pytest.approx(0.0, abs=1e-10), phase
  # And a different thin network does not imitate perfectly: the test can fail.
  other = unboxed_init(method)
  sums = method.eval_metrics(method.phases()[-1], other, teacher, batch())
  assert float(sums['imitation_loss']) > 1e-3


def _compiled_step(method, phase, state, teacher, data):
  tx = optax.sgd(0.1)
  step = jax.jit(functools.partial(loop._train_step, method=method, phase=phase, tx=tx,  # pylint: disable=protected-access
                                   rng=jax.random.key(0)))
  return step.lower(state, data, teacher).compile(), step


def _state(method, tx):
  variables = unboxed_init(method)
  return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                              model_state={'batch_stats': variables['batch_stats']},
                              opt_state=tx.init(variables['params']))


def test_progressive_phases_compile_truncated_forwards():
  thin, wide = resnet(20, 0.5), resnet(20, 1.0)
  teacher = teacher_variables(20, 1.0)
  method = Imitation(thin, wide, TASK, imitate_config())
  state = _state(method, optax.sgd(0.1))
  flops = []
  for phase in method.phases():
    compiled, _ = _compiled_step(method, phase, state, teacher, batch())
    flops.append(report.cost_flops(compiled))
  assert len(flops) == 10  # stem + 9 blocks
  assert all(b > a for a, b in zip(flops, flops[1:])), flops
  # The first phase costs a small fraction of the last.
  assert flops[0] < 0.25 * flops[-1]


@pytest.mark.parametrize('freeze_lower', [False, True])
def test_only_what_a_phase_uses_moves(freeze_lower):
  thin, wide = resnet(8, 0.5), resnet(8, 1.0)
  teacher = teacher_variables()
  method = Imitation(thin, wide, TASK, imitate_config(freeze_lower=freeze_lower))
  tx = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9))
  state = _state(method, tx)
  phase = method.phases()[2]  # 'stage2_block1'
  assert phase.name == 'stage2_block1'
  step = jax.jit(functools.partial(loop._train_step, method=method, phase=phase, tx=tx,  # pylint: disable=protected-access
                                   rng=jax.random.key(0)))
  new_state, _ = step(state, batch(), teacher)
  moved = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))
  old, new = state.params['student'], new_state.params['student']
  changed = {name for name in old if any(moved(a, b) for a, b in
                                         zip(jax.tree.leaves(old[name]), jax.tree.leaves(new[name])))}
  below = {'stem_conv', 'stem_bn', 'stage1_block1_layers'}
  if freeze_lower:
    assert changed == {'stage2_block1_layers'}
  else:
    assert changed == below | {'stage2_block1_layers'}
  # The head and later blocks never move in this phase, weight decay notwithstanding.
  assert 'head' not in changed and 'stage3_block1_layers' not in changed
  # Only the current point's projection trains.
  up_changed = {p for p in state.params['up']
                if moved(state.params['up'][p], new_state.params['up'][p])}
  assert up_changed == {'stage2_block1'}
  # Frozen modules keep their BatchNorm statistics.
  stats_changed = {name for name in state.model_state['batch_stats']
                   if any(moved(a, b) for a, b in zip(
                       jax.tree.leaves(state.model_state['batch_stats'][name]),
                       jax.tree.leaves(new_state.model_state['batch_stats'][name])))}
  assert stats_changed == changed - {'stem_conv'}


def test_teacher_inputs_feed_the_teachers_features():
  """With teacher inputs, a thin block's output depends on the teacher, not on lower thin blocks."""
  thin, wide = resnet(8, 1.0), resnet(8, 1.0)
  teacher = teacher_variables()
  method = Imitation(thin, wide, TASK, imitate_config(inputs='teacher'))
  variables = unboxed_init(method)
  phase = method.phases()[2]
  before = method.eval_metrics(phase, variables, teacher, batch())['imitation_loss']
  # Changing the thin blocks below the current point changes nothing...
  scrambled = jax.tree.map(lambda x: x, variables)
  scrambled['params']['student']['stage1_block1_layers'] = jax.tree.map(
      lambda x: x + 1.0, scrambled['params']['student']['stage1_block1_layers'])
  after = method.eval_metrics(phase, scrambled, teacher, batch())['imitation_loss']
  assert float(after) == pytest.approx(float(before), rel=1e-6)
  # ...while with its own inputs it does.
  own = Imitation(thin, wide, TASK, imitate_config(inputs='own'))
  a = own.eval_metrics(phase, variables, teacher, batch())['imitation_loss']
  b = own.eval_metrics(phase, scrambled, teacher, batch())['imitation_loss']
  assert abs(float(a) - float(b)) > 1e-4


def test_teacher_inputs_with_different_widths_use_down_projections():
  thin, wide = resnet(8, 0.5), resnet(8, 1.0)
  method = Imitation(thin, wide, TASK, imitate_config(inputs='teacher'))
  assert set(method.down) == {'stem', 'stage1_block1', 'stage2_block1'}
  variables = unboxed_init(method)
  sums = method.eval_metrics(base.Phase('all', 1, key=None), variables, teacher_variables(), batch())
  assert np.isfinite(float(sums['imitation_loss']))


def test_layer_map_to_a_deeper_teacher():
  thin, wide = resnet(8, 0.5), resnet(20, 1.0)
  cfg = imitate_config(layer_map=(0, 3, 6, 9))
  points = imitated_points(thin, wide, cfg)
  assert points == [('stem', 'stem'), ('stage1_block1', 'stage1_block3'),
                    ('stage2_block1', 'stage2_block3'), ('stage3_block1', 'stage3_block3')]
  method = Imitation(thin, wide, TASK, cfg)
  sums = method.eval_metrics(method.phases()[-1], unboxed_init(method), teacher_variables(20, 1.0),
                             batch())
  assert np.isfinite(float(sums['imitation_loss']))


@pytest.mark.parametrize('layer_map, message', [
    ((0, 3, 6, 10), r'imitate.layer_map\[3\]=10 points outside the teacher'),
    ((0, 3, 6), 'imitate.layer_map has 3 entries'),
    ((0, 6, 3, 9), 'must not decrease'),
    ((), 'layer_map is empty'),
])
def test_bad_layer_maps(layer_map, message):
  with pytest.raises(ValueError, match=message):
    imitated_points(resnet(8, 0.5), resnet(20, 1.0), imitate_config(layer_map=layer_map))


def test_stage_granularity_trains_whole_stages():
  thin, wide = resnet(20, 0.5), resnet(20, 1.0)
  method = Imitation(thin, wide, TASK, imitate_config(granularity='stage'))
  assert [p.name for p in method.phases()] == ['stage1_block3', 'stage2_block3', 'stage3_block3']
  variables = unboxed_init(method)
  mask = method.trainable(method.phases()[1], variables)['params']
  on = {name for name, sub in mask['student'].items() if all(jax.tree.leaves(sub))}
  assert on == {'stem_conv', 'stem_bn'} | {f'stage{s}_block{b}_layers' for s in (1, 2) for b in (1, 2, 3)}


def test_exported_head_reads_projected_features_exactly():
  thin, wide = resnet(8, 0.5), resnet(8, 1.0)
  teacher = teacher_variables()
  method = Imitation(thin, wide, TASK, imitate_config())
  variables = unboxed_init(method)
  exported = method.export(variables, teacher)
  assert set(exported) == {'params', 'batch_stats'}
  assert 'up' not in exported['params'] and 'head' in exported['params']
  # thin logits == teacher head applied to the projected, pooled thin features.
  _, inter = thin.apply(exported, batch()['image'], train=False, mutable=['intermediates'])
  feats = inter['intermediates']['stage3_block1'][0]
  projected = jnp.mean(feats @ variables['params']['up']['stage3_block1'], axis=(1, 2))
  expected = projected @ teacher['params']['head']['kernel'] + teacher['params']['head']['bias']
  logits = thin.apply(exported, batch()['image'], train=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
