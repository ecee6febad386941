"""Tests of gwtn_jax.models.resnet: sizes, imitation points, partial forwards, sharding names.

Big nets are only traced (jax.eval_shape), never initialized; forwards use tiny nets and
inputs so the file runs in seconds on two CPU cores.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gwtn_jax.models import MODELS, ResNet, get_model


def abstract_variables(model, shape=(1, 32, 32, 3), **kwargs):
  # train is bound outside eval_shape: under it, keyword arguments become tracers.
  return jax.eval_shape(functools.partial(model.init, train=False, **kwargs),
                        jax.random.key(0), jnp.zeros(shape))


def random_variables(model, shape, seed=0):
  """Unboxed variables drawn with numpy, shaped by an abstract init.

  Cheaper than model.init (whose threefry draws take seconds to compile on CPU), and with
  nonzero last-BN scales, so that every residual branch contributes to the outputs compared.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name == 'scale':
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 100
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  abstract = nn.meta.unbox(abstract_variables(model, shape))
  return jax.tree_util.tree_map_with_path(draw, abstract)


def apply(model, variables, x, **kwargs):
  # Jitted once per (model, options): one compile beats op-by-op dispatch on CPU, and tests
  # that run the same forward share it.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return _jitted_apply(model, tuple(sorted(kwargs.items())))(variables, x)


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, options):
  options = dict(options)
  options['mutable'] = list(options.get('mutable', ())) or False
  return jax.jit(functools.partial(model.apply, **options))


def num_params(model):
  params = nn.meta.unbox(abstract_variables(model)['params'])
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _names(model):
  return tuple(p.name for p in model.points())


def _stage_ends(model):
  return tuple(p.name for p in model.points() if p.stage_end)


def _channels(model):
  return {p.name: p.channels for p in model.points()}


def tiny_cifar(**kwargs):
  return get_model('cifar_resnet8', num_classes=5, **kwargs)


def tiny_bottleneck(**kwargs):
  # ResNet-50 layout at 1/16 width with the ImageNet stem, small enough to run.
  kwargs = {'num_filters': 4, 'stage_sizes': (1, 2, 1, 1), **kwargs}
  return get_model('resnet50', num_classes=5, **kwargs)


@pytest.fixture(scope='module')
def cifar_setup():
  model = tiny_cifar()
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  return model, random_variables(model, x.shape), x


@pytest.fixture(scope='module')
def real_init():
  """A real (boxed) init; unsafe_rbg because threefry takes seconds to compile on CPU."""
  model = tiny_cifar()
  x = jnp.ones((1, 8, 8, 3))
  key = jax.random.key(0, impl='unsafe_rbg')
  return model, jax.jit(functools.partial(model.init, train=False))(key, x), x


# --- Sizes -------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,kwargs,expected', [
    ('resnet18', {}, 11_689_512),
    ('resnet50', {}, 25_557_032),
    ('resnet50', {'width_multiplier': 2}, 68_883_240),  # torchvision wide_resnet50_2
    ('resnet101', {}, 44_549_160),
])
def test_param_counts_match_torchvision(name, kwargs, expected):
  assert num_params(get_model(name, num_classes=1000, **kwargs)) == expected


def test_every_preset_is_registered_and_builds():
  assert set(MODELS) == {
      'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'cifar_resnet8',
      'cifar_resnet20', 'cifar_resnet32', 'cifar_resnet44', 'cifar_resnet56',
      'cifar_resnet110', 'cifar_bottleneck20', 'cifar_bottleneck29', 'cifar_bottleneck164'}
  for name in MODELS:
    model = get_model(name, num_classes=10)
    assert isinstance(model, ResNet)
    model.channel_plan()
  assert get_model('cifar_resnet110', num_classes=10).stage_sizes == (18, 18, 18)
  bottleneck = get_model('cifar_bottleneck164', num_classes=10, width_multiplier=4.0)
  assert bottleneck.stage_sizes == (18, 18, 18)
  # Widening a bottleneck net keeps its block outputs (what LIT's sections need).
  plan, thin = bottleneck.channel_plan(), get_model('cifar_bottleneck20', num_classes=10).channel_plan()
  assert plan.out == thin.out == (64, 128, 256) and plan.inner == (64, 128, 256)


def test_unknown_model_name_lists_choices():
  with pytest.raises(ValueError, match=r"model.name='resnet5' is unknown.*resnet50.*"
                                       r"cifar_resnet20"):
    get_model('resnet5', num_classes=10)


