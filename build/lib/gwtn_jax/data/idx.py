"""Reader for the IDX files of MNIST and Fashion-MNIST (raw or gzip-compressed).

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number -- two zero
bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64) and the number of dimensions -- then one big-endian uint32 per dimension,
then the data in C order, big-endian.

The Debian package `dataset-fashion-mnist` installs the four standard files under
/usr/share/datasets/fashion-mnist/; any folder holding the same four file names, raw or
with a `.gz` suffix, works (MNIST's files have the same names).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import zlib

import numpy as np

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype('u1'),
    0x09: np.dtype('i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}

# The four standard file stems: (split, kind) -> stem. Each may end in '.gz'.
IDX_FILES = {
    ('train', 'images'): 'train-images-idx3-ubyte',
    ('train', 'labels'): 'train-labels-idx1-ubyte',
    ('test', 'images'): 't10k-images-idx3-ubyte',
    ('test', 'labels'): 't10k-labels-idx1-ubyte',
}


class IdxFormatError(ValueError):
  """An IDX file is malformed: bad magic number, type code, dimensions or size."""


def _open(path: str):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


@contextlib.contextmanager
def _decoding(path: str):
  """Turns a gzip stream's own errors into IdxFormatError naming the file."""
  try:
    yield
  except (OSError, EOFError, zlib.error) as e:
    raise IdxFormatError(f'{path}: not a readable gzip file ({e}): truncated, or not '
                         'compressed though named .gz') from None


def _read_exactly(f, num_bytes: int, path: str, what: str) -> bytes:
  data = f.read(num_bytes)
  if len(data) != num_bytes:
    raise IdxFormatError(
        f'{path}: truncated IDX file: expected {num_bytes} bytes of {what}, '
        f'got {len(data)}')
  return data


def _read_header(f, path: str) -> tuple[np.dtype, tuple[int, ...]]:
  magic = _read_exactly(f, 4, path, 'magic number')
  if magic[0] != 0 or magic[1] != 0:
    raise IdxFormatError(
        f'{path}: not an IDX file: magic number {magic.hex()} does not start with '
        '0000 (is it compressed without a .gz suffix, or not MNIST-style data?)')
  type_code, ndim = magic[2], magic[3]
  if type_code not in _IDX_DTYPES:
    raise IdxFormatError(
        f'{path}: unknown IDX type code 0x{type_code:02x}; expected one of '
        + ', '.join(f'0x{c:02x}' for c in _IDX_DTYPES))
  if ndim == 0:
    raise IdxFormatError(f'{path}: IDX file declares 0 dimensions')
  dims = struct.unpack(f'>{ndim}I', _read_exactly(f, 4 * ndim, path, 'dimensions'))
  return _IDX_DTYPES[type_code], tuple(int(d) for d in dims)


def read_idx_header(path: str) -> tuple[np.dtype, tuple[int, ...]]:
  """Returns (dtype, shape) of an IDX file, reading only its header.

  Raises:
    IdxFormatError: the header is malformed.
  """
  with _decoding(path), _open(path) as f:
    return _read_header(f, path)


def read_idx(path: str, max_items: int = 0) -> np.ndarray:
  """Reads an IDX file (raw, or gzip when the name ends in `.gz`) into a numpy array.

  Args:
    path: the file.
    max_items: if > 0, read only the first `max_items` entries along the first axis
      (the head of the file; a gzip file is decompressed only that far).

  Returns:
    An array of the file's shape (first axis cut to `max_items`) in native byte order.

  Raises:
    IdxFormatError: bad magic number, unknown type code, or fewer data bytes than the
      dimensions declare (or more, for a raw file read whole).
  """
  with _decoding(path), _open(path) as f:
    dtype, shape = _read_header(f, path)
    if max_items > 0:
      shape = (min(shape[0], max_items),) + shape[1:]
    count = int(np.prod(shape, dtype=np.int64))
    data = _read_exactly(f, count * dtype.itemsize, path, f'data of shape {shape}')
    if max_items <= 0 and f.read(1):
      raise IdxFormatError(
          f'{path}: IDX file has trailing bytes after the data of shape {shape}')
  return np.frombuffer(data, dtype=dtype).reshape(shape).astype(
      dtype.newbyteorder('='), copy=False)


