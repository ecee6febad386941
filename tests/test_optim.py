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
    optim.make_optimizer(opt(name='lamb'), 10)
  with pytest.raises(ValueError, match='optimizer.schedule'):
    optim.make_schedule(opt(schedule='exponential'), 10)
