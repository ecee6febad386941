"""What a model tells imitation about its points: one record per point, bottom to top.

A *point* is an output the model sows into ``intermediates`` under its name, and where a
partial forward may stop (``stop_at``) or start (``start_after``). Every model has one method,
``points()``, that returns these records; losses, imitation schedules and the freezing of
lower layers read them and nothing else. No JAX here.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Point:
  """One point of a model.

  Attributes:
    name: its name in ``intermediates``, ``stop_at`` and ``start_after``.
    channels: the width (last axis) of its output, for sizing projections.
    modules: the top-level submodules (keys of ``params``) that compute it from the previous
      point; () if it has no parameters (a ResNet's pooling).
    imitated: whether imitation compares it (a ResNet's pooled 'pre_logits' is not: it is the
      head's input, not a layer's output).
    stage_end: whether it ends a stage of the architecture (stage-granularity imitation and
      LIT's sections); a model without stages (BERT) has none.
    layer: where its layer's parameters are one slice of a stacked module (a scanned BERT's
      'encoder'), the index of that slice along the leading axis; else None.
  """
  name: str
  channels: int
  modules: tuple[str, ...]
  imitated: bool = True
  stage_end: bool = False
  layer: Optional[int] = None


def index(points: Sequence[Point], name: str, arg: str) -> int:
  """The position of point ``name``, or a one-line error naming ``arg`` and the points."""
  names = [p.name for p in points]
  if name not in names:
    raise ValueError(f'{arg}={name!r} is not a point of this model; valid points: '
                     f'{", ".join(names)}')
  return names.index(name)


def span(points: Sequence[Point], start_after: Optional[str],
         stop_at: Optional[str]) -> tuple[int, Optional[int]]:
  """(index of the first point a partial forward computes, index of the point it stops at or
  None) for a model's ``start_after`` / ``stop_at`` arguments.

  Raises:
    ValueError: one line: an unknown point, or ``start_after`` not before ``stop_at``.
  """
  first = 0 if start_after is None else index(points, start_after, 'start_after') + 1
  stop = None if stop_at is None else index(points, stop_at, 'stop_at')
  if stop is not None and first > stop:
    raise ValueError(f'start_after={start_after!r} must come before stop_at={stop_at!r}')
  return first, stop

