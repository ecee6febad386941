"""Schedules and optimizers from the config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gwtn_jax import config_lib
from gwtn_jax.train import optim


def opt(**overrides):
  return config_lib.optimizer_config(**overrides)


def test_warmup_then_cosine_to_zero():
  schedule = optim.make_schedule(opt(learning_rate=0.4, warmup_steps=10, schedule='cosine'), 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.2)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(60)) == pytest.approx(0.2, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_step_decay_at_fractions_of_the_length():
  config = opt(learning_rate=1.0, schedule='step', decay_boundaries=(0.5, 0.75), decay_factor=0.1,
               warmup_steps=0)
  schedule = optim.make_schedule(config, 100)
  assert [float(schedule(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
      [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_linear_decay_is_berts():
  schedule = optim.make_schedule(opt(learning_rate=1e-4, warmup_steps=10, schedule='linear'), 110)
  assert [float(schedule(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx(
      [0.0, 5e-5, 1e-4, 5e-5, 0.0], rel=1e-6, abs=1e-12)


def test_each_phase_has_the_whole_schedule_over_its_own_steps():
  schedule = optim.make_schedule(opt(learning_rate=0.1, schedule='cosine'), [10, 10, 10])
  for phase in range(3):
    assert float(schedule(10 * phase)) == pytest.approx(0.1)
    assert float(schedule(10 * phase + 5)) == pytest.approx(0.05, rel=1e-5)
  # Phases of different lengths: each restarts where it starts, and decays over its own length.
  schedule = optim.make_schedule(opt(learning_rate=0.1, schedule='cosine', warmup_steps=2),
                                 [10, 40])
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == 0.0  # each warms up again
  assert float(schedule(12)) == pytest.approx(0.1)
  assert float(schedule(2 + 4)) == pytest.approx(0.05, rel=1e-5)   # phase 1: half of its 8
  assert float(schedule(10 + 2 + 19)) == pytest.approx(0.05, rel=1e-5)  # phase 2: half of 38
  assert float(schedule(49)) < 0.001


def _one_update(config, params):
  tx, _ = optim.make_optimizer(config, 10)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize('name', ['sgd', 'adamw'])
def test_weight_decay_masks(name):
  params = {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones((3,))}
  base = dict(name=name, learning_rate=0.1, weight_decay=0.01, schedule='constant')
  everything = _one_update(opt(**base, weight_decay_on='all'), params)
  kernels = _one_update(opt(**base, weight_decay_on='kernels'), params)
  # With zero gradients only weight decay moves parameters.
  assert np.all(np.asarray(everything['bias']) < 0) and np.all(np.asarray(everything['kernel']) < 0)
  assert np.all(np.asarray(kernels['bias']) == 0) and np.all(np.asarray(kernels['kernel']) < 0)


def test_unknown_names():
  with pytest.raises(ValueError, match='optimizer.name'):
    optim.make_optimizer(opt(name='lars'), 10)
  with pytest.raises(ValueError, match='optimizer.schedule'):
    optim.make_schedule(opt(schedule='exponential'), 10)


def test_lamb_scales_each_layer_and_each_scanned_slice_by_its_trust_ratio():
  config = opt(name='lamb', learning_rate=0.1, schedule='constant', weight_decay=0.0)
  rng = np.random.default_rng(0)
  stacked_w = jnp.asarray(rng.standard_normal((2, 3, 4)) * np.array([1.0, 5.0])[:, None, None],
                          jnp.float32)
  grads_w = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
  bias, grad_b = jnp.ones((4,)) * 2.0, jnp.asarray(rng.standard_normal(4), jnp.float32)
  # Scanned: one leaf stacking two layers; unrolled: the same two layers as leaves.
  scanned = {'w': stacked_w, 'b': bias}
  tx, _ = optim.make_optimizer(config, 10, stacked={'w': True, 'b': False})
  updates, _ = tx.update({'w': grads_w, 'b': grad_b}, tx.init(scanned), scanned)
  unrolled = {'w0': stacked_w[0], 'w1': stacked_w[1], 'b': bias}
  tx2, _ = optim.make_optimizer(config, 10)
  expected, _ = tx2.update({'w0': grads_w[0], 'w1': grads_w[1], 'b': grad_b},
                           tx2.init(unrolled), unrolled)
  np.testing.assert_allclose(updates['w'][0], expected['w0'], rtol=1e-5)
  np.testing.assert_allclose(updates['w'][1], expected['w1'], rtol=1e-5)
  np.testing.assert_allclose(updates['b'], expected['b'], rtol=1e-5)
  # Each layer's step is lr * ||param||: Adam's first update is sign-like, then rescaled.
  for name in ('w0', 'w1', 'b'):
    np.testing.assert_allclose(np.linalg.norm(expected[name]),
                               0.1 * np.linalg.norm(unrolled[name]), rtol=1e-4)
  # Without the per-slice flags the two layers would share one ratio: another update.
  tx3, _ = optim.make_optimizer(config, 10)
  shared, _ = tx3.update({'w': grads_w, 'b': grad_b}, tx3.init(scanned), scanned)
  assert not np.allclose(shared['w'][0], updates['w'][0], rtol=1e-3)


def test_the_loop_finds_the_stacked_layers_of_a_scanned_bert():
  from gwtn_jax import models  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import tasks  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods.supervised import Supervised  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  task = tasks.MaskedLM(seq_len=8, max_predictions=2)
  for scan in (True, False):
    model = models.get_bert('bert_tiny', vocab_size=50, scan_layers=scan)
    method = Supervised(model, task, 4)
    flags = state_lib.stacked_layers(method, jax.random.key(0), task.sample_batch(), None)
    on = {jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(flags) if v}
    assert bool(on) == scan and all("['encoder']" in p for p in on), on
    tx, _ = loop.make_optimizer(method, opt(name='lamb', learning_rate=1e-3), jax.random.key(0),
                                task.sample_batch())
    assert tx is not None
