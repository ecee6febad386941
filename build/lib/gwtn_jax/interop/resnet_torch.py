"""torchvision / timm ResNet state dicts <-> `gwtn_jax.models.ResNet` variables.

A state dict here is a flat dict of torch name -> numpy array (`tensors.read_tensors` reads
one from a file). `describe` tells which of our networks a state dict holds, from its names and
shapes alone; `to_variables` converts it into a model's variables, checked against that model;
`from_variables` is the exact inverse, so that our networks load into torchvision's
(`load_state_dict(..., strict=True)`). Every failure is a one-line `InteropError` naming the
file (``where``) and the problem.

What converts: torchvision's resnet18/34/50/101/152 and wide_resnet50_2/101_2, timm's models of
the same layout (timm's ``resnet18`` ... ``resnet152``, whose names are torchvision's), our
CIFAR presets, and any of them at another width multiplier or with per-layer widths
(`WidthPlan`, e.g. a network that Adjoined Networks extracted). Refused, by their names:
timm's deep stems (``resnet50c/d/s/t``: ``conv1.0``, ``conv1.3``, ``conv1.6``), avg-pool
shortcuts (``resnet50d``: ``downsample.1`` is the conv), squeeze-and-excitation and ECA
attention (``seresnet``, ``ecaresnet``: ``.se.``), grouped convs (ResNeXt), headless nets
(timm ``num_classes=0``). timm variants whose extra layers have no parameters (the blur or
anti-aliased pooling of ``resnetblur50`` and ``resnetaa50``) have exactly resnet50's names and
shapes, so nothing here can tell them apart: they convert, but compute another function.

Name layout
-----------

torch name (state dict)                 ours (``variables``)
--------------------------------------  -------------------------------------------------------
conv1.weight          [O, I, k, k]      params/stem_conv/kernel                [k, k, I, O]
bn1.weight, bn1.bias  [C]               params/stem_bn/scale, params/stem_bn/bias
bn1.running_mean, bn1.running_var       batch_stats/stem_bn/mean, batch_stats/stem_bn/var
bn1.num_batches_tracked  (int64, 0-d)   (none: ignored on import, written on export)
layer{s}.{b}.conv{n}.weight             params/stage{s}_block{b + 1}_layers/conv{n}/kernel
layer{s}.{b}.bn{n}.*                    .../stage{s}_block{b + 1}_layers/bn{n}/* (as bn1)
layer{s}.{b}.downsample.0.weight        params/stage{s}_block{b + 1}_layers/proj_conv/kernel
layer{s}.{b}.downsample.1.*             .../stage{s}_block{b + 1}_layers/proj_bn/* (as bn1)
fc.weight             [classes, C]      params/head/kernel                     [C, classes]
fc.bias               [classes]         params/head/bias

``s`` counts stages from 1 and ``b`` blocks from 0 (torch's indices), so torch's ``layer1.0`` is
our ``stage1_block1``; ``n`` is 1, 2 (basic blocks) or 1, 2, 3 (bottleneck blocks). Conv
kernels are transposed OIHW <-> HWIO and the head's [out, in] <-> [in, out]; BatchNorm's
weight is our scale, its running statistics are our ``batch_stats``. Every value moves
unchanged, as float32 (float16 and bfloat16 tensors widen exactly; float64 ones are rounded).

Our CIFAR ResNets export in the same scheme: ``conv1`` is their 3x3 stem (``bn1`` its norm,
no max pool), three stages ``layer1`` .. ``layer3``, and ``downsample.0/1`` the 1x1 conv and
norm of their projection shortcuts (option B). A torch ResNet of the same layout (torchvision's
``BasicBlock``/``Bottleneck`` under a 3x3 stride-1 stem) loads them. ``stem_strides`` is not
in a state dict: describing one cannot tell it.

Architecture from the state dict: ``layer1.0.conv3`` present means bottleneck blocks; the
blocks per stage (from the ``layer{s}.{b}`` names), the block kind and the stem's kernel (7:
ImageNet, 3: CIFAR) pick our preset; ``fc.weight`` gives the classes and ``conv1.weight`` the
input channels. The width multiplier is the width of ``layer1.0.conv1`` (bottleneck: the inner
width, which is what torchvision's ``width_per_group / 64`` scales, so wide_resnet50_2 is our
resnet50 at 2.0) or of ``conv1`` (basic blocks: ours scales every channel) over the preset's;
when the widths follow no uniform multiplier, `TorchResNet.widths` holds them all.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Iterator, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gwtn_jax.interop.tensors import InteropError
from gwtn_jax.interop.tensors import first_few
from gwtn_jax.models import resnet
from gwtn_jax.models.resnet import WidthPlan

# (torch suffix, our collection, our leaf) of each kind of layer.
_TENSORS = {
    'conv': (('weight', 'params', 'kernel'),),
    'bn': (('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
           ('running_mean', 'batch_stats', 'mean'), ('running_var', 'batch_stats', 'var')),
    'dense': (('weight', 'params', 'kernel'), ('bias', 'params', 'bias')),
}
_NUM_BATCHES = 'num_batches_tracked'
_COLLECTIONS = ('params', 'batch_stats')
# torchvision's names of our presets at a width multiplier other than 1.
_TORCHVISION_WIDE = {('resnet50', 2.0): 'wide_resnet50_2', ('resnet101', 2.0): 'wide_resnet101_2'}
_BLOCK = re.compile(r'layer(\d+)\.(\d+)\.')


@dataclasses.dataclass(frozen=True)
class TorchResNet:
  """What a torchvision/timm ResNet state dict holds, as one of our networks.

  Attributes:
    name: our preset (a key of `gwtn_jax.models.MODELS`): 'resnet18' ... 'resnet152', or a
      CIFAR one ('cifar_resnet20', ...).
    width_multiplier: our ``model.width_multiplier``: the inner width over the preset's
      (bottleneck; 2.0 for wide_resnet50_2 and wide_resnet101_2) or every width over the
      preset's (basic blocks). 1.0 when ``widths`` is set (the widths then say everything).
    num_classes: rows of ``fc.weight``.
    widths: every layer's width when they follow no uniform multiplier (a pruned or
      extracted network), else None.
    in_channels: input channels of ``conv1`` (3 for RGB).
  """
  name: str
  width_multiplier: float
  num_classes: int
  widths: Optional[WidthPlan] = None
  in_channels: int = 3

  def model_fields(self) -> dict[str, Any]:
    """The `get_model` fields (besides the name) of the network it holds."""
    fields = {'num_classes': self.num_classes, 'width_multiplier': self.width_multiplier}
    if self.widths is not None:
      fields['widths'] = self.widths
    return fields

  def model(self, **fields) -> resnet.ResNet:
    """Our network of this architecture (``fields`` override, e.g. ``dtype``)."""
    return resnet.get_model(self.name, **{**self.model_fields(), **fields})

  def describe(self) -> str:
    """E.g. 'a resnet50 of 2x inner width (wide_resnet50_2), 1000 classes'."""
    w = self.width_multiplier
    if self.widths is not None:
      p = self.widths
      text = (f'a {self.name} of per-layer widths (stem {p.stem}, stages '
              f'{"/".join(map(str, p.out))}, inner {min(p.inner)}-{max(p.inner)})')
    elif w == 1:
      text = f'a {self.name}'
    else:
      bottleneck = _preset_fields(self.name)['block_cls'].expansion == 4
      text = f'a {self.name} of {w:g}x {"inner " if bottleneck else ""}width'
      if (self.name, w) in _TORCHVISION_WIDE:
        text += f' ({_TORCHVISION_WIDE[self.name, w]})'
    text += f', {self.num_classes} classes'
    if self.in_channels != 3:
      text += f', {self.in_channels} input channel{"s" if self.in_channels > 1 else ""}'
    return text


@dataclasses.dataclass(frozen=True)
class _Layer:
  """One torch module with parameters and its counterpart of ours.

  Attributes:
    torch: the torch module's name, e.g. 'layer1.0.downsample.0'.
    ours: our module's path, e.g. ('stage1_block1_layers', 'proj_conv').
    kind: 'conv', 'bn' or 'dense'.
    shape: its torch weight's shape as the model's widths give it.
  """
  torch: str
  ours: tuple[str, ...]
  kind: str
  shape: tuple[int, ...]

  def tensors(self) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(torch name, our collection, our path) of each of its tensors."""
    for suffix, collection, leaf in _TENSORS[self.kind]:
      yield f'{self.torch}.{suffix}', collection, self.ours + (leaf,)

  def torch_shape(self, suffix: str) -> tuple[int, ...]:
    if self.kind == 'bn':
      return self.shape
    return self.shape if suffix == 'weight' else self.shape[:1]


