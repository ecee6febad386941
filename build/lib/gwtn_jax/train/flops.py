"""Model FLOPs of a step, counted on its jaxpr: right under `nn.scan`, where XLA's are not.

XLA's cost analysis counts a loop's body once, so a BERT with scanned layers reports the FLOPs
of one layer for all of them (BERT-Base's MLM step: 70 GFLOP scanned against 565 unrolled).
This module counts the matrix products (`dot_general`) and convolutions of a function's jaxpr
instead, a scan's body `length` times: the *model FLOPs* that MFU is defined over (Chowdhery
et al., 2022, appendix B: elementwise work, softmaxes and norms are not counted).

What the compiled step would not compute is not counted either: an equation whose outputs
nothing uses (the gradient of a frozen parameter that the loop discards) is left out, as XLA
drops it. Inside a sub-computation (a scan's body, a `jit`) every equation counts. A `while`
loop, whose trip count is not static, is counted once; a `cond` by its costliest branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_general(eqn) -> float:
  (contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)


def _conv(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  spec = eqn.params['dimension_numbers'].rhs_spec  # (out features, in features, spatial...)
  # Every output element is a dot product over the kernel's window and its input features
  # (per group): 2 FLOPs per multiply-add.
  return 2.0 * math.prod(out) * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])


def _sub_jaxprs(eqn) -> list[Any]:
  return [j.jaxpr if hasattr(j, 'jaxpr') else j for j in jex_core.jaxprs_in_params(eqn.params)]


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == 'dot_general':
    return _dot_general(eqn)
  if name == 'conv_general_dilated':
    return _conv(eqn)
  subs = _sub_jaxprs(eqn)
  if not subs:
    return 0.0
  if name == 'scan':
    return eqn.params['length'] * _jaxpr_flops(subs[0], None)
  if name == 'cond':
    return max(_jaxpr_flops(j, None) for j in subs)
  return sum(_jaxpr_flops(j, None) for j in subs)  # jit, remat, custom_jvp/vjp, while, ...


def _jaxpr_flops(jaxpr, used_outputs: Sequence[bool] | None) -> float:
  """The FLOPs of the equations of `jaxpr` that the used outputs depend on (all: None)."""
  if used_outputs is None:
    return sum(_eqn_flops(eqn) for eqn in jaxpr.eqns)
  live = {v for v, used in zip(jaxpr.outvars, used_outputs)
          if used and isinstance(v, jex_core.Var)}
  total = 0.0
  for eqn in reversed(jaxpr.eqns):
    if not eqn.effects and not any(v in live for v in eqn.outvars):
      continue  # dead: the compiled step would not compute it
    total += _eqn_flops(eqn)
    live.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
  return total


def count(fn: Callable[..., Any], *args, **kwargs) -> float:
  """Model FLOPs (matrix products and convolutions) of one call of `fn` on `args` (arrays or
  `jax.ShapeDtypeStruct`s), scans counted per iteration and dead code left out."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return _jaxpr_flops(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
