"""The train state and its creation, already sharded, from a method's init."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from gwtn_jax.parallel import mesh as mesh_lib


@struct.dataclass
class TrainState:
  """Everything a step changes: the checkpoint of a stage.

  Attributes:
    step: the number of steps taken in this stage (int32 scalar, replicated).
    params: what the method trains.
    model_state: the method's other collections (BatchNorm statistics).
    opt_state: the optimizer's state.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def _init_state(method, tx: optax.GradientTransformation, rng, batch, init):
  variables = method.init(rng, batch, init)
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  # optax's moments mirror the (boxed) parameters, so they inherit their logical axes.
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params))


def stacked_layers(method, rng, batch, init) -> Any:
  """A tree like the method's parameters: True where a leaf stacks layers on its leading axis
  (its first logical axis is 'layers': a scanned BERT's encoder), for LAMB's per-layer trust
  ratio (`optim.make_optimizer`). Shapes only; nothing is computed."""
  boxed = jax.eval_shape(lambda r, b, i: method.init(r, b, i), rng, batch, init)['params']
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: is_box(x) and tuple(getattr(x, 'names', ()))[:1] == ('layers',),
                      boxed, is_leaf=is_box)


def abstract_state(method, tx, rng, batch, init, mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
  """Shapes and shardings of the state, without computing anything.

  Returns:
    (abstract state with shardings on every leaf, tree of NamedShardings).
  """
  boxed = jax.eval_shape(lambda r, b, i: _init_state(method, tx, r, b, i), rng, batch, init)
  with nn.logical_axis_rules(rules):
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
  shapes = nn.meta.unbox(boxed)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings


def create_state(method, tx, rng, batch, init, shardings) -> TrainState:
  """Creates the state directly in its shardings: no host holds a full unsharded copy."""
  init_fn = lambda r, b, i: nn.meta.unbox(_init_state(method, tx, r, b, i))
  return jax.jit(init_fn, out_shardings=shardings)(rng, batch, init)