def _layers(model: resnet.ResNet, in_channels: int = 3) -> list[_Layer]:
  """Every layer of ``model`` in torchvision's state dict order, with its torch shape.

  Raises:
    ValueError: ``model``'s configuration is invalid (as `ResNet.width_plan`).
  """
  plan = model.width_plan()
  projections = model.projections()
  bottleneck = model.block_cls.expansion == 4
  k = 7 if model.stem == 'imagenet' else 3
  layers = [_Layer('conv1', ('stem_conv',), 'conv', (plan.stem, in_channels, k, k)),
            _Layer('bn1', ('stem_bn',), 'bn', (plan.stem,))]
  channels, block = plan.stem, 0
  for i, n in enumerate(model.stage_sizes):
    out = plan.out[i]
    for j in range(n):
      torch, ours = f'layer{i + 1}.{j}', resnet.block_module_name(f'stage{i + 1}_block{j + 1}')
      inner = plan.inner[block]
      block += 1
      if bottleneck:
        convs = ((inner, channels, 1, 1), (inner, inner, 3, 3), (out, inner, 1, 1))
      else:
        convs = ((inner, channels, 3, 3), (out, inner, 3, 3))
      for c, shape in enumerate(convs, 1):
        layers.append(_Layer(f'{torch}.conv{c}', (ours, f'conv{c}'), 'conv', shape))
        layers.append(_Layer(f'{torch}.bn{c}', (ours, f'bn{c}'), 'bn', shape[:1]))
      if j == 0 and projections[i]:
        layers.append(_Layer(f'{torch}.downsample.0', (ours, 'proj_conv'), 'conv',
                             (out, channels, 1, 1)))
        layers.append(_Layer(f'{torch}.downsample.1', (ours, 'proj_bn'), 'bn', (out,)))
      channels = out
  layers.append(_Layer('fc', ('head',), 'dense', (model.num_classes, channels)))
  return layers


