"""ResNets (v1.5) that expose every imitated point.

The networks of He et al. (2016) in the torchvision layout, so that parameter counts match
torchvision exactly: ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottleneck blocks, the
stride on the 3x3 conv, i.e. "v1.5") with the ImageNet stem, and the CIFAR ResNets of depth
6n + 2 (three stages of 16, 32 and 64 channels) with a 3x3 stem.

For imitation (Go Wide, Then Narrow; LIT) the model:

* sows the output of every *point* (the stem, every residual block and the pooled features)
  into the ``intermediates`` collection under a stable name, at the top-level module, so a
  loss reads names rather than positions; :meth:`ResNet.points` describes them;
* can stop after a point (``stop_at``): later blocks are not traced at all, so a progressive
  phase compiles only the part of the network it trains;
* can start after a point (``start_after``): it then takes that point's output as its input,
  which lets a thin block be fed a teacher's feature map.

``width_multiplier`` makes the wide network of GWTN. In bottleneck nets it scales only the
inner width, so wide and thin nets have identical point widths and imitation needs no
projection; in basic-block nets it scales every channel, stem included. ``widths`` (a
:class:`WidthPlan`) sets every layer's width explicitly instead (a width configuration found by
a search); the shortcut layout stays the architecture's.

As in flax's examples/imagenet, the blocks receive their conv and norm as module fields; the
network's ``norm`` field is the norm class (``nn.BatchNorm``, or a subclass of it with the same
variables, e.g. Differentiable Adjoined Networks' masked one, `gwtn_jax.methods.adjoined`).

Parameter layout (names are part of the interface)::

    params/stem_conv, params/stem_bn
    params/stage{i}_block{j}_layers/{conv1,bn1,conv2,bn2[,conv3,bn3][,proj_conv,proj_bn]}
    params/head

Point ``stage{i}_block{j}`` is computed by the module ``stage{i}_block{j}_layers`` (see
:meth:`ResNet.points`). A block module cannot simply be named after its point: Flax forbids a
child module and a sown variable of the same name in one scope, and the sown names must be the
point names.

This module knows nothing of training.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes

from gwtn_jax.models import points as points_lib
from gwtn_jax.models.points import Point
from gwtn_jax.parallel import axes as axes_lib

# Logical axis names of every parameter (mapped to mesh axes by rules in the config).
CONV_KERNEL_AXES = axes_lib.RESNET_CONV_KERNEL_AXES
BN_AXES = axes_lib.RESNET_BN_AXES
HEAD_KERNEL_AXES = axes_lib.RESNET_HEAD_KERNEL_AXES
HEAD_BIAS_AXES = axes_lib.RESNET_HEAD_BIAS_AXES
# Logical names of the feature maps' axes (sharding constraints mapped by the config's rules):
# every block's output (the imitated points) and the stem's. Separate from the parameters'
# names so that sharding a kernel over `fsdp` does not split the activations' channels too.
ACTIVATION_AXES = axes_lib.RESNET_ACTIVATION_AXES

ModuleDef = Any


def _constrain(x):
  """A no-op unless a step traces the model under a mesh and rules (gwtn_jax.parallel)."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)

STEMS = ('imagenet', 'cifar')

