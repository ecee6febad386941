"""The text data's cache folder, local or mirroring a bucket, and how its files are named.

`data.cache_dir` (default `DEFAULT_CACHE_DIR`) holds the trained vocabularies, the token
ids and the packed sequences (what is where: `text.py`). A `data.cache_dir` in a bucket
(gs://...) is mirrored on each host under `MIRROR_DIR` (`_Cache`). A cache file is named
by a hash of what it is made from (`_sha`, `_passages_hash`; `_CACHE_VERSION` for the
format) and written under a temporary name unique across hosts (`_tmp_name`), then
renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from typing import Sequence

from absl import logging

from gwtn_jax import storage
from gwtn_jax.data import corpus as corpus_lib

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'gwtn_jax', 'text')
# Where a remote `data.cache_dir` is mirrored on each host (the files it memory-maps).
MIRROR_DIR = os.path.join('~', '.cache', 'gwtn_jax', 'mirror')
_CACHE_VERSION = 1
# Of the trained vocabularies: 2 numbers the tokens canonically (`wordpiece.train_wordpiece`).
VOCAB_VERSION = 2


@dataclasses.dataclass(frozen=True)
class _Cache:
  """The cache folder: a local one, or a local mirror of a remote one (`data.cache_dir` on
  gs://).

  With a remote cache, a file missing here is downloaded from it when it is there, and a file
  made here is uploaded to it (one object, seen whole), so the hosts of a pod share one cache
  in the bucket while each memory-maps its own local copy.
  """
  local: str
  remote: str = ''

  def path(self, *parts: str) -> str:
    return os.path.join(self.local, *parts)

  def _remote_of(self, path: str) -> str:
    return os.path.join(self.remote, os.path.relpath(path, self.local))

  def has(self, path: str) -> bool:
    """Whether cache file `path` is here, after fetching it from the remote cache."""
    if os.path.isfile(path):
      return True
    if not self.remote or not storage.exists(self._remote_of(path)):
      return False
    logging.info('Fetching %s from %s', path, self._remote_of(path))
    storage.download(self._remote_of(path), path)
    return True

  def publish(self, *paths: str) -> None:
    """Uploads cache files made here to the remote cache, in the order given."""
    for path in paths if self.remote else ():
      storage.upload(path, self._remote_of(path))


def _cache(cache_dir: str) -> _Cache:
  if storage.is_remote(cache_dir):
    return _Cache(storage.local_mirror(cache_dir, MIRROR_DIR), cache_dir)
  return _Cache(cache_dir)


def _tmp_name(path: str) -> str:
  """A temporary name next to `path`, unique across the hosts sharing its directory."""
  return f'{path}.tmp-{uuid.uuid4().hex}'


def _sha(*parts: str | bytes) -> str:
  h = hashlib.sha256()
  for p in parts:
    h.update(p if isinstance(p, bytes) else p.encode('utf-8'))
    h.update(b'\0')
  return h.hexdigest()[:16]


def _passages_hash(passages: Sequence[corpus_lib.Passage]) -> str:
  h = hashlib.sha256()
  for p in passages:
    h.update(p.play.encode('utf-8') + b'\0' + p.text.encode('utf-8') + b'\1')
  return h.hexdigest()[:16]
