"""From config to objects: the thin and wide networks and each stage's method.

The one place that reads the config's model and stage fields, so the pipeline and the
benchmarks build exactly the same things.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax.data import build_image_data
from gwtn_jax.parallel import mesh as mesh_lib
from gwtn_jax.train import loop
from gwtn_jax.methods import base
from gwtn_jax.methods.distill import Distill
from gwtn_jax.methods import imitation
from gwtn_jax.methods.supervised import Supervised

ROLES = ('thin', 'wide')


@dataclasses.dataclass
class Experiment:
  """What every stage of a run shares: devices, data and the two networks."""
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]
  data: Any           # gwtn_jax.data.ImageData
  thin: models.ResNet
  wide: models.ResNet
  sample: dict[str, Any]  # a one-example batch: the shapes networks are initialized with


def build_experiment(config) -> Experiment:
  """The mesh, this process's data and the thin and wide networks of a (validated) config."""
  data = build_image_data(config.data, process_index=jax.process_index(),
                          process_count=jax.process_count())
  num_classes = config.model.num_classes or data.info.num_classes
  return Experiment(
      mesh=mesh_lib.make_mesh(config.mesh), rules=mesh_lib.rules_from_config(config.mesh.rules),
      data=data, thin=build_model(config, 'thin', num_classes),
      wide=build_model(config, 'wide', num_classes), sample=loop.sample_batch(data))


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
    return imitation.Imitation(thin, wide, config.imitate), thin
  num_points = len(imitation.imitated_points(thin, wide, config.imitate))
  steps = config_lib.stage_steps(config, stage, num_points)
  if stage == 'thin_scratch':
    return Supervised(thin, steps), thin
  if stage == 'probe':
    return Supervised(thin, steps, trainable_modules=('head',)), thin
  if stage in ('thin_kd', 'finetune'):
    return Distill(thin, wide, steps, alpha=config[stage].alpha,
                   temperature=config[stage].temperature), thin
  raise ValueError(f'stages: {stage!r} is unknown; choose from {config_lib.STAGES}')