@pytest.mark.parametrize('name,width,count', [
    ('resnet50', 0.3, '19.2'),       # bottleneck inner width 64 * 0.3
    ('cifar_resnet20', 1.1, '17.6'),  # basic-block stem 16 * 1.1
])
def test_non_integer_width_is_a_one_line_config_error(name, width, count):
  model = get_model(name, num_classes=10, width_multiplier=width)
  with pytest.raises(ValueError, match=rf'model.width_multiplier={width} gives {count} '
                                       'channels') as info:
    model.channel_plan()  # unbound: no init, no compile
  assert '\n' not in str(info.value)
  with pytest.raises(ValueError, match='width_multiplier'):
    _channels(model)


def test_other_config_errors_name_their_field():
  with pytest.raises(ValueError, match='model.stem='):
    tiny_cifar(stem='vit').channel_plan()
  with pytest.raises(ValueError, match='model.stem_strides='):
    get_model('resnet18', num_classes=10, stem_strides=2).channel_plan()
  with pytest.raises(ValueError, match='model.width_multiplier='):
    tiny_cifar(width_multiplier=0).channel_plan()


# --- Static description of the points ----------------------------------------------------------

def test_point_names():
  cifar = get_model('cifar_resnet20', num_classes=10)
  assert _names(cifar) == (
      'stem',
      'stage1_block1', 'stage1_block2', 'stage1_block3',
      'stage2_block1', 'stage2_block2', 'stage2_block3',
      'stage3_block1', 'stage3_block2', 'stage3_block3',
      'pre_logits')
  assert _stage_ends(cifar) == ('stage1_block3', 'stage2_block3', 'stage3_block3')
  r50 = get_model('resnet50', num_classes=10)
  names = _names(r50)
  assert len(names) == 1 + 16 + 1
  assert names[:2] == ('stem', 'stage1_block1') and names[-2:] == ('stage4_block3',
                                                                   'pre_logits')
  assert _stage_ends(r50) == ('stage1_block3', 'stage2_block4', 'stage3_block6',
                                     'stage4_block3')


def test_point_channels_wide_basic_scales_everything():
  thin = _channels(get_model('cifar_resnet20', num_classes=10))
  wide = _channels(get_model('cifar_resnet20', num_classes=10, width_multiplier=4))
  assert list(thin) == list(_names(get_model('cifar_resnet20', num_classes=10)))
  assert thin['stem'] == 16 and thin['stage2_block1'] == 32 and thin['pre_logits'] == 64
  assert wide == {k: 4 * v for k, v in thin.items()}
  r18 = _channels(get_model('resnet18', num_classes=10, width_multiplier=2))
  assert r18['stem'] == 128 and r18['pre_logits'] == 1024


def test_point_channels_wide_bottleneck_unchanged():
  thin = get_model('resnet50', num_classes=10)
  wide = get_model('resnet50', num_classes=10, width_multiplier=4)
  assert _channels(thin) == _channels(wide)
  assert _channels(thin)['stem'] == 64
  assert _channels(thin)['stage1_block1'] == 256
  assert _channels(thin)['pre_logits'] == 2048
  assert wide.channel_plan().inner == (256, 512, 1024, 2048)


def test_point_modules(cifar_setup):
  model, variables, _ = cifar_setup
  params = variables['params']
  assert set(params) == {'stem_conv', 'stem_bn', 'stage1_block1_layers',
                         'stage2_block1_layers', 'stage3_block1_layers', 'head'}
  modules = {p.name: p.modules for p in model.points()}
  # The points' modules and the head partition the parameters.
  assert sorted([m for ms in modules.values() for m in ms] + ['head']) == sorted(params)
  assert model.head_modules() == ('head',)
  assert modules['stem'] == ('stem_conv', 'stem_bn')
  assert modules['stage2_block1'] == ('stage2_block1_layers',)
  assert modules['pre_logits'] == ()
  assert [p.name for p in model.points() if not p.imitated] == ['pre_logits']
  assert all(p.layer is None for p in model.points())
  with pytest.raises(ValueError, match="stop_at='head' is not a point"):
    apply(model, variables, jnp.zeros((1, 8, 8, 3)), train=False, stop_at='head')


# --- Forward: intermediates, stop_at, start_after ------------------------------------------------

def test_intermediates_hold_exactly_the_points(cifar_setup):
  model, variables, x = cifar_setup
  logits, state = apply(model, variables, x, train=True,
                        mutable=['intermediates', 'batch_stats'])
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # jit returns dicts with sorted keys: consumers iterate points(), not the dict.
  inter = state['intermediates']
  assert set(inter) == set(_names(model))
  channels = _channels(model)
  for name, value in inter.items():
    assert isinstance(value, tuple) and len(value) == 1
    assert value[0].shape[0] == 2 and value[0].shape[-1] == channels[name], name
  assert inter['stem'][0].shape == (2, 8, 8, 16)
  assert inter['stage2_block1'][0].shape == (2, 4, 4, 32)
  assert inter['stage3_block1'][0].shape == (2, 2, 2, 64)
  assert inter['pre_logits'][0].shape == (2, 64)
  assert inter['pre_logits'][0].dtype == jnp.float32
  assert not jax.tree.all(jax.tree.map(np.array_equal, state['batch_stats'],
                                       variables['batch_stats']))