def name_map(model: resnet.ResNet) -> dict[str, str]:
  """torch name -> our variable ('params/stem_conv/kernel', ...) of ``model``, in order.

  ``num_batches_tracked`` has no counterpart and is not listed.
  """
  return {torch: '/'.join((collection,) + path) for layer in _layers(model)
          for torch, collection, path in layer.tensors()}


# --- Reading a state dict --------------------------------------------------------------------


def _preset_fields(name: str) -> dict[str, Any]:
  """The ResNet fields that preset ``name`` fixes (with the ResNet defaults filled in)."""
  fields = {'num_filters': 64, 'stem': 'imagenet', **resnet.MODELS[name].keywords}
  fields['stage_sizes'] = tuple(fields['stage_sizes'])
  return fields


def _refuse_variants(tensors: Mapping[str, Any], where: str) -> None:
  """Raises the one-line error of a state dict that is no ResNet of our layout, if it is one.

  Checks what names alone tell: a prefix on every name, timm's deep stems, avg-pool shortcuts,
  attention, grouped convs, a missing classifier.
  """
  keys = set(tensors)
  if 'conv1.weight' not in keys and 'conv1.0.weight' not in keys:
    prefixed = [k[:-len('layer1.0.conv1.weight')] for k in keys
                if k.endswith('.layer1.0.conv1.weight')]
    if len(prefixed) == 1 and all(k.startswith(prefixed[0]) for k in keys):
      raise InteropError(f'{where}: every name starts with {prefixed[0]!r} (e.g. a '
                         f"DataParallel or Lightning wrapper); strip it to get torchvision's "
                         'names (conv1.weight, layer1.0.conv1.weight, ...)')
  if not any(k.startswith('layer1.') for k in keys):
    raise InteropError(f'{where}: no torchvision ResNet names (no layer1.*; it has '
                       f'{first_few(keys)})')
  variants = []
  stem = sorted(k for k in keys if k.startswith('conv1.') and k != 'conv1.weight')
  if stem:
    variants.append(f'a deep stem ({first_few({k.rsplit(".", 1)[0] for k in stem}, 3)}; '
                    "timm's resnet*c/d/s/t)")
  if any(re.search(r'\.downsample\.2\.', k) for k in keys) or any(
      re.search(r'\.downsample\.1\.weight$', k) and np.ndim(tensors[k]) == 4 for k in keys):
    variants.append("an avg-pool shortcut (downsample.1 is its conv; timm's resnet*d)")
  attention = sorted(k for k in keys if re.search(r'\.(se|attn|ca|sa|eca|ge)\.', k))
  if attention:
    variants.append(f'attention layers ({first_few(attention, 2)}; timm\'s seresnet/ecaresnet)')
  conv1, conv2 = tensors.get('layer1.0.conv1.weight'), tensors.get('layer1.0.conv2.weight')
  if ('layer1.0.conv3.weight' in keys and conv1 is not None and conv2 is not None
      and np.ndim(conv1) == 4 and np.ndim(conv2) == 4):
    c1, c2 = np.shape(conv1), np.shape(conv2)
    if c1[0] == c2[0] and c2[1] < c2[0] and c2[0] % c2[1] == 0:
      variants.append(f'grouped 3x3 convs (groups={c2[0] // c2[1]}: a ResNeXt)')
  if variants:
    raise InteropError(f'{where}: holds a ResNet variant we do not implement: '
                       f'{"; ".join(variants)}. Ours is torchvision\'s: one stem conv '
                       '(conv1.weight) and 1x1 strided conv shortcuts')
  if not any(k.startswith('fc.') for k in keys):
    raise InteropError(f'{where}: has no classifier (fc.weight, fc.bias): a headless net '
                       "(e.g. timm's num_classes=0) cannot fill model.head")


