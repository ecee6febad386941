"""Tests of benchmarks/peers.py's own parts: the imitation floor and the op profile.

The timings are the benchmark's (never asserted here); what is tested is that the floor is
built right (the imitation step does exactly the FLOPs of its two parts: nothing computed in
vain, e.g. no gradient of a frozen layer) and that the profile reads a real trace.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def peers():
  spec = importlib.util.spec_from_file_location(
      'peers_under_test', os.path.join(ROOT, 'benchmarks', 'peers.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # defines absl flags; nothing parses or runs
  return module


@pytest.mark.parametrize('arg', ['', 'bert'])
def test_imitation_step_does_the_flops_of_its_floor(peers, arg):
  contenders, sums, counts = peers.floor_case(
      os.path.join(ROOT, 'tests', 'tiny_config.py') + (f':{arg}' if arg else ''))
  assert counts['teacher'] > 0 and counts['thin'] > 0
  assert counts['ours'] == pytest.approx(counts['teacher'] + counts['thin'], rel=1e-9)
  names = [name for name, _ in contenders]
  assert names[0].startswith('ours, last phase') and len(names) == 3
  (floor_parts,) = sums.values()
  assert set(floor_parts) == set(names[1:])
  times = peers.interleaved(contenders, rounds=2, steps=1, warmup=0)
  with_sums = peers._with_sums(times, sums)  # pylint: disable=protected-access
  (total,) = set(with_sums) - set(times)
  assert with_sums[total] == [a + b for a, b in zip(*(times[p] for p in floor_parts))]


def test_the_floor_refuses_imitation_it_does_not_model(peers, tmp_path):
  config = tmp_path / 'teacher_inputs.py'
  config.write_text(
      'import importlib.util\n'
      f'spec = importlib.util.spec_from_file_location("tiny", {os.path.join(ROOT, "tests", "tiny_config.py")!r})\n'
      'tiny = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(tiny)\n'
      'def get_config():\n  c = tiny.get_config()\n  c.imitate.inputs = "teacher"\n  return c\n')
  with pytest.raises(ValueError, match="imitate.inputs='own'"):
    peers.floor_case(str(config))


def test_op_profile_lists_the_ops_of_a_traced_step(peers):
  x = jnp.ones((256, 256))
  step = jax.jit(lambda x: jnp.tanh(x @ x) @ x)
  step(x).block_until_ready()
  text = peers.op_profile(lambda: step(x).block_until_ready(), top=5)
  lines = text.splitlines()
  assert lines[0].split() == ['op', 'kind', 'ms', 'share']
  assert lines[-1].split()[:2] == ['all', 'ops'] and float(lines[-1].split()[-1]) > 0
  assert 3 <= len(lines) <= 7  # a header, 1 to `top` kinds, the total
  assert not any('::' in line or line.strip().startswith('$') for line in lines)
