"""ResNets (v1.5) that expose every imitated point.

The networks of He et al. (2016) in the torchvision layout, so that parameter counts match
torchvision exactly: ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottleneck blocks, the
stride on the 3x3 conv, i.e. "v1.5") with the ImageNet stem, and the CIFAR ResNets of depth
6n + 2 (three stages of 16, 32 and 64 channels) with a 3x3 stem.

For imitation (Go Wide, Then Narrow; LIT) the model:

* sows the output of every *point* (the stem, every residual block and the pooled features)
  into the ``intermediates`` collection under a stable name, at the top-level module, so a
  loss reads names rather than positions;
* can stop after a point (``stop_at``): later blocks are not traced at all, so a progressive
  phase compiles only the part of the network it trains;
* can start after a point (``start_after``): it then takes that point's output as its input,
  which lets a thin block be fed a teacher's feature map.

``width_multiplier`` makes the wide network of GWTN. In bottleneck nets it scales only the
inner width, so wide and thin nets have identical point widths and imitation needs no
projection; in basic-block nets it scales every channel, stem included.

Adjoined networks (AN and DAN, `gwtn_jax.methods.adjoined`) need three more things:

* ``widths`` (a :class:`WidthPlan`) sets every layer's width explicitly (a small network, a
  width configuration found by DAN); the shortcut layout stays the architecture's.
* ``small=plan`` in the forward runs the adjoined small network in the same parameters: every
  conv uses the first input channels and the first output filters of its kernel (a real slice,
  so it costs the small FLOPs), the head the first rows of its kernel, and every BatchNorm has
  a twin of its own named ``*_small``. ``channel_masks`` runs the full kernels with the same
  twins and multiplies each width group's channels by a mask (DAN). Neither sows anything.
* :func:`extract_small` turns the small network into a plain ResNet of its widths.

Parameter layout (names are part of the interface)::

    params/stem_conv, params/stem_bn
    params/stage{i}_block{j}_layers/{conv1,bn1,conv2,bn2[,conv3,bn3][,proj_conv,proj_bn]}
    params/head
    (adjoined: params/stem_bn_small and {bn1,bn2,...,proj_bn}_small in every block)

Point ``stage{i}_block{j}`` is computed by the module ``stage{i}_block{j}_layers`` (see
:meth:`ResNet.point_modules`). A block module cannot simply be named after its point: Flax
forbids a child module and a sown variable of the same name in one scope, and the sown names
must be the point names.

This module knows nothing of training.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.linen import dtypes

# Logical axis names of every parameter (mapped to mesh axes by rules in the config).
CONV_KERNEL_AXES = (None, None, 'conv_in', 'conv_out')
BN_AXES = ('conv_out',)
HEAD_KERNEL_AXES = ('features', 'classes')
HEAD_BIAS_AXES = ('classes',)
# Logical names of the feature maps' axes (sharding constraints mapped by the config's rules):
# every block's output (the imitated points) and the stem's. Separate from the parameters'
# names so that sharding a kernel over `fsdp` does not split the activations' channels too.
ACTIVATION_AXES = ('batch', 'act_height', 'act_width', 'act_channels')


def _constrain(x):
  """A no-op unless a step traces the model under a mesh and rules (gwtn_jax.parallel)."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)

STEMS = ('imagenet', 'cifar')