def _stage_sizes(keys, where: str) -> tuple[int, ...]:
  """Blocks per stage, from the 'layer{s}.{b}.' names."""
  blocks: dict[int, int] = {}
  for key in keys:
    m = _BLOCK.match(key)
    if m:
      s, b = int(m.group(1)), int(m.group(2))
      blocks[s] = max(blocks.get(s, 0), b + 1)
  stages = sorted(blocks)
  if stages != list(range(1, len(stages) + 1)):
    raise InteropError(f'{where}: stages {", ".join(f"layer{s}" for s in stages)} are not '
                       'layer1, layer2, ... in a row')
  return tuple(blocks[s] for s in stages)


def _find_preset(sizes: tuple[int, ...], bottleneck: bool, stem: str, where: str) -> str:
  block = resnet.BottleneckBlock if bottleneck else resnet.BasicBlock
  alike = []
  for name in resnet.MODELS:
    fields = _preset_fields(name)
    if fields['block_cls'] is block and fields['stem'] == stem:
      if fields['stage_sizes'] == sizes:
        return name
      alike.append(f'{name} {fields["stage_sizes"]}')
  kind = 'bottleneck' if bottleneck else 'basic'
  k = 7 if stem == 'imagenet' else 3
  raise InteropError(f'{where}: {kind} blocks per stage {sizes} under a {k}x{k} stem are no '
                     f'preset of ours ({", ".join(alike) or "none of that kind"})')


def _dim(tensors: Mapping[str, Any], key: str, ndim: int, where: str) -> tuple[int, ...]:
  shape = tuple(np.shape(tensors[key]))
  if len(shape) != ndim:
    raise InteropError(f'{where}: {key} has shape {shape}, expected {ndim} dimensions')
  return shape


def _tensors(n: int) -> str:
  return '1 tensor is' if n == 1 else f'{n} tensors are'


