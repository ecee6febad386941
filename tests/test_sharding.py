"""Every stage's real step under the mesh presets: the same losses as on one device, and the
parameters (the teacher's too) really sharded as the rules say."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from gwtn_jax import builders
from gwtn_jax import config_lib
from gwtn_jax.methods import registry
from gwtn_jax.parallel import mesh as mesh_lib
from gwtn_jax.train import loop
from gwtn_jax.train import optim
from gwtn_jax.train import state as state_lib

STEPS = 2


def first_losses(config):
  """The first losses of every stage (of the first and last phase) on the config's mesh, and
  the shardings of the states and of the teacher."""
  exp = builders.build_experiment(config)
  mesh, rules = exp.mesh, exp.rules
  target = loop.model_abstract_variables(exp.wide, exp.task, mesh, rules)
  teacher_shardings = jax.tree.map(lambda x: x.sharding, target)
  teacher = jax.jit(lambda r: nn.meta.unbox(exp.task.init(exp.wide, r, exp.task.sample_batch())),
                    out_shardings=teacher_shardings)(jax.random.key(7))
  losses, shardings = {}, {'teacher': jax.tree.map(lambda x: x.sharding.spec, teacher)}
  for label, stage, method, task in builders.stage_methods(config, exp):
    data = exp.downstream.data if stage == 'downstream' else exp.data
    batches = data.train_batches(global_batch_size=config.batch_size, seed=0)
    batch = mesh_lib.put_global_batch(next(batches), mesh)
    phases = list(method.phases())
    tx, _ = optim.make_optimizer(config[stage].optimizer, [p.steps for p in phases])
    rng, sample = jax.random.key(0), task.sample_batch()
    _, state_shardings = state_lib.abstract_state(method, tx, rng, sample, None, mesh, rules)
    uses_teacher = registry.get(stage).teacher
    for phase in {phases[0].name: phases[0], phases[-1].name: phases[-1]}.values():
      state = state_lib.create_state(method, tx, rng, sample, None, state_shardings)
      step = loop.jit_train_step(method, phase, tx, rng, mesh, rules, state_shardings,
                                 teacher_shardings if uses_teacher else None)
      values = []
      for _ in range(STEPS):
        state, metrics = step(state, batch, teacher if uses_teacher else None)
        values.append(float(metrics['loss']))
      losses[f'{label}:{phase.name}'] = values
    shardings[label] = jax.tree.map(lambda x: x.sharding.spec, state.params)
  return losses, shardings


def _config(kind, preset, devices, **shape):
  config = tiny_config('bert' if kind == 'bert' else '')
  config.mesh = config_lib.mesh_config(preset, **shape)
  config.mesh.num_devices = devices
  config.batch_size = 16
  if kind == 'bert':
    # Two heads or more in each network, so that heads split over tensor=2.
    config.thin_width, config.wide_width = 1.0, 2.0
  return config


@pytest.fixture(scope='module')
def one_device():
  return {kind: first_losses(_config(kind, 'data', 1)) for kind in ('image', 'bert')}


@pytest.mark.parametrize('kind, preset, shape', [
    ('image', 'data', {}),
    ('image', 'fsdp', {}),
    ('bert', 'fsdp_tensor', dict(tensor=2)),
])
def test_presets_on_8_devices_match_one_device(one_device, kind, preset, shape):
  expected, _ = one_device[kind]
  losses, shardings = first_losses(_config(kind, preset, 8, **shape))
  assert losses.keys() == expected.keys()
  for key, values in expected.items():
    np.testing.assert_allclose(losses[key], values, rtol=2e-4, atol=1e-5, err_msg=key)
  # The parameters are placed as the preset's rules say.
  if preset == 'data':
    kernel = shardings['thin_scratch']['stage1_block1_layers']['conv1']['kernel']
    assert all(axis is None for axis in kernel)  # replicated
  elif kind == 'image':
    kernel = shardings['thin_scratch']['stage1_block1_layers']['conv1']['kernel']
    assert kernel == P(None, None, None, 'fsdp')
    teacher_kernel = shardings['teacher']['params']['stage1_block1_layers']['conv1']['kernel']
    assert teacher_kernel == kernel
  else:
    query = shardings['wide']['encoder_layer_1']['attention']['query']['kernel']
    ffn = shardings['thin_kd']['encoder_layer_1']['mlp']['wi']['kernel']
    assert query == P('fsdp', 'tensor', None) and ffn == P('fsdp', 'tensor')
    # The teacher arrives sharded the same way: never whole on one device.
    assert shardings['teacher']['params']['encoder_layer_1']['attention']['query']['kernel'] == query
    # Imitation's projections follow the rules too, and downstream classifiers are sharded.
    assert shardings['downstream_wide']['embedder']['word']['embedding'][1] == 'fsdp'


def test_a_rule_that_cannot_split_a_parameter_is_refused_before_compiling(tmp_path):
  config = tiny_config('bert')  # the thin network has one head
  config.mesh = config_lib.mesh_config('fsdp_tensor', tensor=2)
  with pytest.raises(config_lib.ConfigError,
                     match=r"mesh.rules: the thin network's .*'heads' axis of size 1, which the "
                           r"rule 'heads' -> \('tensor',\) cannot split 2 ways"):
    config_lib.validate(config, str(tmp_path))


def _sown_points_sharding(config):
  """The shardings XLA gives the sown (imitated) points of the wide network's forward pass,
  traced under the config's rules as the steps are."""
  exp = builders.build_experiment(config)
  mesh, rules = exp.mesh, exp.rules
  target = loop.model_abstract_variables(exp.wide, exp.task, mesh, rules)
  variables = jax.jit(lambda r: nn.meta.unbox(exp.task.init(exp.wide, r, exp.task.sample_batch())),
                      out_shardings=jax.tree.map(lambda x: x.sharding, target))(jax.random.key(0))
  batch = mesh_lib.put_global_batch(next(exp.data.train_batches(global_batch_size=16, seed=0)),
                                    mesh)

  def points(v, b):
    _, updates = exp.task.forward(exp.wide, v, b, train=False, mutable=['intermediates'])
    return updates['intermediates']

  out = jax.jit(mesh_lib.under_rules(points, mesh, rules))(variables, batch)
  return lambda name, spec: out[name][0].sharding.is_equivalent_to(
      jax.sharding.NamedSharding(mesh, spec), out[name][0].ndim)


