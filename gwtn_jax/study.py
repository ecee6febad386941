"""A sweep of the pipeline over one axis (depth, budget, a recipe variant), every seed.

A config with `study.axis` set (a dotted config field, e.g. 'model.name' or
'imitate.steps_per_point', or 'variant': named settings, each `{'variant': NAME, field:
value, ...}`) and `study.settings` (its values) runs the whole pipeline once per
value, in `WORKDIR/settings/<index>-<value>/`, each resumable like any run (a killed study
rerun goes on where it stopped; finished settings are loaded, not rerun), then writes

- `study.json`: {"axis", "label", "metric", "loss", "settings": [{"value", "teacher",
  "networks": {network: {"mean", "spread", "per_seed", "params", "flops", "train_steps",
  "loss", "loss_spread", "loss_per_seed"}}}]}, the metric being the task's main one (accuracy; MLM
  accuracy for a BERT), `per_seed` its value for each seed, and `loss` the held-out loss;
- `study.md`: one table, a row per setting and a column per network (mean +- spread);
- `study.png`: each network's mean and spread against the axis.

`study.json` is written again after every setting, so a study stopped part way shows what it
has. Every setting's config is checked before the first one runs.

With `study.share_teacher` (the default), a setting whose teacher stage would train exactly as
the first setting's (its config differs only in the later stages' fields, e.g. a budget or a
recipe variant of stage 2, and asks for no other teacher snapshot) reads the first setting's
teacher as its `teacher_dir` instead of training the same network again. Each setting's
`teacher` in study.json names the stage folder it read ('' where it trained its own). A
setting that already trained a teacher of its own (a study resumed from before sharing)
keeps it.

  python -m gwtn_jax.main --config=configs/study_depth_mlp.py --workdir=DIR
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax

from gwtn_jax import storage
from gwtn_jax.config import schema
from gwtn_jax.config import validation
from gwtn_jax.config import workdir as workdir_lib
from gwtn_jax.methods import registry
from gwtn_jax.train import layout

STUDY_JSON = 'study.json'
STUDY_MD = 'study.md'
STUDY_PNG = 'study.png'
SETTINGS_DIR = 'settings'
# The axis of a study of named recipe variants: each setting is {'variant': NAME, and the
# dotted fields it changes}; NAME labels it and sets no field.
VARIANT = 'variant'
# The thin arms first (the study's question), then the rest.
_ORDER = ('thin_scratch', 'thin_kd', 'thin_gwtn', 'thin_imitated', 'thin_lit', 'small_an',
          'small_scratch', 'small_dan', 'wide')


def _set(config, dotted: str, value) -> None:
  *path, last = dotted.split('.')
  target = config
  for part in path:
    target = target[part]
  target[last] = value


def _get(config, dotted: str):
  target = config
  for part in dotted.split('.'):
    target = target[part]
  return target


def setting_configs(config) -> list[tuple[Any, Any]]:
  """(value, the config of that setting) for every value of the study's axis.

  A value is the axis field's value, or a mapping of dotted fields to values that holds the
  axis field and what must change with it (e.g. a depth and the steps per imitated layer that
  keep the imitation budget equal across depths).

  Raises:
    ConfigError: one line: no values, an axis or field that is no config field, a mapping
      without the axis, a value repeated.
  """
  axis, values = config.study.axis, tuple(config.study.settings)
  named = axis == VARIANT
  if not values:
    raise schema.ConfigError(f'study.axis={axis!r} is set but study.settings is empty')
  out = []
  for value in values:
    overrides = dict(value) if isinstance(value, Mapping) else {axis: value}
    if axis not in overrides:
      raise schema.ConfigError(f'study.settings: {overrides} does not set the axis '
                               f'{axis!r}')
    if named and not isinstance(overrides[axis], str):
      raise schema.ConfigError(f'study.settings: {overrides} names its variant with a '
                               f'non-string {axis!r}')
    setting = copy.deepcopy(config)
    with setting.unlocked():
      setting.study.axis = ''
      setting.study.settings = ()
      for field, v in overrides.items():
        if named and field == VARIANT:
          continue
        try:
          _get(setting, field)
        except (KeyError, AttributeError):
          raise schema.ConfigError(f'study: {field!r} is not a config field') from None
        try:
          _set(setting, field, v)
        except TypeError as e:
          raise schema.ConfigError(f'study: {field}={v!r} does not fit the field ('
                                   f'{" ".join(str(e).split())})') from None
    out.append((overrides[axis], setting))
  labels = [repr(v) for v, _ in out]
  if len(set(labels)) != len(labels):
    raise schema.ConfigError(f'study.settings: the axis {axis!r} takes a value twice '
                             f'({labels})')
  return out


def setting_dir(workdir: str, index: int, value) -> str:
  name = re.sub(r'[^A-Za-z0-9.=-]+', '_', f'{index}-{value}').strip('_')
  return os.path.join(workdir, SETTINGS_DIR, name)


def _metric(config) -> str:
  return 'mlm_accuracy' if schema.is_text(config) else 'accuracy'


def _loss(config) -> str:
  return 'mlm_loss' if schema.is_text(config) else 'loss'


def _teacher_inputs(setting) -> str:
  """All of a setting's config its teacher stage's training reads: everything but the other
  stages' sections and the study's, plus the teacher snapshots those stages ask for."""
  teacher = registry.teacher_stage()
  fields = json.loads(setting.to_json_best_effort())
  others = [s for s in registry.stages() if s != teacher and s in fields]
  snapshots = sorted({fields[s].get('teacher_step', 0) for s in others})
  for section in others + ['study']:
    fields.pop(section, None)
  return json.dumps({'config': fields, 'snapshots': snapshots}, sort_keys=True)


def reading_teacher(setting, teacher_dir: str):
  """`setting` with its teacher read from `teacher_dir` rather than trained."""
  teacher = registry.teacher_stage()
  setting = copy.deepcopy(setting)
  with setting.unlocked():
    setting.teacher_dir = teacher_dir
    setting.stages = tuple(s for s in setting.stages if s != teacher)
  return setting


def shared_teachers(config, workdir: str, settings: list[tuple[Any, Any]],
                    start_over: bool = False) -> list[Any]:
  """Each setting's config as it runs: with `study.share_teacher`, a setting whose teacher
  would train exactly as the first setting's reads that one (module docstring)."""
  teacher = registry.teacher_stage()
  first_value, first = settings[0]
  if (not config.study.share_teacher or first.teacher_dir
      or teacher not in schema.stages_of(first)):
    return [s for _, s in settings]
  first_teacher = os.path.join(setting_dir(workdir, 0, first_value), layout.STAGES_DIR,
                               layout.stage_name(teacher))
  same = _teacher_inputs(first)
  out = [first]
  for index, (value, setting) in enumerate(settings[1:], 1):
    own = not start_over and teacher in workdir_lib.trained_stages(
        setting_dir(workdir, index, value))
    out.append(setting if own or _teacher_inputs(setting) != same
               else reading_teacher(setting, first_teacher))
  return out


