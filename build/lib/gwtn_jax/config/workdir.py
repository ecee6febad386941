"""A run's workdir: that it can be written, and what a rerun in it may change.

The workdir keeps the config it was started with (`config.json`); a rerun may change
`RERUN_FIELDS` and nothing else, or the old run is set aside with `--start_over`
(`gwtn_jax.pipeline.set_aside`).
"""

from __future__ import annotations

import json
import os

import ml_collections

from gwtn_jax import storage
from gwtn_jax.config import schema
from gwtn_jax.config.schema import ConfigError
from gwtn_jax.data import datasets
from gwtn_jax.train import layout


# Fields a rerun in the same workdir may change: how long stages run, how often they log, eval
# and save, what they measure (MFU's peak, profiler traces), which seeds and stages to run, and
# how the work is laid out on devices and read from disk (a checkpoint restores into another mesh). Anything else would mix two experiments in one
# workdir. Dotted names; a leading '*.' matches the field in every stage.
RERUN_FIELDS = ('seeds', 'stages', 'log_every', 'eval_every', 'checkpoint_every',
                'peak_tflops', 'profile_steps', 'profile_stages',
                'keep_checkpoints', 'checkpoint_timeout_s', 'on_nonfinite', '*.steps', 'imitate.steps_per_point',
                '*.eval_every', '*.checkpoint_every', 'data.read_threads', 'data.prefetch',
                'mesh.*')
CONFIG_FILE = 'config.json'
# A BERT run's vocabulary, copied into the workdir (the export's tokenizer reads it).
VOCAB_FILE = 'vocab.txt'



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


def _resolved(flat: dict[str, object], defaults: dict[str, object]) -> dict[str, object]:
  """A flattened config as it runs: a field it lacks (one the schema gained after the workdir
  was started) has its schema default, and '' for `data.dir` / `data.eval_split` is the
  dataset's own (gwtn_jax.data.datasets), so a config written before a default moved
  compares equal to the same config today."""
  out = {**{f: v for f, v in defaults.items() if f not in flat}, **flat}
  dataset = datasets.IMAGE_DATASETS.get(out.get('data.name'))
  if dataset is not None:
    if out.get('data.dir') == '' and dataset.default_dir:
      out['data.dir'] = dataset.default_dir
    if out.get('data.eval_split') == '':
      out['data.eval_split'] = dataset.eval_split
  return out


def _compare(old: dict, new: dict, defaults: dict | None) -> tuple[list[str], dict, dict]:
  """(the fields that differ, both configs flattened and resolved as they run)."""
  flat_defaults = _flatten(defaults or {})
  a, b = _resolved(_flatten(old), flat_defaults), _resolved(_flatten(new), flat_defaults)
  fields = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f) and not _may_change(f))
  return fields, a, b


def changed_fields(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
  """Dotted fields whose values differ between two configs (as JSON), other than RERUN_FIELDS.

  `defaults` (a config of the schema, as JSON): what a field missing from either stands for.
  """
  return _compare(old, new, defaults)[0]


def _schema_defaults(config) -> dict:
  """The schema's config of the same kind (image or text data), as JSON."""
  defaults = schema.base_config()
  if schema.is_text(config):
    defaults.data = schema.text_data_config()
  return json.loads(defaults.to_json_best_effort())


def _read_json(path: str, what: str):
  """A JSON file of the workdir, or the one-line refusal naming it (it is never rewritten)."""
  try:
    text = storage.read_text(path)
    reason = 'it is empty' if not text.strip() else None
    value = None if reason else json.loads(text)
  except (ValueError, UnicodeDecodeError) as e:
    reason = f'not JSON ({storage.one_line(e)})'
  if reason:
    raise ConfigError(f'{path} ({what}) cannot be read: {reason}; it is left as it is: restore '
                      'it, use a new workdir, or pass --start_over to set the old run aside')
  return value


def trained_stages(workdir: str) -> list[str]:
  """The stage folders of the workdir that hold training (a result or a checkpoint), as paths
  under `stages/` ('wide', 'seed0/thin_kd', ...)."""
  found = []

  def visit(relative: str, depth: int) -> None:
    folder = os.path.join(workdir, layout.STAGES_DIR, relative)
    names = storage.listdir(folder) if storage.isdir(folder) else []
    checkpoints = os.path.join(folder, layout.CHECKPOINTS_DIR)
    steps = (storage.listdir(checkpoints) if layout.CHECKPOINTS_DIR in names else [])
    # A step folder, finished or not ('4', '4.orbax-checkpoint-tmp-...'): training happened.
    if layout.RESULT_FILE in names or any(n.split('.')[0].isdigit() for n in steps):
      found.append(relative)
    elif depth < 3:  # a seed's folder holds its stages' folders
      for name in sorted(names):
        if storage.isdir(os.path.join(folder, name)):
          visit(os.path.join(relative, name), depth + 1)

  visit('', 0)
  return found


def check_workdir_config(config, workdir: str) -> None:
  """Refuses a config that differs from the one the workdir's networks were trained with.

  A workdir whose stages trained is bound to its `config.json`: a rerun may change only
  RERUN_FIELDS, and stages without a readable `config.json` are refused (their config is
  unknown). A workdir where nothing trained yet (a run that stopped before its first step)
  takes the new config. Every stage's `result.json` must be readable.

  Raises:
    ConfigError: one line naming the fields that differ or the file that is wrong.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  trained = trained_stages(workdir)
  for name in trained:
    result = os.path.join(workdir, layout.STAGES_DIR, name, layout.RESULT_FILE)
    if storage.exists(result):
      _read_json(result, f'the record of the finished stage {name}')
  if not storage.exists(path):
    if trained:
      raise ConfigError(
          f'--workdir={workdir} holds trained stages ({", ".join(trained[:4])}'
          f'{", ..." if len(trained) > 4 else ""}) but no {CONFIG_FILE}, so the config they were '
          'trained with is unknown; restore it, use a new workdir, or pass --start_over to '
          'set the old run aside')
    return
  old = _read_json(path, 'the config the workdir was started with')
  if not trained:
    return  # nothing trained under the old config: the new one replaces it
  new = json.loads(config.to_json_best_effort())
  fields, old_flat, new_flat = _compare(old, new, _schema_defaults(config))
  if fields:
    shown = ', '.join(f'{f} ({old_flat.get(f)!r} -> {new_flat.get(f)!r})' for f in fields[:6])
    more = f' and {len(fields) - 6} more' if len(fields) > 6 else ''
    raise ConfigError(
        f'--workdir={workdir} was started with another config: {shown}{more} differ; rerun with '
        'the same config, use a new workdir, or pass --start_over to set the old run aside')


def read_config(workdir: str):
  """The config a workdir was started with (its `config.json`), with the schema's defaults
  for fields added since, as a ConfigDict (lists for tuples, as JSON has them).

  Raises:
    ConfigError: no `config.json`, or one that is not JSON.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not storage.exists(path):
    raise ConfigError(f'--workdir={workdir} has no {CONFIG_FILE}: it is not the folder of a run')
  saved = _read_json(path, 'the config the workdir was started with')

  def merge(defaults: dict, values: dict) -> dict:
    out = dict(defaults)
    for key, value in values.items():
      both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
      out[key] = merge(defaults[key], value) if both else value
    return out

  kind = ml_collections.ConfigDict(saved)
  return ml_collections.ConfigDict(merge(_schema_defaults(kind), saved))