def find_idx_file(folder: str, split: str, kind: str) -> str | None:
  """Returns the path of a standard IDX file in `folder` (raw preferred, then .gz)."""
  stem = IDX_FILES[(split, kind)]
  for name in (stem, stem + '.gz'):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def read_idx_split(folder: str, split: str,
                   max_items: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split ('train' or 'test') of an MNIST-style IDX folder.

  Returns:
    (images uint8 [N, H, W, 1], labels int32 [N]).

  Raises:
    IdxFormatError: a file is missing or malformed, or images and labels disagree.
  """
  paths = check_idx_split(folder, split)
  images = read_idx(paths['images'], max_items)
  labels = read_idx(paths['labels'], max_items)
  return images[..., None], labels.astype(np.int32)


def check_idx_size(path: str) -> None:
  """Checks that an IDX file holds exactly the bytes its header declares (cheap: its size, or
  for a .gz file the uncompressed size in its gzip trailer, which a truncated file lacks).

  Raises:
    IdxFormatError: the header is malformed, or the file is truncated or too long.
  """
  dtype, shape = read_idx_header(path)
  expected = 4 + 4 * len(shape) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if not path.endswith('.gz'):
    size = os.path.getsize(path)
    if size != expected:
      what = 'truncated' if size < expected else 'trailing bytes after the data'
      raise IdxFormatError(f'{path}: {size} bytes, but its header declares {expected} '
                           f'(data of shape {shape}): {what}')
    return
  with open(path, 'rb') as f:
    f.seek(-4, os.SEEK_END)
    stored = struct.unpack('<I', f.read(4))[0]  # ISIZE: the uncompressed size mod 2^32
  if stored != expected % 2**32:
    raise IdxFormatError(f'{path}: its gzip trailer gives {stored} uncompressed bytes, but its '
                         f'header declares {expected} (data of shape {shape}): the file is '
                         'truncated or corrupt')


def check_labels(path: str, num_classes: int) -> None:
  """Scans a labels file (small: one byte per example) for labels outside [0, num_classes).

  Raises:
    IdxFormatError: naming the file and the first bad example.
  """
  labels = read_idx(path)
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise IdxFormatError(f'{path}: example {i} has label {int(labels[i])}, outside '
                         f'[0, {num_classes})')


def check_idx_split(folder: str, split: str, num_classes: int = 0) -> dict[str, str]:
  """Checks one split of an IDX folder from the file headers and sizes (cheap), and with
  `num_classes` the range of its labels.

  Returns:
    {'images': path, 'labels': path}.

  Raises:
    IdxFormatError: a file is missing or malformed, or images and labels disagree.
  """
  paths = {}
  for kind in ('images', 'labels'):
    paths[kind] = find_idx_file(folder, split, kind)
    if paths[kind] is None:
      raise IdxFormatError(
          f'{folder}: missing {IDX_FILES[(split, kind)]}[.gz]')
  images_dtype, images_shape = read_idx_header(paths['images'])
  labels_dtype, labels_shape = read_idx_header(paths['labels'])
  if len(images_shape) != 3 or images_dtype != np.uint8:
    raise IdxFormatError(
        f'{paths["images"]}: expected uint8 images of 3 dimensions (N, H, W), got '
        f'{images_dtype} of shape {images_shape}')
  if len(labels_shape) != 1 or labels_dtype.kind not in 'iu':
    raise IdxFormatError(
        f'{paths["labels"]}: expected integer labels of 1 dimension (N,), got '
        f'{labels_dtype} of shape {labels_shape}')
  if labels_shape[0] != images_shape[0]:
    raise IdxFormatError(
        f'{paths["images"]} holds {images_shape[0]} images but {paths["labels"]} '
        f'holds {labels_shape[0]} labels')
  for path in paths.values():
    check_idx_size(path)
  if num_classes:
    check_labels(paths['labels'], num_classes)
  return paths