def summarize(config, reports: list[tuple[Any, dict[str, Any], str]]) -> dict[str, Any]:
  """study.json's content from each setting's (value, report, the teacher folder it read or
  '' where it trained its own)."""
  metric, loss = _metric(config), _loss(config)
  settings = []
  for value, report, teacher in reports:
    networks = {}
    for name in sorted(report, key=lambda n: (_ORDER.index(n) if n in _ORDER else 99, n)):
      row = report[name]
      if not isinstance(row, dict) or metric not in row.get('metrics', {}):
        continue
      networks[name] = {
          'mean': row['metrics'][metric], 'spread': row['spread'][metric],
          'per_seed': [s[metric] for s in row['per_seed']], 'params': row['params'],
          'flops': row['flops'], 'train_steps': row['train_steps']}
      if loss in row['metrics']:  # the held-out loss too (a BERT's MLM loss separates more)
        networks[name].update(loss=row['metrics'][loss], loss_spread=row['spread'][loss],
                              loss_per_seed=[s[loss] for s in row['per_seed']])
    settings.append({'value': value, 'teacher': teacher, 'networks': networks})
  return {'axis': config.study.axis, 'label': config.study.label or config.study.axis,
          'metric': metric, 'loss': loss, 'seeds': list(config.seeds), 'settings': settings}


