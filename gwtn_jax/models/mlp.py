"""Deep fully connected networks that expose every layer's output: the theory's own regime.

GWTN's guarantee (Zhou et al., 2020) is a mean-field argument about deep networks trained
layer by layer; deep *thin plain* networks are where training end to end is hardest (Hanin and
Rolnick, 2018: the variance of the activations' length grows with the sum of 1/width over the
layers; FitNets, 2015: hints rescue deep thin plain networks). `MLP` is that family: `depth`
hidden layers of `features` units (times `width_multiplier`), each Dense then ReLU, no
residuals and no normalization, then a linear head. The image is flattened.

For imitation the model, like the ResNets and BERT:

* sows every hidden layer's output ('layer_1' .. 'layer_depth', 1-based) into
  ``intermediates``; :meth:`MLP.points` describes them (every `stage_every`-th layer ends a
  stage, for stage-granularity imitation and LIT's sections);
* can stop after a point (``stop_at``) and start after one (``start_after``).

He-normal initialization (fan in), as for ReLU networks; zero biases; the ResNets' head.

Parameter layout: ``params/dense_{i}/{kernel,bias}`` (i 1-based), ``params/head``.

This module knows nothing of training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from gwtn_jax.models import points as points_lib
from gwtn_jax.models import resnet
from gwtn_jax.models.points import Point
from gwtn_jax.parallel import axes as axes_lib

KERNEL_AXES = axes_lib.MLP_KERNEL_AXES
BIAS_AXES = axes_lib.MLP_BIAS_AXES

_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def layer_module_name(i: int) -> str:
  """The params key of hidden layer ``i`` (1-based)."""
  return f'dense_{i}'


class MLP(nn.Module):
  """A plain deep fully connected network with named imitation points.

  Attributes:
    depth: hidden layers.
    features: hidden width before the width multiplier.
    num_classes: logits.
    width_multiplier: GWTN widening: scales every hidden layer; must give an integer width.
    stage_every: every this many layers end a stage (and the last layer does).
    dtype: compute dtype; logits are float32 whatever it is.
    param_dtype: parameter dtype.
  """

  depth: int
  features: int
  num_classes: int
  width_multiplier: float = 1.0
  stage_every: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def hidden(self) -> int:
    """The hidden width after the multiplier (validates the configuration, no init).

    Raises:
      ValueError: one line naming the ``model.*`` field.
    """
    for field in ('depth', 'features', 'num_classes', 'stage_every'):
      value = getattr(self, field)
      if int(value) != value or value < 1:
        raise ValueError(f'model.{field}={value!r} must be a positive integer')
    width = self.features * self.width_multiplier
    if abs(width - round(width)) > 1e-6 or round(width) < 1:
      raise ValueError(f'model.width_multiplier={self.width_multiplier:g} gives {width:g} '
                       'hidden units (must be a positive integer)')
    return int(round(width))

  def points(self) -> tuple[Point, ...]:
    """'layer_1' .. 'layer_depth', bottom to top."""
    hidden = self.hidden()
    return tuple(
        Point(f'layer_{i}', hidden, (layer_module_name(i),),
              stage_end=i % self.stage_every == 0 or i == self.depth)
        for i in range(1, self.depth + 1))

  def read_points(self, intermediates) -> dict[str, Any]:
    """point name -> output, from the ``intermediates`` collection."""
    return {p.name: intermediates[p.name][0] for p in self.points() if p.name in intermediates}

  def head_modules(self) -> tuple[str, ...]:
    return ('head',)

  def input_map_merge_refusal(self) -> str:
    """Why `merge_input_map` is not exact here ('' : it is; every layer reads its input
    through its Dense alone)."""
    return ''

  def merge_input_map(self, params, point: str, matrix):
    """The params of the same network with the linear map `matrix` ([H, H]) applied to
    point `point`'s output, folded into the layer that reads it (exact: x @ M @ K = x @ K')."""
    points = self.points()
    i = points_lib.index(points, point, 'point')
    reader = layer_module_name(i + 2) if i + 1 < len(points) else 'head'
    layer = dict(params[reader])
    layer['kernel'] = matrix.astype(layer['kernel'].dtype) @ layer['kernel']
    return {**params, reader: layer}

  @nn.compact
  def __call__(self, x, train: bool = True, start_after: Optional[str] = None,
               stop_at: Optional[str] = None):
    """Runs the network, or the part of it between two points.

    Args:
      x: [B, ...] images (flattened here), or, with ``start_after``, that point's [B, H] output.
      train: unused (no dropout, no batch statistics); for the image task's interface.
      start_after: a point name; ``x`` is its output and only the layers after it run.
      stop_at: a point name; nothing after it runs and its output is returned.

    Returns:
      float32 [B, num_classes] logits, or the [B, hidden] output of ``stop_at``.
    """
    del train
    hidden = self.hidden()
    points = self.points()
    first, stop = points_lib.span(points, start_after, stop_at)
    x = jnp.asarray(x, self.dtype)
    if first == 0:
      x = x.reshape(x.shape[0], -1)
    elif x.ndim != 2:
      raise ValueError(f'start_after={start_after!r} expects [B, {hidden}], got {x.shape}')
    dense = functools.partial(
        nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(_kernel_init, KERNEL_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES))
    for index in range(first, len(points)):
      x = nn.relu(dense(hidden, name=points[index].modules[0])(x))
      self.sow('intermediates', points[index].name, x)
      if stop == index:
        return x
    x = resnet.classifier(self.num_classes, self.dtype, self.param_dtype)(x)
    return x.astype(jnp.float32)


def _preset(depth: int) -> Callable[..., MLP]:
  return functools.partial(MLP, depth=depth, features=128)


# mlp<depth>: `depth` hidden layers of 128 units (before the width multiplier).
MLP_PRESETS: dict[str, Callable[..., MLP]] = {
    f'mlp{d}': _preset(d) for d in (2, 4, 8, 16, 32, 64)}
