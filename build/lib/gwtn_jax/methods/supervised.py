"""Supervised training on labels: stage 1 (the wide network), the thin-from-scratch control,
the linear probe that fits the imitated thin network's head on its frozen features, and the
downstream fine-tuning of a pre-trained BERT."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from gwtn_jax.methods import base
from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks as tasks_lib
from gwtn_jax.models import bert as bert_lib


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

  def trainable(self, phase, variables):
    if self.trainable_modules is None:
      return None
    return base.modules_mask(variables, lambda name: name in self.trainable_modules)

  def eval_metrics(self, phase, variables, teacher, batch):
    logits, _ = self.task.outputs(self.model, variables, batch, train=False)
    return self.task.eval_sums(logits, batch)


# ----------------------------------------------------------------------------------------------
# Stages (gwtn_jax.methods.registry).


def _build_wide(ctx: registry.BuildContext):
  return Supervised(ctx.exp.wide, ctx.exp.task, ctx.steps), ctx.exp.wide


def _build_scratch(ctx: registry.BuildContext):
  return Supervised(ctx.exp.thin, ctx.exp.task, ctx.steps), ctx.exp.thin


def _build_downstream(ctx: registry.BuildContext):
  """Fine-tuning a pre-trained network (thin or wide) on the downstream task.

  It starts from the pre-trained encoder; the pooler and classifier start fresh and the MLM
  head is dropped.
  """
  down = ctx.exp.downstream
  model = down.thin if ctx.role == 'thin' else down.wide
  return Supervised(model, down.task, ctx.steps, partial_init=True), model


def _check_downstream(config, thin, wide) -> None:
  del wide
  if not isinstance(thin, bert_lib.Bert):
    raise ValueError(f"stages: 'downstream' fine-tunes BERTs on a text task; model.name="
                     f'{config.model.name!r} is not a BERT')


# Stage 1: the wide network, every other stage's teacher, trained once.
registry.stage(name='wide', order=0, build=_build_wide, provides_teacher=True, role='wide',
               report='wide', downstream=True, color='black')
# The control of every thin method: the thin network from scratch, as long as GWTN's 2 + 3.
registry.stage(name='thin_scratch', order=10, build=_build_scratch, thin_init=True,
               steps_as=registry.BUDGET_ROLES, report='thin_scratch', downstream=True,
               color='tab:blue')
registry.method('scratch', 50, ('thin_scratch',))
# BERT only: every network of the run fine-tuned on the downstream task, equally long.
registry.stage(name='downstream', order=1000, build=_build_downstream, per_network=True,
               check=_check_downstream)
