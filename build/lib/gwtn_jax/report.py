"""The run report: `report.json`, `report.md` (the side-by-side table) and `curves.png`.

`report.json` maps each network (wide, thin_scratch, thin_kd, thin_imitated, thin_gwtn; with
other methods thin_lit, small_an, small_scratch, small_dan) to
{params, flops, train_steps, wall_s, metrics, throughput}, where metrics are the mean over the seeds and
`spread` holds their standard deviation: {accuracy, loss} for images, {mlm_accuracy, mlm_loss}
after pre-training for a BERT, plus {downstream_accuracy, downstream_loss} after its downstream
fine-tuning (and `downstream_steps`). `flops` are the forward FLOPs of one example from XLA's
cost analysis; `train_steps` and `wall_s` add up every stage that produced the network
(thin_gwtn: imitation + fine-tuning), and `throughput` gives each of those stages'
examples/s (tokens/s for a BERT), model TFLOP/s per device and MFU (`gwtn_jax.train.metrics`),
measured over its training alone. A BERT run's report also has `downstream_task`: the
task's name, classes, sizes and chance accuracy.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from gwtn_jax.config import schema as config_lib
from gwtn_jax import storage
from gwtn_jax.methods import registry

# The report's entry that describes the downstream task (every other entry is a network).
DOWNSTREAM_TASK = 'downstream_task'


def claims() -> list[tuple[str, str, str]]:
  """(method's row, control's row, what its paper claims): what report.md spells out."""
  return [(s.report, control, claim) for s in registry.stages().values()
          for control, claim in s.claims]


def count_params(variables: Mapping[str, Any]) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params'])))


def cost_flops(compiled) -> float:
  """FLOPs from a compiled computation's cost analysis (a dict, or a list of one per device)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def forward_flops(model, task) -> int:
  """Inference FLOPs of one example, from XLA's cost analysis of the task's forward pass.

  (A BERT's MLM forward runs its head at the masked positions only, as in pre-training.) A
  network with scanned layers is counted as its unrolled twin: XLA counts a loop's body once.
  """
  if getattr(model, 'scan_layers', False):
    model = model.clone(scan_layers=False)
  sample = task.sample_batch()
  variables = jax.eval_shape(functools.partial(task.init, model), jax.random.key(0), sample)
  apply = jax.jit(lambda v, b: task.outputs(model, v, b, train=False)[0])
  return int(cost_flops(apply.lower(variables, sample).compile()))


def _mean(values) -> float:
  return float(np.mean(values))


def build_report(results, report_keys, exp) -> dict[str, Any]:
  """Summarizes the stage results per network (mean and spread over seeds).

  Args:
    results: stage -> [StageResult per seed] ('downstream/<network>' for the downstream
      fine-tuning of a network).
    report_keys: stage -> (network, the stages its training budget adds up).
    exp: the `builders.Experiment` (networks and tasks).
  """
  report: dict[str, Any] = {}
  flops_cache: dict[str, int] = {}
  per_network = next(iter(registry.per_network_stages()), '')
  for stage, (key, budget) in report_keys.items():
    if stage not in results:
      continue
    runs = results[stage]
    model = runs[0].model  # the network the stage produced (AN: the extracted small one)
    if repr(model) not in flops_cache:
      flops_cache[repr(model)] = forward_flops(model, exp.task)
    down = results.get(f'{per_network}/{key}', []) if per_network else []
    per_seed = []
    for i, run in enumerate(runs):
      parts = [results[s][i] for s in budget if s in results]
      metrics = {k: run.metrics[k] for k in exp.task.report_metrics if k in run.metrics}
      if down:
        tuned = down[min(i, len(down) - 1)].metrics
        metrics.update({f'downstream_{k}': tuned[k] for k in ('accuracy', 'loss') if k in tuned})
      per_seed.append({'metrics': metrics, 'train_steps': sum(p.steps for p in parts),
                       'wall_s': sum(p.wall_s for p in parts)})
    names = per_seed[0]['metrics'].keys()
    # Each training stage's throughput (examples/s, tokens/s, TFLOP/s per device, MFU), the
    # mean over seeds.
    throughput = {}
    for s in budget:
      measured = [r.throughput for r in results.get(s, []) if r.throughput]
      if measured:
        throughput[s] = {k: _mean([m[k] for m in measured if k in m]) for k in measured[0]}
    report[key] = {
        'params': count_params(runs[0].variables),
        'flops': flops_cache[repr(model)],
        'train_steps': per_seed[0]['train_steps'],
        'wall_s': _mean([p['wall_s'] for p in per_seed]),
        'metrics': {m: _mean([p['metrics'][m] for p in per_seed]) for m in names},
        'spread': {m: float(np.std([p['metrics'][m] for p in per_seed])) for m in names},
        'seeds': len(per_seed),
        'per_seed': [p['metrics'] for p in per_seed],
        'throughput': throughput,
    }
    if down:
      report[key]['downstream_steps'] = down[0].steps
      report[key]['downstream_wall_s'] = _mean([d.wall_s for d in down])
  if exp.downstream is not None and report:
    info = exp.downstream.data.info
    report[DOWNSTREAM_TASK] = {
        'name': info.name, 'num_classes': info.num_classes,
        'class_names': list(info.class_names), 'chance_accuracy': info.chance_accuracy,
        'num_train_examples': info.num_train_examples,
        'num_eval_examples': info.num_eval_examples}
  return report