def test_activation_rules_place_the_imitated_points():
  """The models constrain their activations by logical names; the config's rules place them
  (here: the residual stream's features over `tensor` when a rule says so)."""
  config = _config('bert', 'fsdp_tensor', 8, tensor=2)
  config.model.scan_layers = False
  batch_axes = ('data', 'fsdp')
  placed = _sown_points_sharding(config)
  assert placed('layer_1', P(batch_axes, None, None))
  assert not placed('layer_1', P(batch_axes, None, 'tensor'))
  rules = [list(rule) for rule in config.mesh.rules]
  config.mesh.rules = [[name, 'tensor' if name == 'act_embed' else axes] for name, axes in rules]
  placed = _sown_points_sharding(config)
  assert placed('embeddings', P(batch_axes, None, 'tensor'))
  assert placed('layer_2', P(batch_axes, None, 'tensor'))


def test_a_stage_checkpoint_restores_into_another_mesh(tmp_path, monkeypatch, capfd):
  """Stage 1 stopped mid-way on 8 devices (FSDP) resumes on 4; its finished network is then
  read straight into the 4-device shardings as the teacher of the later stages."""
  from gwtn_jax import pipeline  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import preemption as preemption_lib  # pylint: disable=g-import-not-at-top

  def on(devices, **overrides):
    config = tiny_config(**overrides)
    config.mesh = config_lib.mesh_config('fsdp')
    config.mesh.num_devices = devices
    return config

  workdir = str(tmp_path / 'run')

  def stop_after_2(self, step):
    if step >= 2:
      self.signal_name = 'SIGTERM'
    return self.signal_name is not None

  with monkeypatch.context() as m:
    m.setattr(preemption_lib.Preemption, 'should_stop', stop_after_2)
    with pytest.raises(preemption_lib.StopRequested):
      pipeline.run(on(8, stages=('wide',)), workdir)
  stage_dir = tmp_path / 'run' / 'stages' / 'wide'
  saved = checkpoint_lib.StageCheckpoints(str(stage_dir / 'checkpoints'))
  assert saved.latest_step() == 2
  saved.close()

  capfd.readouterr()
  report = pipeline.run(on(4, stages=('wide', 'imitate', 'finetune')), workdir)
  # The 4-device run resumed the 8-device checkpoint rather than starting over.
  assert '[wide] resuming at step 2/4' in capfd.readouterr().out
  assert np.isfinite(report['thin_gwtn']['metrics']['loss'])

  # The finished network, read into each mesh: the same values, each in its own shardings.
  loaded = {}
  for devices in (8, 4):
    exp = builders.build_experiment(on(devices))
    loaded[devices] = loop.load_stage_output(str(stage_dir), exp.wide, exp.task, exp.mesh,
                                             exp.rules)
    kernel = loaded[devices]['params']['stage1_block1_layers']['conv1']['kernel']
    assert kernel.sharding.mesh.devices.size == devices
    assert kernel.sharding.spec == P(None, None, None, 'fsdp')
    assert kernel.addressable_shards[0].data.shape[-1] == kernel.shape[-1] // devices
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               loaded[8], loaded[4])
