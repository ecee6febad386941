"""Stopping cleanly: SIGTERM or SIGINT ends the run at the next step boundary, on every process.

A Cloud TPU maintenance event or preemption sends SIGTERM; a user sends SIGINT (Ctrl-C). The
loop asks `should_stop(step)` after each step; every process gets the same answer for the same
step, so all of them save the same checkpoint together and exit 0. A second Ctrl-C interrupts
at once (the last saved checkpoint is then where a rerun resumes).

Multi-host agreement: JAX's preemption sync point (set up by `jax.distributed.initialize`,
which watches for SIGTERM through the coordination service) answers at every step, and a
signal that reached only some processes (a Ctrl-C on one host) is shared by an all-gather of
the local flags every `sync_every` steps.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopRequested(Exception):
  """Raised by the loop once the stop checkpoint is written; main turns it into exit 0."""

  def __init__(self, message: str):
    super().__init__(message)
    self.message = message


class Preemption:
  """Installs the signal handlers for the duration of a `with` block.

  Args:
    sync_every: how often (in steps) processes share their local flags in multi-host runs.
  """

  def __init__(self, sync_every: int = 10):
    self.sync_every = max(int(sync_every), 1)
    self.signal_name: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      # A second Ctrl-C: the user does not want to wait for the step boundary.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False

  def should_stop(self, step: int) -> bool:
    """Whether every process stops after `step` (the same answer on all of them)."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or 'SIGTERM'
        return True
    except RuntimeError:
      pass  # no preemption service (jax.distributed not initialized by a TPU runtime)
    if step % self.sync_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
    if np.any(flags):
      self.signal_name = self.signal_name or 'a signal on another process'
      return True
    return False