def _check_keys(tensors: Mapping[str, Any], layers: list[_Layer], where: str, what: str,
                hint: Any = '') -> None:
  """Raises the one-line error of names missing from, or extra in, a state dict."""
  expected, optional = set(), set()
  for layer in layers:
    expected.update(torch for torch, _, _ in layer.tensors())
    if layer.kind == 'bn':
      optional.add(f'{layer.torch}.{_NUM_BATCHES}')
  missing = expected - set(tensors)
  extra = set(tensors) - expected - optional
  problems = []
  if missing:
    problems.append(f'{_tensors(len(missing))} of {what} missing: {first_few(missing)}')
  if extra:
    problems.append(f'{_tensors(len(extra))} not of {what}: {first_few(extra)}')
  if problems:
    raise InteropError(f'{where}: {"; ".join(problems)}{hint() if callable(hint) else hint}')


def _check_shapes(tensors: Mapping[str, Any], layers: list[_Layer], where: str,
                  what: str) -> None:
  for layer in layers:
    for torch, _, _ in layer.tensors():
      found = tuple(np.shape(tensors[torch]))
      expected = layer.torch_shape(torch.rsplit('.', 1)[1])
      if found != expected:
        raise InteropError(f'{where}: {torch} has shape {found}, {what} of these widths '
                           f'expects {expected}')


def _read_widths(tensors: Mapping[str, Any], model: resnet.ResNet, where: str) -> WidthPlan:
  """Every layer's width, from the output channels of its conv in the state dict."""
  last = 'conv3' if model.block_cls.expansion == 4 else 'conv2'
  inner = tuple(_dim(tensors, f'layer{i + 1}.{j}.conv1.weight', 4, where)[0]
                for i, n in enumerate(model.stage_sizes) for j in range(n))
  out = tuple(_dim(tensors, f'layer{i + 1}.0.{last}.weight', 4, where)[0]
              for i in range(len(model.stage_sizes)))
  return WidthPlan(stem=_dim(tensors, 'conv1.weight', 4, where)[0], inner=inner, out=out)


def describe(tensors: Mapping[str, Any], where: str) -> TorchResNet:
  """Which of our networks a torchvision/timm ResNet state dict holds (names and shapes only).

  Args:
    tensors: torch name -> array (any object with a ``shape``; no values are read).
    where: the file or its config field, for errors.

  Returns:
    The TorchResNet; its every tensor is checked against that network (names and shapes),
    so `to_variables` with ``result.model()`` succeeds.

  Raises:
    InteropError: one line naming ``where``: a variant we do not implement (deep stem,
      avg-pool shortcut, attention, grouped convs), blocks per stage that are no preset,
      tensors missing or extra (the first few named), or a shape that does not fit.
  """
  _refuse_variants(tensors, where)
  if 'conv1.weight' not in tensors:
    raise InteropError(f'{where}: has no stem conv (conv1.weight)')
  k = _dim(tensors, 'conv1.weight', 4, where)[-1]
  stem = {7: 'imagenet', 3: 'cifar'}.get(k)
  if stem is None:
    raise InteropError(f'{where}: conv1.weight is a {k}x{k} stem conv; ours are 7x7 (ImageNet) '
                       'or 3x3 (CIFAR)')
  bottleneck = 'layer1.0.conv3.weight' in tensors
  name = _find_preset(_stage_sizes(tensors, where), bottleneck, stem, where)
  num_classes = _dim(tensors, 'fc.weight', 2, where)[0] if 'fc.weight' in tensors else 1
  model = resnet.get_model(name, num_classes=num_classes)
  _check_keys(tensors, _layers(model), where, f'a {name}')
  plan = _read_widths(tensors, model, where)
  in_channels = np.shape(tensors['conv1.weight'])[1]
  # The multiplier of the width it scales: the inner width (bottleneck) or every width.
  base = _preset_fields(name)['num_filters']
  w = (plan.inner[0] if bottleneck else plan.stem) / base
  try:
    uniform = model.clone(width_multiplier=w).width_plan() == plan
  except ValueError:  # The multiplier gives fractional channels elsewhere.
    uniform = False
  if uniform:
    found = TorchResNet(name, w, num_classes, None, in_channels)
  else:
    try:
      model.check_widths(plan, 'the widths')
    except ValueError as e:
      raise InteropError(f'{where}: does not fit a {name}: {e}') from None
    found = TorchResNet(name, 1.0, num_classes, plan, in_channels)
  _check_shapes(tensors, _layers(found.model(), in_channels), where, f'a {name}')
  return found


