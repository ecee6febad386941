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


def _conv(features: int, kernel: int, strides: int, name: str, dtype: Any,
          param_dtype: Any) -> nn.Conv:
  """A bias-free conv with torchvision's symmetric padding.

  Explicit padding (k // 2 on each side) instead of 'SAME', because 'SAME' pads an even-sized
  input asymmetrically when strided, which would not match torchvision's outputs.
  """
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides),
      padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
      param_dtype=param_dtype, kernel_init=_conv_kernel_init, name=name)


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


class _ResidualBlock(nn.Module):
  """What both block kinds share: their fields, the BatchNorm/conv factories, the shortcut.

  Attributes:
    features: the block's base width (basic: the first conv; bottleneck: the inner 1x1/3x3).
    out_features: output width; ``None`` means ``expansion * features``.
    strides: the block's stride (and the projection shortcut's).
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
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def _layers(self, train: bool):
    bn = functools.partial(_batch_norm, train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype,
                           param_dtype=self.param_dtype)
    conv = functools.partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype)
    return bn, conv, self.out_features or self.features * self.expansion

  def _residual(self, x, y, out: int, bn, conv):
    if self.strides != 1 or x.shape[-1] != out:
      x = bn('proj_bn')(conv(out, 1, self.strides, 'proj_conv')(x))
    return _constrain(nn.relu(x + y))


class BasicBlock(_ResidualBlock):
  """Two 3x3 convs with BN and ReLU, plus a shortcut (fields: see _ResidualBlock)."""

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Applies the block.

    Args:
      x: [B, H, W, C] feature map.
      train: whether BatchNorm uses batch statistics (and updates its running averages).

    Returns:
      [B, H / strides, W / strides, out_features] feature map.
    """
    bn, conv, out = self._layers(train)
    y = conv(self.features, 3, self.strides, 'conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = conv(out, 3, 1, 'conv2')(y)
    # Zero scale makes the block start as the identity (Goyal et al., 2017).
    y = bn('bn2', zero_scale=True)(y)
    return self._residual(x, y, out, bn, conv)


class BottleneckBlock(_ResidualBlock):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), plus a shortcut.

  `features` is the inner width (of the 1x1 and 3x3 convs); fields: see _ResidualBlock.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Applies the block.

    Args:
      x: [B, H, W, C] feature map.
      train: whether BatchNorm uses batch statistics (and updates its running averages).

    Returns:
      [B, H / strides, W / strides, out_features] feature map.
    """
    bn, conv, out = self._layers(train)
    y = nn.relu(bn('bn1')(conv(self.features, 1, 1, 'conv1')(x)))
    y = nn.relu(bn('bn2')(conv(self.features, 3, self.strides, 'conv2')(y)))
    y = bn('bn3', zero_scale=True)(conv(out, 1, 1, 'conv3')(y))
    return self._residual(x, y, out, bn, conv)


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
      ValueError: as :meth:`channel_plan`.
    """
    plan = self.channel_plan()
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
               stop_at: Optional[str] = None):
    """Runs the network, or the part of it between two points.

    Every computed point is sown into ``intermediates`` under its name, as a 1-tuple.
    Iterate ``point_names()`` rather than that dict: under jit its keys come back sorted.
    ``train``, ``start_after`` and ``stop_at`` pick the graph, so they must be static
    (bind them with functools.partial before jit or eval_shape).

    Args:
      x: [B, H, W, C] image, or, with ``start_after``, the output of that point.
      train: whether BatchNorm uses batch statistics (mutable 'batch_stats' needed).
      start_after: a point name; ``x`` is that point's output and only what follows it runs.
      stop_at: a point name; nothing after it runs and its output is returned.

    Returns:
      float32 [B, num_classes] logits, or the output of point ``stop_at`` (a feature map in
      ``dtype``; float32 [B, C] for 'pre_logits').

    Raises:
      ValueError: bad configuration, unknown point names, ``start_after`` not before
        ``stop_at``, or a non-image input without ``start_after``.
    """
    plan = self.channel_plan()
    names = self.point_names()
    first = 0 if start_after is None else self._point_index(start_after, 'start_after') + 1
    stop = None if stop_at is None else self._point_index(stop_at, 'stop_at')
    if stop is not None and first > stop:
      raise ValueError(f'start_after={start_after!r} must come before stop_at={stop_at!r}')
    if start_after is None and x.ndim != 4:
      raise ValueError(f'expected a [B, H, W, C] image, got shape {x.shape}')
    x = jnp.asarray(x, self.dtype)
    bn = functools.partial(_batch_norm, train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype,
                           param_dtype=self.param_dtype)

    if first == 0:
      if self.stem == 'imagenet':
        x = _conv(plan.stem, 7, 2, 'stem_conv', self.dtype, self.param_dtype)(x)
        x = nn.relu(bn('stem_bn')(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      else:
        x = _conv(plan.stem, 3, self.stem_strides, 'stem_conv', self.dtype,
                  self.param_dtype)(x)
        x = nn.relu(bn('stem_bn')(x))
      x = _constrain(x)
      self.sow('intermediates', 'stem', x)
      if stop == 0:
        return x

    point = 1  # index in `names` of the current block
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        if first <= point:
          x = self.block_cls(
              features=plan.inner[i], out_features=plan.out[i],
              strides=2 if i > 0 and j == 0 else 1, dtype=self.dtype,
              param_dtype=self.param_dtype, bn_momentum=self.bn_momentum,
              bn_epsilon=self.bn_epsilon,
              name=block_module_name(names[point]))(x, train=train)
          self.sow('intermediates', names[point], x)
          if stop == point:
            return x
        point += 1

    if first <= point:  # point == index of 'pre_logits'
      # Pool in float32: a mean over many bf16 values loses precision.
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      self.sow('intermediates', 'pre_logits', x)
      if stop == point:
        return x
    x = nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 HEAD_KERNEL_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, HEAD_BIAS_AXES),
        name='head')(x)
    return x.astype(jnp.float32)


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
