"""A run's workdir: that it can be written, and what a rerun in it may change.

The workdir keeps the config it was started with (`config.json`); a rerun may change
`RERUN_FIELDS` and nothing else, or the old run is set aside with `--start_over`
(`gwtn_jax.pipeline.set_aside`).
"""

from __future__ import annotations

import json
import os

from gwtn_jax import storage
from gwtn_jax.config.schema import ConfigError


# Fields a rerun in the same workdir may change: how long stages run, how often they log, eval
# and save, which seeds and stages to run, and how the work is laid out on devices and read from
# disk (a checkpoint restores into another mesh). Anything else would mix two experiments in one
# workdir. Dotted names; a leading '*.' matches the field in every stage.
RERUN_FIELDS = ('seeds', 'stages', 'log_every', 'eval_every', 'checkpoint_every',
                'keep_checkpoints', 'checkpoint_timeout_s', 'on_nonfinite', '*.steps', 'imitate.steps_per_point',
                '*.eval_every', '*.checkpoint_every', 'data.read_threads', 'data.prefetch',
                'mesh.*')
CONFIG_FILE = 'config.json'



def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable: tried for real, with a probe file.

  The same for a local folder and a gs:// one (a bucket that does not exist, an object where
  the folder should be, an endpoint that does not answer: one line each, within seconds).
  """
  try:
    storage.check_writable_folder(workdir, '--workdir')
  except storage.StorageError as e:
    raise ConfigError(str(e)) from None


def _flatten(tree, prefix: str = '') -> dict[str, object]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _may_change(field: str) -> bool:
  for pattern in RERUN_FIELDS:
    if pattern.startswith('*.') and field.endswith(pattern[1:]):
      return True
    if pattern.endswith('.*') and field.startswith(pattern[:-1]):
      return True
    if field == pattern:
      return True
  return False


def changed_fields(old: dict, new: dict) -> list[str]:
  """Dotted fields whose values differ between two configs (as JSON), other than RERUN_FIELDS."""
  a, b = _flatten(old), _flatten(new)
  return sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f) and not _may_change(f))


def check_workdir_config(config, workdir: str) -> None:
  """Refuses a config that differs from the one the workdir was started with.

  Raises:
    ConfigError: one line naming the fields that differ.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not storage.exists(path):
    return
  old = json.loads(storage.read_text(path))
  new = json.loads(config.to_json_best_effort())
  fields = changed_fields(old, new)
  if fields:
    old_flat, new_flat = _flatten(old), _flatten(new)
    shown = ', '.join(f'{f} ({old_flat.get(f)!r} -> {new_flat.get(f)!r})' for f in fields[:6])
    more = f' and {len(fields) - 6} more' if len(fields) > 6 else ''
    raise ConfigError(
        f'--workdir={workdir} was started with another config: {shown}{more} differ; rerun with '
        'the same config, use a new workdir, or pass --start_over to set the old run aside')
