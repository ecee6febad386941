"""Supervised training on labels: stage 1 (the wide network), the thin-from-scratch control,
and the linear probe that fits the imitated thin network's head on its frozen features."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gwtn_jax.methods import base


class Supervised(base.Method):
  """Cross-entropy on labels for a classifier.

  Args:
    model: the classifier.
    steps: the length of the stage.
    trainable_modules: top-level parameter names that train (None: all). With a subset the
      network runs in inference mode, so the frozen part's BatchNorm statistics stay as they
      are: that is the linear probe ('head' alone).
  """

  def __init__(self, model: nn.Module, steps: int, trainable_modules: Sequence[str] | None = None):
    self.model = model
    self.steps = steps
    self.trainable_modules = None if trainable_modules is None else tuple(trainable_modules)

  def phases(self):
    return [base.Phase('train', self.steps)]

  def init(self, rng, batch, init=None):
    return base.overlay(self.model.init(rng, batch['image'], train=False), init)

  def loss(self, phase, params, state, teacher, batch, rng):
    del phase, teacher
    logits, batch_stats = base.apply_classifier(
        self.model, {'params': params, **state}, batch['image'],
        train=self.trainable_modules is None, rng=rng)
    loss = jnp.mean(base.cross_entropy(logits, batch['label']))
    accuracy = base.batch_accuracy(logits, batch['label'])
    return loss, ({'batch_stats': batch_stats}, {'accuracy': accuracy})

  def trainable(self, phase, params):
    if self.trainable_modules is None:
      return None
    return {name: jax.tree.map(lambda _, n=name: n in self.trainable_modules, sub)
            for name, sub in params.items()}

  def eval_metrics(self, phase, variables, teacher, batch):
    logits = self.model.apply(variables, batch['image'], train=False)
    return base.classification_sums(logits, batch['label'], batch['mask'])