# He normal with fan_out, as torchvision initializes its convs.
_conv_kernel_init = nn.with_logical_partitioning(
    nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'), CONV_KERNEL_AXES)

# The suffix of the adjoined small network's own BatchNorm layers.
SMALL_SUFFIX = '_small'


class _Conv(nn.Module):
  """A bias-free conv with torchvision's symmetric padding, whose kernel a narrower path slices.

  Explicit padding (k // 2 on each side) instead of 'SAME', because 'SAME' pads an even-sized
  input asymmetrically when strided, which would not match torchvision's outputs. The
  parameter is nn.Conv's (`kernel`, [k, k, in_features, features]) and so is the arithmetic.

  Attributes:
    in_features: input width of the full kernel.
    features: output width of the full kernel.
    kernel_size: k of the k x k kernel.
    strides: the stride (both axes).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  in_features: int
  features: int
  kernel_size: int
  strides: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, features: Optional[int] = None):
    """Applies the conv with the kernel's first ``x.shape[-1]`` inputs and ``features`` outputs."""
    k = self.kernel_size
    kernel = self.param('kernel', _conv_kernel_init, (k, k, self.in_features, self.features),
                        self.param_dtype)
    c_in, c_out = x.shape[-1], features or self.features
    if (c_in, c_out) != (self.in_features, self.features):
      kernel = kernel[:, :, :c_in, :c_out]
    x, kernel = dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    pad = k // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), ((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class _Head(nn.Module):
  """nn.Dense's parameters and arithmetic; a narrower input uses the kernel's first rows."""
  in_features: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(nn.initializers.lecun_normal(), HEAD_KERNEL_AXES),
        (self.in_features, self.features), self.param_dtype)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, HEAD_BIAS_AXES),
                      (self.features,), self.param_dtype)
    if x.shape[-1] != self.in_features:
      kernel = kernel[:x.shape[-1]]
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _batch_norm(train: bool, name: str, momentum: float, epsilon: float, dtype: Any,
                param_dtype: Any, zero_scale: bool = False) -> nn.BatchNorm:
  """BatchNorm with partitioned scale/bias; Flax keeps its statistics in float32."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(scale_init, BN_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BN_AXES),
      name=name)


def _masked(y, mask):
  return y if mask is None else y * mask.astype(y.dtype)


class _ResidualBlock(nn.Module):
  """What both block kinds share: their fields, the BatchNorm/conv factories, the shortcut.

  Attributes:
    features: the block's base width (basic: the first conv; bottleneck: the inner 1x1/3x3).
    out_features: output width; ``None`` means ``expansion * features``.
    strides: the block's stride (and the projection shortcut's).
    in_features: input width of the full block; ``None`` means the input's (the small path
      passes a narrower input, so the network sets it).
    projection: whether the shortcut is a projection; ``None`` means where the stride or the
      width changes.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    bn_momentum: BatchNorm running-average momentum.
    bn_epsilon: BatchNorm epsilon.
  """

  # Output width per unit of base width; ResNet reads it to plan channels.
  expansion: ClassVar[int] = 1

  features: int
  out_features: Optional[int] = None
  strides: int = 1
  in_features: Optional[int] = None
  projection: Optional[bool] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def _layers(self, x, train: bool, small, masks):
    """The factories and widths of one path (the full one, or an adjoined one).

    Returns:
      (bn(name, y, mask=None, zero_scale=False), conv(name, y, c_in, c_out, width, k, s),
       full input width, full output width, (inner width, output width) used,
       (inner mask, output mask)).
    """
    suffix = '' if small is None and masks is None else SMALL_SUFFIX

    def bn(name, y, mask=None, zero_scale=False):
      y = _batch_norm(train, name + suffix, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                      dtype=self.dtype, param_dtype=self.param_dtype, zero_scale=zero_scale)(y)
      return _masked(y, mask)

    def conv(name, y, c_in, c_out, width, kernel, strides):
      return _Conv(c_in, c_out, kernel, strides, self.dtype, self.param_dtype, name=name)(y, width)

    out = self.out_features or self.features * self.expansion
    return (bn, conv, self.in_features or x.shape[-1], out, small or (self.features, out),
            masks or (None, None))

  def _residual(self, x, y, c_in: int, out: int, width: int, mask, bn, conv):
    projection = self.projection
    if projection is None:
      projection = self.strides != 1 or c_in != out
    if projection:
      x = bn('proj_bn', conv('proj_conv', x, c_in, out, width, 1, self.strides), mask)
    return _constrain(nn.relu(x + y))


class BasicBlock(_ResidualBlock):
  """Two 3x3 convs with BN and ReLU, plus a shortcut (fields: see _ResidualBlock)."""

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool = True, small: Optional[tuple[int, int]] = None,
               masks: Optional[tuple[Any, Any]] = None):
    """Applies the block.

    Args:
      x: [B, H, W, C] feature map.
      train: whether BatchNorm uses batch statistics (and updates its running averages).
      small: (inner, output) widths of the adjoined small path: sliced kernels, own BNs.
      masks: (inner, output) channel masks (or None) of the masked path: own BNs.

    Returns:
      [B, H / strides, W / strides, out_features] feature map.
    """
    bn, conv, c_in, out, (inner_w, out_w), (inner_m, out_m) = self._layers(x, train, small, masks)
    y = conv('conv1', x, c_in, self.features, inner_w, 3, self.strides)
    y = nn.relu(bn('bn1', y, inner_m))
    y = conv('conv2', y, self.features, out, out_w, 3, 1)
    # Zero scale makes the block start as the identity (Goyal et al., 2017).
    y = bn('bn2', y, out_m, zero_scale=True)
    return self._residual(x, y, c_in, out, out_w, out_m, bn, conv)


class BottleneckBlock(_ResidualBlock):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), plus a shortcut.

  `features` is the inner width (of the 1x1 and 3x3 convs); fields: see _ResidualBlock.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool = True, small: Optional[tuple[int, int]] = None,
               masks: Optional[tuple[Any, Any]] = None):
    """Applies the block.

    Args:
      x: [B, H, W, C] feature map.
      train: whether BatchNorm uses batch statistics (and updates its running averages).
      small: (inner, output) widths of the adjoined small path: sliced kernels, own BNs.
      masks: (inner, output) channel masks (or None) of the masked path: own BNs.

    Returns:
      [B, H / strides, W / strides, out_features] feature map.
    """
    bn, conv, c_in, out, (inner_w, out_w), (inner_m, out_m) = self._layers(x, train, small, masks)
    y = nn.relu(bn('bn1', conv('conv1', x, c_in, self.features, inner_w, 1, 1), inner_m))
    y = nn.relu(bn('bn2', conv('conv2', y, self.features, self.features, inner_w, 3,
                               self.strides), inner_m))
    y = bn('bn3', conv('conv3', y, self.features, out, out_w, 1, 1), out_m, zero_scale=True)
    return self._residual(x, y, c_in, out, out_w, out_m, bn, conv)


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
  """Channel counts of a ResNet, known before any init.

  Attributes:
    stem: output channels of the stem.
    inner: inner width of the blocks of each stage.
    out: output channels of the blocks of each stage.
  """
  stem: int
  inner: tuple[int, ...]
  out: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class WidthPlan:
  """Explicit width of every layer of a ResNet.

  Attributes:
    stem: output channels of the stem.
    inner: one per block, all stages flattened bottom to top: the width of the block's inner
      conv(s) (basic: conv1's output; bottleneck: conv1's and conv2's outputs).
    out: one per stage: its residual stream (every block's last conv and the projection
      shortcut).
  """
  stem: int
  inner: tuple[int, ...]
  out: tuple[int, ...]

  def __post_init__(self):
    # Tuples, so that a plan from a config (lists) is hashable, as a module field must be.
    object.__setattr__(self, 'inner', tuple(self.inner))
    object.__setattr__(self, 'out', tuple(self.out))


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """One conv of a ResNet, for width rules and FLOPs counts.

  Attributes:
    name: its parameter path, e.g. 'stage2_block1_layers/conv1'.
    kernel: k of its k x k kernel.
    reduction: how many times smaller than the image its output is on each side: it is
      ceil(H / reduction) x ceil(W / reduction) (every conv and pool pads k // 2).
    in_group: the width group of its input (None: the image); see ResNet.width_groups.
    out_group: the width group of its output.
    shortcut: whether it is a projection shortcut.
  """
  name: str
  kernel: int
  reduction: int
  in_group: Optional[str]
  out_group: str
  shortcut: bool = False


def _channels(value: float, width_multiplier: float, where: str) -> int:
  """Returns ``value`` as an int, or raises the one-line config error."""
  rounded = round(value)
  # A tolerance, because e.g. 64 * 0.3 is not exactly 19.2 in binary floating point.
  if abs(value - rounded) > 1e-6 or rounded < 1:
    raise ValueError(
        f'model.width_multiplier={width_multiplier:g} gives {value:g} channels in {where} '
        '(must be a positive integer)')
  return int(rounded)


def block_module_name(point: str) -> str:
  """The submodule (params key) of the block that computes point ``point``."""
  return f'{point}_layers'


class ResNet(nn.Module):
  """ResNet v1.5 with named imitation points.

  Attributes:
    stage_sizes: number of blocks in each stage.
    block_cls: BasicBlock or BottleneckBlock.
    num_classes: number of logits.
    num_filters: base width of stage 1; stage i (0-based) uses ``num_filters * 2**i``, times
      the block expansion at the block outputs. It is also the stem width (64 for the
      ImageNet presets, 16 for the CIFAR ones).
    width_multiplier: widens the net (GWTN stage 1). Bottleneck blocks: scales only the inner
      width; the stem and block outputs keep their width. Basic blocks: scales every channel,
      stem included. Every resulting count must be an integer.
    stem: 'imagenet' (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or 'cifar' (3x3 conv with
      stride ``stem_strides``, BN, ReLU, no pool).
    stem_strides: stride of the CIFAR stem (2 turns 28x28 into 14x14); must be 1 with the
      ImageNet stem, whose strides are fixed.
    dtype: compute dtype; logits and 'pre_logits' are float32 whatever it is.
    param_dtype: parameter dtype.
    bn_momentum: BatchNorm running-average momentum (0.9 is PyTorch's 0.1).
    bn_epsilon: BatchNorm epsilon.
    widths: explicit widths of every layer (None: those of the fields above). Which blocks
      have a projection shortcut stays the fields' choice, so a stage that starts with an
      identity shortcut must keep the stem's width.
  """

  stage_sizes: Sequence[int]
  block_cls: type
  num_classes: int
  num_filters: int = 64
  width_multiplier: float = 1.0
  stem: str = 'imagenet'
  stem_strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  widths: Optional[WidthPlan] = None

  # --- Static description (no init, no compile) -------------------------------------------

  def channel_plan(self) -> ChannelPlan:
    """Validates the configuration and returns its channel counts.

    Callable on an unbound module, so a config validator can run it before any compile.

    Returns:
      The ChannelPlan.

    Raises:
      ValueError: one line naming the offending ``model.*`` field, e.g. a width multiplier
        that gives a non-integer channel count.
    """
    if not self.stage_sizes or any(int(n) != n or n < 1 for n in self.stage_sizes):
      raise ValueError(f'model.stage_sizes={tuple(self.stage_sizes)} must be a non-empty '
                       'sequence of positive integers')
    if self.stem not in STEMS:
      raise ValueError(f'model.stem={self.stem!r} is unknown; choose one of: '
                       f'{", ".join(STEMS)}')
    if self.stem_strides < 1 or (self.stem == 'imagenet' and self.stem_strides != 1):
      raise ValueError(f'model.stem_strides={self.stem_strides} must be >= 1, and 1 with '
                       "the 'imagenet' stem")
    if self.num_filters < 1:
      raise ValueError(f'model.num_filters={self.num_filters} must be positive')
    w = self.width_multiplier
    if not w > 0:
      raise ValueError(f'model.width_multiplier={w} must be positive')
    expansion = getattr(self.block_cls, 'expansion', None)
    if expansion not in (1, 4):
      raise ValueError(f'model.block_cls={self.block_cls!r} must be BasicBlock or '
                       'BottleneckBlock')
    # Bottleneck nets widen only inside the blocks (the GWTN ResNet recipe); basic-block
    # nets have no inner width to widen, so everything scales.
    outer = w if expansion == 1 else 1.0
    stem = _channels(self.num_filters * outer, w, 'the stem')
    inner, out = [], []
    for i in range(len(self.stage_sizes)):
      base = self.num_filters * 2**i
      inner.append(_channels(base * w, w, f'stage{i + 1}'))
      out.append(_channels(base * expansion * outer, w, f'stage{i + 1}'))
    return ChannelPlan(stem=stem, inner=tuple(inner), out=tuple(out))

  def width_plan(self) -> WidthPlan:
    """The width of every layer: ``widths``, or the full widths of the channel plan.

    Raises:
      ValueError: as :meth:`channel_plan`, or (one line naming ``model.widths``) a plan that
        does not fit the architecture.
    """
    plan = self.channel_plan()
    if self.widths is not None:
      self.check_widths(self.widths, 'model.widths')
      return self.widths
    inner = tuple(plan.inner[i] for i, n in enumerate(self.stage_sizes) for _ in range(n))
    return WidthPlan(stem=plan.stem, inner=inner, out=plan.out)

  def check_widths(self, plan: Any, what: str, within: Optional[WidthPlan] = None) -> None:
    """Checks that ``plan`` fits this architecture (and lies ``within`` a bigger plan).

    Args:
      plan: the WidthPlan to check.
      what: its name in the error, e.g. 'model.widths' or 'small'.
      within: if given, no width of ``plan`` may exceed this plan's.

    Raises:
      ValueError: one line naming ``what``.
    """
    if not isinstance(plan, WidthPlan):
      raise ValueError(f'{what}={plan!r} must be a WidthPlan')
    blocks, stages = sum(self.stage_sizes), len(self.stage_sizes)
    if len(plan.inner) != blocks or len(plan.out) != stages:
      raise ValueError(f'{what}={plan} must have {blocks} inner widths (one per block) and '
                       f'{stages} out widths (one per stage)')
    values = (plan.stem,) + plan.inner + plan.out
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
           for v in values):
      raise ValueError(f'{what}={plan}: every width must be a positive integer')
    for i, projection in enumerate(self._projections()):
      if not projection and plan.out[i] != plan.stem:
        raise ValueError(f'{what}={plan}: stage{i + 1} starts with an identity shortcut, so '
                         f'out[{i}] must equal stem')
    if within is not None:
      limits = (within.stem,) + within.inner + within.out
      if any(v > limit for v, limit in zip(values, limits)):
        raise ValueError(f'{what}={plan} exceeds the network\'s widths {within}')

  def _projections(self) -> tuple[bool, ...]:
    """Whether each stage's first block has a projection shortcut (the fields decide)."""
    plan = self.channel_plan()
    return tuple(i > 0 or plan.stem != plan.out[0] for i in range(len(self.stage_sizes)))

  def _stream_group(self, stage: int) -> str:
    # A stage entered through an identity shortcut carries the stem's channels.
    return f'stage{stage + 1}_stream' if self._projections()[stage] else 'stem'

  def width_groups(self) -> dict[str, int]:
    """The independent widths of the network, bottom to top, by group name.

    'stem'; 'stage{i}_stream', the residual stream of a stage entered through a projection
    (one entered through an identity shortcut carries the stem's width); and
    'stage{i}_block{j}_inner', the inner width of a block.

    Returns:
      group name -> its width (under :meth:`width_plan`).
    """
    plan = self.width_plan()
    groups = {'stem': plan.stem}
    k = 0
    for i, n in enumerate(self.stage_sizes):
      groups.setdefault(self._stream_group(i), plan.out[i])
      for j in range(n):
        groups[f'stage{i + 1}_block{j + 1}_inner'] = plan.inner[k]
        k += 1
    return groups

  def widths_from_groups(self, groups: Mapping[str, int]) -> WidthPlan:
    """The WidthPlan with the given groups' widths, and this network's elsewhere.

    Raises:
      ValueError: an unknown group.
    """
    widths = self.width_groups()
    unknown = set(groups) - set(widths)
    if unknown:
      raise ValueError(f'unknown width groups {sorted(unknown)}; the groups are: '
                       f'{", ".join(widths)}')
    widths.update(groups)
    inner = tuple(widths[f'stage{i + 1}_block{j + 1}_inner']
                  for i, n in enumerate(self.stage_sizes) for j in range(n))
    out = tuple(widths[self._stream_group(i)] for i in range(len(self.stage_sizes)))
    return WidthPlan(stem=widths['stem'], inner=inner, out=out)

  def conv_layers(self) -> tuple[ConvLayer, ...]:
    """Every conv of the network, bottom to top, with its width groups and output size."""
    stem_stride = 2 if self.stem == 'imagenet' else self.stem_strides
    layers = [ConvLayer('stem_conv', 7 if self.stem == 'imagenet' else 3, stem_stride, None,
                        'stem')]
    reduction = stem_stride * (2 if self.stem == 'imagenet' else 1)  # the max pool
    previous = 'stem'
    bottleneck = self.block_cls.expansion != 1
    for i, n in enumerate(self.stage_sizes):
      stream = self._stream_group(i)
      for j in range(n):
        name = block_module_name(f'stage{i + 1}_block{j + 1}') + '/'
        inner = f'stage{i + 1}_block{j + 1}_inner'
        stride = 2 if i > 0 and j == 0 else 1
        if bottleneck:
          layers += [ConvLayer(name + 'conv1', 1, reduction, previous, inner),
                     ConvLayer(name + 'conv2', 3, reduction * stride, inner, inner),
                     ConvLayer(name + 'conv3', 1, reduction * stride, inner, stream)]
        else:
          layers += [ConvLayer(name + 'conv1', 3, reduction * stride, previous, inner),
                     ConvLayer(name + 'conv2', 3, reduction * stride, inner, stream)]
        if j == 0 and self._projections()[i]:
          layers.append(ConvLayer(name + 'proj_conv', 1, reduction * stride, previous, stream,
                                  shortcut=True))
        reduction *= stride
        previous = stream
    return tuple(layers)

  def point_names(self) -> tuple[str, ...]:
    """All imitation points, bottom to top.

    Returns:
      ('stem', 'stage1_block1', ..., 'stageK_blockN', 'pre_logits').
    """
    blocks = tuple(f'stage{i + 1}_block{j + 1}'
                   for i, n in enumerate(self.stage_sizes) for j in range(n))
    return ('stem',) + blocks + ('pre_logits',)

  def stage_point_names(self) -> tuple[str, ...]:
    """The last block of each stage (stage-granularity imitation, LIT sections)."""
    return tuple(f'stage{i + 1}_block{n}' for i, n in enumerate(self.stage_sizes))

  def point_channels(self) -> dict[str, int]:
    """Channel count of every point's output (last axis), for sizing projections.

    Raises:
      ValueError: as :meth:`width_plan`.
    """
    plan = self.width_plan()
    channels = {'stem': plan.stem}
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        channels[f'stage{i + 1}_block{j + 1}'] = plan.out[i]
    channels['pre_logits'] = plan.out[-1]
    return channels

  def point_modules(self, name: str) -> tuple[str, ...]:
    """Names of the top-level submodules (keys of ``params``) that compute a point.

    Args:
      name: a point name.

    Returns:
      ('stem_conv', 'stem_bn') for 'stem', ('stage2_block1_layers',) for 'stage2_block1',
      () for 'pre_logits' (pooling has no parameters).

    Raises:
      ValueError: unknown point.
    """
    self._point_index(name, 'point')
    if name == 'stem':
      return ('stem_conv', 'stem_bn')
    if name == 'pre_logits':
      return ()
    return (block_module_name(name),)

  def read_points(self, intermediates) -> dict[str, Any]:
    """point name -> output, from the ``intermediates`` collection."""
    return {name: value[0] for name, value in intermediates.items()}

  def stacked_modules(self) -> dict[str, tuple[str, ...]]:
    """Modules whose parameters stack several points' layers: none in a ResNet."""
    return {}

  def head_modules(self) -> tuple[str, ...]:
    """The top-level parameters of the output head (what a linear probe trains)."""
    return ('head',)

  def _point_index(self, name: str, arg: str) -> int:
    names = self.point_names()
    if name not in names:
      raise ValueError(f'{arg}={name!r} is not a point of this model; valid points: '
                       f'{", ".join(names)}')
    return names.index(name)

  # --- Forward -------------------------------------------------------------------------------

  @nn.compact
  def __call__(self, x, train: bool = True, start_after: Optional[str] = None,
               stop_at: Optional[str] = None, small: Optional[WidthPlan] = None,
               channel_masks: Optional[Mapping[str, Any]] = None):
    """Runs the network, or the part of it between two points.

    Every computed point is sown into ``intermediates`` under its name, as a 1-tuple.
    Iterate ``point_names()`` rather than that dict: under jit its keys come back sorted.
    ``train``, ``start_after``, ``stop_at`` and ``small`` pick the graph, so they must be
    static (bind them with functools.partial before jit or eval_shape).

    ``small`` and ``channel_masks`` run an adjoined network in the same parameters, with
    BatchNorm layers of its own (``*_small``, created where it first runs); it sows nothing.

    Args:
      x: [B, H, W, C] image, or, with ``start_after``, the output of that point (of the
        small network's width with ``small``).
      train: whether BatchNorm uses batch statistics (mutable 'batch_stats' needed).
      start_after: a point name; ``x`` is that point's output and only what follows it runs.
      stop_at: a point name; nothing after it runs and its output is returned.
      small: the widths of the adjoined small network (AN): every conv uses the first input
        channels and the first filters of its kernel, the head the first rows of its kernel.
      channel_masks: width group (see :meth:`width_groups`) -> [width] mask that multiplies
        the group's channels after every BatchNorm that writes them (DAN); full kernels.

    Returns:
      float32 [B, num_classes] logits, or the output of point ``stop_at`` (a feature map in
      ``dtype``; float32 [B, C] for 'pre_logits').

    Raises:
      ValueError: bad configuration, unknown point names, ``start_after`` not before
        ``stop_at``, a non-image input without ``start_after``, a ``small`` plan that does
        not fit, unknown or misshaped ``channel_masks``, or both of the last two.
    """
    plan = self.width_plan()
    names = self.point_names()
    first = 0 if start_after is None else self._point_index(start_after, 'start_after') + 1
    stop = None if stop_at is None else self._point_index(stop_at, 'stop_at')
    if stop is not None and first > stop:
      raise ValueError(f'start_after={start_after!r} must come before stop_at={stop_at!r}')
    if start_after is None and x.ndim != 4:
      raise ValueError(f'expected a [B, H, W, C] image, got shape {x.shape}')
    if small is not None and channel_masks is not None:
      raise ValueError('pass small (AN) or channel_masks (DAN), not both')
    if small is not None:
      self.check_widths(small, 'small', within=plan)
    masks = self._check_masks(channel_masks)
    adjoined = small is not None or channel_masks is not None
    widths = small or plan
    suffix = SMALL_SUFFIX if adjoined else ''
    x = jnp.asarray(x, self.dtype)
    bn = functools.partial(_batch_norm, train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype,
                           param_dtype=self.param_dtype)

    def sow(name, value):
      if not adjoined:  # the imitated points are the full network's
        self.sow('intermediates', name, value)

    if first == 0:
      imagenet = self.stem == 'imagenet'
      x = _Conv(x.shape[-1], plan.stem, 7 if imagenet else 3, 2 if imagenet else self.stem_strides,
                self.dtype, self.param_dtype, name='stem_conv')(x, widths.stem)
      x = nn.relu(_masked(bn('stem_bn' + suffix)(x), masks.get('stem')))
      if imagenet:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      x = _constrain(x)
      sow('stem', x)
      if stop == 0:
        return x

    point = 1  # index in `names` of the current block
    k = 0  # index of the current block in the flat `inner` widths
    previous = plan.stem  # full width of the current block's input
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        if first <= point:
          block_masks = None
          if channel_masks is not None:
            block_masks = (masks.get(f'stage{i + 1}_block{j + 1}_inner'),
                           masks.get(self._stream_group(i)))
          x = self.block_cls(
              features=plan.inner[k], out_features=plan.out[i],
              strides=2 if i > 0 and j == 0 else 1, in_features=previous,
              projection=j == 0 and self._projections()[i], dtype=self.dtype,
              param_dtype=self.param_dtype, bn_momentum=self.bn_momentum,
              bn_epsilon=self.bn_epsilon, name=block_module_name(names[point]))(
                  x, train=train, masks=block_masks,
                  small=None if small is None else (small.inner[k], small.out[i]))
          sow(names[point], x)
          if stop == point:
            return x
        point += 1
        k += 1
        previous = plan.out[i]

    if first <= point:  # point == index of 'pre_logits'
      # Pool in float32: a mean over many bf16 values loses precision.
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      sow('pre_logits', x)
      if stop == point:
        return x
    x = _Head(plan.out[-1], self.num_classes, self.dtype, self.param_dtype, name='head')(x)
    return x.astype(jnp.float32)

  def _check_masks(self, channel_masks: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    if channel_masks is None:
      return {}
    groups = self.width_groups()
    for group, mask in channel_masks.items():
      if group not in groups:
        raise ValueError(f'channel_masks: unknown width group {group!r}; the groups are: '
                         f'{", ".join(groups)}')
      if tuple(mask.shape) != (groups[group],):
        raise ValueError(f'channel_masks[{group!r}] has shape {tuple(mask.shape)}; the group '
                         f'has {groups[group]} channels')
    return dict(channel_masks)


# --- Presets (flax examples/imagenet style) ----------------------------------------------------

ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)


def _cifar_resnet(depth: int) -> Callable[..., ResNet]:
  """CIFAR ResNet of depth 6n + 2 (He et al., 2016, section 4.2).

  Shortcuts are projections (option B) rather than the paper's zero-padded identities
  (option A), which adds a few parameters at the two stage transitions.
  """
  n = (depth - 2) // 6
  return functools.partial(ResNet, stage_sizes=(n, n, n), block_cls=BasicBlock,
                           num_filters=16, stem='cifar')


def _cifar_bottleneck(depth: int) -> Callable[..., ResNet]:
  """CIFAR ResNet of bottleneck blocks, depth 9n + 2 (He et al., 2016b: ResNet-164 is n=18).

  Inner widths 16/32/64, block outputs 64/128/256. A width multiplier scales the inner width
  only (as on ImageNet), so a wide and a thin one share their stem, block outputs and head:
  what LIT's teacher-fed sections need when the teacher is GWTN's wide network.
  """
  n = (depth - 2) // 9
  return functools.partial(ResNet, stage_sizes=(n, n, n), block_cls=BottleneckBlock,
                           num_filters=16, stem='cifar')


CifarResNet8 = _cifar_resnet(8)  # tiny, for tests
CifarResNet20 = _cifar_resnet(20)
CifarResNet32 = _cifar_resnet(32)
CifarResNet44 = _cifar_resnet(44)
CifarResNet56 = _cifar_resnet(56)
CifarResNet110 = _cifar_resnet(110)

MODELS: dict[str, Callable[..., ResNet]] = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'cifar_resnet8': CifarResNet8,
    'cifar_resnet20': CifarResNet20,
    'cifar_resnet32': CifarResNet32,
    'cifar_resnet44': CifarResNet44,
    'cifar_resnet56': CifarResNet56,
    'cifar_resnet110': CifarResNet110,
    'cifar_bottleneck20': _cifar_bottleneck(20),
    'cifar_bottleneck29': _cifar_bottleneck(29),
    'cifar_bottleneck164': _cifar_bottleneck(164),
}


def get_model(name: str, **kwargs) -> ResNet:
  """Builds a registered model.

  Args:
    name: a key of MODELS.
    **kwargs: ResNet fields (``num_classes`` is required), overriding the preset.

  Returns:
    The unbound ResNet.

  Raises:
    ValueError: unknown name.
  """
  if name not in MODELS:
    raise ValueError(f'model.name={name!r} is unknown; choose one of: '
                     f'{", ".join(MODELS)}')
  return MODELS[name](**kwargs)


def extract_small(model: ResNet, variables: Mapping[str, Any],
                  small: WidthPlan) -> tuple[ResNet, dict[str, Any]]:
  """The adjoined small network as a plain ResNet of its own widths.

  Its kernels are the first channels of the shared ones (what ``small=...`` slices in the
  forward), its BatchNorm layers the small network's own (``*_small``, sliced to the plan's
  widths where they are wider: DAN's are full width), its head the kernel's first rows.

  Args:
    model: the full network.
    variables: its variables, with the small network's BatchNorm layers ('params' and
      'batch_stats'; other collections are ignored).
    small: the small network's widths.

  Returns:
    (``model`` with ``widths=small``, its variables: 'params' and 'batch_stats').

  Raises:
    ValueError: a plan that does not fit, or variables without the small BatchNorm layers.
  """
  model.check_widths(small, 'small', within=model.width_plan())
  small_model = model.clone(widths=small)
  variables = nn.meta.unbox(variables)
  flat = traverse_util.flatten_dict({c: variables[c] for c in ('params', 'batch_stats')})
  image = jax.ShapeDtypeStruct((1, 32, 32, flat['params', 'stem_conv', 'kernel'].shape[2]),
                               jnp.float32)
  shapes = traverse_util.flatten_dict(nn.meta.unbox(jax.eval_shape(
      functools.partial(small_model.init, train=False), jax.random.key(0), image)))
  norms = {path[1:-1] for path in shapes if path[0] == 'batch_stats'}
  out = {}
  for path, shape in shapes.items():
    if path[1:-1] in norms:
      source = path[:-2] + (path[-2] + SMALL_SUFFIX, path[-1])
      if source not in flat:
        raise ValueError(f'extract_small: the variables lack {"/".join(source)}: they have '
                         'no adjoined small network')
    else:
      source = path
    out[path] = flat[source][tuple(slice(0, n) for n in shape.shape)]
  return small_model, traverse_util.unflatten_dict(out)
