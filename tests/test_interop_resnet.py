"""Tests of gwtn_jax.interop.resnet_torch: torchvision/timm ResNet state dicts <-> our variables.

Every network has random weights (nothing is downloaded) and every BatchNorm random running
statistics, so that a transposed kernel or a swapped statistic shows in the outputs. Our
variables are drawn with numpy in the shapes of an abstract init (model.init's random draws
take seconds to compile on CPU); forwards run on small images of odd sizes.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torchvision

from gwtn_jax.interop import resnet_torch
from gwtn_jax.interop.tensors import InteropError
from gwtn_jax.models import WidthPlan, get_model

pytestmark = pytest.mark.xdist_group('torch')

NUM_CLASSES = 10
WHERE = 'teacher_dir=/ckpt/resnet.pth'

TORCHVISION = {
    # our preset, width multiplier -> torchvision constructor
    ('resnet18', 1.0): torchvision.models.resnet18,
    ('resnet50', 1.0): torchvision.models.resnet50,
    ('resnet50', 2.0): torchvision.models.wide_resnet50_2,
}


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Random BatchNorm parameters and running statistics (the convs are already random)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
        m.running_mean.normal_(0.0, 0.5)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


@functools.lru_cache(maxsize=None)
def torch_net(name: str, width: float) -> torch.nn.Module:
  return randomize(TORCHVISION[name, width](num_classes=NUM_CLASSES))


def state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def load(net: torch.nn.Module, tensors) -> None:
  net.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)


def random_variables(model, in_channels: int = 3, seed: int = 0):
  """Our variables in numpy, random (nonzero last-BN scales, positive variances)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name in ('bias', 'mean'):
      return rng.normal(0, 0.5, leaf.shape).astype(np.float32)
    fan_in = np.prod(leaf.shape[:-1])
    return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

  abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 16, 16, in_channels), jnp.float32))
  abstract = nn.meta.unbox(abstract)
  return {c: jax.tree_util.tree_map_with_path(draw, abstract[c])
          for c in ('params', 'batch_stats')}


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(functools.partial(model.apply, train=False, mutable=['intermediates']))


def forward(model, variables, x_nchw: np.ndarray):
  """(logits, {stage number: its last block's output, NCHW}) of our model."""
  logits, state = _forward(model)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
  points = model.read_points(state['intermediates'])
  stages = {}
  for p in model.points():
    if p.stage_end:
      stages[int(p.name[len('stage'):p.name.index('_')])] = np.asarray(
          points[p.name]).transpose(0, 3, 1, 2)
  return np.asarray(logits), stages


def torch_forward(net, x_nchw: np.ndarray, stages: int = 4):
  """(logits, {stage number: output of layer{stage}}) of a torch ResNet."""
  outputs, hooks = {}, []
  for s in range(1, stages + 1):
    hooks.append(getattr(net, f'layer{s}').register_forward_hook(
        lambda _m, _i, y, s=s: outputs.__setitem__(s, y.detach().numpy())))
  try:
    with torch.no_grad():
      logits = net(torch.from_numpy(x_nchw)).numpy()
  finally:
    for h in hooks:
      h.remove()
  return logits, outputs


def assert_close(ours, reference, what: str) -> float:
  """f32 agreement scaled to the reference's magnitude; returns the max abs diff."""
  scale = float(np.max(np.abs(reference)))
  diff = float(np.max(np.abs(ours - reference)))
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * scale, err_msg=what)
  print(f'{what}: max abs diff {diff:.3g} (max |ref| {scale:.3g}, rel {diff / scale:.2g})')
  return diff


def image(*shape, seed=1) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def one_line_error(fn, *args) -> str:
  with pytest.raises(InteropError) as info:
    fn(*args)
  message = str(info.value)
  assert '\n' not in message, message
  assert message.startswith(WHERE), message
  return message


