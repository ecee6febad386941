"""Flat name -> array files: safetensors (no PyTorch needed) and PyTorch's pickles.

Every failure is an `InteropError`: one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from gwtn_jax import storage

SAFETENSORS_SUFFIX = '.safetensors'
TORCH_SUFFIXES = ('.bin', '.pth', '.pt')


class InteropError(ValueError):
  """A checkpoint of another framework that cannot be read or converted (one line)."""


def _one_line(error: BaseException) -> str:
  return storage.one_line(error)


def first_few(names, n: int = 5) -> str:
  """'a, b, c and 4 more' of a collection of names (sorted)."""
  names = sorted(names)
  shown = ', '.join(names[:n])
  return shown if len(names) <= n else f'{shown} and {len(names) - n} more'


def _local(path: str) -> str:
  """A local copy of a gs:// file (safetensors and torch read local files only)."""
  if not storage.is_remote(path):
    return path
  from gwtn_jax.data import text_cache  # pylint: disable=g-import-not-at-top
  local = storage.local_mirror(path, text_cache.MIRROR_DIR)
  storage.download(path, local)
  return local


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array of a `.safetensors` file or a PyTorch `.bin`/`.pth`/`.pt` pickle.

  bfloat16 tensors become float32 (numpy has no bfloat16 of its own; the values are exact).
  A pickle is read with `torch.load(weights_only=True)`, so PyTorch must be installed
  (`pip install 'gwtn_jax[interop]'`); safetensors need no PyTorch.

  Raises:
    InteropError: the file is missing, truncated, not of its kind, or holds no tensors.
  """
  if not storage.isfile(path):
    raise InteropError(f'{path} is not a file')
  if path.endswith(SAFETENSORS_SUFFIX):
    tensors = _read_safetensors(_local(path), path)
  elif path.endswith(TORCH_SUFFIXES):
    tensors = _read_torch(_local(path), path)
  else:
    raise InteropError(f'{path}: unknown weights file; give a {SAFETENSORS_SUFFIX} file or a '
                       f'PyTorch {"/".join(TORCH_SUFFIXES)} state dict')
  if not tensors:
    raise InteropError(f'{path} holds no tensors')
  return tensors


def _read_safetensors(local: str, path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    with safe_open(local, framework='numpy') as f:
      names = list(f.keys())
      for name in names:
        out[name] = f.get_tensor(name)
  except TypeError as e:
    # numpy cannot hold bfloat16: read those through the raw header (exact widening).
    if 'bfloat16' not in str(e) and 'bf16' not in str(e).lower():
      raise InteropError(f'{path} is not a readable safetensors file ({_one_line(e)})') from e
    return _read_safetensors_bf16(local, path)
  except Exception as e:  # pylint: disable=broad-except
    raise _not_safetensors(path, e) from e
  return out


def _not_safetensors(path: str, error: BaseException) -> InteropError:
  return InteropError(f'{path} is not a readable safetensors file (truncated or not '
                      f'safetensors: {_one_line(error)})')


def _read_safetensors_bf16(local: str, path: str) -> dict[str, np.ndarray]:
  """A safetensors file with bfloat16 tensors, read through its JSON header."""
  import json  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  dtypes = {'F32': np.float32, 'F16': np.float16, 'F64': np.float64, 'I64': np.int64,
            'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}
  with open(local, 'rb') as f:
    blob = f.read()
  (n,) = struct.unpack('<Q', blob[:8])
  header = json.loads(blob[8:8 + n])
  data = memoryview(blob)[8 + n:]
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    start, end = entry['data_offsets']
    if end > len(data):
      raise InteropError(f'{path} is truncated ({name} ends past the end of the file)')
    raw = data[start:end]
    if entry['dtype'] == 'BF16':
      bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
      array = bits.view(np.float32)
    else:
      array = np.frombuffer(raw, dtypes[entry['dtype']])
    out[name] = array.reshape(entry['shape']).copy()
  return out


def _read_torch(local: str, path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise InteropError(f'{path} is a PyTorch pickle, which needs PyTorch to read: pip install '
                       "'gwtn_jax[interop]', or convert it to .safetensors") from None
  try:
    state = torch.load(local, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise InteropError(f'{path} is not a readable PyTorch state dict ({_one_line(e)})') from e
  if isinstance(state, Mapping) and 'state_dict' in state and isinstance(
      state['state_dict'], Mapping):
    state = state['state_dict']  # A training checkpoint: {'state_dict': ..., 'epoch': ...}.
  if not isinstance(state, Mapping):
    raise InteropError(f'{path} holds a {type(state).__name__}, not a state dict')
  out = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise InteropError(f'{path}: entry {name!r} is a {type(value).__name__}, not a tensor')
    if value.dtype == torch.bfloat16:
      value = value.float()
    out[name] = value.detach().cpu().numpy()
  return out


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` (contiguous copies) to a `.safetensors` file, local or gs://.

  `metadata` gets {'format': 'pt'}, which `transformers` needs to load the file.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  meta = {'format': 'pt', **(metadata or {})}
  # (Not np.ascontiguousarray, which makes a 0-d array 1-d: BatchNorm's num_batches_tracked.)
  arrays = {k: np.array(v, order='C', copy=True) for k, v in tensors.items()}
  if storage.is_remote(path):
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, os.path.basename(path))
      save_file(arrays, local, metadata=meta)
      storage.upload(local, path)
  else:
    save_file(arrays, path, metadata=meta)


def check_readable(path: str) -> None:
  """A weights file's names can be read (a safetensors header, cheaply: nothing is loaded),
  so a truncated or foreign file is refused at start-up. A PyTorch pickle is only checked to
  exist: reading it is loading it.

  Raises:
    InteropError: one line naming the file.
  """
  if not storage.isfile(path):
    raise InteropError(f'{path} is not a file')
  if path.endswith(SAFETENSORS_SUFFIX) and not storage.is_remote(path):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(path, framework='numpy') as f:
        names = list(f.keys())
    except Exception as e:  # pylint: disable=broad-except
      raise _not_safetensors(path, e) from e
    if not names:
      raise InteropError(f'{path} holds no tensors')

