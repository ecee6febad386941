"""The stage registry: every stage a pipeline can run, declared by the method file that owns it.

A method file declares its stages with `stage(...)` and its method (the stages
`--config.method=NAME` runs) with `method(...)`, at import. The pipeline, the config check, the
builders, the planner, the benchmarks and the report iterate the registry and name no stage.
`load()` imports every module of `gwtn_jax.methods`, so a new method is one new file there.

What a stage declares (`Stage`): how it is built from the config and the experiment, what it
starts from, whether it reads the teacher, how long it runs, which report row its network is,
its own config check, and for the report its claims and colour.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

# Budget roles: with `steps` -1 a stage runs as long as the stages holding these roles (GWTN's
# stage 2 is 'imitation', its stage 3 'finetuning'), so that every method trains the thin
# network equally long.
BUDGET_ROLES = ('imitation', 'finetuning')
# `init_from` of a stage that starts from the teacher's variables (LIT copies its stem, head).
TEACHER = '<teacher>'


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a stage's `build` gets."""
  config: Any
  exp: Any            # builders.Experiment (its data is None when planning)
  stage: str
  steps: int          # the stage's resolved length
  batch_size: int     # the stage's global batch
  found: Any = None   # the summary of the stage `arch_from` names (None when planning)
  role: str = 'thin'  # per-network stages: the network fine-tuned ('thin' or 'wide')


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage of the pipeline.

  Attributes:
    name: unique; the stage's config section and folder (`stages/seed<S>/<name>`).
    order: where it runs among the stages (lower first); gaps leave room for new ones.
    build: BuildContext -> (the method, the network whose variables it produces).
    init_from: the stage whose output it starts from ('' for a fresh initialization,
      TEACHER for the teacher's variables).
    arch_from: the stage whose summary decides its network (`BuildContext.found`).
    thin_init: it starts the thin network afresh, from `config.thin_init` when that is set.
    teacher: it reads the teacher (the `provides_teacher` stage's network).
    provides_teacher: it trains the teacher: run once (with `config.seed`) before the rest.
    budget_role: one of BUDGET_ROLES that its length stands for, or ''.
    steps_as: with `steps` -1, the budget roles whose stages' lengths it adds up.
    length: (config, num_points) -> steps, when the length is not `config[name].steps`.
    report: the report row of the network it produces ('' for none).
    report_budget: the stages whose steps and wall time that row adds up (default: itself).
    downstream: a BERT run fine-tunes its network on the downstream task.
    role: the architecture it produces, 'thin' or 'wide' (for the downstream fine-tuning).
    per_network: it fine-tunes every `downstream` stage's network (the downstream stage).
    check: (config, thin, wide) -> None, raising ValueError (one line naming the field).
    claims: (control's report row, what the paper claims) pairs for report.md.
    color / label: its curve in curves.png.
    curve_after: the stage whose steps its curve is drawn after (stage 3 after stage 2).
  """
  name: str
  order: int
  build: Callable[[BuildContext], tuple[Any, Any]]
  init_from: str = ''
  arch_from: str = ''
  thin_init: bool = False
  teacher: bool = False
  provides_teacher: bool = False
  budget_role: str = ''
  steps_as: tuple[str, ...] = ()
  length: Callable[[Any, int | None], int] | None = None
  report: str = ''
  report_budget: tuple[str, ...] = ()
  downstream: bool = False
  role: str = 'thin'
  per_network: bool = False
  check: Callable[[Any, Any, Any], None] | None = None
  claims: tuple[tuple[str, str], ...] = ()
  color: str | None = None
  label: str = ''
  curve_after: str = ''

  @property
  def reads_teacher(self) -> bool:
    """It needs the teacher: as a teacher, or as the variables it starts from."""
    return self.teacher or self.init_from == TEACHER


_STAGES: dict[str, Stage] = {}
_METHODS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {}
# Methods whose stages `--config.method=compare` runs side by side.
_COMPARED: list[str] = []
_loaded = False


def stage(**fields) -> Stage:
  """Declares a stage (at a method file's import)."""
  declared = Stage(**fields)
  if declared.name in _STAGES and _STAGES[declared.name] != declared:
    raise ValueError(f'stage {declared.name!r} is declared twice')
  _STAGES[declared.name] = declared
  return declared


def method(name: str, order: int, stages: tuple[str, ...], includes: tuple[str, ...] = (),
           compared: bool = True) -> None:
  """Declares a method: the stages `--config.method=NAME` runs.

  Args:
    name: the method.
    order: where it is listed among the methods (lower first).
    stages: its own stages.
    includes: methods whose stages it runs too (its controls).
    compared: `--config.method=compare` runs it.
  The stage that trains the teacher is added wherever a stage reads it.
  """
  _METHODS[name] = (order, tuple(stages), tuple(includes))
  if compared and name not in _COMPARED:
    _COMPARED.append(name)


def load() -> None:
  """Imports every module of `gwtn_jax.methods`, which declare the stages."""
  global _loaded
  if _loaded:
    return
  package = importlib.import_module('gwtn_jax.methods')
  for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f'gwtn_jax.methods.{info.name}')
  _loaded = True


def stages() -> Mapping[str, Stage]:
  """Every stage, in the order they run."""
  load()
  return dict(sorted(_STAGES.items(), key=lambda kv: kv[1].order))


def names() -> tuple[str, ...]:
  return tuple(stages())


def get(name: str) -> Stage:
  load()
  return _STAGES[name]


def _stages_of(name: str) -> set[str]:
  _, own, includes = _METHODS[name]
  return set(own).union(*(_stages_of(m) for m in includes))


def methods() -> Mapping[str, tuple[str, ...]]:
  """Every method's stages in order (the teacher's where one reads it), and 'compare': those of
  every compared method."""
  load()
  everything = stages()

  def ordered(chosen: set[str]) -> tuple[str, ...]:
    if any(everything[s].reads_teacher for s in chosen):
      chosen.add(teacher_stage())
    return tuple(n for n in everything if n in chosen)

  out = {name: ordered(_stages_of(name))
         for name in sorted(_METHODS, key=lambda m: _METHODS[m][0])}
  out['compare'] = ordered(set().union(*(_stages_of(m) for m in _COMPARED)))
  return out


def teacher_stage() -> str:
  """The stage that trains the teacher."""
  return next(n for n, s in stages().items() if s.provides_teacher)


def per_network_stages() -> tuple[str, ...]:
  """The stages that fine-tune every network of a run (a BERT's downstream task)."""
  return tuple(n for n, s in stages().items() if s.per_network)


def with_role(role: str) -> tuple[str, ...]:
  """The stages holding a budget role."""
  return tuple(n for n, s in stages().items() if s.budget_role == role)


def report_keys() -> dict[str, tuple[str, tuple[str, ...]]]:
  """Stage -> (the report row of its network, the stages that row's budget adds up)."""
  return {n: (s.report, s.report_budget or (n,)) for n, s in stages().items() if s.report}


def by_report_key(key: str) -> Stage | None:
  return next((s for s in stages().values() if s.report == key), None)
