"""Test set-up: eight virtual CPU devices and a persistent compilation cache.

Both must be set before the first JAX operation, so they live here.
"""

import os

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/gwtn_jax_test_compile_cache')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top


def tiny_config(**overrides):
  """A pipeline small enough to run every stage in seconds on synthetic data."""
  c = config_lib.base_config()
  c.model.name = 'cifar_resnet8'
  c.thin_width = 0.5
  c.wide_width = 1.0
  c.data.name = 'synthetic'
  c.data.synthetic_image_shape = (8, 8, 1)
  c.data.synthetic_num_classes = 4
  c.data.synthetic_num_train = 256
  c.data.synthetic_num_eval = 64
  c.mesh.num_devices = 1
  c.batch_size = 16
  c.eval_batch_size = 32
  c.log_every = 2
  c.eval_every = 4
  c.checkpoint_every = 2
  c.wide.steps = 4
  c.imitate.steps_per_point = 2
  c.probe.steps = 2
  c.finetune.steps = 2
  for key, value in overrides.items():
    target = c
    *path, last = key.split('.')
    for part in path:
      target = target[part]
    target[last] = value
  return c


@pytest.fixture
def tiny():
  return tiny_config
