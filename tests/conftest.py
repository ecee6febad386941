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


def one_train_step(method, variables, tx, batch, teacher=None, step=0):
  """One real step of the loop (`loop._train_step`, jitted) of `method`'s first phase.

  Args:
    method: the method.
    variables: its (unboxed) variables; every collection but `params` is its model state.
    tx: the optimizer.
    batch: the batch.
    teacher: the teacher's variables, if the method has one.
    step: the state's step counter.

  Returns:
    (the state before, the state after, the step's metrics).
  """
  import functools  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  params = variables['params']
  state = state_lib.TrainState(
      step=jnp.asarray(step, jnp.int32), params=params,
      model_state={k: v for k, v in variables.items() if k != 'params'},
      opt_state=tx.init(params))
  train_step = jax.jit(functools.partial(loop._train_step, method=method,  # pylint: disable=protected-access
                                         phase=method.phases()[0], tx=tx, rng=jax.random.key(0)))
  new, metrics = train_step(state, batch, teacher)
  return state, new, metrics


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