# --- Parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize('name,width', list(TORCHVISION))
def test_parity_with_torchvision(name, width):
  net = torch_net(name, width)
  tensors = state_dict(net)
  found = resnet_torch.describe(tensors, WHERE)
  assert (found.name, found.width_multiplier, found.num_classes, found.widths) == (
      name, width, NUM_CLASSES, None)
  model = get_model(name, num_classes=NUM_CLASSES, width_multiplier=width)
  assert found.model() == model
  variables = resnet_torch.to_variables(tensors, model, WHERE)

  x = image(2, 3, 67, 53)
  logits, stages = forward(model, variables, x)
  ref_logits, ref_stages = torch_forward(net, x)
  assert sorted(stages) == sorted(ref_stages) == [1, 2, 3, 4]
  for s in stages:
    assert stages[s].shape == ref_stages[s].shape, s
    assert_close(stages[s], ref_stages[s], f'{name} x{width:g} layer{s}')
  assert_close(logits, ref_logits, f'{name} x{width:g} logits')


# --- Round trips -----------------------------------------------------------------------------


def assert_same_tensors(exported, original):
  assert list(exported) == list(original)  # torchvision's order too
  for k, v in original.items():
    assert exported[k].dtype == v.dtype, k
    np.testing.assert_array_equal(exported[k], v, err_msg=k)