def networks(report: dict[str, Any]) -> dict[str, Any]:
  """The rows of the report that are networks."""
  return {k: v for k, v in report.items() if k != DOWNSTREAM_TASK}


def _lower_is_better(metric: str) -> bool:
  return metric.endswith('loss')


def _markdown(report: dict[str, Any], config) -> str:
  rows = networks(report)
  metrics = list(dict.fromkeys(m for row in rows.values() for m in row['metrics']))
  lines = [
      f'# Run report: {", ".join(config_lib.stages_of(config))}', '',
      f'Model `{config.model.name}`, thin width {config.thin_width}, wide width '
      f'{config.wide_width}; data `{config.data.name}`; seeds {tuple(config.seeds)}.', '',
      '| network | params | forward MFLOPs/example | train steps | wall s | '
      + ' | '.join(metrics) + ' |',
      '|---|---:|---:|---:|---:|' + '---:|' * len(metrics),
  ]
  for key, row in rows.items():
    cells = []
    for m in metrics:
      if m not in row['metrics']:
        cells.append('')
        continue
      cell = f'{row["metrics"][m]:.4f}'
      if row['seeds'] > 1:
        cell += f' ± {row["spread"][m]:.4f}'
      cells.append(cell)
    lines.append(f'| {key} | {row["params"]:,} | {row["flops"] / 1e6:.2f} | '
                 f'{row["train_steps"]} | {row["wall_s"]:.0f} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  for method, control, claim in claims():
    if method not in rows or control not in rows:
      continue
    ours, other = rows[method]['metrics'], rows[control]['metrics']
    deltas = []
    for m in metrics:
      if m in ours and m in other:
        delta = ours[m] - other[m]
        better = (delta < 0) if _lower_is_better(m) else (delta > 0)
        shown = f'{delta:+.4f}' if _lower_is_better(m) else f'{100 * delta:+.2f} points'
        deltas.append(f'{m} {shown} ({"better" if better else "worse"})')
    lines.append(f'- {method} vs {control} at equal training steps '
                 f'({rows[control]["train_steps"]}): ' + ', '.join(deltas) + f' [{claim}].')
  speeds = [(key, stage, t) for key, row in rows.items()
            for stage, t in row.get('throughput', {}).items()]
  if speeds:
    lines += ['', '| network | stage | examples/s | tokens/s | model TFLOP/s per device | MFU |',
              '|---|---|---:|---:|---:|---:|']
    for key, stage, t in speeds:
      cell = lambda k, f: f.format(t[k]) if k in t else ''
      lines.append(f'| {key} | {stage} | {cell("examples_per_second", "{:.0f}")} | '
                   f'{cell("tokens_per_second", "{:.0f}")} | '
                   f'{cell("tflops_per_device", "{:.3g}")} | '
                   f'{cell("mfu", "{:.1%}")} |')
  task = report.get(DOWNSTREAM_TASK)
  if task:
    steps = next((r['downstream_steps'] for r in rows.values() if 'downstream_steps' in r), 0)
    lines += ['', f'Downstream task `{task["name"]}` ({task["num_classes"]} classes: '
              f'{", ".join(task["class_names"])}; {task["num_train_examples"]} train and '
              f'{task["num_eval_examples"]} held-out examples): every network fine-tuned for '
              f'{steps} steps; chance (majority class) accuracy {task["chance_accuracy"]:.4f}.']
  lines += ['', 'Metrics are mean ± standard deviation over seeds; `curves.png` has the eval '
            'curves. thin_imitated is the thin network right after imitation, its head fitted on '
            'frozen features (the probe stage).', '']
  return '\n'.join(lines)


def _plot(results, config) -> bytes:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  # '<per-network stage>/<row>': each network's downstream fine-tuning.
  downstream = {k.split('/', 1)[1]: v for k, v in results.items() if '/' in k}
  panels = 3 if downstream else 2
  fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5))
  ax_main, ax_imi = axes[0], axes[1]
  known = registry.stages()
  colors = {n: s.color for n, s in known.items()}
  colors.update({s.report: s.color for s in known.values() if s.report})
  metric = None
  for stage, runs in results.items():
    if '/' in stage:
      continue
    declared = known[stage]
    if declared.budget_role == 'imitation':
      for i, run in enumerate(runs):
        steps = [h['step'] for h in run.history]
        ax_imi.plot(steps, [h['metrics']['imitation_loss'] for h in run.history], 'o',
                    color='tab:red', label='eval MSE of the phase\'s point' if i == 0 else None)
        if i == 0:
          for h in run.history:
            ax_imi.annotate(h['phase'], (h['step'], h['metrics']['imitation_loss']),
                            textcoords='offset points', xytext=(0, 6), ha='center', fontsize=7)
      continue
    before = [r.steps for r in results.get(declared.curve_after, [])]
    for i, run in enumerate(runs):
      metric = run.curve_metric
      offset = before[i] if before else 0
      steps = [h['step'] + offset for h in run.history]
      values = [h['metrics'].get(metric, np.nan) for h in run.history]
      ax_main.plot(steps, values, 'o-', ms=3, color=colors.get(stage), alpha=0.8,
                   label=(declared.label or stage) if i == 0 else None)
  ax_main.set_xlabel('training steps of the network (thin: imitation steps counted)')
  ax_main.set_ylabel(f'eval {metric}')
  ax_main.set_title(f'eval {metric}')
  ax_main.grid(alpha=0.3)
  ax_main.legend()
  ax_imi.set_xlabel('imitation step (one phase per point, bottom to top)')
  ax_imi.set_ylabel('eval MSE')
  ax_imi.set_yscale('log')
  ax_imi.set_title('stage 2: layerwise imitation')
  ax_imi.grid(alpha=0.3)
  if any(known[s].budget_role == 'imitation' for s in results if s in known):
    ax_imi.legend()
  if downstream:
    ax = axes[2]
    for key, runs in downstream.items():
      for i, run in enumerate(runs):
        ax.plot([h['step'] for h in run.history],
                [h['metrics'].get('accuracy', np.nan) for h in run.history], 'o-', ms=3,
                color=colors.get(key), alpha=0.8, label=key if i == 0 else None)
    ax.set_xlabel('downstream fine-tuning step')
    ax.set_ylabel('eval accuracy (held-out)')
    ax.set_title('downstream task')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f'GWTN: {config.model.name}, thin {config.thin_width} / wide {config.wide_width}, '
               f'{config.data.name}')
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  return buffer.getvalue()


def write_report(workdir: str, report: dict[str, Any], results, config) -> None:
  """Writes report.json, report.md and curves.png into the workdir (process 0 only)."""
  storage.write_text(os.path.join(workdir, 'report.json'), json.dumps(report, indent=1))
  storage.write_text(os.path.join(workdir, 'report.md'), _markdown(report, config))
  storage.write_bytes(os.path.join(workdir, 'curves.png'), _plot(results, config))
