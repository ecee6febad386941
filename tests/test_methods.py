"""Supervised, probe and distillation methods: their losses and what they train."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import one_train_step
from gwtn_jax import models
from gwtn_jax.methods import base
from gwtn_jax.methods import tasks
from gwtn_jax.methods.distill import Distill
from gwtn_jax.methods.supervised import Supervised


def test_kd_loss_is_zero_for_equal_logits_and_scales_with_t_squared():
  logits = jax.random.normal(jax.random.key(0), (5, 7))
  np.testing.assert_allclose(base.kd_loss(logits, logits, 4.0), 0.0, atol=1e-6)
  other = jax.random.normal(jax.random.key(1), (5, 7))
  # T^2 * KL(p_t || p_s) by hand.
  t = 2.0
  p_t = jax.nn.softmax(other / t)
  expected = t * t * jnp.sum(p_t * (jnp.log(p_t) - jax.nn.log_softmax(logits / t)), -1)
  np.testing.assert_allclose(base.kd_loss(logits, other, t), expected, rtol=1e-5)


TASK = tasks.ImageClassification((8, 8, 1))


@functools.lru_cache(maxsize=None)
def _setup():
  model = models.get_model('cifar_resnet8', num_classes=4, width_multiplier=0.5)
  teacher_model = models.get_model('cifar_resnet8', num_classes=4, width_multiplier=1.0)
  images = jax.random.normal(jax.random.key(2), (8, 8, 8, 1))
  teacher = nn.meta.unbox(teacher_model.init(jax.random.key(3), images, train=False))
  return model, teacher_model, teacher, {'image': images, 'label': jnp.arange(8) % 4}


@pytest.mark.parametrize('alpha', [0.0, 1.0])
def test_distill_ends_are_labels_only_and_kd_only(alpha):
  model, teacher_model, teacher, batch = _setup()
  method = Distill(model, teacher_model, TASK, steps=1, alpha=alpha, temperature=3.0)
  variables = nn.meta.unbox(method.init(jax.random.key(0), batch))
  state = {'batch_stats': variables['batch_stats']}
  loss, (_, metrics) = method.loss(method.phases()[0], variables['params'], state, teacher, batch,
                                   jax.random.key(0))
  assert float(loss) == pytest.approx(float(metrics['kd'] if alpha else metrics['task_loss']), rel=1e-6)


def test_probe_trains_only_the_head_and_keeps_statistics():
  model, _, _, batch = _setup()
  method = Supervised(model, TASK, steps=1, trainable_modules=('head',))
  variables = nn.meta.unbox(method.init(jax.random.key(0), batch))
  tx = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9))
  state, new, _ = one_train_step(method, variables, tx, batch)
  for name in state.params:
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params[name]),
                                                    jax.tree.leaves(new.params[name])))
    assert same == (name != 'head'), name
  for a, b in zip(jax.tree.leaves(state.model_state), jax.tree.leaves(new.model_state)):
    np.testing.assert_array_equal(a, b)