@pytest.mark.parametrize('name,width', [('resnet50', 1.0), ('resnet50', 2.0)])
def test_round_trip_is_bitwise(name, width):
  net = torch_net(name, width)
  with torch.no_grad():  # A count other than 0, to see that the export writes the one given.
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.num_batches_tracked.fill_(123)
  tensors = state_dict(net)
  model = resnet_torch.describe(tensors, WHERE).model()
  variables = resnet_torch.to_variables(tensors, model, WHERE)
  for leaf in jax.tree.leaves(variables):
    assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
  np.testing.assert_array_equal(variables['params']['stem_conv']['kernel'],
                                tensors['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['batch_stats']['stage2_block1_layers']['proj_bn']['var'],
                                tensors['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(variables['params']['head']['kernel'], tensors['fc.weight'].T)
  exported = resnet_torch.from_variables(variables, model, num_batches_tracked=123)
  assert_same_tensors(exported, tensors)
  assert exported['bn1.num_batches_tracked'].shape == ()


def test_timm_resnet50_round_trips():
  net = randomize(timm.create_model('resnet50', pretrained=False, num_classes=NUM_CLASSES))
  tensors = state_dict(net)
  found = resnet_torch.describe(tensors, WHERE)
  assert (found.name, found.width_multiplier, found.num_classes) == ('resnet50', 1.0, 10)
  assert found.describe() == 'a resnet50, 10 classes'
  variables = resnet_torch.to_variables(tensors, found.model(), WHERE)
  assert_same_tensors(resnet_torch.from_variables(variables, found.model()), tensors)
  # Without num_batches_tracked (e.g. a converted safetensors file) it imports the same.
  bare = {k: v for k, v in tensors.items() if not k.endswith('num_batches_tracked')}
  again = resnet_torch.to_variables(bare, found.model(), WHERE)
  jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_half_precision_widens_exactly():
  tensors = state_dict(torch_net('resnet18', 1.0))
  half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
  variables = resnet_torch.to_variables(half, get_model('resnet18', num_classes=10), WHERE)
  kernel = variables['params']['stage3_block2_layers']['conv2']['kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel, half['layer3.1.conv2.weight'].astype(np.float32).transpose(2, 3, 1, 0))


# --- Export ----------------------------------------------------------------------------------


def test_export_loads_into_torchvision_strict():
  model = get_model('resnet50', num_classes=NUM_CLASSES)
  variables = random_variables(model)
  tensors = resnet_torch.from_variables(variables, model, num_batches_tracked=7)
  assert tensors['layer4.2.bn3.num_batches_tracked'].dtype == np.int64
  net = torchvision.models.resnet50(num_classes=NUM_CLASSES)
  load(net, tensors)
  net.eval()
  assert int(net.layer1[0].bn1.num_batches_tracked) == 7
  x = image(2, 3, 45, 39, seed=2)
  logits, stages = forward(model, variables, x)
  ref_logits, ref_stages = torch_forward(net, x)
  assert_close(stages[4], ref_stages[4], 'export resnet50 layer4')
  assert_close(logits, ref_logits, 'export resnet50 logits')
  # And back: the export imports to the same variables.
  back = resnet_torch.to_variables(tensors, model, WHERE)
  jax.tree.map(np.testing.assert_array_equal, back, variables)


# --- Bad input -------------------------------------------------------------------------------


def test_timm_resnet50d_is_refused():
  tensors = state_dict(timm.create_model('resnet50d', pretrained=False, num_classes=10))
  message = one_line_error(resnet_torch.describe, tensors, WHERE)
  assert 'deep stem' in message and 'avg-pool shortcut' in message, message
  message = one_line_error(resnet_torch.to_variables, tensors,
                           get_model('resnet50', num_classes=10), WHERE)
  assert 'deep stem' in message, message


def test_missing_and_extra_tensors_are_named():
  tensors = state_dict(torch_net('resnet50', 1.0))
  missing = {k: v for k, v in tensors.items()
             if k not in ('layer2.1.bn1.weight', 'layer3.0.downsample.0.weight')}
  message = one_line_error(resnet_torch.describe, missing, WHERE)
  assert '2 tensors are' in message and 'missing' in message, message
  assert 'layer2.1.bn1.weight' in message and 'layer3.0.downsample.0.weight' in message
  model = get_model('resnet50', num_classes=10)
  message = one_line_error(resnet_torch.to_variables, missing, model, WHERE)
  assert 'missing' in message and 'layer2.1.bn1.weight' in message, message

  extra = {**tensors, 'layer4.2.extra.weight': np.zeros(3, np.float32),
           'aux_head.weight': np.zeros((3, 3), np.float32)}
  message = one_line_error(resnet_torch.describe, extra, WHERE)
  assert 'not of a resnet50' in message, message
  assert 'aux_head.weight' in message and 'layer4.2.extra.weight' in message, message
  message = one_line_error(resnet_torch.to_variables, extra, model, WHERE)
  assert 'aux_head.weight, layer4.2.extra.weight' in message, message


def test_wrong_shape_is_named_with_both_shapes():
  tensors = state_dict(torch_net('resnet50', 1.0))
  bad = {**tensors, 'layer3.2.conv2.weight': np.zeros((256, 256, 1, 3), np.float32)}
  message = one_line_error(resnet_torch.describe, bad, WHERE)
  assert 'layer3.2.conv2.weight' in message and '(256, 256, 1, 3)' in message, message
  assert '(256, 256, 3, 3)' in message, message
  message = one_line_error(resnet_torch.to_variables, bad,
                           get_model('resnet50', num_classes=10), WHERE)
  assert 'layer3.2.conv2.weight has shape (256, 256, 1, 3)' in message, message
  assert 'expects (256, 256, 3, 3)' in message, message


def test_architecture_mismatch_names_the_field():
  tensors = state_dict(torch_net('resnet50', 2.0))
  message = one_line_error(resnet_torch.to_variables, tensors,
                           get_model('resnet50', num_classes=1000), WHERE)
  assert 'layer1.0.conv1.weight has shape (128, 64, 1, 1)' in message, message
  assert 'expects (64, 64, 1, 1)' in message, message
  assert 'wide_resnet50_2' in message and 'model.width_multiplier=2' in message, message
  assert 'model.num_classes=10' in message, message
  message = one_line_error(resnet_torch.to_variables, tensors,
                           get_model('resnet101', num_classes=10, width_multiplier=2.0), WHERE)
  assert 'missing' in message and 'model.name=resnet50' in message, message


def test_depth_that_is_no_preset_is_refused():
  net = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [2, 2, 2, 2],
                                         num_classes=10)
  message = one_line_error(resnet_torch.describe, state_dict(net), WHERE)
  assert '(2, 2, 2, 2)' in message and 'no preset' in message, message
  assert 'resnet50 (3, 4, 6, 3)' in message, message


@pytest.mark.parametrize('variant,words', [('resnext50_32x4d', 'groups=32'),
                                           ('seresnet50', 'attention')])
def test_other_timm_variants_are_refused(variant, words):
  tensors = state_dict(timm.create_model(variant, pretrained=False, num_classes=10))
  assert words in one_line_error(resnet_torch.describe, tensors, WHERE)


def test_prefix_and_headless_are_refused():
  tensors = state_dict(torch_net('resnet18', 1.0))
  message = one_line_error(resnet_torch.describe,
                           {f'module.{k}': v for k, v in tensors.items()}, WHERE)
  assert "'module.'" in message, message
  headless = {k: v for k, v in tensors.items() if not k.startswith('fc.')}
  assert 'no classifier' in one_line_error(resnet_torch.describe, headless, WHERE)


# --- CIFAR and per-layer widths --------------------------------------------------------------


class TorchCifarResNet(torch.nn.Module):
  """A CIFAR ResNet of torchvision's BasicBlocks under a 3x3 stem, in our export's layout."""

  def __init__(self, blocks: int, num_classes: int, widths=(16, 32, 64)):
    super().__init__()
    block = torchvision.models.resnet.BasicBlock
    self.conv1 = torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(widths[0])
    channels = widths[0]
    for i, width in enumerate(widths):
      layers = []
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        downsample = None
        if stride != 1 or channels != width:
          downsample = torch.nn.Sequential(
              torch.nn.Conv2d(channels, width, 1, stride, bias=False),
              torch.nn.BatchNorm2d(width))
        layers.append(block(channels, width, stride, downsample))
        channels = width
      setattr(self, f'layer{i + 1}', torch.nn.Sequential(*layers))
    self.fc = torch.nn.Linear(channels, num_classes)

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean(dim=(2, 3)))


def test_cifar_export_round_trips_and_matches_torch():
  model = get_model('cifar_resnet20', num_classes=NUM_CLASSES)
  variables = random_variables(model)
  tensors = resnet_torch.from_variables(variables, model)
  assert tensors['conv1.weight'].shape == (16, 3, 3, 3)
  assert 'layer1.0.downsample.0.weight' not in tensors  # stage 1 keeps the stem's width
  assert tensors['layer2.0.downsample.0.weight'].shape == (32, 16, 1, 1)
  assert not any(k.startswith('layer4') for k in tensors)
  found = resnet_torch.describe(tensors, WHERE)
  assert (found.name, found.width_multiplier, found.widths) == ('cifar_resnet20', 1.0, None)
  back = resnet_torch.to_variables(tensors, found.model(), WHERE)
  jax.tree.map(np.testing.assert_array_equal, back, variables)
  assert_same_tensors(resnet_torch.from_variables(back, model), tensors)

  net = TorchCifarResNet(3, NUM_CLASSES)
  load(net, tensors)
  x = image(2, 3, 15, 13, seed=3)
  logits, stages = forward(model, variables, x)
  ref_logits, ref_stages = torch_forward(net.eval(), x, stages=3)
  for s in (1, 2, 3):
    assert_close(stages[s], ref_stages[s], f'cifar_resnet20 layer{s}')
  assert_close(logits, ref_logits, 'cifar_resnet20 logits')


def test_cifar_width_multiplier_is_described():
  model = get_model('cifar_bottleneck20', num_classes=100, width_multiplier=1.5)
  tensors = resnet_torch.from_variables(random_variables(model, in_channels=1), model)
  found = resnet_torch.describe(tensors, WHERE)
  assert (found.name, found.width_multiplier, found.in_channels) == ('cifar_bottleneck20', 1.5, 1)
  assert found.describe() == ('a cifar_bottleneck20 of 1.5x inner width, 100 classes, '
                              '1 input channel')
  assert found.model() == model


@pytest.mark.parametrize('name,width,plan', [
    # An Adjoined-Networks-extracted resnet50: the wide net's fields, pruned inner widths.
    ('resnet50', 2.0, WidthPlan(stem=64, inner=(17, 64, 128, 40, 256, 9, 100, 33, 512, 77, 1,
                                                300, 256, 256, 512, 1024),
                                out=(256, 512, 1024, 2048))),
    ('cifar_resnet8', 1.0, WidthPlan(stem=12, inner=(5, 7, 9), out=(12, 20, 40))),
])
def test_per_layer_widths_round_trip(name, width, plan):
  model = get_model(name, num_classes=NUM_CLASSES, width_multiplier=width, widths=plan)
  variables = random_variables(model)
  tensors = resnet_torch.from_variables(variables, model)
  found = resnet_torch.describe(tensors, WHERE)
  assert (found.name, found.widths, found.width_multiplier) == (name, plan, 1.0)
  assert 'per-layer widths' in found.describe()
  for target in (model, found.model()):
    back = resnet_torch.to_variables(tensors, target, WHERE)
    jax.tree.map(np.testing.assert_array_equal, back, variables)
  assert_same_tensors(resnet_torch.from_variables(back, model), tensors)
  # The widths are the file's: a uniform model of the same preset does not take them.
  message = one_line_error(resnet_torch.to_variables, tensors,
                           get_model(name, num_classes=NUM_CLASSES), WHERE)
  assert 'model.widths' in message, message
