r"""Command line: runs the stages of a config in a workdir, resuming where it stopped.

  python -m gwtn_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/gwtn_fmnist
  python -m gwtn_jax.main --config=configs/fashion_mnist.py:smoke --workdir=... \
      --config.seeds='(0,1,2)'

A refused config, path or input is one line on stderr and exit status 2, before anything is
read or compiled.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from gwtn_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml_collections config file (optionally `file.py:arg`).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and the report go.')
_START_OVER = flags.DEFINE_bool(
    'start_over', False, 'Set a previous run in --workdir aside (moved to previous-<time>/, '
    'never deleted) and start anew, e.g. after changing the config.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'host:port of process 0, for multi-process runs outside Cloud TPU '
    '(a TPU pod slice finds it itself). Also GWTN_COORDINATOR_ADDRESS.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'This process in a multi-process run.')
flags.mark_flags_as_required(['config', 'workdir'])


def _parse_flags(argv):
  return cli.parse_flags(argv, _CONFIG)


def main(argv):
  del argv  # cli.parse_flags refused any positional word
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO; the console line of the loop is what a user reads.
    logging.set_verbosity(logging.WARNING)
  # Imported here so that `--help` and flag errors do not wait for JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from gwtn_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    cli.refuse(str(e))
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax import data  # pylint: disable=g-import-not-at-top
  from gwtn_jax import pipeline  # pylint: disable=g-import-not-at-top
  from gwtn_jax import study  # pylint: disable=g-import-not-at-top
  from gwtn_jax.interop import tensors  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import preemption  # pylint: disable=g-import-not-at-top

  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    if _CONFIG.value.study.axis:
      study.run(_CONFIG.value, _WORKDIR.value, start_over=_START_OVER.value)
    else:
      pipeline.run(_CONFIG.value, _WORKDIR.value, start_over=_START_OVER.value)
  except (config_lib.ConfigError, data.DataError, tensors.InteropError) as e:
    # DataError: broken data met mid-run; the loop let its pending saves finish first.
    # InteropError: another framework's checkpoint (teacher_dir, thin_init) that does not
    # convert, found when it is loaded (its architecture was checked at start-up).
    cli.refuse(str(e))
  except preemption.StopRequested as e:
    print(e.message, flush=True)
    sys.exit(0)
  except (loop.NonFiniteError, checkpoint.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    # A failed asynchronous write can leave orbax's worker threads waiting on their own
    # time-outs (minutes); everything worth keeping is already on disk.
    os._exit(1)  # pylint: disable=protected-access


def run() -> None:
  """The console script (`gwtn-train`): the same as `python -m gwtn_jax.main`."""
  cli.run(__name__, main, _parse_flags)


if __name__ == '__main__':
  run()
