"""LIT (Koratana et al., ICML 2019): depth compression by teacher-fed sections, phase 1.

Teacher and student are cut into the same number of sections: a ResNet's stages, or for a
BERT equal groups of layers (a 12-layer teacher and a 6-layer student in 6 sections: two
teacher layers for each student layer). In phase 1:

- student section i reads the teacher's section i-1 output (the teacher's stem output for the
  first), held constant: no gradient ever reaches the teacher, and a student section's
  gradient does not reach the sections below it;
- its output is compared with the teacher's section i output by the mean squared error (the
  intermediate-representation, IR, loss), summed over the sections;
- the student also runs end to end and is distilled from the teacher's logits,
  KD = (1 - alpha) * CE(labels) + alpha * T^2 * KL (alpha = 0.95, T = 6 in the official code);
- L = (beta * KD + (1 - beta) * IR) / 2, beta = 0.75.

The stem and the head are copied from the teacher and frozen. The student's end-to-end pass
starts from the teacher's stem output, computed in inference mode: a frozen copy of the stem
with the teacher's BatchNorm statistics gives exactly that tensor, so the stem's statistics
stay the teacher's. Phase 2 (KD alone, the whole student trained) is `Distill` with the same
alpha and T, in the stage after this one. At test time the student runs alone.

LIT compresses depth: the teacher's and the student's section outputs, stem and head have the
same shapes (a ResNet of the same widths and fewer blocks, a BERT of the same hidden size and
fewer layers); other pairs are refused with one line.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gwtn_jax.methods import base
from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks as tasks_lib
from gwtn_jax.methods.distill import Distill


def lit_sections(student: nn.Module, teacher: nn.Module, num_sections: int = 0
                 ) -> tuple[str, str, list[tuple[str, str]]]:
  """The stems and the sections' (student point, teacher point) ends, bottom to top.

  Args:
    student: the network trained.
    teacher: the network imitated.
    num_sections: 0 for the natural split (a ResNet's stages; a BERT: one section per student
      layer), else that many equal groups of blocks or layers.

  Returns:
    (student stem point, teacher stem point, [(student section end, teacher section end)]).

  Raises:
    ValueError: one line naming `lit.sections` when the networks do not split alike.
  """
  def blocks(model):  # the points after the stem that imitation compares
    return [p.name for p in model.points()[1:] if p.imitated]

  def stage_ends(model):
    return [p.name for p in model.points() if p.stage_end]

  s_blocks, t_blocks = blocks(student), blocks(teacher)
  stems = student.points()[0].name, teacher.points()[0].name
  if num_sections == 0:
    s_ends, t_ends = stage_ends(student), stage_ends(teacher)
    if not s_ends:  # a BERT: no stages
      num_sections = len(s_blocks)
    else:
      if len(s_ends) != len(t_ends):
        raise ValueError(f'lit.sections=0 cuts at stages, but the student has {len(s_ends)} '
                         f'stages and the teacher {len(t_ends)}')
      return stems + (list(zip(s_ends, t_ends)),)
  if num_sections < 1:
    raise ValueError(f'lit.sections={num_sections} must be >= 0')
  for who, b in (('student', s_blocks), ('teacher', t_blocks)):
    if len(b) % num_sections:
      raise ValueError(f'lit.sections={num_sections} does not divide the {who}\'s {len(b)} '
                       'blocks/layers into equal sections')
  s_step, t_step = len(s_blocks) // num_sections, len(t_blocks) // num_sections
  ends = [(s_blocks[(i + 1) * s_step - 1], t_blocks[(i + 1) * t_step - 1])
          for i in range(num_sections)]
  return stems + (ends,)


def checked_sections(student: nn.Module, teacher: nn.Module, num_sections: int = 0
                     ) -> tuple[str, str, list[tuple[str, str]]]:
  """`lit_sections`, checked: every section ends at the same width in both networks.

  Raises:
    ValueError: one line naming `lit.sections`, or the widths that differ.
  """
  stem, teacher_stem, sections = lit_sections(student, teacher, num_sections)
  s_ch = {p.name: p.channels for p in student.points()}
  t_ch = {p.name: p.channels for p in teacher.points()}
  for s, t in [(stem, teacher_stem)] + sections:
    if s_ch[s] != t_ch[t]:
      raise ValueError(
          f'lit: the student\'s {s} has {s_ch[s]} channels and the teacher\'s {t} {t_ch[t]}; '
          'LIT compresses depth, so section outputs must have equal widths (thin_width = '
          'wide_width, a deeper teacher through model.wide_name)')
  return stem, teacher_stem, sections


class Lit(base.Method):
  """LIT phase 1 (see the module docstring).

  Args:
    student: the (shallower) network trained.
    teacher: the teacher network; its variables arrive with every step (and as `init`, for
      the stem and head copies).
    task: how both networks read a batch.
    steps: steps of phase 1.
    config: the `lit` config (sections, beta, alpha, temperature).
  """

  def __init__(self, student: nn.Module, teacher: nn.Module, task: tasks_lib.Task, steps: int,
               config):
    self.student, self.teacher, self.task, self.steps = student, teacher, task, steps
    self.beta, self.alpha, self.temperature = config.beta, config.alpha, config.temperature
    self.stem, self.teacher_stem, self.sections = checked_sections(student, teacher,
                                                                   config.sections)
    self.frozen = student.points()[0].modules + tuple(student.head_modules())

  def phases(self):
    return [base.Phase('lit', self.steps)]

  def init(self, rng, batch, init=None):
    """A fresh student with the teacher's stem and head; `init` is the teacher's variables."""
    fresh = self.task.init(self.student, rng, batch)
    if init is None:
      return fresh
    copied = {coll: {m: init[coll][m] for m in self.frozen if m in init.get(coll, {})}
              for coll in fresh}
    try:
      return base.overlay(fresh, copied, partial=True)
    except ValueError as e:
      raise ValueError(f'lit: the teacher\'s stem or head does not fit the student ({e})') from None

  def trainable(self, phase, variables):
    del phase
    return base.modules_mask(variables, lambda name: name not in self.frozen)

  def _losses(self, params, state, teacher, batch, train, rng=None):
    """Per-example KD and IR losses, the metrics' parts, and the student's new state."""
    logits_t, out = self.task.forward(self.teacher, teacher, batch, train=False,
                                      mutable=['intermediates'], **self.task.head_kwargs(batch))
    logits_t = jax.lax.stop_gradient(logits_t)
    targets = jax.tree.map(jax.lax.stop_gradient,
                           self.teacher.read_points(out['intermediates']))
    variables = {'params': params, **state}
    positions = self.task.position_weights(batch)

    ir, parts = 0.0, {}
    start, start_t = self.stem, self.teacher_stem
    for i, (end, end_t) in enumerate(self.sections):
      y, _ = self.task.forward(self.student, variables, batch, train=train,
                               rng=None if rng is None else jax.random.fold_in(rng, i),
                               inputs=targets[start_t], start_after=start, stop_at=end)
      parts[f'ir/{end}'] = base.feature_mse(y, targets[end_t], positions)
      ir = ir + parts[f'ir/{end}']
      start, start_t = end, end_t

    # The student alone, from the (frozen, teacher-identical) stem up; its statistics are
    # the ones kept (the sections' passes update the same BatchNorms on other inputs).
    logits, new_state = self.task.forward(
        self.student, variables, batch, train=train,
        rng=None if rng is None else jax.random.fold_in(rng, len(self.sections)),
        inputs=targets[self.teacher_stem], start_after=self.stem,
        **self.task.head_kwargs(batch))
    return logits, logits_t, ir, parts, {**state, **new_state}

  def loss(self, phase, params, state, teacher, batch, rng):
    del phase
    logits, logits_t, ir, parts, new_state = self._losses(params, state, teacher, batch,
                                                          train=True, rng=rng)
    task_loss, metrics = self.task.loss(logits, batch)
    kd = self.task.kd(logits, logits_t, batch, self.temperature)
    kd_total = (1.0 - self.alpha) * task_loss + self.alpha * kd
    ir = jnp.mean(ir)
    loss = (self.beta * kd_total + (1.0 - self.beta) * ir) / 2.0
    metrics = dict(metrics, task_loss=task_loss, kd=kd, ir=ir,
                   **{k: jnp.mean(v) for k, v in parts.items()})
    return loss, (new_state, metrics)

  def eval_metrics(self, phase, variables, teacher, batch):
    """The student alone, as at test time."""
    del phase, teacher
    logits, _ = self.task.outputs(self.student, variables, batch, train=False)
    return self.task.eval_sums(logits, batch)


# ----------------------------------------------------------------------------------------------
# LIT's stages (gwtn_jax.methods.registry): phase 1 (lit) and phase 2 (KD, lit_finetune).


def _check_lit(config, thin: nn.Module, wide: nn.Module) -> None:
  cfg = config.lit
  if not 0 <= cfg.beta <= 1:
    raise ValueError(f'lit.beta={cfg.beta} must be in [0, 1]')
  if not (isinstance(cfg.sections, int) and cfg.sections >= 0):
    raise ValueError(f'lit.sections={cfg.sections!r} must be an integer >= 0 (0: the stages)')
  checked_sections(thin, wide, cfg.sections)


def _build_lit(ctx: registry.BuildContext):
  return Lit(ctx.exp.thin, ctx.exp.wide, ctx.exp.task, ctx.steps, ctx.config.lit), ctx.exp.thin


def _build_lit_finetune(ctx: registry.BuildContext):
  """LIT's phase 2: KD alone (its alpha and temperature), the whole student trained."""
  cfg = ctx.config.lit
  return Distill(ctx.exp.thin, ctx.exp.wide, ctx.exp.task, ctx.steps, alpha=cfg.alpha,
                 temperature=cfg.temperature), ctx.exp.thin


# Phase 1 starts from the teacher's variables (its stem and head are copied); with steps -1
# the phases are as long as GWTN's stages 2 and 3.
registry.stage(name='lit', order=60, build=_build_lit, teacher=True,
               init_from=registry.TEACHER, steps_as=('imitation',), check=_check_lit)
registry.stage(name='lit_finetune', order=70, build=_build_lit_finetune, teacher=True,
               init_from='lit', steps_as=('finetuning',), report='thin_lit',
               report_budget=('lit', 'lit_finetune'), downstream=True,
               claims=(('thin_kd', 'LIT claims better'),))
registry.method('lit', 20, ('lit', 'lit_finetune'))
