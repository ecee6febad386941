"""The adjoined network inside a plain ResNet's variables: its own norms, sliced kernels, masks.

The plain `gwtn_jax.models.resnet.ResNet` knows nothing of Adjoined Networks. AN and DAN keep
one variable tree: the big network's variables, plus a twin of every norm for the adjoined
network, beside it and named with `SMALL_SUFFIX` (`stem_bn_small`,
`stage1_block1_layers/bn1_small`, ...). From that tree:

* `read` gives the variables of a plain ResNet of smaller (or equal) widths: every norm is its
  twin, every other tensor the first entries of the shared one (a real slice, so that the small
  network costs the small FLOPs, and differentiable, so that its gradients reach the shared
  kernels). AN's small network, and its export, are that plain ResNet.
* `MaskedBatchNorm` is the norm class that multiplies its output by a mask looked up by its own
  parameter path: DAN runs the big network with it (and its twins), the masks those of the
  width groups each norm writes (`widths.norm_masks`).
* `write` stores the batch statistics a plain forward updated back into the twins.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from gwtn_jax.models import resnet

SMALL_SUFFIX = '_small'  # the adjoined network's own norms: `{norm}_small`


class MaskedBatchNorm(nn.BatchNorm):
  """nn.BatchNorm (same variables) whose output is multiplied by the mask of its path.

  Attributes:
    masks: norm parameter path ('stage1_block1_layers/bn1') -> [features] mask; a norm
      without one is left as it is.
  """
  masks: Any = None

  def __call__(self, x, *args, **kwargs):
    y = super().__call__(x, *args, **kwargs)
    mask = (self.masks or {}).get('/'.join(self.path))
    return y if mask is None else y * mask.astype(y.dtype)


def masked(model: resnet.ResNet, masks: Mapping[str, jax.Array]) -> resnet.ResNet:
  """`model` with every norm named in `masks` (path -> mask) multiplied by its mask."""
  return model.clone(norm=functools.partial(MaskedBatchNorm, masks=dict(masks)))


def _twin(path: tuple[str, ...]) -> tuple[str, ...]:
  """The twin of a norm variable: (..., 'bn1', 'scale') -> (..., 'bn1_small', 'scale')."""
  return path[:-2] + (path[-2] + SMALL_SUFFIX, path[-1])


@functools.lru_cache(maxsize=None)
def _shapes(model: resnet.ResNet, channels: int) -> tuple[dict, frozenset]:
  """{(collection,) + path: shape} of a plain model's variables, and its norms' module paths."""
  image = jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32)
  shapes = traverse_util.flatten_dict(nn.meta.unbox(jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), image)))
  shapes = {path: leaf.shape for path, leaf in shapes.items()
            if path[0] in ('params', 'batch_stats')}
  norms = frozenset(path[1:-1] for path in shapes if path[0] == 'batch_stats')
  return shapes, norms


def read(model: resnet.ResNet, variables: Mapping[str, Any]) -> dict[str, Any]:
  """The variables of the plain `model` (a width plan within the big one's), from the tree.

  Args:
    model: the plain ResNet to run: the big network (DAN's masked path) or one of smaller
      widths (AN's small network).
    variables: the adjoined tree ('params' and 'batch_stats'; others are ignored).

  Returns:
    'params' and 'batch_stats' of `model`: norms from their twins, the rest sliced.

  Raises:
    ValueError: variables without the twins (no adjoined network).
  """
  variables = nn.meta.unbox(variables)
  flat = traverse_util.flatten_dict({c: variables[c] for c in ('params', 'batch_stats')})
  shapes, norms = _shapes(model, flat['params', 'stem_conv', 'kernel'].shape[2])
  out = {}
  for path, shape in shapes.items():
    source = _twin(path) if path[1:-1] in norms else path
    if source not in flat:
      raise ValueError(f'the variables lack {"/".join(source)}: they have no adjoined '
                       'network')
    value = flat[source]
    if tuple(value.shape) != tuple(shape):
      value = value[tuple(slice(0, n) for n in shape)]
    out[path] = value
  return traverse_util.unflatten_dict(out)


def write(stats: Mapping[str, Any], updated: Mapping[str, Any]) -> dict[str, Any]:
  """`stats` (the tree's batch_stats) with the twins set to a plain forward's `updated`."""
  flat = traverse_util.flatten_dict(dict(stats))
  for path, value in traverse_util.flatten_dict(dict(updated)).items():
    flat[_twin(path)] = value
  return traverse_util.unflatten_dict(flat)


def twins(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The norms of a plain model's fresh variables, renamed as twins: what AN's init adds."""
  out = {}
  norms = {path[:-1] for path in traverse_util.flatten_dict(dict(variables['batch_stats']))}
  for collection in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(dict(variables[collection]))
    out[collection] = traverse_util.unflatten_dict(
        {_twin(path): value for path, value in flat.items() if path[:-1] in norms})
  return out


def big(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The tree without the twins: the plain big network's variables."""
  def strip(tree):
    return {k: strip(v) if isinstance(v, Mapping) else v for k, v in tree.items()
            if not k.endswith(SMALL_SUFFIX)}
  return strip(variables)


def extract(model: resnet.ResNet, variables: Mapping[str, Any],
            small: resnet.WidthPlan) -> tuple[resnet.ResNet, dict[str, Any]]:
  """The adjoined small network as a plain ResNet of its own widths, and its variables.

  Raises:
    ValueError: a plan that does not fit, or variables without the twins.
  """
  model.check_widths(small, 'small', within=model.width_plan())
  small_model = model.clone(widths=small)
  return small_model, read(small_model, variables)
