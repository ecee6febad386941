"""Metrics out of the loop: TensorBoard event files and one console progress line.

Only process 0 writes; the other processes of a multi-host run keep quiet.
"""

from __future__ import annotations

import functools
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


# Peak dense matrix-multiply FLOP/s of one chip, from the vendors' data sheets: bf16, and for
# GPUs the float32 (TF32 tensor-core) figure too; TPUs run float32 matmuls at JAX's default
# precision as one bf16 pass. Matched by the longest prefix of `device.device_kind`.
PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,  # v5e
    'TPU v5e': 197e12,
    'TPU v5': 459e12,       # v5p
    'TPU v5p': 459e12,
    'TPU v6 lite': 918e12,  # Trillium
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
    'NVIDIA A100': 312e12,
}
PEAK_FLOPS_F32 = {'NVIDIA H100': 494e12, 'NVIDIA H200': 494e12, 'NVIDIA A100': 156e12}


@functools.lru_cache(maxsize=None)
def measured_cpu_peak() -> float:
  """This host's float32 matmul FLOP/s: the best of a few timed 1024^3 products (about a
  second, once per process)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 1024
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(5):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def peak_flops(device, dtype: str, configured: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the figure comes from): the config's value if set
  (`peak_tflops`), else the table for TPUs and GPUs, else, on a CPU, the measured matmul rate
  of the host shared by its local devices; (0, 'unknown') for a chip the table lacks."""
  if configured > 0:
    return configured * 1e12, 'config'
  kind = getattr(device, 'device_kind', '')
  table = PEAK_FLOPS_F32 if dtype == 'float32' and device.platform == 'gpu' else PEAK_FLOPS
  for prefix in sorted(table, key=len, reverse=True):
    if kind.startswith(prefix):
      return table[prefix], f'{prefix} data sheet'
  if device.platform == 'cpu':
    return measured_cpu_peak() / max(jax.local_device_count(), 1), 'measured matmul'
  return 0.0, 'unknown'


class Profiler:
  """A `jax.profiler` trace of steps `start`..`stop` (1-based, inclusive) of a stage, under
  `logdir` (TensorBoard's profile plugin and Perfetto read it: `plugins/profile/<run>/`).

  A remote `logdir` (gs://) gets the files after the trace: jax writes them to a local
  temporary folder, which is then uploaded through `gwtn_jax.storage`. `steps` () profiles
  nothing.
  """

  def __init__(self, logdir: str, steps):
    self._logdir = logdir
    self._steps = tuple(steps)
    self._local = None
    self.active = False

  def before_step(self, step: int) -> None:
    """Called before step `step` (1-based) runs."""
    if self._steps and step == self._steps[0] and not self.active:
      self._local = tempfile.mkdtemp(prefix='gwtn_profile_') if storage.is_remote(
          self._logdir) else self._logdir
      jax.profiler.start_trace(self._local)
      self.active = True

  def after_step(self, step: int, state) -> None:
    """Called after step `step` ran and returned `state`."""
    if self.active and step >= self._steps[1]:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active = False
    if self._local != self._logdir:
      for folder, _, names in os.walk(self._local):
        for name in names:
          source = os.path.join(folder, name)
          storage.upload(source, os.path.join(self._logdir,
                                              os.path.relpath(source, self._local)))
      shutil.rmtree(self._local, ignore_errors=True)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


class Progress:
  """The console line of a stage: step, loss and metrics, throughput and the ETA.

  Throughput is measured over the training between two updates: `restart_clock` after
  anything else the loop does (a compile, an eval, a checkpoint) keeps that out. With the
  model FLOPs of a step (`gwtn_jax.train.flops`), it gives each device's model TFLOP/s and,
  against `peak` (FLOP/s of one device), the MFU.
  """

  def __init__(self, name: str, total_steps: int, start_step: int, batch_size: int,
               stream=None, tokens_per_example: int | None = None, num_devices: int = 1,
               peak: float = 0.0):
    self.name = name
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.stream = stream or sys.stdout
    self.tokens_per_example = tokens_per_example
    self.num_devices = max(num_devices, 1)
    self.peak = peak
    self._last_step = start_step
    self._last_time = time.time()
    self._printing = jax.process_index() == 0
    self._steps = self._seconds = self._flops = 0.0  # the training measured so far

  def restart_clock(self, step: int) -> None:
    """What happened since the last update (a compile, an eval, a save) is not training."""
    self._last_step, self._last_time = step, time.time()

  def _rates(self, steps: float, seconds: float, flops: float) -> dict[str, float]:
    seconds = max(seconds, 1e-9)
    rates = {'examples_per_second': steps * self.batch_size / seconds}
    if self.tokens_per_example:
      rates['tokens_per_second'] = rates['examples_per_second'] * self.tokens_per_example
    if flops:
      rates['tflops_per_device'] = flops / seconds / self.num_devices / 1e12
      if self.peak:
        rates['mfu'] = flops / seconds / self.num_devices / self.peak
    return rates

  def update(self, step: int, scalars: Mapping[str, float], phase: str = '',
             step_flops: float = 0.0) -> dict[str, float]:
    """Prints the line for `step`; returns the throughput since the last update
    (`examples_per_second`, and `tokens_per_second`, `tflops_per_device`, `mfu` where known).
    """
    now = time.time()
    steps, seconds = step - self._last_step, now - self._last_time
    rates = self._rates(steps, seconds, steps * step_flops)
    self._steps += steps
    self._seconds += seconds
    self._flops += steps * step_flops
    eta = (self.total_steps - step) * seconds / max(steps, 1)
    self._last_step, self._last_time = step, now
    if self._printing:
      shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items())
      where = f'{self.name}:{phase}' if phase else self.name
      speed = f'{rates["examples_per_second"]:.0f} ex/s'
      if 'tokens_per_second' in rates:
        speed += f' {rates["tokens_per_second"]:.0f} tok/s'
      if 'tflops_per_device' in rates:
        speed += f' {rates["tflops_per_device"]:.3g} TFLOP/s/dev'
      if 'mfu' in rates:
        speed += f' MFU {100 * rates["mfu"]:.1f}%'
      print(f'[{where}] step {step}/{self.total_steps} {shown} | {speed} | '
            f'ETA {_duration(eta)}', file=self.stream, flush=True)
    return rates

  def summary(self) -> dict[str, float]:
    """The stage's throughput over all the training measured (compiles, evals and saves
    left out), as `update` gives it; {} if nothing was measured."""
    if not self._steps:
      return {}
    return self._rates(self._steps, self._seconds, self._flops)

  def message(self, text: str) -> None:
    if self._printing:
      print(f'[{self.name}] {text}', file=self.stream, flush=True)
