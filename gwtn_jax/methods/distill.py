"""Knowledge distillation (Hinton et al.): the KD-only control and GWTN's stage 3.

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)),
the teacher run in inference mode and never differentiated.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gwtn_jax.methods import base
from gwtn_jax.methods.supervised import Supervised


class Distill(Supervised):
  """Supervised training of `model` plus KD from `teacher_model` (variables come per step)."""

  def __init__(self, model: nn.Module, teacher_model: nn.Module, steps: int, alpha: float,
               temperature: float):
    super().__init__(model, steps)
    self.teacher_model = teacher_model
    self.alpha = alpha
    self.temperature = temperature

  def loss(self, phase, params, state, teacher, batch, rng):
    del phase
    logits, batch_stats = base.apply_classifier(
        self.model, {'params': params, **state}, batch['image'], train=True, rng=rng)
    teacher_logits = jax.lax.stop_gradient(
        self.teacher_model.apply(teacher, batch['image'], train=False))
    ce = jnp.mean(base.cross_entropy(logits, batch['label']))
    kd = jnp.mean(base.kd_loss(logits, teacher_logits, self.temperature))
    loss = (1.0 - self.alpha) * ce + self.alpha * kd
    accuracy = base.batch_accuracy(logits, batch['label'])
    return loss, ({'batch_stats': batch_stats}, {'accuracy': accuracy, 'ce': ce, 'kd': kd})
