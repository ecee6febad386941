"""From config to objects: the data, the thin and wide networks and each stage's method.

The one place that reads the config's model and stage fields, so the pipeline and the
benchmarks build exactly the same things.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gwtn_jax import config_lib
from gwtn_jax import data as data_lib
from gwtn_jax import models
from gwtn_jax.methods import base
from gwtn_jax.methods import imitation
from gwtn_jax.methods import tasks
from gwtn_jax.methods.distill import Distill
from gwtn_jax.methods.supervised import Supervised
from gwtn_jax.parallel import mesh as mesh_lib

ROLES = ('thin', 'wide')


@dataclasses.dataclass
class Downstream:
  """The downstream task of a BERT run: its data and the networks with a classifier."""
  data: Any            # gwtn_jax.data.ClassifyData
  task: tasks.Task
  thin: nn.Module
  wide: nn.Module


@dataclasses.dataclass
class Experiment:
  """What every stage of a run shares: devices, data, the task and the two networks."""
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]
  data: Any            # ImageData or TextData
  task: tasks.Task     # what the networks are trained to do
  thin: nn.Module
  wide: nn.Module
  downstream: Downstream | None = None

  def network(self, role: str) -> nn.Module:
    assert role in ROLES, role
    return self.thin if role == 'thin' else self.wide


def max_predictions(seq_len: int, mask_rate: float) -> int:
  """The most positions the MLM masking chooses in one sequence (see data/text.py)."""
  return max(1, math.ceil(mask_rate * (seq_len - 2)))


def build_experiment(config) -> Experiment:
  """The mesh, this process's data and the thin and wide networks of a (validated) config."""
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  if not config_lib.is_text(config):
    data = data_lib.build_image_data(config.data, **where)
    num_classes = config.model.num_classes or data.info.num_classes
    return Experiment(
        mesh=mesh, rules=rules, data=data,
        task=tasks.ImageClassification(data.info.image_shape),
        thin=build_model(config, 'thin', num_classes), wide=build_model(config, 'wide', num_classes))

  data = data_lib.build_text_data(config.data, **where)
  vocab, seq_len = data.info.vocab_size, data.info.seq_len
  exp = Experiment(
      mesh=mesh, rules=rules, data=data,
      task=tasks.MaskedLM(seq_len, max_predictions(seq_len, config.data.mask_rate)),
      thin=build_model(config, 'thin', 0, vocab), wide=build_model(config, 'wide', 0, vocab))
  if 'downstream' in config.stages:
    down = data_lib.build_classify_data(config.downstream, data, plays=config.data.plays,
                                        **where)
    classes = down.info.num_classes
    exp.downstream = Downstream(
        data=down, task=tasks.SequenceClassification(seq_len),
        thin=build_model(config, 'thin', classes, vocab),
        wide=build_model(config, 'wide', classes, vocab))
  return exp


def build_model(config, role: str, num_classes: int, vocab_size: int | None = None) -> nn.Module:
  """The thin (shipped) or wide (teacher) network of the config.

  Args:
    config: the run's config.
    role: 'thin' or 'wide'.
    num_classes: classifier outputs (a BERT: 0 for none, the MLM head is always there).
    vocab_size: a BERT's vocabulary (the data's).
  """
  assert role in ROLES, role
  width = config.thin_width if role == 'thin' else config.wide_width
  m = config.model
  if config_lib.is_text(config):
    return models.get_bert(
        m.name, vocab_size=vocab_size, width_multiplier=width, num_classes=num_classes,
        dtype=jnp.dtype(m.dtype), pre_layer_norm=m.pre_layer_norm, dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate, max_position=m.max_position,
        nsp_head=m.nsp_head, scan_layers=m.scan_layers, remat=m.remat)
  kwargs = dict(num_classes=num_classes, dtype=jnp.dtype(m.dtype), width_multiplier=width)
  if m.name.startswith('cifar_'):
    kwargs['stem_strides'] = m.stem_strides
  return models.get_model(m.name, **kwargs)


def build_method(config, stage: str, exp: Experiment) -> tuple[base.Method, nn.Module]:
  """The method a stage runs, and the network whose variables it produces."""
  thin, wide, task = exp.thin, exp.wide, exp.task
  if stage == 'wide':
    return Supervised(wide, task, config.wide.steps), wide
  if stage == 'imitate':
    return imitation.Imitation(thin, wide, task, config.imitate), thin
  num_points = len(imitation.imitated_points(thin, wide, config.imitate))
  steps = config_lib.stage_steps(config, stage, num_points)
  if stage == 'thin_scratch':
    return Supervised(thin, task, steps), thin
  if stage == 'probe':
    return Supervised(thin, task, steps, trainable_modules=thin.head_modules()), thin
  if stage in ('thin_kd', 'finetune'):
    return Distill(thin, wide, task, steps, alpha=config[stage].alpha,
                   temperature=config[stage].temperature), thin
  raise ValueError(f'stages: {stage!r} has no method here; choose from {config_lib.STAGES}')


def build_downstream_method(config, role: str, exp: Experiment) -> tuple[base.Method, nn.Module]:
  """Fine-tuning a pre-trained network (thin or wide) on the downstream task.

  It starts from the pre-trained encoder; the pooler and classifier start fresh and the MLM
  head is dropped.
  """
  down = exp.downstream
  model = down.thin if role == 'thin' else down.wide
  return Supervised(model, down.task, config.downstream.steps, partial_init=True), model
