"""Orbax checkpoints of a stage: its train state (sharded) and a small JSON of run metadata.

One manager per stage folder, `STAGE_DIR/checkpoints/<step>/{state,meta}`, local or on Cloud
Storage (orbax is given the path as it is). Locally orbax writes a step to a temporary folder
and renames it when complete; on Cloud Storage, which has no rename, it writes the step in
place and marks it complete with a commit file (`commit_success.txt`) written last, and a step
without one is not a step. Either way an interrupted save never becomes the latest step. A
latest step whose files are truncated or corrupt is reported in one warning line and set aside
(moved to `corrupt-<step>-<time>` through `storage.move`, never deleted), and the previous good
step is restored. A write that fails (disk full, permission) raises `CheckpointError` and leaves the
earlier steps as they were. Every process takes part in a save and a restore; arrays are written
and read in their shardings, so a restore can go straight into another mesh's shardings.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from gwtn_jax import storage
from gwtn_jax.train import layout


class CheckpointError(RuntimeError):
  """A checkpoint that could not be written or read, in one line naming the path."""


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:300]}'


def warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f'warning: {message}', file=sys.stderr, flush=True)


class StageCheckpoints:
  """Saves and restores one stage's state and metadata.

  Every wait on orbax (a save waits for the previous one to finish) is bounded by
  `timeout_s`, and on a remote store stops early when the store stops answering, so a store
  that went away mid-run stops it with one line instead of orbax's retries holding it.

  Args:
    directory: the stage's `checkpoints` folder.
    keep: how many of the latest steps to keep.
    timeout_s: the longest a save or a wait may block.
  """

  def __init__(self, directory: str, keep: int = 2, timeout_s: float = 600.0):
    self.directory = directory
    self.timeout_s = timeout_s
    self._failed = False
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(storage.resolve(directory), options=options,
                                          item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _bounded(self, doing: str, fn) -> None:
    """`fn()` within `timeout_s`; any failure is a `CheckpointError` naming the folder."""
    try:
      storage.with_deadline(f'{doing} {self.directory}', fn, self.timeout_s,
                            store=self.directory)
    except Exception as e:  # pylint: disable=broad-except
      # An asynchronous save fails at the next save or wait: the error names its own path.
      self._failed = True
      raise CheckpointError(
          f'could not {doing} {self.directory} ({_one_line(e)}); the earlier checkpoints are '
          'intact') from e

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving `state` at `step` (asynchronously; `wait` or `close` finishes it)."""
    self._bounded('write a checkpoint in', lambda: self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=True))

  def restore(self, abstract_state: Any, step: int) -> tuple[Any, dict[str, Any]]:
    """Restores the state of `step` into the shardings carried by `abstract_state`'s leaves."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_latest_good(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest readable step; unreadable ones are reported and set aside."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self.restore(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except
        aside = self._set_aside(step)
        warn(f'checkpoint step {step} in {self.directory} is unreadable ({_one_line(e)}); '
             f'moved it to {aside} and falling back to the previous one')
    return None

  def _set_aside(self, step: int) -> str:
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.directory, f'corrupt-{step}-{int(time.time())}')
    if jax.process_index() == 0 and storage.exists(source):
      storage.move(source, target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._bounded('finish writing a checkpoint in', self._manager.wait_until_finished)

  def close(self) -> None:
    """Finishes the pending save and closes; after a failed write, leaves orbax as it is."""
    if self._failed:
      return  # Its threads may still be retrying: the process is about to end.
    try:
      self.wait()
    finally:
      if not self._failed:
        self._manager.close()


def save_final(directory: str, variables: Any) -> None:
  """Saves a finished stage's network once; a complete one is never overwritten.

  On Cloud Storage a save that a kill interrupted leaves a folder without its commit marker;
  it is moved aside (`torn-<time>`, not deleted) and the save made again.
  """
  directory = storage.resolve(directory)
  if layout.is_complete(directory):
    return
  if storage.exists(directory):
    aside = f'{directory}-torn-{int(time.time())}'
    warn(f'{directory} was not written to the end; moved it to {aside} and saving it again')
    if jax.process_index() == 0:
      storage.move(directory, aside)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(directory, variables)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'could not write the stage output to {directory} ({_one_line(e)}); '
                          'the checkpoints of the stage are intact: rerun to try again') from e


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'collection/module/.../name' -> shape of every array (or array metadata) of a tree."""
  key = lambda k: str(getattr(k, 'key', getattr(k, 'idx', k)))
  return {'/'.join(key(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def final_shapes(directory: str) -> dict[str, tuple[int, ...]]:
  """'collection/module/.../name' -> shape of every array of a finished stage's output, from
  its metadata alone (nothing is restored).

  Raises:
    CheckpointError: the metadata cannot be read (a folder truncated or not orbax's).
  """
  directory = storage.resolve(directory)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read the metadata of {directory} ({_one_line(e)})') from e
  return flat_shapes(getattr(metadata, 'item_metadata', metadata))


def restore_final(directory: str, target: Any) -> Any:
  """Restores a finished stage's network into the shardings of `target`."""
  directory = storage.resolve(directory)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(directory, target)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read the finished stage output {directory} ({_one_line(e)}); '
                          'it is left as it is: restore it from a backup, or run in a new workdir'
                          ) from e
