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
    tx, _ = optim.make_optimizer(config[stage].optimizer, sum(p.steps for p in phases))
    rng, sample = jax.random.key(0), task.sample_batch()
    _, state_shardings = state_lib.abstract_state(method, tx, rng, sample, None, mesh, rules)
    uses_teacher = stage in config_lib.NEEDS_TEACHER
    for phase in {phases[0].name: phases[0], phases[-1].name: phases[-1]}.values():
      state = state_lib.create_state(method, tx, rng, sample, None, state_shardings)
      step = loop.jit_train_step(method, phase, tx, rng, mesh, state_shardings,
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


# (Pure data parallelism on 8 devices: tests/test_pipeline.py.)
@pytest.mark.parametrize('kind, preset, shape', [
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
  if kind == 'image':
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
