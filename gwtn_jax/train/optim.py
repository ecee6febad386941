"""Optimizers and learning-rate schedules built from a stage's `optimizer` config.

Fields of an optimizer config (see `gwtn_jax.config_lib.optimizer_config`):
  name: 'sgd' (with momentum, optionally Nesterov) | 'adamw' | 'lamb' (You et al., 2020:
    AdamW's update, then scaled per layer by ||param|| / ||update||; the large-batch BERT
    optimizer)
  learning_rate: peak learning rate
  momentum, nesterov: SGD only
  b1, b2, eps: AdamW and LAMB
  weight_decay: SGD adds `weight_decay * param` to the gradient (PyTorch's coupled L2, as in
    the ResNet papers); AdamW and LAMB decouple it (Loshchilov and Hutter; in LAMB it is part
    of the update the trust ratio scales)
  weight_decay_on: 'all' | 'kernels' (matrices and conv kernels only; biases, BatchNorm and
    LayerNorm parameters are not decayed)
  schedule: 'constant' | 'cosine' (to `final_lr_fraction` * peak) | 'linear' (to
    `final_lr_fraction` * peak; BERT's) | 'step' (x `decay_factor` at each of
    `decay_boundaries`, given as fractions of the schedule's length)
  warmup_steps: linear warmup from 0 to the peak, inside the schedule's length
  grad_clip_norm: 0 = no clipping

A stage made of several phases (progressive imitation) gives each phase the whole schedule over
its own steps: pass the phases' lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ('sgd', 'adamw', 'lamb')
SCHEDULES = ('constant', 'cosine', 'linear', 'step')


def make_schedule(config, steps: int | Sequence[int]) -> optax.Schedule:
  """The learning-rate schedule of a stage.

  Args:
    config: the optimizer config.
    steps: the stage's length, or the length of each of its phases: every phase then has the
      whole schedule (warmup included) over its own steps, restarting where it starts.
  """
  if not isinstance(steps, int):
    lengths = [int(n) for n in steps]
    if len(lengths) > 1:
      boundaries = np.cumsum(lengths[:-1]).tolist()
      return optax.join_schedules([make_schedule(config, n) for n in lengths], boundaries)
    steps = lengths[0]
  peak = config.learning_rate
  warmup = min(config.warmup_steps, max(steps - 1, 0))
  decay_steps = max(steps - warmup, 1)
  if config.schedule == 'constant':
    main = optax.constant_schedule(peak)
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.final_lr_fraction)
  elif config.schedule == 'linear':
    main = optax.linear_schedule(peak, peak * config.final_lr_fraction, decay_steps)
  elif config.schedule == 'step':
    boundaries = {
        int(round(fraction * steps)) - warmup: config.decay_factor
        for fraction in config.decay_boundaries
    }
    main = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise ValueError(f'optimizer.schedule={config.schedule!r} is unknown; choose one of {SCHEDULES}')
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def _decay_mask(config, params: Any) -> Any:
  if config.weight_decay_on == 'all':
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda p: p.ndim > 1, params)


def scale_by_layer_trust_ratio(stacked: Any = None) -> optax.GradientTransformation:
  """LAMB's layerwise trust ratio: each layer's update times ||param|| / ||update|| (1 where
  either is 0). A layer is a parameter leaf, or, where `stacked` (a tree of bools like the
  parameters, or None: no leaf) marks a leaf whose leading axis stacks layers (a scanned
  BERT's), each slice along that axis: what the unrolled network's layers would get."""

  def update(updates, state, params):
    if params is None:
      raise ValueError('scale_by_layer_trust_ratio needs the parameters')
    flags = stacked if stacked is not None else jax.tree.map(lambda _: False, params)

    def scale(u, p, per_slice):
      axes = tuple(range(1, u.ndim)) if per_slice and u.ndim > 1 else None
      norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes,
                                        keepdims=axes is not None))
      p_norm, u_norm = norm(p), norm(u)
      ratio = jnp.where((p_norm > 0) & (u_norm > 0), p_norm / jnp.maximum(u_norm, 1e-30), 1.0)
      return (u * ratio).astype(u.dtype)

    return jax.tree.map(scale, updates, params, flags), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config, steps: int | Sequence[int], stacked: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns the optimizer and its schedule (`make_schedule`; the loop logs the learning rate
  from it).

  Args:
    config: the optimizer config.
    steps: as `make_schedule`.
    stacked: LAMB only: which parameter leaves stack layers on their leading axis
      (`state.stacked_layers`), so that each layer gets its own trust ratio.
  """
  schedule = make_schedule(config, steps)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.name == 'sgd':
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay,
                                             mask=lambda p: _decay_mask(config, p)))
    parts.append(optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  elif config.name == 'adamw':
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay,
                             mask=lambda p: _decay_mask(config, p)))
  elif config.name == 'lamb':
    parts += [optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
              optax.add_decayed_weights(config.weight_decay,
                                        mask=lambda p: _decay_mask(config, p)),
              scale_by_layer_trust_ratio(stacked),
              optax.scale_by_learning_rate(schedule)]
  else:
    raise ValueError(f'optimizer.name={config.name!r} is unknown; choose one of {OPTIMIZERS}')
  return optax.chain(*parts), schedule
