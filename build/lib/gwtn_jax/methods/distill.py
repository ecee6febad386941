"""Knowledge distillation (Hinton et al.): the KD-only control and GWTN's stage 3.

loss = (1 - alpha) * task loss + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)),
the teacher run in inference mode and never differentiated. For a BERT the task loss is the
MLM loss and the KL is taken between the vocabulary distributions at the masked positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks as tasks_lib
from gwtn_jax.methods.supervised import Supervised


class Distill(Supervised):
  """Supervised training of `model` plus KD from `teacher_model` (variables come per step)."""

  def __init__(self, model: nn.Module, teacher_model: nn.Module, task: tasks_lib.Task,
               steps: int, alpha: float, temperature: float):
    super().__init__(model, task, steps)
    self.teacher_model = teacher_model
    self.alpha = alpha
    self.temperature = temperature

  def loss(self, phase, params, state, teacher, batch, rng):
    del phase
    logits, state = self._outputs(params, state, batch, rng)
    teacher_logits, _ = self.task.outputs(self.teacher_model, teacher, batch, train=False)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    task_loss, metrics = self.task.loss(logits, batch)
    kd = self.task.kd(logits, teacher_logits, batch, self.temperature)
    loss = (1.0 - self.alpha) * task_loss + self.alpha * kd
    return loss, (state, dict(metrics, task_loss=task_loss, kd=kd))


def _build_kd(ctx: registry.BuildContext):
  cfg = ctx.config[ctx.stage]
  return Distill(ctx.exp.thin, ctx.exp.wide, ctx.exp.task, ctx.steps, alpha=cfg.alpha,
                 temperature=cfg.temperature), ctx.exp.thin


# The baseline every method is compared with: the thin network with KD alone, as long as
# GWTN's stages 2 + 3.
registry.stage(name='thin_kd', order=20, build=_build_kd, teacher=True, thin_init=True,
               steps_as=registry.BUDGET_ROLES, report='thin_kd', downstream=True,
               color='tab:orange')
registry.method('kd', 10, ('thin_kd',))
