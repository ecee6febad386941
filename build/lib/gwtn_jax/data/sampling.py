"""What every dataset of ours shares: which examples a process reads at which step.

Global example positions k = 0, 1, 2, ... run through concatenated epochs; epoch e is the
permutation `default_rng([seed, e]).permutation(n)`. The global batch at step s holds the
positions [s * GB, (s + 1) * GB) and process p reads the contiguous block
s * GB + p * GB/P + [0, GB/P). Batches are elements of a grain `MapDataset` over step numbers,
so the batch at a step depends only on (seed, step, process) and resuming needs no state.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator

import grain
import numpy as np

_FOREVER = 1 << 40  # "endless" training: more steps than any run takes


class EpochPermutations:
  """perm_e = default_rng([seed, e]).permutation(n), the last few kept (thread-safe)."""

  def __init__(self, n: int, seed: int, keep: int = 3):
    self._n, self._seed, self._keep = n, seed % (1 << 64), keep
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __call__(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._cache.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      if self._n < 2**31:  # Half the memory: 30M sequences take 120 MB per kept epoch.
        perm = perm.astype(np.int32)
      with self._lock:
        self._cache[epoch] = perm
        while len(self._cache) > self._keep:
          self._cache.popitem(last=False)
    return perm

  def indices(self, positions: np.ndarray) -> np.ndarray:
    """The example index at each global position."""
    epochs, within = np.divmod(positions, self._n)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      indices[sel] = self(int(epoch))[within[sel]]
    return indices


class ProcessSlices:
  """This process's place among the readers, and the positions it reads.

  Args:
    process_index, process_count: this process among those reading.
    unit: what a position is ('examples', 'sequences'), for the error messages.
  """

  def __init__(self, process_index: int, process_count: int, unit: str = 'examples'):
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} is not in '
                       f'[0, process_count={process_count})')
    self.process_index, self.process_count, self.unit = process_index, process_count, unit

  def local_batch_size(self, global_batch_size: int) -> int:
    if global_batch_size <= 0 or global_batch_size % self.process_count:
      raise ValueError(
          f'global_batch_size={global_batch_size} must be a positive multiple of '
          f'process_count={self.process_count} (each process reads '
          f'global_batch_size / process_count {self.unit} per step)')
    return global_batch_size // self.process_count

  def positions(self, step: int, global_batch_size: int) -> np.ndarray:
    """The global positions this process reads at `step`."""
    local = self.local_batch_size(global_batch_size)
    start = step * global_batch_size + self.process_index * local
    return np.arange(start, start + local, dtype=np.int64)

  def num_batches(self, num_examples: int, global_batch_size: int) -> int:
    """Global batches in one pass over `num_examples` (the last one padded)."""
    self.local_batch_size(global_batch_size)
    return -(-num_examples // global_batch_size)


def train_steps(make_batch: Callable[[int], dict], start_step: int,
                read_options: grain.ReadOptions) -> Iterator[dict]:
  """`make_batch(step)` for step = start_step, start_step + 1, ... endlessly, prefetched."""
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0')
  ds = grain.MapDataset.range(start_step, start_step + _FOREVER).map(make_batch)
  return iter(ds.to_iter_dataset(read_options))


def eval_steps(make_batch: Callable[[int], dict], num_batches: int,
               read_options: grain.ReadOptions) -> Iterator[dict]:
  """`make_batch(step)` for the `num_batches` steps of one eval pass, prefetched."""
  ds = grain.MapDataset.range(num_batches).map(make_batch)
  return iter(ds.to_iter_dataset(read_options))
