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

from gwtn_jax.config import schema as config_lib
from gwtn_jax import data as data_lib
from gwtn_jax.data import datasets
from gwtn_jax.data import images
from gwtn_jax.data import wordpiece
from gwtn_jax import models
from gwtn_jax import storage
from gwtn_jax.methods import base
from gwtn_jax.methods import registry
from gwtn_jax.methods import tasks
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


def max_predictions(seq_len: int, mask_rate: float) -> int:
  """The most positions the MLM masking chooses in one sequence (see data/mlm.py)."""
  return max(1, math.ceil(mask_rate * (seq_len - 2)))


@dataclasses.dataclass(frozen=True)
class StaticInfo:
  """What the networks need to know of the data, known from the config alone."""
  image_shape: tuple[int, ...] = ()
  num_classes: int = 0
  vocab_size: int = 0
  seq_len: int = 0
  downstream_classes: int = 0


def static_data_info(config) -> StaticInfo:
  """The data's shapes from the config, without reading the data (for planning).

  A BERT's vocabulary is its `vocab.txt`'s size (local or gs://), or `data.vocab_size` when
  there is none or it is not on this machine (planning); the downstream task is taken as binary
  unless `model.num_classes` says otherwise (it barely changes the memory).
  """
  d = config.data
  if config_lib.is_text(config):
    vocab = d.vocab_size
    if d.vocab_file and storage.isfile(d.vocab_file):
      vocab = len(wordpiece.read_vocab(d.vocab_file))
    return StaticInfo(vocab_size=vocab, seq_len=d.seq_len,
                      downstream_classes=config.model.num_classes or 2)
  # The one table of image datasets; any other dataset's tfds builder info.
  shape, classes = datasets.image_shape_and_classes(d, images.tfds_image_info)
  return StaticInfo(image_shape=tuple(shape), num_classes=config.model.num_classes or classes)


@dataclasses.dataclass
class Networks:
  """The task and the networks of a config, built from the data's shapes alone."""
  task: tasks.Task
  thin: nn.Module
  wide: nn.Module
  downstream: Downstream | None = None  # its `data` None


def build_networks(config, info: StaticInfo) -> Networks:
  """The task and the thin and wide networks (and a BERT run's downstream ones) of a config.

  The one place they are built: the config's validation checks these very objects, and the
  experiment runs them.
  """
  if not config_lib.is_text(config):
    classes = config.model.num_classes or info.num_classes
    return Networks(task=tasks.ImageClassification(info.image_shape),
                    thin=build_model(config, 'thin', classes),
                    wide=build_model(config, 'wide', classes))
  vocab, seq_len = info.vocab_size, info.seq_len
  networks = Networks(
      task=tasks.MaskedLM(seq_len, max_predictions(seq_len, config.data.mask_rate)),
      thin=build_model(config, 'thin', 0, vocab), wide=build_model(config, 'wide', 0, vocab))
  if set(registry.per_network_stages()) & set(config_lib.stages_of(config)):
    classes = info.downstream_classes
    networks.downstream = Downstream(
        data=None, task=tasks.SequenceClassification(seq_len),
        thin=build_model(config, 'thin', classes, vocab),
        wide=build_model(config, 'wide', classes, vocab))
  return networks


def build_experiment(config, static: bool = False) -> Experiment:
  """The mesh, this process's data and the thin and wide networks of a (validated) config.

  Args:
    config: the run's config.
    static: build the networks and tasks from the config alone, without any data
      (`data` and `downstream.data` are None): for planning.
  """
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  data = down = None
  if static:
    info = static_data_info(config)
  elif not config_lib.is_text(config):
    data = data_lib.build_image_data(config.data, **where)
    info = StaticInfo(image_shape=tuple(data.info.image_shape),
                      num_classes=data.info.num_classes)
  else:
    data = data_lib.build_text_data(config.data, **where)
    if set(registry.per_network_stages()) & set(config_lib.stages_of(config)):
      down = data_lib.build_classify_data(config.downstream, data, plays=config.data.plays,
                                          **where)
    info = StaticInfo(vocab_size=data.info.vocab_size, seq_len=data.info.seq_len,
                      downstream_classes=0 if down is None else down.info.num_classes)
  networks = build_networks(config, info)
  downstream = networks.downstream
  if downstream is not None:
    downstream = dataclasses.replace(downstream, data=down)
  return Experiment(mesh=mesh, rules=rules, data=data, task=networks.task, thin=networks.thin,
                    wide=networks.wide, downstream=downstream)


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
  name = m.wide_name if role == 'wide' and m.wide_name else m.name
  if config_lib.is_text(config):
    depth = {'num_layers': m.num_layers} if m.num_layers else {}
    return models.get_bert(
        name, **depth, vocab_size=vocab_size, width_multiplier=width, num_classes=num_classes,
        dtype=jnp.dtype(m.dtype), pre_layer_norm=m.pre_layer_norm, dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate, max_position=m.max_position,
        nsp_head=m.nsp_head, scan_layers=m.scan_layers, remat=m.remat)
  kwargs = dict(num_classes=num_classes, dtype=jnp.dtype(m.dtype), width_multiplier=width)
  if name in models.MLP_PRESETS:
    if m.num_filters:
      kwargs['features'] = m.num_filters
    if m.num_layers:
      kwargs['depth'] = m.num_layers
    return models.get_model(name, **kwargs)
  if name.startswith('cifar_'):
    kwargs['stem_strides'] = m.stem_strides
  if m.num_filters:
    kwargs['num_filters'] = m.num_filters
  if not m.shortcuts:
    kwargs['shortcuts'] = False
  return models.get_model(name, **kwargs)


def build_method(config, stage: str, exp: Experiment, found: Any = None, role: str = 'thin'
                 ) -> tuple[base.Method, nn.Module]:
  """The method a stage runs, and the network whose variables it produces (its registry
  declaration's `build`).

  Args:
    config: the run's config.
    stage: a stage of the registry.
    exp: the experiment.
    found: the summary of the stage the stage's `arch_from` names (None when planning).
    role: a per-network stage: which network it fine-tunes ('thin' or 'wide').
  """
  declared = registry.get(stage)
  steps = config_lib.stage_steps(config, stage, exp.thin)
  ctx = registry.BuildContext(
      config=config, exp=exp, stage=stage, steps=steps,
      batch_size=config_lib.stage_value(config, stage, 'batch_size'), found=found, role=role)
  return declared.build(ctx)


def stage_methods(config, exp: Experiment):
  """Every stage's method, in order: yields (label, stage, method, task).

  A per-network stage gives one per network role ('<stage>_thin', '<stage>_wide'). For
  benchmarks, the planner and tests that run every step.
  """
  for stage in config_lib.stages_of(config):
    if registry.get(stage).per_network:
      for role in ROLES:
        method, _ = build_method(config, stage, exp, role=role)
        yield f'{stage}_{role}', stage, method, exp.downstream.task
    else:
      yield stage, stage, build_method(config, stage, exp)[0], exp.task
