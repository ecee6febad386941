"""Adjoined networks (AN) and DAN: widths, the sliced small path, extraction, losses, steps.

Tiny nets on 8x8 inputs, but wide enough (64/128/256 channels) that the masking rule reduces
some groups and not others.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import one_train_step
from gwtn_jax import models
from gwtn_jax.methods import adjoined
from gwtn_jax.methods.adjoined import network as network_lib
from gwtn_jax.methods.adjoined import widths as widths_lib
from gwtn_jax.methods import tasks
from gwtn_jax.models import resnet

SHAPE = (8, 8, 3)
TASK = tasks.ImageClassification(SHAPE)


def basic(**kwargs):
  # Stages of 64, 128 and 256 channels: stage 1 unmasked, stages 2 and 3 (partly) masked.
  return models.get_model('cifar_resnet8', num_classes=5, num_filters=64, **kwargs)


def bottleneck():
  # Inner widths 48 and 96, streams 192 and 384: stage 2 masked, stage 1 not.
  return models.get_model('resnet50', num_classes=5, num_filters=48, stage_sizes=(1, 1))


def batch(n=2, shape=SHAPE, seed=1):
  images = jax.random.normal(jax.random.key(seed), (n,) + shape)
  return {'image': images, 'label': jnp.arange(n) % 5, 'mask': jnp.ones((n,))}


def draw(abstract, seed=0):
  """Random values shaped like an abstract tree; nonzero BN scales, so every branch counts."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    if name == 'var':
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if name == 'scale':
      return (1 + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    fan_in = np.prod(x.shape[:-1]) if len(x.shape) > 1 else 100
    return (rng.normal(size=x.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, nn.meta.unbox(abstract))


def method_variables(method, shape=SHAPE, seed=0):
  abstract = jax.eval_shape(method.init, jax.random.key(0), batch(1, shape))
  return draw(abstract, seed)


def cost(fn, *args):
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # some jax versions: one dict per computation
    analysis = analysis[0]
  return analysis['flops']


# --- Widths --------------------------------------------------------------------------------------

def test_adjoined_widths_of_a_basic_net():
  model = basic()
  assert widths_lib.width_groups(model) == {
      'stem': 64, 'stage1_block1_inner': 64, 'stage2_stream': 128, 'stage2_block1_inner': 128,
      'stage3_stream': 256, 'stage3_block1_inner': 256}
  # stage2's conv1 reads 64 channels (unmasked); its conv2 (128 -> 128) is masked.
  assert adjoined.adjoined_groups(model) == ('stage2_stream', 'stage3_stream',
                                             'stage3_block1_inner')
  assert adjoined.adjoined_widths(model, 2) == resnet.WidthPlan(64, (64, 128, 128), (64, 64, 128))
  assert adjoined.adjoined_widths(model, 4) == resnet.WidthPlan(64, (64, 128, 64), (64, 32, 64))
  assert adjoined.adjoined_widths(model, 1) == model.width_plan()


def test_resnet50_groups_follow_the_papers_conv_rule():
  model = models.get_model('resnet50', num_classes=10)
  widths, reduced = widths_lib.width_groups(model), set(adjoined.adjoined_groups(model))
  convs = widths_lib.conv_layers(model)
  assert len(convs) == 53  # 49 + 4 projections
  reductions = {c.name: c.reduction for c in convs}
  assert reductions['stem_conv'] == 2 and reductions['stage1_block1_layers/conv1'] == 4
  assert reductions['stage2_block1_layers/conv1'] == 4  # v1.5: the 3x3 conv strides
  assert reductions['stage2_block1_layers/conv2'] == 8
  assert reductions['stage4_block1_layers/conv1'] == 16
  assert reductions['stage4_block3_layers/conv3'] == 32
  norms = {c.name: c.norm for c in convs}
  assert norms['stem_conv'] == 'stem_bn'
  assert norms['stage2_block1_layers/proj_conv'] == 'stage2_block1_layers/proj_bn'
  assert norms['stage4_block3_layers/conv3'] == 'stage4_block3_layers/bn3'
  for conv in convs:
    c_in = 3 if conv.in_group is None else widths[conv.in_group]
    masked = c_in > 64 and widths[conv.out_group] > 64
    assert (conv.out_group in reduced) == masked, conv
  plan = adjoined.adjoined_widths(model, 2)
  assert plan == resnet.WidthPlan(64, (64,) * 3 + (64,) * 4 + (128,) * 6 + (256,) * 3,
                                  (256, 256, 512, 1024))


def test_basic_projection_follows_its_stream():
  # ResNet-18 stage 2: the projection reads 64 channels (unmasked by the conv rule) but writes
  # the stream its block's masked conv2 writes, so it follows the stream.
  model = models.get_model('resnet18', num_classes=10)
  reduced = adjoined.adjoined_groups(model)
  assert 'stage2_stream' in reduced and 'stage2_block1_inner' not in reduced
  assert 'stage2_block2_inner' in reduced and 'stem' not in reduced


@pytest.mark.parametrize('cf,match', [(0, 'cf=0 must be'), (2.5, 'cf=2.5 must be'),
                                      (3, 'cf=3 does not divide the 128 channels')])
def test_bad_cf_is_a_one_line_error(cf, match):
  with pytest.raises(ValueError, match=match) as info:
    adjoined.adjoined_widths(basic(), cf)
  assert '\n' not in str(info.value)


def test_width_plan_errors_name_widths():
  plan = basic().width_plan()
  bad = [resnet.WidthPlan(64, (64, 128), (64, 128, 256)),        # one inner width short
         resnet.WidthPlan(64, (64, 128, 256), (64, 0, 256)),     # non-positive
         resnet.WidthPlan(64, (64, 128, 256), (32, 128, 256))]   # stage1 has no projection
  for widths in bad:
    with pytest.raises(ValueError, match='model.widths=') as info:
      basic(widths=widths).points()
    assert '\n' not in str(info.value)
  with pytest.raises(ValueError, match='small=.* exceeds'):
    adjoined.Adjoined(basic(), TASK, 4, resnet.WidthPlan(64, (64, 128, 512), plan.out), 2)


def test_explicit_full_widths_change_nothing():
  x = jnp.zeros((1,) + SHAPE)
  default = jax.eval_shape(functools.partial(basic().init, train=False), jax.random.key(0), x)
  explicit = basic(widths=basic().width_plan())
  assert explicit.points() == basic().points()
  same = jax.eval_shape(functools.partial(explicit.init, train=False), jax.random.key(0), x)
  assert jax.tree.structure(default) == jax.tree.structure(same)
  assert jax.tree.map(lambda a: a.shape, default) == jax.tree.map(lambda a: a.shape, same)
  assert not any('_small' in name for name in default['params'])


# --- The small path ----------------------------------------------------------------------------

@pytest.mark.parametrize('make,shape', [(basic, SHAPE), (bottleneck, (16, 16, 3))])
def test_extracted_small_network_reproduces_the_small_path_exactly(make, shape):
  model = make()
  small = adjoined.adjoined_widths(model, 2)
  assert small != model.width_plan()
  method = adjoined.Adjoined(model, tasks.ImageClassification(shape), 4, small, 2)
  variables = method_variables(method, shape)
  x = batch(2, shape)['image']
  # What the loss and eval run: the method's adjoined network, read from the whole tree.
  network = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  path_model, path_variables = method._adjoined(variables['params'], network, 0, None)  # pylint: disable=protected-access
  expected = jax.jit(functools.partial(path_model.apply, train=False))(path_variables, x)
  small_model, small_variables = network_lib.extract(model, variables, small)
  assert small_model.widths == small
  got = jax.jit(functools.partial(small_model.apply, train=False))(small_variables, x)
  np.testing.assert_array_equal(got, expected)
  assert np.all(np.isfinite(got))
  # The export is the same network.
  exported = method.export(variables)
  assert jax.tree.all(jax.tree.map(np.array_equal, exported, small_variables))


def test_small_path_slices_kernels_and_costs_less():
  model = basic()
  small = adjoined.adjoined_widths(model, 2)
  method = adjoined.Adjoined(model, TASK, 4, small, 2)
  variables = method_variables(method)
  small_model, extracted = network_lib.extract(model, variables, small)
  kernel = variables['params']['stage3_block1_layers']['conv2']['kernel']
  assert kernel.shape == (3, 3, 256, 256)
  sliced = extracted['params']['stage3_block1_layers']['conv2']['kernel']
  assert sliced.shape == (3, 3, 128, 128)
  np.testing.assert_array_equal(sliced, kernel[:, :, :128, :128])
  assert extracted['params']['head']['kernel'].shape == (128, 5)
  assert extracted['batch_stats']['stage2_block1_layers']['bn2']['mean'].shape == (64,)
  x = batch()['image']
  big_flops = cost(functools.partial(model.apply, train=False), variables, x)
  # The small forward as the loss runs it: slicing the shared variables, then the small net.
  small_flops = cost(lambda v, x: small_model.apply(network_lib.read(small_model, v), x,
                                                    train=False), variables, x)
  # Convs by hand: the big net does 12.2M multiply-accumulates, the small one 8.2M.
  assert small_flops < 0.75 * big_flops, (small_flops, big_flops)


# --- AN ----------------------------------------------------------------------------------------

def test_lambda_schedule():
  values = [float(adjoined.lambda_schedule(s, 10, 4)) for s in (0, 9, 10, 19, 20, 35, 1000)]
  # min(4 (e / 4)^2, 1) for epochs e = 0, 0, 1, 1, 2, 3, 100.
  assert values == pytest.approx([0.0, 0.0, 0.25, 0.25, 1.0, 1.0, 1.0])
  assert float(adjoined.lambda_schedule(30, 10, 10)) == pytest.approx(0.36)
  in_graph = jax.jit(lambda s: adjoined.lambda_schedule(s, 10, 4))(jnp.int32(15))
  assert float(in_graph) == pytest.approx(0.25)
  # Default E: ceil(steps / steps_per_epoch).
  assert adjoined.Adjoined(basic(), TASK, 25, basic().width_plan(), 10).epochs == 3


def test_tau_schedule_decays_exponentially():
  taus = [float(adjoined.tau_schedule(s, 100, 5.0, 0.5)) for s in (0, 50, 100, 200)]
  assert taus == pytest.approx([5.0, math.sqrt(2.5), 0.5, 0.5], rel=1e-5)


def test_kl_gradients_reach_the_big_network():
  model = basic()
  method = adjoined.Adjoined(model, TASK, 40, adjoined.adjoined_widths(model, 2), 10)
  variables = method_variables(method)
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}
  late = dict(state, adjoined={'step': jnp.int32(30)})  # lambda = 1
  grad = jax.jit(jax.grad(lambda p, s: method.loss(method.phases()[0], p, s, None, batch(),
                                                   jax.random.key(0))[0]))
  g0, g1 = grad(params, state), grad(params, late)
  # lambda = 0: the small network's own BatchNorm gets nothing; lambda = 1: the KL's gradient
  # (the difference) reaches a BatchNorm only the big network uses.
  assert not np.any(g0['stem_bn_small']['scale']) and np.any(g1['stem_bn_small']['scale'])
  block = 'stage3_block1_layers'
  kl_grad = g1[block]['bn1']['scale'] - g0[block]['bn1']['scale']
  assert np.max(np.abs(kl_grad)) > 1e-6


def test_init_takes_a_plain_network_and_starts_the_small_norms_fresh():
  model = basic()
  key = jax.random.key(0, impl='unsafe_rbg')  # threefry takes seconds to compile on CPU
  plain = draw(jax.eval_shape(functools.partial(model.init, train=False), key,
                              jnp.zeros((1,) + SHAPE)))
  method = adjoined.Adjoined(model, TASK, 4, adjoined.adjoined_widths(model, 2), 2)
  variables = jax.jit(method.init)(key, batch(1), plain)
  variables = nn.meta.unbox(variables)
  np.testing.assert_array_equal(variables['params']['head']['kernel'],
                                plain['params']['head']['kernel'])
  np.testing.assert_array_equal(variables['batch_stats']['stem_bn']['var'],
                                plain['batch_stats']['stem_bn']['var'])
  block = variables['params']['stage2_block1_layers']
  assert block['bn2_small']['scale'].shape == (64,) and not np.any(block['bn2_small']['scale'])
  assert int(variables['adjoined']['step']) == 0


# --- DAN ---------------------------------------------------------------------------------------

def test_dan_flops_penalty_is_the_hand_count():
  model = basic()
  method = adjoined.Dan(model, TASK, 40, 10, gamma=0.5)
  assert method.choices == {'stage2_stream': (128, 64, 32), 'stage3_stream': (256, 128, 64),
                            'stage3_block1_inner': (256, 128, 64)}
  p = np.log(np.array([0.5, 0.25, 0.25], np.float32))
  logits = {group: jnp.asarray(p) for group in method.choices}
  e128 = 0.5 * 128 + 0.25 * 64 + 0.25 * 32   # 88
  e256 = 0.5 * 256 + 0.25 * 128 + 0.25 * 64  # 176
  # k^2 * H_out * W_out * c_in * c_out of each conv, bottom to top (8x8 input).
  expected = (9 * 8 * 8 * 3 * 64            # stem
              + 2 * 9 * 8 * 8 * 64 * 64     # stage1 conv1, conv2 (64: not searched)
              + 9 * 4 * 4 * 64 * 128        # stage2 conv1 (inner 128: not searched)
              + 9 * 4 * 4 * 128 * e128      # stage2 conv2
              + 1 * 4 * 4 * 64 * e128       # stage2 projection
              + 9 * 2 * 2 * e128 * e256     # stage3 conv1
              + 9 * 2 * 2 * e256 * e256     # stage3 conv2
              + 1 * 2 * 2 * e128 * e256)    # stage3 projection
  full = (9 * 8 * 8 * 3 * 64 + 2 * 9 * 8 * 8 * 64 * 64 + 9 * 4 * 4 * 64 * 128
          + 9 * 4 * 4 * 128 * 128 + 4 * 4 * 64 * 128 + 9 * 2 * 2 * 128 * 256
          + 9 * 2 * 2 * 256 * 256 + 2 * 2 * 128 * 256)
  assert method.full_flops == full
  assert float(adjoined.expected_flops(model, SHAPE, logits)) == pytest.approx(expected, rel=1e-6)
  penalty, metrics = method._penalty({adjoined.LOGITS: logits}, jnp.int32(0))  # pylint: disable=protected-access
  assert float(metrics['flops_ratio']) == pytest.approx(expected / full, rel=1e-6)
  assert float(penalty) == pytest.approx(0.5 * expected / full, rel=1e-6)


def test_dan_read_out_is_a_valid_network():
  model = basic()
  logits = {'stage2_stream': jnp.array([0.0, 1.0, 3.0]),         # -> 32
            'stage3_block1_inner': jnp.array([0.0, 2.0, 1.0]),   # -> 128
            'stage3_stream': jnp.array([2.0, 1.0, 0.0])}         # -> 256
  plan = adjoined.dan_widths(model, logits)
  assert plan == resnet.WidthPlan(64, (64, 128, 128), (64, 32, 256))
  found = basic(widths=plan)
  key = jax.random.key(0, impl='unsafe_rbg')
  variables = jax.jit(functools.partial(found.init, train=False))(key, jnp.zeros((1,) + SHAPE))
  variables = nn.meta.unbox(variables)
  assert variables['params']['stage3_block1_layers']['conv1']['kernel'].shape == (3, 3, 32, 128)
  out = jax.jit(functools.partial(found.apply, train=False))(variables, batch()['image'])
  assert out.shape == (2, 5) and np.all(np.isfinite(out))
  with pytest.raises(ValueError, match="logits\\['stem'\\]"):
    adjoined.dan_widths(model, {'stem': jnp.zeros(3)})


def test_dan_hard_masks_equal_the_read_out_network():
  # Masked channels are exactly zero, so the masked path is the read-out network.
  model = basic()
  method = adjoined.Dan(model, TASK, 4, 2)
  variables = method_variables(method)
  logits = {'stage2_stream': np.array([0., 1., 3.], np.float32),
            'stage3_block1_inner': np.array([0., 2., 1.], np.float32),
            'stage3_stream': np.array([2., 1., 0.], np.float32)}
  variables['params'][adjoined.LOGITS] = logits
  masks = {g: adjoined.channel_mask(c, jax.nn.one_hot(np.argmax(logits[g]), 3))
           for g, c in method.choices.items()}
  assert float(jnp.sum(masks['stage2_stream'])) == 32
  x = batch()['image']
  network = {'params': {k: v for k, v in variables['params'].items() if k != adjoined.LOGITS},
             'batch_stats': variables['batch_stats']}
  masked_model = network_lib.masked(model, widths_lib.norm_masks(model, masks))
  masked = jax.jit(functools.partial(masked_model.apply, train=False))(
      network_lib.read(model, network), x)
  # The method's own eval path is the same masked network.
  path_model, path_variables = method._adjoined(variables['params'], network, 0, None)  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      jax.jit(functools.partial(path_model.apply, train=False))(path_variables, x), masked)
  small_model, small_variables = network_lib.extract(model, variables, method.read_out(variables))
  assert small_model.widths == resnet.WidthPlan(64, (64, 128, 128), (64, 32, 256))
  got = jax.jit(functools.partial(small_model.apply, train=False))(small_variables, x)
  np.testing.assert_allclose(got, masked, rtol=1e-5, atol=1e-5)


