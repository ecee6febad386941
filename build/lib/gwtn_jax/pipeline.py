"""Runs the configured stages in order, resume-first, and writes the run's report.

Workdir layout:
  config.json                 the config the run was started with
  stages/wide/                the wide network (trained once, with `config.seed`)
  stages/seed<S>/<stage>/     the thin stages of each seed
  stages/downstream/wide/, stages/seed<S>/downstream/<network>/
                              BERT: each network fine-tuned on the downstream task
  tensorboard/<stage name>/   event files
  report.json, report.md, curves.png
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from gwtn_jax import builders
from gwtn_jax.config import schema as config_lib
from gwtn_jax.config import validation
from gwtn_jax.config import workdir as workdir_lib
from gwtn_jax import report as report_lib
from gwtn_jax import storage
from gwtn_jax.data import wordpiece
from gwtn_jax.interop import sources
from gwtn_jax.methods import registry
from gwtn_jax.train import layout
from gwtn_jax.train import loop
from gwtn_jax.train import metrics as metrics_lib
from gwtn_jax.train import preemption as preemption_lib

PROFILE_DIR = 'profile'  # WORKDIR/profile/<stage>/: the jax.profiler traces (profile_steps)


def _stage_seed(seed: int, stage: str) -> int:
  """A data seed per (seed, stage), stable across runs and Python versions."""
  return int(np.random.SeedSequence([seed, *stage.encode()]).generate_state(1)[0] % (2**31))


def _peak_flops(config) -> float:
  peak, _ = metrics_lib.peak_flops(jax.devices()[0], config.model.dtype, config.peak_tflops)
  return peak


def _spec(config, stage: str, name: str, method, model, task, init_seed: int, data_seed: int
          ) -> loop.StageSpec:
  return loop.StageSpec(
      peak_flops=_peak_flops(config),
      name=name, method=method, model=model, task=task, optimizer=config[stage].optimizer,
      batch_size=config_lib.stage_value(config, stage, 'batch_size'),
      eval_batch_size=config.eval_batch_size, init_seed=init_seed, data_seed=data_seed,
      log_every=config.log_every,
      eval_every=config_lib.stage_value(config, stage, 'eval_every'),
      checkpoint_every=config_lib.stage_value(config, stage, 'checkpoint_every'),
      keep_checkpoints=config.keep_checkpoints,
      checkpoint_timeout_s=config.checkpoint_timeout_s, on_nonfinite=config.on_nonfinite,
      profile_steps=tuple(config.profile_steps)
      if not config.profile_stages or stage in config.profile_stages else ())


def _write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, workdir_lib.CONFIG_FILE),
                       config.to_json_best_effort(indent=1, sort_keys=True))


def set_aside(workdir: str) -> str | None:
  """Moves a previous run's files into `workdir/previous-<time>/` (nothing is deleted).

  A rename locally; on Cloud Storage each entry is copied, checked and only then deleted
  (`storage.move`), so a move stopped half way loses nothing.
  """
  names = [n for n in storage.listdir(workdir) if not n.startswith(('previous-', '.gwtn_'))]
  if not names or jax.process_index() != 0:
    return None
  target = os.path.join(workdir, time.strftime('previous-%Y%m%d-%H%M%S', time.gmtime()))
  storage.makedirs(target)
  for name in names:
    storage.move(os.path.join(workdir, name), os.path.join(target, name))
  return target


def run(config, workdir: str, start_over: bool = False) -> dict[str, Any]:
  """Runs the pipeline of `config` in `workdir` and returns the report.

  Args:
    config: the run's config.
    workdir: where everything is written; a rerun resumes there.
    start_over: set a previous run in `workdir` aside (moved, not deleted) and start anew.

  Raises:
    config_lib.ConfigError: a refused config, before anything is read or compiled.
  """
  validation.validate(config, workdir)
  if start_over:
    moved = set_aside(workdir)
    if moved:
      print(f'--start_over: the previous run is in {moved}', flush=True)
    if jax.process_count() > 1:
      # The others read the workdir's config.json next: only once process 0 has moved it.
      multihost_utils.sync_global_devices('gwtn_jax: --start_over')
  workdir_lib.check_workdir_config(config, workdir)
  _write_config(config, workdir)

  exp = builders.build_experiment(config)
  if config_lib.is_text(config) and jax.process_index() == 0:
    # The run's vocabulary beside its config: `gwtn_jax.export` ships it with the networks.
    tokens = wordpiece.read_vocab(exp.data.vocab_file)
    storage.write_text(os.path.join(workdir, workdir_lib.VOCAB_FILE),
                       ''.join(t + '\n' for t in tokens))
  preemption = preemption_lib.Preemption(sync_every=config.log_every)

  def stage_kwargs(name: str, data=exp.data) -> dict[str, Any]:
    return dict(data=data, mesh=exp.mesh, rules=exp.rules, preemption=preemption,
                stage_dir=os.path.join(workdir, layout.STAGES_DIR, name),
                writer_dir=os.path.join(workdir, 'tensorboard', name),
                profile_dir=os.path.join(workdir, PROFILE_DIR, name))

  with preemption:
    results = _run_stages(config, exp, stage_kwargs)
  report = report_lib.build_report(results, registry.report_keys(), exp)
  if jax.process_index() == 0:
    report_lib.write_report(workdir, report, results, config)
  return report


def _run_stages(config, exp: builders.Experiment, stage_kwargs
                ) -> dict[str, list[loop.StageResult]]:
  """Runs (or loads) every stage: the teacher's once, the others for each seed.

  Results are keyed by stage, and by '<per-network stage>/<report row>' for the fine-tuning
  of each network a per-network stage (BERT's downstream) takes.
  """
  stages = config_lib.stages_of(config)
  known = registry.stages()
  teacher_stage = registry.teacher_stage()
  per_network = [s for s in stages if known[s].per_network]
  results: dict[str, list[loop.StageResult]] = {}
  teacher = None
  # The teacher at the earlier steps some stages imitate (`<stage>.teacher_step`).
  early_steps = tuple(sorted({config[s].teacher_step for s in stages
                              if known[s].teacher and config[s].get('teacher_step', 0)}))
  early: dict[int, Any] = {}
  if teacher_stage in stages:
    method, model = builders.build_method(config, teacher_stage, exp)
    seed = config.seed
    result = loop.run_stage(
        dataclasses.replace(_spec(config, teacher_stage, teacher_stage, method, model, exp.task,
                                  seed, _stage_seed(seed, teacher_stage)),
                            snapshot_steps=early_steps),
        **stage_kwargs(layout.stage_name(teacher_stage)))
    results[teacher_stage] = [result]
    teacher, early = result.variables, result.snapshots
  elif any(known[s].reads_teacher for s in stages) or config.teacher_dir:
    source = sources.identify(config.teacher_dir, 'teacher_dir')
    teacher = sources.load(source, exp.wide, exp.task, exp.mesh, exp.rules, seed=config.seed)
    early = {n: loop.load_stage_output(config.teacher_dir, exp.wide, exp.task, exp.mesh,
                                       exp.rules, step=n) for n in early_steps}
    done = loop.read_result(config.teacher_dir) if source.kind == sources.STAGE else None
    if done is not None:
      results[teacher_stage] = [loop.StageResult(
          teacher_stage, teacher, done['metrics'], done['history'], done['steps'],
          done['wall_s'], done['curve_metric'], exp.wide)]
  teacher_of = lambda stage: early.get(config[stage].get('teacher_step', 0), teacher)

  def fine_tune(stage: str, of: str, source: loop.StageResult, seed: int) -> None:
    """A per-network stage on the network stage `of` produced."""
    key = known[of].report
    role = known[of].role
    method, model = builders.build_method(config, stage, exp, role=role)
    where = layout.stage_name(stage, None if of == teacher_stage else seed, key)
    result = loop.run_stage(
        _spec(config, stage, where, method, model, exp.downstream.task, seed,
              _stage_seed(seed, stage)),
        init=source.variables, **stage_kwargs(where, data=exp.downstream.data))
    results.setdefault(f'{stage}/{key}', []).append(result)

  for stage in per_network:
    if teacher_stage in results and known[teacher_stage].downstream:
      fine_tune(stage, teacher_stage, results[teacher_stage][0], config.seed)
  thin_init = None
  if config.thin_init:
    thin_init = sources.load(sources.identify(config.thin_init, 'thin_init'), exp.thin, exp.task,
                             exp.mesh, exp.rules, seed=config.seed)
  for seed in config.seeds:
    produced: dict[str, loop.StageResult] = {}
    for stage in stages:
      if stage == teacher_stage or stage in per_network:
        continue
      declared = known[stage]
      method, model = builders.build_method(
          config, stage, exp,
          found=produced[declared.arch_from].summary if declared.arch_from else None)
      source = declared.init_from
      name = layout.stage_name(stage, seed)
      result = loop.run_stage(
          _spec(config, stage, name, method, model, exp.task, seed,
                _stage_seed(seed, 'thin' if config.shared_data_order else stage)),
          teacher=teacher_of(stage) if declared.teacher else None,
          init=(teacher if source == registry.TEACHER else produced[source].variables)
          if source else (thin_init if declared.thin_init else None),
          **stage_kwargs(name))
      produced[stage] = result
      results.setdefault(stage, []).append(result)
    for stage in per_network:
      for of, result in produced.items():
        if known[of].downstream:
          fine_tune(stage, of, result, seed)
  return results
