"""Orbax checkpoints of a stage: its train state (sharded) and a small JSON of run metadata.

One manager per stage folder, `STAGE_DIR/checkpoints/<step>/{state,meta}`. Orbax writes a step
to a temporary folder and renames it when complete, so an interrupted save never becomes the
latest step. Every process takes part in a save and a restore; arrays are written and read in
their shardings, so a restore can go straight into another mesh's shardings.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class StageCheckpoints:
  """Saves and restores one stage's state and metadata.

  Args:
    directory: the stage's `checkpoints` folder.
    keep: how many of the latest steps to keep.
  """

  def __init__(self, directory: str, keep: int = 2):
    self.directory = directory
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                          item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving `state` at `step` (asynchronously; `wait` or `close` finishes it)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores the state into the shardings carried by `abstract_state`'s leaves."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
