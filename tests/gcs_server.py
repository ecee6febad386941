r"""A local Cloud Storage server for the tests: the PyPI `gcp-storage-emulator`, as a process.

  python tests/gcs_server.py --port=PORT --data_dir=DIR [--bucket=NAME]

It speaks the Cloud Storage JSON API on 127.0.0.1 to all three clients a run uses: gcsfs
(epath: configs, results, reports), google-cloud-storage (tensorboardX's event files) and
TensorStore (orbax's arrays). Objects are kept in DIR, so a server stopped and started again
on the same DIR still has them (what the tests of a failed write need).

Two things the real service does and TensorStore relies on are missing from the emulator, and
are added here, around its own handlers:
- the `x-goog-generation` header of a media download, from which TensorStore reads the
  generation of what it read (without it: "Malformed StorageGeneration");
- the `ifGenerationMatch` / `ifGenerationNotMatch` preconditions (412 / 304), with which
  TensorStore's OCDBT writes its manifest only over the version it read.
Requests are served one at a time (one lock), so a precondition check and the write it
guards are atomic.

And one thing made faster: the emulator rewrites its whole object index (indented JSON) on
every write, which makes a bucket of a few thousand objects (a few runs' checkpoints) slow to
write to. Here the index is written at most every `INDEX_EVERY_S` seconds, and always when the
server is stopped (SIGTERM, SIGINT), so a server started again on the same data has every
object.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import threading
import time
from http import HTTPStatus

from gcp_storage_emulator import server as server_lib
from gcp_storage_emulator import storage as storage_lib
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.handlers import objects

INDEX_EVERY_S = 0.5
_LOCK = threading.RLock()  # one request at a time; the index is written under it too


def _current_generation(storage, bucket: str, name: str) -> str:
  """The object's generation, '0' when there is none (the API's convention)."""
  try:
    return str(storage.get_file_obj(bucket, name)['generation'])
  except NotFound:
    return '0'


def _object_name(request) -> str | None:
  if 'object_id' in request.params:
    return request.params['object_id']
  if 'name' in request.query:
    return request.query['name'][0]
  data = request.data
  if isinstance(data, dict) and isinstance(data.get('meta'), dict):
    return data['meta'].get('name')
  return None


def _with_preconditions(handler):
  """`handler`, refusing requests whose generation preconditions do not hold."""

  @functools.wraps(handler)
  def wrapped(request, response, storage, *args, **kwargs):
    name = _object_name(request)
    if name is not None:
      current = _current_generation(storage, request.params['bucket_name'], name)
      match = request.query.get('ifGenerationMatch')
      if match and match[0] != current:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'conditionNotMet'}})
        return None
      not_match = request.query.get('ifGenerationNotMatch')
      if not_match and not_match[0] == current:
        response.status = HTTPStatus.NOT_MODIFIED
        response['x-goog-generation'] = current
        return None
    return handler(request, response, storage, *args, **kwargs)

  return wrapped


def _download_with_generation(download):
  """The emulator's media download, with the generation headers of the object read."""

  @functools.wraps(download)
  def wrapped(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except NotFound:
      obj = None
    if obj is not None:
      response['x-goog-generation'] = str(obj['generation'])
      response['x-goog-metageneration'] = str(obj.get('metageneration', '1'))
      response['x-goog-stored-content-length'] = str(obj.get('size', ''))
    return download(request, response, storage, *args, **kwargs)

  return wrapped


def _patch_handlers() -> None:
  wrapped = {
      objects.download: _with_preconditions(_download_with_generation(objects.download)),
      objects.insert: _with_preconditions(objects.insert),
      objects.delete: _with_preconditions(objects.delete),
      objects.get: _with_preconditions(objects.get),
  }
  # `get` calls the module's `download` for ?alt=media; the routes hold the functions.
  objects.download = wrapped[objects.download]
  for _, handlers in server_lib.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler in wrapped:
        handlers[method] = wrapped[handler]


def _serialize_requests() -> None:
  handle = server_lib.Router.handle

  @functools.wraps(handle)
  def locked(self, *args, **kwargs):
    with _LOCK:
      return handle(self, *args, **kwargs)

  server_lib.Router.handle = locked


class _Index:
  """The emulator's object index, written when it changed, at most every INDEX_EVERY_S."""

  def __init__(self):
    self.storage = None
    self.dirty = False

  def mark(self, storage) -> None:
    self.storage, self.dirty = storage, True

  def write(self) -> None:
    with _LOCK:
      if not self.dirty:
        return
      st = self.storage
      data = {'buckets': st.buckets, 'objects': st.objects, 'resumable': st.resumable,
              'bucket_iam_policies': st.bucket_iam_policies, 'soft_deleted': st.soft_deleted}
      st._store.write_bytes('.meta', json.dumps(data).encode('utf-8'))  # pylint: disable=protected-access
      self.dirty = False

  def keep_writing(self) -> None:
    while True:
      time.sleep(INDEX_EVERY_S)
      self.write()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--bucket', action='append', default=[])
  args = parser.parse_args()
  logging.basicConfig(level=logging.CRITICAL)
  _patch_handlers()
  _serialize_requests()
  index = _Index()
  storage_lib.Storage._write_config_to_file = lambda self: index.mark(self)  # pylint: disable=protected-access
  server = server_lib.create_server('127.0.0.1', args.port, in_memory=False,
                                    data_dir=args.data_dir)

  def stop(signum, frame):
    del signum, frame
    index.write()
    os._exit(0)  # pylint: disable=protected-access

  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, stop)
  threading.Thread(target=index.keep_writing, daemon=True).start()
  for name in args.bucket:
    try:
      buckets.create_bucket(name, server._storage)  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except
      pass  # Already there (a restart on the same data).
  index.write()
  print(f'listening on 127.0.0.1:{args.port}', flush=True)
  server.run()


if __name__ == '__main__':
  main()
