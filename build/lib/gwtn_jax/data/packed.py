"""Packed sequences on disk: two .npy files, written chunk by chunk with the header last.

`write_packed` tokenizes and packs documents (`wordpiece.py`) chunk by chunk, appending
the rows to int32 [S, seq_len] .seqs.npy and their documents to int32 [S] .docs.npy, so
memory holds one chunk (tens of MB at `text_tfds.TOKENIZE_CHUNK` examples); the header,
whose length does not depend on S, is written last. Both files are read back with
`np.load(mmap_mode='r')`.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

from absl import logging
import numpy as np

from gwtn_jax.data import text_cache
from gwtn_jax.data import wordpiece

# pylint: disable=protected-access  # The text modules share their private helpers.


def _npy_header(shape: tuple[int, ...]) -> bytes:
  """The .npy (version 1.0) header of a C-order int32 array of `shape`.

  numpy pads it so that the first axis can grow to 21 digits in place: its length does
  not depend on shape[0], so rows can follow a placeholder and the header come last.
  """
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {
      'descr': np.lib.format.dtype_to_descr(np.dtype(np.int32)),
      'fortran_order': False, 'shape': tuple(shape)})
  return buf.getvalue()


def write_packed(chunks: Iterable[Sequence[str]], tokenizer, seqs_path: str,
                 docs_path: str, *, seq_len: int, cls_id: int, sep_id: int,
                 pad_id: int) -> int:
  """Tokenizes and packs documents chunk by chunk, appending to two .npy files.

  Memory holds one chunk at a time. Each text is one document, numbered from 0 in
  order across the chunks; the sequences are those of `pack_sequences` on all the
  texts at once, whatever the chunking. Both files are written under temporary names
  and renamed into place, `docs_path` last.

  Args:
    chunks: lists of texts.
    tokenizer: a `tokenizers.Tokenizer` (`load_wordpiece`).
    seqs_path: gets int32 [S, seq_len], the packed sequences.
    docs_path: gets int32 [S], the document of each sequence.
    seq_len, cls_id, sep_id, pad_id: as `pack_sequences`.

  Returns:
    S, the number of sequences.
  """
  headers = (_npy_header((0, seq_len)), _npy_header((0,)))
  tmps = (text_cache._tmp_name(seqs_path), text_cache._tmp_name(docs_path))
  for path in (seqs_path, docs_path):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  try:
    with open(tmps[0], 'wb') as fs, open(tmps[1], 'wb') as fd:
      fs.write(bytes(len(headers[0])))
      fd.write(bytes(len(headers[1])))
      rows = first = 0
      for i, texts in enumerate(chunks):
        ids, offsets = wordpiece._encode(tokenizer, texts)
        seqs, _, docs = wordpiece.pack_sequences(
            ids, offsets, np.arange(first, first + len(texts)), seq_len, cls_id, sep_id,
            pad_id)
        fs.write(seqs.tobytes())
        fd.write(docs.tobytes())
        rows, first = rows + len(seqs), first + len(texts)
        if i % 100 == 99:
          logging.info('%s: %d documents packed into %d sequences', seqs_path, first, rows)
      for f, placeholder, shape in ((fs, headers[0], (rows, seq_len)),
                                    (fd, headers[1], (rows,))):
        header = _npy_header(shape)
        if len(header) != len(placeholder):
          raise AssertionError(f'.npy header of {shape} is not {len(placeholder)} bytes')
        f.seek(0)
        f.write(header)
        f.flush()
        os.fsync(f.fileno())  # The data is on disk before the rename publishes it.
    os.replace(tmps[0], seqs_path)
    os.replace(tmps[1], docs_path)
  finally:
    for tmp in tmps:
      if os.path.exists(tmp):
        os.remove(tmp)
  logging.info('%s: %d documents packed into %d sequences', seqs_path, first, rows)
  return rows
