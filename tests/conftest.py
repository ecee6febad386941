"""Test set-up: eight virtual CPU devices and a persistent compilation cache.

Both must be set before the first JAX operation, so they live here.
"""

import os

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/gwtn_jax_test_compile_cache')
# Cache every compile, small ones too: the tests that restart `gwtn_jax.main` (kills, signals,
# two processes) then compile each step once per suite. Subprocesses inherit both variables.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)

import itertools  # pylint: disable=g-import-not-at-top

import numpy as np  # pylint: disable=g-import-not-at-top

import tiny_config as tiny_config_file  # pylint: disable=g-import-not-at-top


def take(iterator, n):
  """The first n items of an iterator, as a list."""
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  """Two lists of batches (dicts of arrays) are equal, key by key."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def tiny_config(arg: str = '', **overrides):
  """The tiny pipeline config (of variant `arg`), with `dotted.field=value` overrides."""
  c = tiny_config_file.get_config(arg)
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
