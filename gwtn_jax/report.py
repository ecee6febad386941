"""The run report: `report.json`, `report.md` (the side-by-side table) and `curves.png`.

`report.json` maps each network (wide, thin_scratch, thin_kd, thin_imitated, thin_gwtn) to
{params, flops, train_steps, wall_s, metrics: {accuracy, loss}}, where metrics are the mean over
the seeds and `spread` holds their standard deviation; `flops` are the forward FLOPs of one
example from XLA's cost analysis; `train_steps` and `wall_s` add up every stage that produced the
network (thin_gwtn: imitation + fine-tuning).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def count_params(variables: Mapping[str, Any]) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params'])))


def cost_flops(compiled) -> float:
  """FLOPs from a compiled computation's cost analysis (a dict, or a list of one per device)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def forward_flops(model, sample) -> int:
  """Inference FLOPs of one example, from XLA's cost analysis of the model's forward pass."""
  image = jnp.zeros((1,) + tuple(sample['image'].shape[1:]), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), image)
  apply = jax.jit(functools.partial(model.apply, train=False))
  return int(cost_flops(apply.lower(variables, image).compile()))


def build_report(results, report_keys, networks, sample) -> dict[str, Any]:
  """Summarizes the stage results per network (mean and spread over seeds)."""
  report: dict[str, Any] = {}
  flops_cache: dict[str, int] = {}
  for stage, (key, budget) in report_keys.items():
    if stage not in results:
      continue
    runs = results[stage]
    role = 'wide' if stage == 'wide' else 'thin'
    if role not in flops_cache:
      flops_cache[role] = forward_flops(networks[role], sample)
    per_seed = []
    for i, run in enumerate(runs):
      parts = [results[s][i] for s in budget if s in results]
      per_seed.append({'metrics': {k: run.metrics[k] for k in ('accuracy', 'loss') if k in run.metrics},
                       'train_steps': sum(p.steps for p in parts),
                       'wall_s': sum(p.wall_s for p in parts)})
    names = per_seed[0]['metrics'].keys()
    report[key] = {
        'params': count_params(runs[0].variables),
        'flops': flops_cache[role],
        'train_steps': per_seed[0]['train_steps'],
        'wall_s': float(np.mean([p['wall_s'] for p in per_seed])),
        'metrics': {m: float(np.mean([p['metrics'][m] for p in per_seed])) for m in names},
        'spread': {m: float(np.std([p['metrics'][m] for p in per_seed])) for m in names},
        'seeds': len(per_seed),
        'per_seed': [p['metrics'] for p in per_seed],
    }
  return report


def _markdown(report: dict[str, Any], config) -> str:
  lines = [
      '# GWTN run report', '',
      f'Model `{config.model.name}`, thin width {config.thin_width}, wide width '
      f'{config.wide_width}; data `{config.data.name}`; seeds {tuple(config.seeds)}.', '',
      '| network | params | forward MFLOPs/example | train steps | wall s | accuracy | loss |',
      '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for key, row in report.items():
    acc, loss = row['metrics'].get('accuracy', float('nan')), row['metrics'].get('loss', float('nan'))
    spread = row['spread']
    acc_s = f'{acc:.4f}' + (f' ± {spread["accuracy"]:.4f}' if row['seeds'] > 1 else '')
    loss_s = f'{loss:.4f}' + (f' ± {spread["loss"]:.4f}' if row['seeds'] > 1 else '')
    lines.append(f'| {key} | {row["params"]:,} | {row["flops"] / 1e6:.2f} | {row["train_steps"]} | '
                 f'{row["wall_s"]:.0f} | {acc_s} | {loss_s} |')
  lines.append('')
  if 'thin_gwtn' in report:
    gwtn = report['thin_gwtn']['metrics']['accuracy']
    for control in ('thin_scratch', 'thin_kd'):
      if control in report:
        delta = gwtn - report[control]['metrics']['accuracy']
        lines.append(f'- thin_gwtn vs {control} at equal thin training steps '
                     f'({report[control]["train_steps"]}): {100 * delta:+.2f} accuracy points.')
  lines += ['', 'Accuracy is mean ± standard deviation over seeds; `curves.png` has the eval curves.',
            'thin_imitated is the thin network right after imitation, its head fitted on frozen '
            'features (the probe stage).', '']
  return '\n'.join(lines)


def _plot(path: str, results, config) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_acc, ax_imi) = plt.subplots(1, 2, figsize=(12, 4.5))
  imitate_steps = [r.steps for r in results.get('imitate', [])]
  colors = {'wide': 'black', 'thin_scratch': 'tab:blue', 'thin_kd': 'tab:orange',
            'finetune': 'tab:green', 'probe': 'tab:purple'}
  labels = {'finetune': 'thin_gwtn (imitate + finetune)', 'probe': 'thin_imitated (probe)'}
  for stage, runs in results.items():
    if stage == 'imitate':
      for i, run in enumerate(runs):
        steps = [h['step'] for h in run.history]
        ax_imi.plot(steps, [h['metrics']['imitation_loss'] for h in run.history], 'o',
                    color='tab:red', label='eval MSE of the phase\'s point' if i == 0 else None)
        if i == 0:
          for h in run.history:
            ax_imi.annotate(h['phase'], (h['step'], h['metrics']['imitation_loss']),
                            textcoords='offset points', xytext=(0, 6), ha='center', fontsize=7)
      continue
    for i, run in enumerate(runs):
      offset = imitate_steps[i] if stage in ('finetune', 'probe') and imitate_steps else 0
      steps = [h['step'] + offset for h in run.history]
      values = [h['metrics'].get('accuracy', np.nan) for h in run.history]
      ax_acc.plot(steps, values, 'o-', ms=3, color=colors.get(stage), alpha=0.8,
                  label=labels.get(stage, stage) if i == 0 else None)
  ax_acc.set_xlabel('training steps of the network (thin: imitation steps counted)')
  ax_acc.set_ylabel('eval accuracy')
  ax_acc.set_title('eval accuracy')
  ax_acc.grid(alpha=0.3)
  ax_acc.legend()
  ax_imi.set_xlabel('imitation step (one phase per point, bottom to top)')
  ax_imi.set_ylabel('eval MSE')
  ax_imi.set_yscale('log')
  ax_imi.set_title('stage 2: layerwise imitation')
  ax_imi.grid(alpha=0.3)
  if results.get('imitate'):
    ax_imi.legend()
  fig.suptitle(f'GWTN: {config.model.name}, thin {config.thin_width} / wide {config.wide_width}, '
               f'{config.data.name}')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(workdir: str, report: dict[str, Any], results, config) -> None:
  """Writes report.json, report.md and curves.png into the workdir (process 0 only)."""
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(_markdown(report, config))
  _plot(os.path.join(workdir, 'curves.png'), results, config)