def _table(study: dict[str, Any], names: list[str], header: list[str], cell) -> list[str]:
  """A markdown table: a row per setting, a column per network, `cell(row)` in each ('' where
  the setting lacks the network)."""
  lines = ['| ' + ' | '.join([study['label']] + header) + ' |', '|' + '---|' * (len(names) + 1)]
  for s in study['settings']:
    cells = [str(s['value'])] + ['' if n not in s['networks'] else cell(s['networks'][n])
                                 for n in names]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def markdown(study: dict[str, Any]) -> str:
  names = [n for n in _ORDER if any(n in s['networks'] for s in study['settings'])]
  names += sorted({n for s in study['settings'] for n in s['networks']} - set(names))
  lines = [f'# Study: {study["label"]} ({study["metric"]}, mean +- std over seeds '
           f'{study["seeds"]})', '']
  lines += _table(study, names, names, lambda r: f'{r["mean"]:.4f} +- {r["spread"]:.4f}')
  if any('loss' in row for s in study['settings'] for row in s['networks'].values()):
    lines += ['', f'Held-out {study.get("loss", "loss")} (mean +- std):', '']
    lines += _table(study, names, names, lambda r: '' if 'loss' not in r else
                    f'{r["loss"]:.4f} +- {r["loss_spread"]:.4f}')
  lines += ['', 'Params and train steps per setting (thin arms are trained equally long):', '']
  lines += _table(study, names, [f'{n} params / steps' for n in names],
                  lambda r: f'{r["params"]:,} / {r["train_steps"]}')
  return '\n'.join(lines) + '\n'


def plot(study: dict[str, Any]) -> bytes:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  values = [s['value'] for s in study['settings']]
  numeric = all(isinstance(v, (int, float)) for v in values)
  xs = values if numeric else list(range(len(values)))
  names = [n for n in _ORDER if any(n in s['networks'] for s in study['settings'])]
  for name in names:
    points = [(x, s['networks'][name]) for x, s in zip(xs, study['settings'])
              if name in s['networks']]
    if not points:
      continue
    x = [p[0] for p in points]
    mean = [p[1]['mean'] for p in points]
    spread = [p[1]['spread'] for p in points]
    ax.errorbar(x, mean, yerr=spread, marker='o', capsize=3, label=name)
  if not numeric:
    ax.set_xticks(xs, [str(v) for v in values])
  elif len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8:
    ax.set_xscale('log', base=2)
  ax.set_xlabel(study['label'])
  ax.set_ylabel(study['metric'])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  plt.close(fig)
  return buffer.getvalue()


def write(workdir: str, study: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  storage.write_text(os.path.join(workdir, STUDY_JSON), json.dumps(study, indent=1) + '\n')
  storage.write_text(os.path.join(workdir, STUDY_MD), markdown(study))
  storage.write_bytes(os.path.join(workdir, STUDY_PNG), plot(study))


def run(config, workdir: str, start_over: bool = False) -> dict[str, Any]:
  """Runs every setting of the study (module docstring) and returns study.json's content.

  Raises:
    ConfigError: a refused setting, before any setting runs.
  """
  from gwtn_jax import pipeline  # pylint: disable=g-import-not-at-top
  settings = setting_configs(config)
  runs = shared_teachers(config, workdir, settings, start_over)
  for (value, setting), run_config in zip(settings, runs):
    try:
      validation.validate(setting, None)
      if run_config is not setting:  # its teacher is not there yet: checked when it runs
        validation.validate(run_config, None, data=False)
    except schema.ConfigError as e:
      raise schema.ConfigError(f'study setting {config.study.axis}={value!r}: {e}') from None
  storage.makedirs(workdir)
  reports = []
  for index, ((value, _), setting) in enumerate(zip(settings, runs)):
    note = f'; the teacher of setting 1 ({setting.teacher_dir})' if index and (
        setting is not settings[index][1]) else ''
    print(f'[study] {config.study.axis}={value!r} ({index + 1}/{len(settings)}){note}',
          flush=True)
    report = pipeline.run(setting, setting_dir(workdir, index, value), start_over=start_over)
    reports.append((value, report, setting.teacher_dir))
    write(workdir, summarize(config, reports))
  return summarize(config, reports)
