"""Metrics out of the loop: TensorBoard event files and one console progress line.

Only process 0 writes; the other processes of a multi-host run keep quiet.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping

import jax

from gwtn_jax import storage


class MetricWriter:
  """Scalars to TensorBoard event files under `logdir` (tensorboardX; TensorFlow not needed).

  A remote `logdir` (gs://) gets the same event files: they are written to a local temporary
  folder and uploaded whole through `gwtn_jax.storage` at most every `upload_every_s` and at
  `close`, each upload bounded in time. TensorBoard reads them with `--logdir=gs://...`. A
  failed upload is one warning line and is tried again at the next one: losing a curve never
  stops a run (a failed checkpoint write does).
  """

  def __init__(self, logdir: str, flush_secs: int = 30, upload_every_s: float = 30.0):
    self._writer = None
    self._logdir = logdir
    self._local = None
    self._upload_every_s = upload_every_s
    self._uploaded_at = time.time()
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if storage.is_remote(logdir):
        self._local = tempfile.mkdtemp(prefix='gwtn_tensorboard_')
      self._writer = SummaryWriter(logdir=self._local or logdir, flush_secs=flush_secs)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), step)
    if self._local and time.time() - self._uploaded_at >= self._upload_every_s:
      self._upload()

  def _upload(self, flush: bool = True) -> bool:
    """Copies the local event files to the remote logdir; False (and a warning) if it failed."""
    if flush:
      self._writer.flush()
    self._uploaded_at = time.time()
    names = sorted(os.listdir(self._local))
    try:
      for name in names:
        storage.with_deadline(
            f'TensorBoard {self._logdir}',
            lambda n=name: storage.upload(os.path.join(self._local, n),
                                          os.path.join(self._logdir, n)),
            store=self._logdir)
    except Exception as e:  # pylint: disable=broad-except
      print(f'warning: could not upload TensorBoard events to {self._logdir} '
            f'({storage.one_line(e)}); trying again later', file=sys.stderr, flush=True)
      return False
    return True

  def close(self) -> None:
    if self._writer is None:
      return
    self._writer.close()
    if self._local and self._upload(flush=False):
      shutil.rmtree(self._local, ignore_errors=True)


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
