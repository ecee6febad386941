r"""Command line: runs the stages of a config in a workdir, resuming where it stopped.

  python -m gwtn_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/gwtn_fmnist
  python -m gwtn_jax.main --config=configs/fashion_mnist.py:smoke --workdir=... \
      --config.seeds='(0,1,2)'

A refused config, path or input is one line on stderr and exit status 2, before anything is
read or compiled.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml_collections config file (optionally `file.py:arg`).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and the report go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO; the console line of the loop is what a user reads.
    logging.set_verbosity(logging.WARNING)
  # Imported here so that `--help` and flag errors do not wait for JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax import pipeline  # pylint: disable=g-import-not-at-top

  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
