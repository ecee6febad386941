"""From config to objects: the thin and wide networks and each stage's method.

The one place that reads the config's model and stage fields, so the pipeline and the
benchmarks build exactly the same things.
"""

from __future__ import annotations

import jax.numpy as jnp

from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax.methods import base
from gwtn_jax.methods.distill import Distill
from gwtn_jax.methods.imitation import Imitation
from gwtn_jax.methods.supervised import Supervised

ROLES = ('thin', 'wide')


def build_model(config, role: str, num_classes: int):
  """The thin (shipped) or wide (teacher) network of the config."""
  assert role in ROLES, role
  kwargs = dict(num_classes=num_classes, dtype=jnp.dtype(config.model.dtype),
                width_multiplier=config.thin_width if role == 'thin' else config.wide_width)
  if config.model.name.startswith('cifar_'):
    kwargs['stem_strides'] = config.model.stem_strides
  return models.get_model(config.model.name, **kwargs)


def build_method(config, stage: str, thin, wide) -> tuple[base.Method, object]:
  """The method a stage runs, and the network whose variables it produces."""
  if stage == 'wide':
    return Supervised(wide, config.wide.steps), wide
  if stage == 'imitate':
    return Imitation(thin, wide, config.imitate), thin
  num_points = len(Imitation(thin, wide, config.imitate).points)
  steps = config_lib.stage_steps(config, stage, num_points)
  if stage == 'thin_scratch':
    return Supervised(thin, steps), thin
  if stage == 'probe':
    return Supervised(thin, steps, trainable_modules=('head',)), thin
  if stage in ('thin_kd', 'finetune'):
    return Distill(thin, wide, steps, alpha=config[stage].alpha,
                   temperature=config[stage].temperature), thin
  raise ValueError(f'stages: {stage!r} is unknown; choose from {config_lib.STAGES}')
