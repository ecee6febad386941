"""Supervised training on labels: stage 1 (the wide network), the thin-from-scratch control,
the linear probe that fits the imitated thin network's head on its frozen features, and the
downstream fine-tuning of a pre-trained BERT."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from gwtn_jax.methods import base
from gwtn_jax.methods import tasks as tasks_lib


class Supervised(base.Method):
  """The task's loss on labels (cross-entropy for classification, MLM for BERT).

  Args:
    model: the network.
    task: what it is trained to do (`gwtn_jax.methods.tasks`).
    steps: the length of the stage.
    trainable_modules: top-level parameter names that train (None: all). With a subset the
      network runs in inference mode, so the frozen part's BatchNorm statistics stay as they
      are and no dropout is drawn: that is the linear probe (`model.head_modules()`).
    partial_init: the variables a stage starts from may lack parameters the model has (a
      downstream head) and have some it lacks (the MLM head): take those it shares, start
      the others fresh.
  """

  def __init__(self, model: nn.Module, task: tasks_lib.Task, steps: int,
               trainable_modules: Sequence[str] | None = None, partial_init: bool = False):
    self.model, self.task, self.steps = model, task, steps
    self.trainable_modules = None if trainable_modules is None else tuple(trainable_modules)
    self.partial_init = partial_init
    self.curve_metric = task.curve_metric

  def phases(self):
    return [base.Phase('train', self.steps)]

  def init(self, rng, batch, init=None):
    return base.overlay(self.task.init(self.model, rng, batch), init, partial=self.partial_init)

  def _outputs(self, params, state, batch, rng):
    return self.task.outputs(self.model, {'params': params, **state}, batch,
                             train=self.trainable_modules is None, rng=rng)

  def loss(self, phase, params, state, teacher, batch, rng):
    del phase, teacher
    logits, state = self._outputs(params, state, batch, rng)
    loss, metrics = self.task.loss(logits, batch)
    return loss, (state, metrics)

  def trainable(self, phase, params):
    if self.trainable_modules is None:
      return None
    return {name: jax.tree.map(lambda _, n=name: n in self.trainable_modules, sub)
            for name, sub in params.items()}

  def eval_metrics(self, phase, variables, teacher, batch):
    logits, _ = self.task.outputs(self.model, variables, batch, train=False)
    return self.task.eval_sums(logits, batch)
