"""What a method is, for the generic loop: what it trains, its loss, what it freezes.

A method never builds a mesh, never loops and never saves: `gwtn_jax.train.loop` does that for
every method alike. A method holds Flax modules and config values, and gives the loop pure
functions of arrays that the loop jits with shardings:

- `init(rng, batch, init)` -> the variables it trains, `{'params': ..., 'batch_stats': ...}`
  (trees of the method's own shape; `params` may carry logical-axis boxes);
- `phases()` -> the stage's phases; each is compiled once (progressive imitation has one per
  imitated point, every other method has one);
- `loss(phase, params, state, teacher, batch, rng)` -> `(loss, (new_state, metrics))`;
- `trainable(phase, variables)` -> what trains in the phase, as a mask over the variables
  (`{'params': ..., 'batch_stats': ...}`, Python bools, or floats: a parameter's
  learning-rate multiplier, 0 frozen; None: everything trains). It is the one place a method
  freezes or slows anything: the loop holds the frozen parameters still (no gradient,
  no update, so neither weight decay nor momentum moves them) and keeps the frozen
  collections' old values (BatchNorm statistics) whatever the forward computed; a collection
  the mask leaves out (a step counter) is the loss's to update;
- `eval_metrics(phase, variables, teacher, batch)` -> sums over the batch, `count` included;
- `export(variables, teacher)` -> the variables of the plain network this method produces;
- `summary(variables)` -> anything else it found, as JSON (DAN: the widths), or None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Phase:
  """One compiled segment of a stage: `steps` steps of the same loss.

  Attributes:
    name: shown in logs and metrics, e.g. 'stage2_block1'.
    steps: how many steps the phase runs.
    key: a hashable value the method reads to specialize its loss (e.g. the point index).
  """
  name: str
  steps: int
  key: Hashable = None


class Method:
  """The base of every recipe; see the module docstring for the contract."""

  # The metric the report and the plot follow for this method's eval curve.
  curve_metric = 'accuracy'

  def phases(self) -> Sequence[Phase]:
    raise NotImplementedError

  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array], init: Variables | None) -> Variables:
    raise NotImplementedError

  def loss(self, phase: Phase, params: Any, state: Any, teacher: Variables | None,
           batch: Mapping[str, jax.Array], rng: jax.Array):
    raise NotImplementedError

  def trainable(self, phase: Phase, variables: Variables) -> Mapping[str, Any] | None:
    del phase, variables
    return None

  def eval_metrics(self, phase: Phase, variables: Variables, teacher: Variables | None,
                   batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    raise NotImplementedError

  def export(self, variables: Variables, teacher: Variables | None = None) -> Variables:
    del teacher
    return variables

  def summary(self, variables: Variables) -> Any:
    """What the stage found besides the network, JSON-able (kept in its result.json)."""
    del variables
    return None


# --- Pieces the methods share ------------------------------------------------------------------


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al.)."""
  t = temperature
  teacher_logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
  student_logp = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
  return (t * t) * kl


def feature_mse(student: jax.Array, target: jax.Array, positions: jax.Array | None = None
                ) -> jax.Array:
  """Per-example mean squared error between two feature tensors, in float32.

  Args:
    student: [B, ...] features.
    target: the same shape.
    positions: [B, T] weights of a sequence's positions (0 on padding, which is not
      compared), or None: every element counts.
  """
  err = jnp.square(student.astype(jnp.float32) - target.astype(jnp.float32))
  if positions is None:
    return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
  per_token = jnp.mean(err, axis=-1)
  return jnp.sum(per_token * positions, axis=-1) / jnp.maximum(jnp.sum(positions, axis=-1), 1.0)


def batch_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def classification_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums for eval: the loop adds them over batches and divides by `count`."""
  loss = cross_entropy(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'accuracy': jnp.sum(correct * mask), 'count': jnp.sum(mask)}


def modules_mask(variables: Variables, trains: Any) -> dict[str, Any]:
  """A `trainable` mask by top-level module: `trains(name)` -> bool, for every collection."""
  return {collection: {name: jax.tree.map(lambda _, on=bool(trains(name)): on, sub)
                       for name, sub in tree.items()}
          for collection, tree in variables.items()}


def _leaf_flag(m) -> tuple[bool, Any]:
  """A mask leaf as (is_scalar, value): a Python bool or float, or a numpy vector over the
  leaf's leading axis (the stacked layers of a scanned module: one entry per layer)."""
  if isinstance(m, (bool, np.bool_, int, float, np.floating)):
    return True, m
  return False, np.asarray(m)


def tree_where(mask: Any, tree: Any, other: Any) -> Any:
  """Takes leaves of `tree` where the mask trains (True, or a multiplier > 0) and of `other`
  elsewhere.

  A mask leaf is a Python bool or a learning-rate multiplier (float) for the whole leaf, or a
  numpy vector of them over the leaf's leading axis (a scanned module's stacked layers).
  """
  def where(m, a, b):
    scalar, m = _leaf_flag(m)
    if scalar:
      return a if m > 0 else b
    on = m > 0
    return jnp.where(on.reshape(on.shape + (1,) * (a.ndim - 1)), a, b)

  return jax.tree.map(where, mask, tree, other)


def tree_scale(mask: Any, updates: Any) -> Any:
  """Scales each update by its mask leaf (see `tree_where`): a bool keeps or zeroes it, a
  float is the leaf's learning-rate multiplier."""
  def scale(m, u):
    scalar, m = _leaf_flag(m)
    if scalar:
      if m is True or m == 1:
        return u
      return u * m if m else jnp.zeros_like(u)
    m = m.astype(np.float32)
    return u * jnp.asarray(m.reshape(m.shape + (1,) * (u.ndim - 1)), u.dtype)

  return jax.tree.map(scale, mask, updates)


def overlay(fresh: Variables, given: Variables | None, partial: bool = False) -> Variables:
  """Puts the values of `given` (plain arrays) into `fresh` (possibly logically boxed).

  A method initializes its variables fresh, so that they carry the model's logical-axis
  annotations, and then takes the values an earlier stage produced; under `jax.jit` the fresh
  values that are overwritten are never computed.

  Args:
    fresh: the method's fresh variables.
    given: an earlier stage's variables, or None.
    partial: take only the top-level modules `given` and `fresh` share (a pre-trained BERT
      into a classifier: the MLM head is dropped, the classifier starts fresh); otherwise
      the two must have the same modules.

  Raises:
    ValueError: a shape that does not fit, or (not partial) modules that differ.
  """
  if given is None:
    return fresh

  def put(path, box, value):
    value = nn.meta.unbox(value)
    if isinstance(box, nn.meta.AxisMetadata):
      box_shape = box.unbox().shape
      if box_shape != value.shape:
        raise ValueError(f'{jax.tree_util.keystr(path)}: shape {value.shape} does not fit {box_shape}')
      return box.replace_boxed(value)
    if box.shape != value.shape:
      raise ValueError(f'{jax.tree_util.keystr(path)}: shape {value.shape} does not fit {box.shape}')
    return value

  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  out = dict(fresh)
  for collection, values in given.items():
    if collection not in fresh and partial:
      continue
    target = fresh[collection]
    if partial:
      values = {k: v for k, v in values.items() if k in target}
      target = {k: target[k] for k in values}
    elif set(values) != set(target):
      raise ValueError(f'{collection}: the given modules {sorted(values)} differ from the '
                       f'network\'s {sorted(target)}')
    merged = jax.tree_util.tree_map_with_path(put, target, values, is_leaf=is_box)
    out[collection] = {**fresh[collection], **merged}
  return out
