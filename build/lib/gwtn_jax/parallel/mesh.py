"""The device mesh, the logical-axis rules and the shardings every step is jitted with.

One device is the mesh of size 1: there is no separate single-device path. The mesh axes are
`data`, `fsdp` and `tensor`; a batch is split over `data` and `fsdp`; parameters are placed by
logical axis names (set by the models with `nn.with_logical_partitioning`) mapped to mesh axes
by rules that live in the config, so a change of sharding never touches model code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
# The batch dimension of every input and activation is split over these axes.
BATCH_AXES = ('data', 'fsdp')


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in the one axis given as -1 so that the mesh covers `num_devices` devices.

  Args:
    shape: axis name -> size, for the axes of MESH_AXES; at most one size may be -1.
    num_devices: how many devices the mesh must cover.

  Returns:
    axis name -> size for every axis of MESH_AXES, with a product of `num_devices`.

  Raises:
    ValueError: a one-line message naming `mesh.shape` when the sizes do not fit.
  """
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'mesh.shape has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}')
  sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f'mesh.shape={dict(sizes)}: only one axis may be -1')
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f'mesh.shape={dict(sizes)}: sizes must be positive or -1')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f'mesh.shape={dict(sizes)}: {num_devices} devices are not divisible by {fixed}')
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
        f'mesh.shape={dict(sizes)} needs {math.prod(sizes.values())} devices but {num_devices} are in use')
  return sizes


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh described by `config.mesh` over `devices` (all devices by default).

  `mesh_config.num_devices` (0 = all) lets a run use the first N devices, which is how a test
  compares a one-device mesh to an eight-device one in the same process.
  """
  if devices is None:
    devices = jax.devices()
    if mesh_config.get('num_devices', 0):
      devices = devices[:mesh_config.num_devices]
  sizes = resolve_mesh_shape(dict(mesh_config.shape), len(devices))
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  if len(devices) == len(jax.devices()):
    # Lets JAX order the devices for the physical topology (ICI rings on TPU).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Turns the config's rules (lists, since ml_collections stores lists) into flax's tuples."""
  out = []
  for rule in rules:
    name, axes = rule
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(boxed_abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """Maps a tree of (possibly) logically-annotated abstract values to NamedShardings.

  Leaves without annotations (BatchNorm statistics, optimizer counters) are replicated.
  """
  specs = nn.get_partition_spec(boxed_abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(boxed_abstract_tree: Any, sizes: Mapping[str, int], rules, what: str) -> None:
  """Every annotated axis that the rules split over mesh axes must divide evenly over them.

  Args:
    boxed_abstract_tree: logically annotated abstract values (e.g. `jax.eval_shape` of an init).
    sizes: mesh axis -> size.
    rules: (logical name, mesh axes) pairs; the first match wins, as in flax.
    what: names the tree in the error, e.g. 'the thin network'.

  Raises:
    ValueError: one line naming the parameter, its axis and the rule.
  """
  first: dict[str, Any] = {}
  for name, axes in rules:
    first.setdefault(name, axes)

  def check(path, leaf):
    if not isinstance(leaf, nn.meta.AxisMetadata):
      return
    for dim, name in zip(leaf.unbox().shape, getattr(leaf, 'names', ())):
      axes = first.get(name) if name else None
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      ways = math.prod(sizes[a] for a in axes)
      if dim % ways:
        raise ValueError(
            f'mesh.rules: {what}\'s {jax.tree_util.keystr(path)} has a {name!r} axis of size '
            f'{dim}, which the rule {name!r} -> {axes} cannot split {ways} ways; map {name!r} '
            'to fewer devices (or None) or change mesh.shape')

  jax.tree_util.tree_map_with_path(check, boxed_abstract_tree,
                                   is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def under_rules(fn, mesh: Mesh, rules):
  """`fn`, traced with the (abstract) mesh and the logical rules in scope.

  The models constrain their large activations by logical names (`nn.with_logical_constraint`),
  which do nothing without rules and a mesh; jit `under_rules(step, ...)` so that they become
  `with_sharding_constraint`s on this mesh. `jax.set_mesh` cannot be entered under jit; the
  abstract mesh can.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args, **kwargs)
  return wrapped


def put_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's slice of it, sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
  }