def test_intermediate_shapes_imagenet_bottleneck():
  model = tiny_bottleneck()
  x = jnp.zeros((2, 32, 32, 3))
  variables = abstract_variables(model, x.shape)
  logits, state = jax.eval_shape(
      functools.partial(model.apply, train=False, mutable=['intermediates']), variables, x)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  inter = {k: v[0].shape for k, v in state['intermediates'].items()}
  assert set(inter) == set(_names(model))
  assert inter['stem'] == (2, 8, 8, 4)  # 7x7/2 conv, then 3x3/2 max pool
  assert inter['stage1_block1'] == (2, 8, 8, 16)  # 4 * num_filters
  assert inter['stage2_block1'] == (2, 4, 4, 32)
  assert inter['stage4_block1'] == (2, 1, 1, 128)
  assert inter['pre_logits'] == (2, 128)


def test_cifar_stem_strides():
  model = tiny_cifar(stem_strides=2)
  x = jnp.zeros((1, 28, 28, 1))
  stem = jax.eval_shape(functools.partial(model.apply, train=False, stop_at='stem'),
                        abstract_variables(model, x.shape), x)
  assert stem.shape == (1, 14, 14, 16)


@pytest.fixture(scope='module')
def stop_at_runs(cifar_setup):
  """For each stop_at (None last): the compiled forward's flops, output and intermediates."""
  model, variables, x = cifar_setup
  runs = {}
  for stop_at in _names(model) + (None,):
    fn = jax.jit(functools.partial(model.apply, train=False, stop_at=stop_at,
                                   mutable=['intermediates']))
    compiled = fn.lower(variables, x).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # some jax versions: one dict per computation
      cost = cost[0]
    out, state = compiled(variables, x)
    runs[stop_at] = (cost['flops'], out, state['intermediates'])
  return runs


def test_stop_at_returns_the_point_and_sows_nothing_later(cifar_setup, stop_at_runs):
  model, _, _ = cifar_setup
  names = _names(model)
  _, _, full = stop_at_runs[None]
  assert set(full) == set(names)
  for k, name in enumerate(names):
    _, out, inter = stop_at_runs[name]
    assert set(inter) == set(names[:k + 1])
    np.testing.assert_array_equal(out, full[name][0])


def test_flops_grow_with_stop_at(stop_at_runs):
  # The truncated forward compiles only what it runs: a progressive phase pays for its depth.
  counts = [flops for flops, _, _ in stop_at_runs.values()]
  assert all(a < b for a, b in zip(counts, counts[1:])), counts


def test_stop_at_does_not_create_later_parameters():
  variables = abstract_variables(tiny_cifar(), (1, 8, 8, 3), stop_at='stage2_block1')
  assert set(variables['params']) == {'stem_conv', 'stem_bn', 'stage1_block1_layers',
                                      'stage2_block1_layers'}


@pytest.mark.parametrize('split', ['stem', 'stage1_block1', 'stage2_block1', 'pre_logits'])
def test_two_halves_equal_the_whole(cifar_setup, split):
  model, variables, x = cifar_setup
  whole = apply(model, variables, x, train=False)
  middle = apply(model, variables, x, train=False, stop_at=split)
  rest, state = apply(model, variables, middle, train=False, start_after=split,
                      mutable=['intermediates'])
  np.testing.assert_allclose(rest, whole, rtol=1e-5, atol=1e-6)
  names = _names(model)
  assert set(state.get('intermediates', {})) == set(names[names.index(split) + 1:])


def test_two_halves_split_inside_a_bottleneck_stage():
  model = tiny_bottleneck()  # stage2 holds two blocks: split between them
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = random_variables(model, x.shape)
  whole = apply(model, variables, x, train=False)
  middle = apply(model, variables, x, train=False, stop_at='stage2_block1')
  assert middle.shape == (2, 4, 4, 32)
  rest = apply(model, variables, middle, train=False, start_after='stage2_block1')
  np.testing.assert_allclose(rest, whole, rtol=1e-5, atol=1e-6)