# --- Converting ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _cached_shapes(model: resnet.ResNet, in_channels: int) -> dict[str, Any]:
  return _shapes(model, in_channels)


def _shapes(model: resnet.ResNet, in_channels: int) -> dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} of ``model``'s ShapeDtypeStructs (no compute)."""
  image = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            image)
  abstract = flax.core.unfreeze(nn.meta.unbox(abstract))
  return {c: abstract.get(c, {}) for c in _COLLECTIONS}


def _model_shapes(model: resnet.ResNet, in_channels: int) -> dict[str, Any]:
  try:
    return _cached_shapes(model, in_channels)
  except TypeError:  # An unhashable field (a norm class bound to options, say).
    return _shapes(model, in_channels)


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
  """path tuple -> leaf of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_leaves(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _torch_shape(kind: str, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == 'conv':
    h, w, i, o = ours_shape
    return (o, i, h, w)
  if kind == 'dense' and len(ours_shape) == 2:
    return ours_shape[::-1]
  return ours_shape


def _to_ours(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == 'conv':
    value = value.transpose(2, 3, 1, 0)
  elif kind == 'dense' and value.ndim == 2:
    value = value.T
  return np.array(value, order='C')  # A copy: the result shares no memory with the input.


def _to_torch(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == 'conv':
    value = value.transpose(3, 2, 0, 1)
  elif kind == 'dense' and value.ndim == 2:
    value = value.T
  return np.array(value, order='C')  # A copy: the result shares no memory with the input.


def _float32(value: Any, name: str, where: str) -> np.ndarray:
  """``value`` as a float32 numpy array (float16/bfloat16 widen exactly)."""
  array = np.asarray(value)
  if array.dtype.kind != 'f' and array.dtype.name != 'bfloat16':
    raise InteropError(f'{where}: {name} is {array.dtype}, not floating point')
  return array.astype(np.float32, copy=False)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _fix_hint(tensors: Mapping[str, Any], model: resnet.ResNet, where: str) -> str:
  """' (the file holds a resnet101, 1000 classes: set model.name=...)', or '' if unknown."""
  try:
    found = describe(tensors, where)
  except InteropError:
    return ''
  fields, fixes = _preset_fields(found.name), []
  if (tuple(model.stage_sizes), model.block_cls, model.stem) != (
      fields['stage_sizes'], fields['block_cls'], fields['stem']):
    fixes.append(f'model.name={found.name}')
  if found.num_classes != model.num_classes:
    fixes.append(f'model.num_classes={found.num_classes}')
  if found.widths is not None:
    try:
      same = model.width_plan() == found.widths
    except ValueError:
      same = False
    if not same:
      fixes.append('model.widths to its per-layer widths')
  elif model.widths is not None or model.width_multiplier != found.width_multiplier:
    fixes.append(f'model.width_multiplier={found.width_multiplier:g}'
                 + (' and model.widths=None' if model.widths is not None else ''))
  fix = f': set {", ".join(fixes)}' if fixes else ''
  return f' (it holds {found.describe()}{fix})'


def to_variables(tensors: Mapping[str, Any], model: resnet.ResNet,
                 where: str) -> dict[str, Any]:
  """``model``'s variables from a torchvision/timm ResNet state dict.

  Args:
    tensors: torch name -> numpy array (``num_batches_tracked`` may be present or not; it is
      not used).
    model: our ResNet; the state dict must hold exactly its variables.
    where: the file or its config field, for errors.

  Returns:
    {'params': ..., 'batch_stats': ...}: nested dicts of float32 numpy arrays with exactly
    the tree and shapes of ``model.init`` (unboxed).

  Raises:
    InteropError: one line naming ``where``: a variant we do not implement, tensors missing
      or extra, or a tensor whose shape is not the model's (both shapes named, and the model
      field to change when the state dict is one of our networks).
    ValueError: ``model``'s configuration is invalid.
  """
  _refuse_variants(tensors, where)
  layers = _layers(model)
  hint = functools.partial(_fix_hint, tensors, model, where)
  _check_keys(tensors, layers, where, "the config's network", hint)
  stem = tensors['conv1.weight']
  in_channels = np.shape(stem)[1] if np.ndim(stem) == 4 else 3
  shapes = _model_shapes(model, in_channels)
  out = {c: {} for c in _COLLECTIONS}
  covered = set()
  for layer in layers:
    for torch, collection, path in layer.tensors():
      leaf = _lookup(shapes[collection], path)
      if leaf is None:
        raise InteropError(f'{where}: {torch} has no counterpart {"/".join(path)} in the '
                           "config's network")
      expected = _torch_shape(layer.kind, tuple(leaf.shape))
      found = tuple(np.shape(tensors[torch]))
      if found != expected:
        raise InteropError(f"{where}: {torch} has shape {found}, the config's network expects "
                           f'{expected}{hint()}')
      _set(out[collection], path, _to_ours(layer.kind, _float32(tensors[torch], torch, where)))
      covered.add((collection,) + path)
  unfilled = [c + '/' + '/'.join(p) for c in _COLLECTIONS for p in _leaves(shapes[c])
              if (c,) + p not in covered]
  if unfilled:
    raise InteropError(f"{where}: no torch tensor fills the config's network's "
                       f'{first_few(unfilled)}')
  return out


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def from_variables(variables: Mapping[str, Any], model: resnet.ResNet,
                   num_batches_tracked: int = 0,
                   where: str = 'variables') -> dict[str, np.ndarray]:
  """A torchvision state dict (torch name -> numpy array) of ``model``'s variables.

  The exact inverse of `to_variables`. The result loads into torchvision's network of the
  same architecture (``torchvision.models.resnet50(num_classes=...)``, or
  ``wide_resnet50_2`` for our resnet50 at width multiplier 2) with ``strict=True``.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of ``model`` (numpy or JAX arrays, boxed
      or not; other collections are ignored).
    model: our ResNet.
    num_batches_tracked: the value of every BatchNorm's ``num_batches_tracked`` (int64, 0-d).
    where: what ``variables`` are, for errors.

  Returns:
    torch name -> contiguous numpy array, in torchvision's order; float32 (whatever the
    parameter dtype) and int64 for ``num_batches_tracked``.

  Raises:
    InteropError: ``variables`` are not ``model``'s (a variable missing, extra, or of another
      shape; one line).
    ValueError: ``model``'s configuration is invalid.
  """
  variables = nn.meta.unbox(flax.core.unfreeze(dict(variables)))
  stem = _lookup(variables, ('params', 'stem_conv', 'kernel'))
  in_channels = np.shape(stem)[2] if stem is not None and np.ndim(stem) == 4 else 3
  shapes = _model_shapes(model, in_channels)
  expected = {(c,) + p: leaf for c in _COLLECTIONS for p, leaf in _leaves(shapes[c]).items()}
  given = {(c,) + p: leaf for c in _COLLECTIONS
           for p, leaf in _leaves(variables.get(c, {})).items()}
  missing, extra = set(expected) - set(given), set(given) - set(expected)
  if missing or extra:
    problems = [f'{len(names)} {what}: {first_few("/".join(n) for n in names)}'
                for names, what in ((missing, 'missing'), (extra, 'not of the model'))
                if names]
    raise InteropError(f'{where} are not the model\'s variables: {"; ".join(problems)}')
  for path, leaf in expected.items():
    if tuple(np.shape(given[path])) != tuple(leaf.shape):
      raise InteropError(f'{where}: {"/".join(path)} has shape {tuple(np.shape(given[path]))}, '
                         f'the model expects {tuple(leaf.shape)}')
  out = {}
  for layer in _layers(model, in_channels):
    for torch, collection, path in layer.tensors():
      value = _float32(given[(collection,) + path], '/'.join((collection,) + path), where)
      out[torch] = _to_torch(layer.kind, value)
    if layer.kind == 'bn':
      out[f'{layer.torch}.{_NUM_BATCHES}'] = np.array(num_batches_tracked, np.int64)
  return out
