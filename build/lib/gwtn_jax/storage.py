"""The one path layer for everything a run reads and writes: local folders and gs:// alike.

Paths stay strings (`os.path.join` joins `gs://bucket/a` and `b` as it should); what touches
storage goes through here, on `etils.epath` (what orbax itself uses): local paths through the
OS, `gs://` through `gcsfs` (fsspec), without TensorFlow. Orbax is given the same path strings.

How each guarantee of a run is kept where the store has no atomic rename:

- **A torn write is never read as complete.** A small file (`config.json`, `result.json`,
  the reports, the plot) is written whole: locally to a temporary name and renamed; on Cloud
  Storage as one object upload, which becomes visible only when complete (an object is never
  seen half written). Orbax marks a finished checkpoint step with its commit file
  (`commit_success.txt`) on Cloud Storage and by a rename locally.
- **Moving a folder aside** (`--start_over`, a corrupt checkpoint step): a rename locally; on
  Cloud Storage copy, then check that every object arrived, then delete the originals. A move
  stopped half way leaves the original complete (and a partial copy), never less.
- **Time-outs.** Each request to the store gets a bounded time-out (`REQUEST_TIMEOUT_S`), and
  the start-up checks give up after `CHECK_TIMEOUT_S`, so an endpoint that does not answer is
  one line, not a hang.

Credentials on Cloud Storage are gcsfs's (Google's default credentials: on a Cloud TPU VM the
VM's service account from the metadata server; elsewhere `gcloud auth application-default
login` or `GOOGLE_APPLICATION_CREDENTIALS`); orbax's array data goes through TensorStore, which
finds the same credentials by itself. A local Cloud Storage server is reached with
`STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage) and `TENSORSTORE_GCS_HTTP_URL`
(TensorStore).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import TypeVar

from etils import epath

# Per request to Cloud Storage: time to connect, and to wait for each read of the answer.
REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
# The start-up checks of a remote workdir or teacher give up after this long.
CHECK_TIMEOUT_S = 20.0
# A long wait on a remote store checks this often that the store still answers.
CHECK_EVERY_S = 10.0
# Cloud Storage's endpoint, unless a local server stands in for it.
GCS_ENDPOINT = 'https://storage.googleapis.com'

_BUCKET_NAME = re.compile(r'[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]')
_T = TypeVar('_T')
_configured = False


class StorageError(OSError):
  """A path that cannot be read or written, said in one line naming it."""


def is_remote(path: str) -> bool:
  """Whether `path` names a remote store (`gs://...`, any `scheme://`)."""
  return '://' in str(path)


def resolve(path: str) -> str:
  """`path` as the writers take it: local ones absolute with `~` expanded, remote ones as is."""
  path = str(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def _configure_remote() -> None:
  """gcsfs with bounded time-outs and no stale listings, unless the fsspec config says otherwise."""
  global _configured
  if _configured:
    return
  if importlib.util.find_spec('gcsfs') is None:
    raise StorageError("gs:// paths need gcsfs: pip install -e '.[gcs]' (or '.[tpu]')")
  _configured = True
  import aiohttp  # pylint: disable=g-import-not-at-top
  import fsspec.config  # pylint: disable=g-import-not-at-top
  for protocol in ('gcs', 'gs'):
    options = fsspec.config.conf.setdefault(protocol, {})
    options.setdefault('requests_timeout', aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=REQUEST_TIMEOUT_S))
    # Other writers (orbax's TensorStore, other hosts) change the bucket behind gcsfs's back:
    # a cached listing would answer `exists` with what was there before.
    options.setdefault('use_listings_cache', False)


def path(p: str) -> epath.Path:
  """An `epath.Path` of `p`, with remote access configured."""
  if is_remote(p):
    _configure_remote()
  return epath.Path(resolve(p))


def one_line(error: BaseException) -> str:
  """An error as 'Type: message' on one line, at most 200 characters of message."""
  text = ' '.join(str(error).split()) or type(error).__name__
  return f'{type(error).__name__}: {text[:200]}'


def exists(p: str) -> bool:
  return path(p).exists()


def isdir(p: str) -> bool:
  return path(p).is_dir()


def isfile(p: str) -> bool:
  return path(p).is_file()


def listdir(p: str) -> list[str]:
  """Names in folder `p` (empty when there is none)."""
  folder = path(p)
  if not folder.is_dir():
    return []
  return sorted(child.name for child in folder.iterdir())


def makedirs(p: str) -> None:
  """Creates folder `p` and its parents (on Cloud Storage folders need no creating)."""
  if not is_remote(p):
    os.makedirs(resolve(p), exist_ok=True)


def read_text(p: str) -> str:
  return path(p).read_text()


def write_bytes(p: str, data: bytes) -> None:
  """Writes file `p` whole: a reader sees the old file or the new one, never a part."""
  if is_remote(p):
    # One object upload: visible only once complete.
    path(p).write_bytes(data)
    return
  target = resolve(p)
  tmp = f'{target}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(p: str, text: str) -> None:
  write_bytes(p, text.encode('utf-8'))


def _remote_fs(p: str):
  """(the fsspec file system, the path without its scheme) of a remote path."""
  _configure_remote()
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.core.url_to_fs(p)


def move(source: str, target: str) -> None:
  """Moves a file or folder; nothing is lost if it stops half way.

  Locally a rename. On Cloud Storage a copy of every object (server side), a check that each
  arrived, then the deletion of the originals.
  """
  if not (is_remote(source) or is_remote(target)):
    os.makedirs(os.path.dirname(resolve(target)), exist_ok=True)
    os.replace(resolve(source), resolve(target))
    return
  fs, src = _remote_fs(source)
  _, dst = _remote_fs(target)
  if fs.isfile(src):
    fs.copy(src, dst)
    if not fs.exists(dst):
      raise StorageError(f'copying {source} to {target} left no {target}; {source} is kept')
    fs.rm(src)
    return
  files = fs.find(src)
  fs.copy(src, dst, recursive=True)
  arrived = set(fs.find(dst))
  missing = [f for f in files if dst + f[len(src):] not in arrived]
  if missing:
    raise StorageError(f'copying {source} to {target} lost {len(missing)} objects (e.g. '
                       f'{missing[0]}); {source} is kept as it was')
  fs.rm(src, recursive=True)


def download(source: str, target: str) -> None:
  """Copies remote file `source` to local path `target`, streamed; `target` appears whole."""
  fs, src = _remote_fs(source)
  os.makedirs(os.path.dirname(target) or '.', exist_ok=True)
  tmp = f'{target}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    fs.get_file(src, tmp)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def upload(source: str, target: str) -> None:
  """Copies local file `source` to remote path `target`, streamed (one object, seen whole)."""
  fs, dst = _remote_fs(target)
  fs.put_file(source, dst)


def local_mirror(remote: str, root: str) -> str:
  """Where remote path `remote` is mirrored under local folder `root` (gs://b/x -> root/gs/b/x)."""
  scheme, rest = str(remote).split('://', 1)
  return os.path.join(os.path.expanduser(root), scheme, rest)


def with_deadline(what: str, fn: Callable[[], _T], timeout_s: float = CHECK_TIMEOUT_S,
                  store: str = '') -> _T:
  """`fn()`, or `StorageError` naming `what` if it has not returned in `timeout_s` seconds.

  The call runs in a daemon thread, so a store that never answers cannot hold the process.
  With `store` a remote path, its endpoint is checked every `CHECK_EVERY_S` while waiting, so
  a store that went away stops the wait at once rather than at the deadline.
  """
  box: dict[str, object] = {}

  def call():
    try:
      box['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      box['error'] = e

  thread = threading.Thread(target=call, daemon=True, name=f'storage: {what}')
  started = time.time()
  thread.start()
  while thread.is_alive() and time.time() - started < timeout_s:
    thread.join(min(CHECK_EVERY_S, max(timeout_s - (time.time() - started), 0.0)))
    if thread.is_alive() and is_remote(store):
      check_endpoint(what)
  if thread.is_alive():
    raise StorageError(f'{what}: no answer from the store in {time.time() - started:.0f}s '
                       '(is the endpoint up, and STORAGE_EMULATOR_HOST right if you use one?)')
  if 'error' in box:
    raise box['error']  # type: ignore[misc]
  return box['value']  # type: ignore[return-value]


def gcs_endpoint() -> str:
  """The Cloud Storage endpoint the clients use (`STORAGE_EMULATOR_HOST` if set, as gcsfs)."""
  host = os.environ.get('STORAGE_EMULATOR_HOST', '')
  if host in ('', 'default'):
    return GCS_ENDPOINT
  return host if host.startswith(('http://', 'https://')) else f'http://{host}'


def check_endpoint(what: str) -> None:
  """Cloud Storage's endpoint accepts a connection, within `CONNECT_TIMEOUT_S`.

  gcsfs retries a refused connection for half a minute; this says so at once.
  """
  url = urllib.parse.urlsplit(gcs_endpoint())
  port = url.port or (443 if url.scheme == 'https' else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
  except OSError as e:
    reason = 'timed out' if isinstance(e, TimeoutError) else (e.strerror or one_line(e))
    raise StorageError(f'{what}: cannot connect to Cloud Storage at {url.hostname}:{port} '
                       f'({reason}); check the network, or STORAGE_EMULATOR_HOST if you use '
                       'a local server') from None


def check_writable_folder(p: str, what: str = '--workdir') -> None:
  """`p` is (or can be made) a folder this process can write: tried for real, with a probe.

  Raises:
    StorageError: one line naming `what`, the path and why.
  """
  if p.startswith('gs://'):
    bucket = p[len('gs://'):].split('/', 1)[0]
    if not _BUCKET_NAME.fullmatch(bucket):
      raise StorageError(f'{what}={p}: {bucket!r} is not a Cloud Storage bucket name (3-63 '
                         'lower-case letters, digits, dashes, underscores and dots)')
  # One probe per process: the processes of a multi-host run share the workdir.
  probe_name = f'.gwtn_write_probe.{os.getpid()}.{os.uname().nodename}'

  def probe():
    folder = path(p)
    # A folder on Cloud Storage is a prefix; another host may be writing under it (and some
    # servers then also answer for the bare name): an object is one with nothing under it.
    if folder.is_file() and not folder.is_dir():
      raise StorageError(f'{what}={p} is a file (an object), not a folder; choose a folder')
    makedirs(p)
    target = folder / probe_name
    target.write_text('ok')
    target.unlink()

  try:
    if is_remote(p):
      check_endpoint(f'{what}={p}')
    with_deadline(f'{what}={p}', probe)
  except StorageError:
    raise
  except OSError as e:
    reason = e.strerror or one_line(e)
    if is_remote(p) and isinstance(e, FileNotFoundError):
      reason = f'the bucket {p.split("://", 1)[1].split("/", 1)[0]!r} does not exist'
    raise StorageError(f'{what}={p} is not a writable folder ({reason}); '
                       'choose a folder you can write to') from None
  except Exception as e:  # pylint: disable=broad-except
    # gcsfs's own errors (HTTP status, credentials) are not all OSErrors.
    raise StorageError(f'{what}={p} is not a writable folder ({one_line(e)}); '
                       'choose a folder you can write to') from None
