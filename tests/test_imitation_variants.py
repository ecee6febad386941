"""The imitation recipe variants of the depth study, and the sanity checks that pin GWTN down.

Variants: learning-rate multipliers for the points below the current one, the loss scale,
BatchNorm re-estimation after imitation, the paper's merged linear pairs, an earlier teacher
checkpoint. Sanity: GWTN with no imitation is KD-only, exactly.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import pipeline
from gwtn_jax.methods import base
from gwtn_jax.methods import tasks
from gwtn_jax.methods.imitation import Imitation
from gwtn_jax.train import checkpoint
from gwtn_jax.train import layout
from gwtn_jax.train import loop
from gwtn_jax.train import state as state_lib

SHAPE = (4, 8, 8, 1)
TASK = tasks.ImageClassification(SHAPE[1:])


def imitate_config(**overrides):
  cfg = config_lib.base_config().imitate
  cfg.update(overrides)
  return cfg


def batch():
  images = jax.random.normal(jax.random.key(7), SHAPE)
  return {'image': images, 'mask': jnp.ones((SHAPE[0],)), 'label': jnp.arange(SHAPE[0]) % 4}


def network(name, width, **kwargs):
  return models.get_model(name, num_classes=4, width_multiplier=width, **kwargs)


@functools.lru_cache(maxsize=None)
def teacher_of(name, **kwargs):
  wide = network(name, 1.0, **kwargs)
  variables = nn.meta.unbox(wide.init(jax.random.key(3), jnp.zeros(SHAPE), train=False))
  if 'batch_stats' in variables:  # non-trivial running statistics
    _, updates = wide.apply(variables, batch()['image'] * 2 + 1, train=True,
                            mutable=['batch_stats'])
    variables = {**variables, **updates}
  return jax.tree.map(np.asarray, variables)


def init(method, randomize_up=False):
  variables = nn.meta.unbox(method.init(jax.random.key(0), batch(), None))
  if randomize_up:  # the up-projections start at zero; a fitted one is not
    params = dict(variables['params'])
    params['up'] = {tp: 0.3 * jax.random.normal(jax.random.fold_in(jax.random.key(5), i), k.shape)
                    for i, (tp, k) in enumerate(params['up'].items())}
    variables = {**variables, 'params': params}
  return variables


def step(method, phase, variables, teacher, tx):
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables['params'],
      model_state={k: v for k, v in variables.items() if k != 'params'},
      opt_state=tx.init(variables['params']))
  run = jax.jit(functools.partial(loop._train_step, method=method, phase=phase, tx=tx,  # pylint: disable=protected-access
                                  rng=jax.random.key(0)))
  new, _ = run(state, batch(), teacher)
  return state, new


def deltas(old, new):
  return jax.tree.map(lambda a, b: np.asarray(b, np.float64) - np.asarray(a, np.float64),
                      old, new)


# --- Learning-rate multipliers of the lower points ---------------------------------------------


def test_lower_points_train_at_their_multiplier():
  thin, wide = network('cifar_resnet8', 0.5), network('cifar_resnet8', 1.0)
  teacher = teacher_of('cifar_resnet8')
  tx = optax.sgd(0.1)  # plain SGD: an update is -lr * gradient, so multipliers show exactly
  moved = {}
  for lower_lr in (1.0, 0.1, 0.0):
    method = Imitation(thin, wide, TASK, imitate_config(lower_lr=lower_lr))
    phase = method.phases()[2]
    assert phase.name == 'stage2_block1'
    old, new = step(method, phase, init(method, randomize_up=True), teacher, tx)
    moved[lower_lr] = deltas(old.params['student'], new.params['student'])
  lower = ('stem_conv', 'stem_bn', 'stage1_block1_layers')
  for name in lower:
    for full, tenth, none in zip(*(jax.tree.leaves(moved[v][name]) for v in (1.0, 0.1, 0.0))):
      np.testing.assert_allclose(tenth, 0.1 * full, rtol=1e-3, atol=3e-7)  # f32 p + u - p
      assert not none.any()
    assert any(np.abs(d).max() > 0 for d in jax.tree.leaves(moved[1.0][name])), name
  # The current point's block trains at the full rate whatever the multiplier.
  for full, tenth in zip(jax.tree.leaves(moved[1.0]['stage2_block1_layers']),
                         jax.tree.leaves(moved[0.1]['stage2_block1_layers'])):
    np.testing.assert_allclose(tenth, full, rtol=1e-5, atol=3e-7)


def test_a_scanned_berts_layers_get_one_multiplier_each():
  thin = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=0.5, scan_layers=True)
  wide = models.get_bert('bert_tiny', vocab_size=50, width_multiplier=1.0, scan_layers=True)
  task = tasks.MaskedLM(seq_len=16, max_predictions=16)
  method = Imitation(thin, wide, task, imitate_config(lower_lr=0.25))
  assert [p.name for p in method.phases()] == ['embeddings', 'layer_1', 'layer_2']
  params = jax.eval_shape(lambda: nn.meta.unbox(
      method.init(jax.random.key(0), task.sample_batch(), None)))['params']
  mask = method.trainable(method.phases()[2], {'params': params})['params']['student']
  # Layer 1, below the current layer 2: 0.25; layer 2: 1; the embeddings below: 0.25.
  for leaf in jax.tree.leaves(mask['encoder']):
    np.testing.assert_array_equal(leaf, [0.25, 1.0])
  assert all(v == 0.25 for v in jax.tree.leaves(mask['embedder']))
  # Applied to updates: each layer's slice scaled by its own multiplier.
  kernel = jnp.ones((2, 3, 4))
  scaled = base.tree_scale(np.array([0.25, 1.0]), kernel)
  np.testing.assert_array_equal(scaled[0], 0.25 * kernel[0])
  np.testing.assert_array_equal(scaled[1], kernel[1])


# --- Loss scale --------------------------------------------------------------------------------


def test_the_loss_scale_scales_the_train_loss_not_the_reported_one():
  thin, wide = network('mlp2', 0.25), network('mlp2', 1.0)
  teacher = teacher_of('mlp2')
  losses, evals = [], []
  for scale in (1.0, 3.0):
    method = Imitation(thin, wide, TASK, imitate_config(loss_scale=scale))
    variables = init(method, randomize_up=True)
    phase = method.phases()[1]
    loss, _ = method.loss(phase, variables['params'], {}, teacher, batch(), jax.random.key(0))
    losses.append(float(loss))
    evals.append(float(method.eval_metrics(phase, variables, teacher, batch())['imitation_loss']))
  assert losses[0] > 0
  assert losses[1] == pytest.approx(3 * losses[0], rel=1e-6)
  assert evals[1] == pytest.approx(evals[0], rel=1e-6)


# --- BatchNorm re-estimation -------------------------------------------------------------------


def test_bn_refresh_moves_only_the_statistics_toward_the_networks_own():
  thin, wide = network('cifar_resnet8', 0.5), network('cifar_resnet8', 1.0)
  teacher = teacher_of('cifar_resnet8')
  method = Imitation(thin, wide, TASK, imitate_config(bn_refresh_steps=3, inputs='teacher'))
  phases = method.phases()
  assert [p.name for p in phases][-1] == 'bn_refresh' and phases[-1].steps == 3
  old, new = step(method, phases[-1], init(method), teacher,
                  optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9)))
  for a, b in zip(jax.tree.leaves(old.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)  # not even weight decay
  # Every BatchNorm of the thin network (the head has none) moved toward its own batch
  # statistics: the mean of a block's last norm toward its conv's output mean.
  stats_old, stats_new = old.model_state['batch_stats'], new.model_state['batch_stats']
  assert set(stats_new) == set(stats_old)
  for name in stats_old:
    for a, b in zip(jax.tree.leaves(stats_old[name]), jax.tree.leaves(stats_new[name])):
      assert not np.array_equal(a, b), name
  # The stage's length counts the refresh, and a network without BatchNorm is refused.
  config = tiny_config('', **{'imitate.bn_refresh_steps': 5})
  assert config_lib.stage_steps(config, 'imitate', network('cifar_resnet8', 0.5)) == 4 * 2 + 5
  with pytest.raises(config_lib.ConfigError,
                     match=r'imitate.bn_refresh_steps=5: the thin network \(MLP\) has no '
                           'BatchNorm'):
    config_lib.validate(tiny_config('', **{'model.name': 'mlp2', 'imitate.bn_refresh_steps': 5}),
                        None, data=False)


# --- The paper's merged linear pairs -----------------------------------------------------------


@pytest.mark.parametrize('name, kwargs', [('mlp4', {}), ('cifar_resnet8', {'shortcuts': False})])
def test_merged_pairs_leave_the_network_unchanged(name, kwargs):
  thin, wide = network(name, 0.25, **kwargs), network(name, 1.0, **kwargs)
  teacher = teacher_of(name, **kwargs)
  method = Imitation(thin, wide, TASK, imitate_config(projection='pair', granularity='block'))
  points = method.points
  assert set(method.down) == {tp for tp, _ in points[:-1]}  # every point but the last
  variables = init(method, randomize_up=True)
  exported = method.export(variables)
  assert set(exported['params']) == set(init(method)['params']['student'])  # no pair left
  # The imitation loss at the top point, through the pairs, equals the one computed from the
  # merged network's own top point: the merge kept the function.
  last = method.phases()[len(points) - 1]
  paired = float(method.eval_metrics(last, variables, teacher, batch())['imitation_loss'])
  top_thin, top_wide = points[-1]
  y = thin.apply(exported, batch()['image'], train=False, stop_at=top_thin)
  t = wide.apply(teacher, batch()['image'], train=False, stop_at=top_wide)
  merged = np.mean(np.square(np.asarray(y @ variables['params']['up'][top_thin]) - np.asarray(t)))
  assert paired > 1e-3
  assert paired == pytest.approx(merged * SHAPE[0], rel=1e-4)  # eval sums over the batch
  # And without the pairs the network is another one: the test can fail.
  plain = method.export({**variables, 'params': {**variables['params'], 'down': {
      tp: jnp.zeros_like(k) for tp, k in variables['params']['down'].items()}}})
  y0 = thin.apply(plain, batch()['image'], train=False, stop_at=top_thin)
  assert not np.allclose(y0, y)


def test_pairs_train_with_the_block_they_feed():
  thin, wide = network('mlp4', 0.25), network('mlp4', 1.0)
  method = Imitation(thin, wide, TASK, imitate_config(projection='pair', lower_lr=0.5))
  variables = init(method)
  mask = method.trainable(method.phases()[2], variables)['params']  # current: layer_3
  flags = lambda tree: {k: jax.tree.leaves(v)[0] for k, v in tree.items()}
  # layer_1's pair feeds layer 2 (below: 0.5); layer_2's feeds layer 3 (current); layer_3's
  # up-projection carries the loss, its pair feeds layer 4, which does not train yet.
  assert flags(mask['up']) == {'layer_1': 0.5, 'layer_2': True, 'layer_3': True, 'layer_4': False}
  assert flags(mask['down']) == {'layer_1': 0.5, 'layer_2': True, 'layer_3': False}


@pytest.mark.parametrize('overrides, match', [
    ({'imitate.projection': 'pair'},
     r"projection='pair' cannot merge exactly .*model.shortcuts=False"),
    ({'imitate.projection': 'pair', 'model.shortcuts': False, 'imitate.inputs': 'teacher'},
     r"projection='pair' .* needs imitate.inputs='own'"),
    ({'imitate.projection': 'both'}, r"imitate.projection='both' must be one of \('up', 'pair'\)"),
    ({'imitate.lower_lr': 1.5}, r'imitate.lower_lr=1.5 must be in \[0, 1\]'),
    ({'imitate.freeze_lower': True, 'imitate.lower_lr': 0.1}, 'choose one'),
    ({'imitate.loss_scale': 0.0}, r'imitate.loss_scale=0.0 must be > 0'),
    ({'imitate.teacher_step': 4}, r'imitate.teacher_step=4 must be below wide.steps=4'),
    ({'imitate.steps_per_point': -1}, r'imitate.steps_per_point=-1 must be an integer >= 0'),
])
def test_bad_variants_are_refused_in_one_line(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config('', **overrides), None, data=False)
  # The pair is accepted where it merges exactly.
  config_lib.validate(tiny_config('', **{'imitate.projection': 'pair', 'model.shortcuts': False}),
                      None, data=False)


# --- An earlier teacher, and GWTN without imitation ------------------------------------------


def _mlp_run(**overrides):
  base = {'model.name': 'mlp2', 'thin_width': 0.25, 'shared_data_order': True,
          'wide.steps': 6, 'wide.optimizer.schedule': 'constant', 'checkpoint_every': 3}
  return tiny_config('', **{**base, **overrides})


def _final(workdir, stage):
  return checkpoint.restore_final(layout.output_dir(os.path.join(workdir, 'stages', stage)), None)


def _assert_trees_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def no_imitation_run(tmp_path_factory):
  """GWTN with zero imitation steps and stage 3 configured as thin_kd, with the teacher's
  step-4 snapshot kept for an imitation that never runs."""
  workdir = str(tmp_path_factory.mktemp('no_imitation'))
  kd = {'thin_kd.alpha': 0.5, 'thin_kd.temperature': 2.0, 'finetune.alpha': 0.5,
        'finetune.temperature': 2.0, 'finetune.steps': 5}
  config = _mlp_run(**{'imitate.steps_per_point': 0, 'imitate.init_head_from_teacher': False,
                       'imitate.teacher_step': 4, 'stages': ('wide', 'thin_kd', 'imitate',
                                                             'finetune'), **kd})
  config.finetune.optimizer = config.thin_kd.optimizer
  report = pipeline.run(config, workdir)
  return workdir, report


def test_gwtn_without_imitation_is_kd_exactly(no_imitation_run):
  workdir, report = no_imitation_run
  kd, gwtn = _final(workdir, 'seed0/thin_kd'), _final(workdir, 'seed0/finetune')
  _assert_trees_equal(kd, gwtn)
  # The fine-tuning did train (from the thin initialization that imitation passed on as is),
  # against the final teacher, not the step-4 snapshot that imitation would have read.
  start = _final(workdir, 'seed0/imitate')
  assert not np.array_equal(start['params']['head']['kernel'], gwtn['params']['head']['kernel'])
  assert report['thin_kd']['train_steps'] == report['thin_gwtn']['train_steps'] == 5
  assert report['thin_kd']['metrics'] == report['thin_gwtn']['metrics']


def test_the_teacher_keeps_its_network_at_the_imitated_step(no_imitation_run, tmp_path):
  workdir, _ = no_imitation_run
  snapshot = checkpoint.restore_final(
      layout.output_dir(os.path.join(workdir, 'stages', 'wide'), 4), None)
  final = _final(workdir, 'wide')
  assert not np.array_equal(snapshot['params']['head']['kernel'], final['params']['head']['kernel'])
  # The snapshot is the network a 4-step run of the same stage ends with (constant schedule).
  short = str(tmp_path / 'short')
  pipeline.run(_mlp_run(**{'wide.steps': 4, 'stages': ('wide',)}), short)
  _assert_trees_equal(_final(short, 'wide'), snapshot)
  # Imitating the 6-step teacher at step 4 is imitating the 4-step teacher.
  runs = []
  for teacher_dir, teacher_step in ((os.path.join(workdir, 'stages', 'wide'), 4),
                                    (os.path.join(short, 'stages', 'wide'), 0)):
    target = str(tmp_path / f'imitate{teacher_step}')
    pipeline.run(_mlp_run(**{'stages': ('imitate',), 'teacher_dir': teacher_dir,
                             'imitate.teacher_step': teacher_step}), target)
    runs.append(_final(target, 'seed0/imitate'))
  _assert_trees_equal(*runs)
  with pytest.raises(config_lib.ConfigError, match=r'imitate.teacher_step=3: .*snapshots/3 '
                                                   'does not exist'):
    config_lib.validate(_mlp_run(**{'stages': ('imitate',),
                                    'teacher_dir': os.path.join(workdir, 'stages', 'wide'),
                                    'imitate.teacher_step': 3}), None)
