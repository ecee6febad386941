"""Metrics out of the loop: TensorBoard event files and one console progress line.

Only process 0 writes; the other processes of a multi-host run keep quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import jax


class MetricWriter:
  """Scalars to TensorBoard event files under `logdir` (tensorboardX; TensorFlow not needed)."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(logdir=logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


class Progress:
  """The console line of a stage: step, loss and metrics, examples/s and the ETA."""

  def __init__(self, name: str, total_steps: int, start_step: int, batch_size: int,
               stream=None):
    self.name = name
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.stream = stream or sys.stdout
    self._last_step = start_step
    self._last_time = time.time()
    self._printing = jax.process_index() == 0

  def update(self, step: int, scalars: Mapping[str, float], phase: str = '') -> float:
    """Prints the line for `step`; returns the examples/s since the last update."""
    now = time.time()
    steps = step - self._last_step
    rate = steps * self.batch_size / max(now - self._last_time, 1e-9)
    eta = (self.total_steps - step) * (now - self._last_time) / max(steps, 1)
    self._last_step, self._last_time = step, now
    if self._printing:
      shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items())
      where = f'{self.name}:{phase}' if phase else self.name
      print(f'[{where}] step {step}/{self.total_steps} {shown} | {rate:.0f} ex/s | '
            f'ETA {_duration(eta)}', file=self.stream, flush=True)
    return rate

  def message(self, text: str) -> None:
    if self._printing:
      print(f'[{self.name}] {text}', file=self.stream, flush=True)