# He normal with fan_out, as torchvision initializes its convs.
_conv_kernel_init = nn.with_logical_partitioning(
    nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'), CONV_KERNEL_AXES)


class Conv(nn.Module):
  """A bias-free conv with torchvision's symmetric padding.

  Explicit padding (k // 2 on each side) instead of 'SAME', because 'SAME' pads an even-sized
  input asymmetrically when strided, which would not match torchvision's outputs. The
  parameter is nn.Conv's (`kernel`, [k, k, in_features, features]) and so is the arithmetic.

  A 1x1 conv is computed as the matrix product it is (of the strided input's pixels with
  `kernel[0, 0]`): XLA's CPU backend computes a 1x1 conv's kernel gradient 4.5x slower than
  the same product's (ResNet-50's train step, batch 8 at 224x224 on the 2-core CPU: 3.29 s
  as convs, 2.63 s as products; `benchmarks/README.md`).

  Attributes:
    features: output channels.
    kernel_size: k of the k x k kernel.
    strides: the stride (both axes).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', _conv_kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    x, kernel = dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if k == 1:  # the same arithmetic as a matrix product, whose gradients are fast everywhere
      if self.strides != 1:
        x = x[:, ::self.strides, ::self.strides, :]
      return jnp.einsum('bhwc,cd->bhwd', x, kernel[0, 0])
    pad = k // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), ((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class _ResidualBlock(nn.Module):
  """What both block kinds share: their fields and the shortcut.

  Attributes:
    features: the block's base width (basic: the first conv; bottleneck: the inner 1x1/3x3).
    conv: the conv class, its dtypes bound (called as ``conv(features, k, strides, name=)``).
    norm: the norm class, its options bound (called as ``norm(name=)``, and with
      ``scale_init=`` for the block's last norm).
    out_features: output width; ``None`` means ``expansion * features``.
    strides: the block's stride (and the projection shortcut's).
    projection: whether the shortcut is a projection; ``None`` means where the stride or the
      width changes.
    shortcut: False makes the block plain (no residual: FitNets' and the theory's regime).
  """

  # Output width per unit of base width; ResNet reads it to plan channels.
  expansion: ClassVar[int] = 1

  features: int
  conv: ModuleDef
  norm: ModuleDef
  out_features: Optional[int] = None
  strides: int = 1
  projection: Optional[bool] = None
  shortcut: bool = True

  @property
  def out(self) -> int:
    return self.out_features or self.features * self.expansion

  def _last_norm(self, name: str):
    if not self.shortcut:  # a plain block's output is its branch: it must not start at zero
      return self.norm(name=name)
    # Zero scale makes the block start as the identity (Goyal et al., 2017).
    return self.norm(name=name, scale_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                         BN_AXES))

  def _residual(self, x, y):
    if not self.shortcut:
      return _constrain(nn.relu(y))
    projection = self.projection
    if projection is None:
      projection = self.strides != 1 or x.shape[-1] != self.out
    if projection:
      x = self.norm(name='proj_bn')(self.conv(self.out, 1, self.strides, name='proj_conv')(x))
    return _constrain(nn.relu(x + y))


class BasicBlock(_ResidualBlock):
  """Two 3x3 convs with BN and ReLU, plus a shortcut (fields: see _ResidualBlock)."""

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x):
    """[B, H, W, C] -> [B, H / strides, W / strides, out_features]."""
    y = self.conv(self.features, 3, self.strides, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.out, 3, name='conv2')(y)
    y = self._last_norm('bn2')(y)
    return self._residual(x, y)


class BottleneckBlock(_ResidualBlock):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), plus a shortcut.

  `features` is the inner width (of the 1x1 and 3x3 convs); fields: see _ResidualBlock.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x):
    """[B, H, W, C] -> [B, H / strides, W / strides, out_features]."""
    y = nn.relu(self.norm(name='bn1')(self.conv(self.features, 1, name='conv1')(x)))
    y = nn.relu(self.norm(name='bn2')(self.conv(self.features, 3, self.strides,
                                                name='conv2')(y)))
    y = self._last_norm('bn3')(self.conv(self.out, 1, name='conv3')(y))
    return self._residual(x, y)


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


def _channels(value: float, width_multiplier: float, where: str) -> int:
  """Returns ``value`` as an int, or raises the one-line config error."""
  rounded = round(value)
  # A tolerance, because e.g. 64 * 0.3 is not exactly 19.2 in binary floating point.
  if abs(value - rounded) > 1e-6 or rounded < 1:
    raise ValueError(
        f'model.width_multiplier={width_multiplier:g} gives {value:g} channels in {where} '
        '(must be a positive integer)')
  return int(rounded)


def classifier(num_classes: int, dtype: Any, param_dtype: Any) -> nn.Dense:
  """The linear head 'head' of the image networks (ResNets, MLPs): LeCun-normal kernel, zero
  bias, on the head's logical axes."""
  return nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                           HEAD_KERNEL_AXES),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, HEAD_BIAS_AXES),
                  name='head')


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
    norm: the norm class: nn.BatchNorm, or a subclass with its variables (the network binds
      its options, and names every norm after its conv: 'stem_bn', 'bn1', ..., 'proj_bn').
    shortcuts: False removes every residual connection (and projection shortcut): a plain
      network of the same layers, FitNets' regime, where depth makes training hard.
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
  norm: ModuleDef = nn.BatchNorm
  shortcuts: bool = True

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
    for i, projection in enumerate(self.projections()):
      if not projection and plan.out[i] != plan.stem:
        raise ValueError(f'{what}={plan}: stage{i + 1} starts with an identity shortcut, so '
                         f'out[{i}] must equal stem')
    if within is not None:
      limits = (within.stem,) + within.inner + within.out
      if any(v > limit for v, limit in zip(values, limits)):
        raise ValueError(f'{what}={plan} exceeds the network\'s widths {within}')

  def projections(self) -> tuple[bool, ...]:
    """Whether each stage's first block has a projection shortcut (the fields decide: every
    stage but one entered at the stem's width)."""
    plan = self.channel_plan()
    return tuple(i > 0 or plan.stem != plan.out[0] for i in range(len(self.stage_sizes)))

  def points(self) -> tuple[Point, ...]:
    """The points, bottom to top: 'stem', 'stage{i}_block{j}', ..., 'pre_logits'.

    Raises:
      ValueError: as :meth:`width_plan`.
    """
    plan = self.width_plan()
    records = [Point('stem', plan.stem, ('stem_conv', 'stem_bn'))]
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        name = f'stage{i + 1}_block{j + 1}'
        records.append(Point(name, plan.out[i], (block_module_name(name),),
                             stage_end=j + 1 == n))
    records.append(Point('pre_logits', plan.out[-1], (), imitated=False))
    return tuple(records)

  def read_points(self, intermediates) -> dict[str, Any]:
    """point name -> output, from the ``intermediates`` collection."""
    return {name: value[0] for name, value in intermediates.items()}

  def head_modules(self) -> tuple[str, ...]:
    """The top-level parameters of the output head (what a linear probe trains)."""
    return ('head',)

  def input_map_merge_refusal(self) -> str:
    """Why `merge_input_map` would not be exact ('' where it is: without shortcuts, a block
    reads its input through its first conv alone)."""
    if self.shortcuts:
      return ('a residual block also adds its input to its output, so a map on that input does '
              'not fold into a conv: use model.shortcuts=False')
    return ''

  def merge_input_map(self, params, point: str, matrix):
    """The params of the same network with the linear map `matrix` ([C, C]) applied to
    point `point`'s output, folded into the first conv of the block that reads it (or the
    head, after the pooling, which commutes with it): exact, since the conv's zero padding
    stays zero under a linear map.

    Raises:
      ValueError: a network with shortcuts (`input_map_merge_refusal`).
    """
    why = self.input_map_merge_refusal()
    if why:
      raise ValueError(f'merge_input_map: {why}')
    records = self.points()
    i = points_lib.index(records, point, 'point')
    reader = next((p.modules[0] for p in records[i + 1:] if p.modules), 'head')
    if reader == 'head':
      head = dict(params['head'])
      head['kernel'] = matrix.astype(head['kernel'].dtype) @ head['kernel']
      return {**params, 'head': head}
    block = dict(params[reader])
    conv1 = dict(block['conv1'])
    conv1['kernel'] = jnp.einsum('ij,hwjo->hwio', matrix.astype(conv1['kernel'].dtype),
                                 conv1['kernel'])
    block['conv1'] = conv1
    return {**params, reader: block}

  # --- Forward -------------------------------------------------------------------------------

  @nn.compact
  def __call__(self, x, train: bool = True, start_after: Optional[str] = None,
               stop_at: Optional[str] = None):
    """Runs the network, or the part of it between two points.

    Every computed point is sown into ``intermediates`` under its name, as a 1-tuple.
    Iterate ``points()`` rather than that dict: under jit its keys come back sorted.
    ``train``, ``start_after`` and ``stop_at`` pick the graph, so they must be static (bind
    them with functools.partial before jit or eval_shape).

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
    plan = self.width_plan()
    points = self.points()
    first, stop = points_lib.span(points, start_after, stop_at)
    if start_after is None and x.ndim != 4:
      raise ValueError(f'expected a [B, H, W, C] image, got shape {x.shape}')
    x = jnp.asarray(x, self.dtype)
    conv = functools.partial(Conv, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(
        self.norm, use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, BN_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BN_AXES))

    if first == 0:
      imagenet = self.stem == 'imagenet'
      x = conv(plan.stem, 7 if imagenet else 3, 2 if imagenet else self.stem_strides,
               name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      if imagenet:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      x = _constrain(x)
      self.sow('intermediates', 'stem', x)
      if stop == 0:
        return x

    projections = self.projections()
    point = 1  # index in `points` of the current block
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        if first <= point:
          x = self.block_cls(
              features=plan.inner[point - 1], conv=conv, norm=norm, out_features=plan.out[i],
              strides=2 if i > 0 and j == 0 else 1,
              projection=j == 0 and projections[i], shortcut=self.shortcuts,
              name=points[point].modules[0])(x)
          self.sow('intermediates', points[point].name, x)
          if stop == point:
            return x
        point += 1

    if first <= point:  # point == index of 'pre_logits'
      # Pool in float32: a mean over many bf16 values loses precision.
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      self.sow('intermediates', 'pre_logits', x)
      if stop == point:
        return x
    x = classifier(self.num_classes, self.dtype, self.param_dtype)(x)
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
