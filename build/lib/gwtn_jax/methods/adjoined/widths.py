"""The widths of a ResNet as Adjoined Networks see them: groups, the AN rule, DAN's choices.

A ResNet's widths are not independent: a residual add needs one width per residual stream.
The *width groups* are the independent ones: 'stem'; 'stage{i}_stream', the residual stream
of a stage entered through a projection (one entered through an identity shortcut carries the
stem's width); and 'stage{i}_block{j}_inner', the inner width of a block. Every conv reads one
group (or the image) and writes one, and its norm writes the same group.

The AN masking rule, DAN's candidate widths and read-out, and DAN's expected-FLOPs count are
functions of these groups (the rules themselves: see `gwtn_jax.methods.adjoined`). No training
here, and nothing the plain ResNet needs.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gwtn_jax.models import resnet

MASK_THRESHOLD = 64  # a conv is masked iff its in and out channels both exceed this


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """One conv of a ResNet, for width rules and FLOPs counts.

  Attributes:
    name: its parameter path, e.g. 'stage2_block1_layers/conv1'.
    norm: the parameter path of the norm that follows it, e.g. 'stage2_block1_layers/bn1'.
    kernel: k of its k x k kernel.
    reduction: how many times smaller than the image its output is on each side: it is
      ceil(H / reduction) x ceil(W / reduction) (every conv and pool pads k // 2).
    in_group: the width group of its input (None: the image).
    out_group: the width group of its output (and of its norm's).
    shortcut: whether it is a projection shortcut.
  """
  name: str
  norm: str
  kernel: int
  reduction: int
  in_group: Optional[str]
  out_group: str
  shortcut: bool = False


def _stream_group(model: resnet.ResNet, stage: int) -> str:
  # A stage entered through an identity shortcut carries the stem's channels.
  return f'stage{stage + 1}_stream' if model.projections()[stage] else 'stem'


def width_groups(model: resnet.ResNet) -> dict[str, int]:
  """group name -> its width (under `model.width_plan()`), bottom to top."""
  plan = model.width_plan()
  groups = {'stem': plan.stem}
  k = 0
  for i, n in enumerate(model.stage_sizes):
    groups.setdefault(_stream_group(model, i), plan.out[i])
    for j in range(n):
      groups[f'stage{i + 1}_block{j + 1}_inner'] = plan.inner[k]
      k += 1
  return groups


def widths_from_groups(model: resnet.ResNet, groups: Mapping[str, int]) -> resnet.WidthPlan:
  """The WidthPlan with the given groups' widths, and the model's elsewhere.

  Raises:
    ValueError: an unknown group.
  """
  widths = width_groups(model)
  unknown = set(groups) - set(widths)
  if unknown:
    raise ValueError(f'unknown width groups {sorted(unknown)}; the groups are: '
                     f'{", ".join(widths)}')
  widths.update(groups)
  inner = tuple(widths[f'stage{i + 1}_block{j + 1}_inner']
                for i, n in enumerate(model.stage_sizes) for j in range(n))
  out = tuple(widths[_stream_group(model, i)] for i in range(len(model.stage_sizes)))
  return resnet.WidthPlan(stem=widths['stem'], inner=inner, out=out)


def conv_layers(model: resnet.ResNet) -> tuple[ConvLayer, ...]:
  """Every conv of the network, bottom to top, with its norm, width groups and output size."""
  imagenet = model.stem == 'imagenet'
  stem_stride = 2 if imagenet else model.stem_strides
  layers = [ConvLayer('stem_conv', 'stem_bn', 7 if imagenet else 3, stem_stride, None, 'stem')]
  reduction = stem_stride * (2 if imagenet else 1)  # the max pool
  previous = 'stem'
  bottleneck = model.block_cls.expansion != 1
  projections = model.projections()
  for i, n in enumerate(model.stage_sizes):
    stream = _stream_group(model, i)
    for j in range(n):
      prefix = resnet.block_module_name(f'stage{i + 1}_block{j + 1}') + '/'
      inner = f'stage{i + 1}_block{j + 1}_inner'
      stride = 2 if i > 0 and j == 0 else 1

      def conv(name, kernel, at, in_group, out_group, shortcut=False):
        norm = name.replace('conv', 'bn')  # conv1 -> bn1, proj_conv -> proj_bn
        return ConvLayer(prefix + name, prefix + norm, kernel, at, in_group, out_group,
                         shortcut)

      if bottleneck:
        layers += [conv('conv1', 1, reduction, previous, inner),
                   conv('conv2', 3, reduction * stride, inner, inner),
                   conv('conv3', 1, reduction * stride, inner, stream)]
      else:
        layers += [conv('conv1', 3, reduction * stride, previous, inner),
                   conv('conv2', 3, reduction * stride, inner, stream)]
      if j == 0 and projections[i]:
        layers.append(conv('proj_conv', 1, reduction * stride, previous, stream, True))
      reduction *= stride
      previous = stream
  return tuple(layers)


def adjoined_groups(model: resnet.ResNet, threshold: int = MASK_THRESHOLD) -> tuple[str, ...]:
  """The width groups the AN rule reduces, bottom to top.

  A group is reduced iff every conv that writes it, projection shortcuts aside, has more than
  `threshold` input and output channels (the paper's 64; a config field, since on a CIFAR-size
  network 64 leaves almost nothing masked).
  """
  widths = width_groups(model)
  reduced: dict[str, bool] = {}
  for conv in conv_layers(model):
    if conv.shortcut:
      continue
    masked = (conv.in_group is not None and widths[conv.in_group] > threshold
              and widths[conv.out_group] > threshold)
    reduced[conv.out_group] = reduced.get(conv.out_group, True) and masked
  return tuple(group for group in widths if reduced.get(group, False))


def adjoined_widths(model: resnet.ResNet, cf: int, threshold: int = MASK_THRESHOLD
                    ) -> resnet.WidthPlan:
  """The small network of AN: every reduced group at width / cf, every other at its width.

  Args:
    model: the big network.
    cf: the compression factor.
    threshold: see `adjoined_groups`.

  Raises:
    ValueError: one line, if cf is not an integer >= 1 or does not divide a reduced width.
  """
  if isinstance(cf, bool) or not isinstance(cf, numbers.Integral) or cf < 1:
    raise ValueError(f'cf={cf!r} must be an integer >= 1')
  widths = width_groups(model)
  small = {}
  for group in adjoined_groups(model, threshold):
    if widths[group] % cf:
      raise ValueError(f'cf={cf} does not divide the {widths[group]} channels of {group}')
    small[group] = widths[group] // cf
  return widths_from_groups(model, small)


def dan_choices(model: resnet.ResNet, threshold: int = MASK_THRESHOLD
                ) -> dict[str, tuple[int, ...]]:
  """DAN's candidate widths: group -> (C, C/2, C/4), those that are integers."""
  widths = width_groups(model)
  return {group: tuple(widths[group] // d for d in (1, 2, 4) if widths[group] % d == 0)
          for group in adjoined_groups(model, threshold)}


def dan_widths(model: resnet.ResNet, logits: Mapping[str, Any],
               threshold: int = MASK_THRESHOLD) -> resnet.WidthPlan:
  """DAN's read-out: the argmax width of every group (groups without logits: full width).

  Args:
    model: the big network.
    logits: group -> logits over its `dan_choices` (concrete arrays).

  Raises:
    ValueError: unknown groups, or logits of the wrong length.
  """
  choices = dan_choices(model, threshold)
  chosen = {}
  for group, values in logits.items():
    values = np.asarray(values)
    if group not in choices or values.shape != (len(choices[group]),):
      sizes = {g: len(c) for g, c in choices.items()}
      raise ValueError(f'logits[{group!r}] of shape {values.shape} does not fit the searched '
                       f'groups (group: number of choices) {sizes}')
    chosen[group] = choices[group][int(np.argmax(values))]
  return widths_from_groups(model, chosen)


def channel_mask(choices: Sequence[int], weights: jax.Array) -> jax.Array:
  """m[c] = sum_j weights[j] * 1[c < choices[j]], over the group's max(choices) channels."""
  keep = jnp.arange(max(choices))[:, None] < jnp.asarray(choices)[None, :]
  return keep.astype(jnp.float32) @ weights.astype(jnp.float32)


def norm_masks(model: resnet.ResNet, masks: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """group -> mask, as norm path -> mask: the mask of the group each norm writes."""
  return {conv.norm: masks[conv.out_group] for conv in conv_layers(model)
          if conv.out_group in masks}


def check_masks(model: resnet.ResNet, masks: Mapping[str, Any]) -> None:
  """Checks that `masks` (group -> [width] mask) name groups of `model` at their widths.

  Raises:
    ValueError: one line naming the group.
  """
  groups = width_groups(model)
  for group, mask in masks.items():
    if group not in groups:
      raise ValueError(f'channel masks: unknown width group {group!r}; the groups are: '
                       f'{", ".join(groups)}')
    if tuple(mask.shape) != (groups[group],):
      raise ValueError(f'channel masks[{group!r}] has shape {tuple(mask.shape)}; the group '
                       f'has {groups[group]} channels')


def expected_flops(model: resnet.ResNet, image_shape: Sequence[int],
                   logits: Mapping[str, jax.Array], threshold: int = MASK_THRESHOLD
                   ) -> jax.Array:
  """Expected multiply-accumulates of the convs: sum of k^2 H_out W_out E[c_in] E[c_out].

  Args:
    model: the big network.
    image_shape: (H, W, C) of its input.
    logits: group -> logits over its `dan_choices`; E[c] = sum_j softmax(logits)_j C_j, and a
      group without logits counts its width ({} gives the full network's count).

  Returns:
    A float32 scalar; each conv is counted once.
  """
  height, width, channels = image_shape
  choices = dan_choices(model, threshold)
  expected = dict(width_groups(model))
  for group, values in logits.items():
    p = jax.nn.softmax(jnp.asarray(values, jnp.float32))
    expected[group] = jnp.sum(p * jnp.asarray(choices[group], jnp.float32))
  total = 0.0
  for conv in conv_layers(model):
    area = -(-height // conv.reduction) * -(-width // conv.reduction)
    c_in = channels if conv.in_group is None else expected[conv.in_group]
    total = total + conv.kernel**2 * area * c_in * expected[conv.out_group]
  return jnp.asarray(total, jnp.float32)