# --- One real step of each method ----------------------------------------------------------------

@pytest.mark.parametrize('kind', ['an', 'dan'])
def test_one_jitted_train_step(kind):
  model = basic()
  if kind == 'an':
    method = adjoined.Adjoined(model, TASK, 8, adjoined.adjoined_widths(model, 2), 2)
  else:
    method = adjoined.Dan(model, TASK, 8, 2)
  variables = method_variables(method)
  variables = dict(variables, adjoined={'step': jnp.int32(4)})  # epoch 2 of 4: lambda = 1
  state, new, metrics = one_train_step(method, variables, optax.sgd(0.1), batch(4), step=4)
  model_state = state.model_state
  assert np.isfinite(float(metrics['loss'])) and float(metrics['lambda']) == 1.0
  assert {'task_loss', 'kl', 'accuracy', 'small_accuracy'} <= set(metrics)
  assert int(new.model_state['adjoined']['step']) == 5
  stats = new.model_state['batch_stats']
  for norm in ('stem_bn', 'stem_bn_small'):  # both networks update their own statistics
    assert not np.array_equal(stats[norm]['mean'], model_state['batch_stats'][norm]['mean'])
  if kind == 'dan':
    assert 0 < float(metrics['flops_ratio']) < 1 and float(metrics['tau']) < 5.0
    old, logits = variables['params'][adjoined.LOGITS], new.params[adjoined.LOGITS]
    assert all(np.any(np.asarray(logits[g]) != old[g]) for g in old)
  sums = jax.jit(lambda v, b: method.eval_metrics(method.phases()[0], v, None, b))(
      {'params': new.params, **new.model_state}, batch(4))
  assert set(sums) == {'accuracy', 'loss', 'count', 'big_accuracy', 'big_loss'}
  assert float(sums['count']) == 4 and np.isfinite(float(sums['loss']))


def test_dan_exports_the_big_network_and_summarizes_the_widths():
  model = basic()
  method = adjoined.Dan(model, TASK, 4, 2)
  variables = method_variables(method)
  variables['params'][adjoined.LOGITS] = {
      'stage2_stream': np.array([0., 1., 3.], np.float32),
      'stage3_block1_inner': np.array([0., 2., 1.], np.float32),
      'stage3_stream': np.array([2., 1., 0.], np.float32)}
  exported = method.export(variables)
  plain = nn.meta.unbox(model.init(jax.random.key(0), batch()['image'], train=False))
  assert jax.tree.structure(exported) == jax.tree.structure(plain)
  summary = method.summary(variables)
  assert resnet.WidthPlan(**summary) == resnet.WidthPlan(64, (64, 128, 128), (64, 32, 256))


def test_a_lower_threshold_masks_more():
  model = basic()
  assert len(adjoined.adjoined_groups(model, threshold=16)) > len(adjoined.adjoined_groups(model))