def test_single_block(cifar_setup):
  model, variables, x = cifar_setup
  _, full = apply(model, variables, x, train=False, mutable=['intermediates'])
  inter = full['intermediates']
  out, state = apply(model, variables, inter['stage1_block1'][0], train=False,
                     start_after='stage1_block1', stop_at='stage2_block1',
                     mutable=['intermediates'])
  assert set(state['intermediates']) == {'stage2_block1'}
  np.testing.assert_allclose(out, inter['stage2_block1'][0], rtol=1e-5, atol=1e-6)


def test_bad_points_raise(cifar_setup):
  model, variables, x = cifar_setup
  with pytest.raises(ValueError, match=r"stop_at='stage9_block1' is not a point.*"
                                       'stage1_block1'):
    model.apply(variables, x, train=False, stop_at='stage9_block1')
  with pytest.raises(ValueError, match=r"start_after='block1' is not a point"):
    model.apply(variables, x, train=False, start_after='block1')
  with pytest.raises(ValueError, match='must come before'):
    model.apply(variables, x, train=False, start_after='stage2_block1', stop_at='stem')


def test_bfloat16_compute_float32_outputs():
  model = tiny_cifar(dtype=jnp.bfloat16)
  x = jnp.ones((1, 8, 8, 3))
  assert all(v.dtype == jnp.float32
             for v in jax.tree.leaves(nn.meta.unbox(abstract_variables(model, x.shape))))
  logits, state = apply(model, random_variables(model, x.shape), x, train=False,
                        mutable=['intermediates'])
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert state['intermediates']['stage1_block1'][0].dtype == jnp.bfloat16
  assert state['intermediates']['pre_logits'][0].dtype == jnp.float32


def test_init_conventions(real_init):
  _, variables, _ = real_init
  params = nn.meta.unbox(variables['params'])
  block = params['stage2_block1_layers']
  # Last BN of each block starts at zero, so that each block starts as its shortcut.
  assert not np.any(block['bn2']['scale'])
  assert np.all(block['bn1']['scale'] == 1) and np.all(block['proj_bn']['scale'] == 1)
  assert set(block['conv1']) == {'kernel'}  # no conv bias
  # He normal, fan_out: std sqrt(2 / (3 * 3 * 64)) for stage3's 3x3 convs.
  kernel = params['stage3_block1_layers']['conv2']['kernel']
  assert abs(np.std(kernel) / np.sqrt(2 / (9 * 64)) - 1) < 0.1


# --- Logical partitioning ------------------------------------------------------------------------

def test_partition_specs():
  model = tiny_bottleneck()
  specs = nn.get_partition_spec(abstract_variables(model))['params']
  assert specs['stem_conv']['kernel'] == P(None, None, 'conv_in', 'conv_out')
  assert specs['stem_bn']['scale'] == P('conv_out')
  assert specs['stem_bn']['bias'] == P('conv_out')
  assert specs['head']['kernel'] == P('features', 'classes')
  assert specs['head']['bias'] == P('classes')
  conv = {'kernel': P(None, None, 'conv_in', 'conv_out')}
  bn = {'scale': P('conv_out'), 'bias': P('conv_out')}
  for point in _names(model)[1:-1]:
    block = specs[point + '_layers']
    layers = {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3'}
    # Only each stage's first block changes shape, so only it has a projection.
    layers |= {'proj_conv', 'proj_bn'} if point.endswith('_block1') else set()
    assert set(block) == layers, point
    for layer, leaves in block.items():
      assert leaves == (conv if 'conv' in layer else bn), (point, layer)


def test_boxed_and_unboxed_params_give_the_same_logits(real_init):
  model, boxed, x = real_init
  assert isinstance(boxed['params']['head']['kernel'], nn.LogicallyPartitioned)
  unboxed = nn.meta.unbox(boxed)
  assert not any(isinstance(v, nn.Partitioned) for v in
                 jax.tree.leaves(unboxed, is_leaf=lambda v: isinstance(v, nn.Partitioned)))
  logits = apply(model, unboxed, x, train=False)
  np.testing.assert_array_equal(logits, apply(model, boxed, x, train=False))
  assert logits.shape == (1, 5)


@pytest.mark.parametrize('strides', [1, 2])
def test_one_by_one_conv_is_the_conv_it_replaces(strides):
  """A 1x1 Conv runs as a matrix product; outputs and both gradients are the conv's."""
  from gwtn_jax.models.resnet import Conv  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(1, 1, 3, 5)), jnp.float32)
  ours = lambda x, k: Conv(5, 1, strides).apply({'params': {'kernel': k}}, x)
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (strides, strides), ((0, 0), (0, 0)),
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(ours(x, kernel), conv(x, kernel), rtol=1e-5, atol=1e-5)
  assert ours(x, kernel).shape == (2, 7 if strides == 1 else 4, 7 if strides == 1 else 4, 5)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, kernel), jax.grad(loss(conv), (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
