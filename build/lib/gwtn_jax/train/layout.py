"""What a stage folder holds, and how to tell a finished one, without importing JAX.

  WORKDIR/stages/.../             the stage folders, STAGE_DIR (laid out by gwtn_jax.pipeline)
  STAGE_DIR/checkpoints/<step>/   orbax: the train state and the run metadata
  STAGE_DIR/final/                orbax: the variables of the network the stage produced
  STAGE_DIR/snapshots/<step>/     orbax: that network at an earlier step, where a later stage
                                  imitates it (`imitate.teacher_step`)
  STAGE_DIR/result.json           written last: the stage is finished

The same on a local disk and on Cloud Storage (`gwtn_jax.storage`).
"""

from __future__ import annotations

import os

from gwtn_jax import storage

STAGES_DIR = 'stages'
RESULT_FILE = 'result.json'
FINAL_DIR = 'final'
CHECKPOINTS_DIR = 'checkpoints'
SNAPSHOTS_DIR = 'snapshots'
# Orbax's marker of a complete save on Cloud Storage, written last (orbax's own name for it).
COMMIT_FILE = 'commit_success.txt'


def stage_name(stage: str, seed: int | None = None, network: str = '') -> str:
  """A stage folder's path under STAGES_DIR (and its TensorBoard name): '<stage>' for the
  teacher's, trained once (`seed` None), 'seed<S>/<stage>' for the others; with `network`, a
  per-network stage's run on that report row ('downstream/wide', 'seed0/downstream/thin_kd').
  """
  name = f'{stage}/{network}' if network else stage
  return name if seed is None else f'seed{seed}/{name}'


def output_dir(stage_dir: str, step: int | None = None) -> str:
  """Where a stage keeps its network: final/, or snapshots/<step>/ for an earlier step."""
  if step is None:
    return os.path.join(stage_dir, FINAL_DIR)
  return os.path.join(stage_dir, SNAPSHOTS_DIR, str(step))


def is_complete(directory: str) -> bool:
  """Whether an orbax checkpoint folder was written to the end.

  Locally orbax renames a finished save into place, so the folder is its own marker; on Cloud
  Storage the commit file is.
  """
  directory = storage.resolve(directory)
  if not storage.is_remote(directory):
    return storage.isdir(directory)
  return storage.exists(os.path.join(directory, COMMIT_FILE))


def unfinished_reason(stage_dir: str) -> str | None:
  """Why `stage_dir` is not the folder of a finished stage, or None if it is."""
  if not storage.isdir(stage_dir):
    return 'no such folder'
  if not storage.exists(os.path.join(stage_dir, RESULT_FILE)):
    return (f'no {RESULT_FILE} there, so no stage finished in it (give the stage folder '
            'itself, e.g. WORKDIR/stages/wide, once its run is done)')
  if not is_complete(os.path.join(stage_dir, FINAL_DIR)):
    return f'its {FINAL_DIR}/ network was not written to the end'
  return None
