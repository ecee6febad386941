"""The tfds text source: a prepared tfds text dataset's texts, and its cache files' names.

`tfds_builder` opens and checks the dataset; `_tfds_text_chunks` reads a split's texts in
chunks of `TOKENIZE_CHUNK` examples, through `tfds.data_source` when the files are
array_record (no TensorFlow), else through `builder.as_dataset` (needs TensorFlow). Each
example is one document, named '<split>/<index>' (`_ExampleNames`). The vocabulary
trained on the train split (`_tfds_vocab`) and the packed splits (`_tfds_packed_paths`)
are cached under names keyed by the dataset, its version and the options they depend on.
"""

from __future__ import annotations

import collections.abc
import importlib.util
import os
import re
from typing import Iterator, Sequence

from absl import logging

from gwtn_jax.data import text_cache
from gwtn_jax.data import wordpiece

# pylint: disable=protected-access  # The text modules share their private helpers.

TOKENIZE_CHUNK = 10_000  # tfds examples read, tokenized and packed at once.


def tfds_builder(opts, prefix: str = 'data'):
  """The prepared tfds builder of `opts.tfds_name` in `opts.dir`, with both splits checked.

  Args:
    opts: anything with `tfds_name`, `dir`, `train_split`, `eval_split`; a split may be
      sliced as tfds reads it ('train[:99%]').
    prefix: the config field the options live in, named in the errors.

  Raises:
    ValueError: one line naming `<prefix>.<field>`: the dataset is unknown or not prepared
      (with the `tfds build` command that prepares it), or a split does not exist.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    try:
      builder = tfds.builder(opts.tfds_name, data_dir=opts.dir or None)
    except tfds.core.registered.DatasetNotFoundError:
      builder = None
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{prefix}.tfds_name={opts.tfds_name!r}: tfds cannot open the '
                       f'dataset in {prefix}.dir={opts.dir!r}: {e}') from e
  finally:
    logging.set_verbosity(verbosity)
  if builder is None or not builder.is_prepared():
    where = opts.dir or 'the tfds default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)'
    raise ValueError(
        f'{prefix}.tfds_name={opts.tfds_name!r}: the tfds dataset is not prepared in '
        f'{prefix}.dir={where}; prepare it on a machine with network with `tfds build '
        f'{opts.tfds_name} --data_dir=DIR --file_format=array_record`, copy DIR here '
        f'and set {prefix}.dir=DIR')
  for field in ('train_split', 'eval_split'):
    split = getattr(opts, field)
    if split.split('[', 1)[0] not in builder.info.splits:
      raise ValueError(f'{prefix}.{field}={split!r}: {opts.tfds_name} has the splits '
                       f'{sorted(builder.info.splits.keys())}')
  return builder


def _decode(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _file_format(builder) -> str:
  fmt = builder.info.file_format
  return str(getattr(fmt, 'value', fmt) or 'tfrecord')


def _tfds_text_chunks(opts, builder, split: str, limit: int = 0,
                      chunk_size: int = 0) -> Iterator[list[str]]:
  """The texts of a tfds split's examples in order (the first `limit`; 0 = all), in
  lists of `chunk_size` (0 = `TOKENIZE_CHUNK`), read as they are consumed.

  Raises:
    ValueError: (at once) the dataset is not array_record and TensorFlow is not
      installed.
  """
  chunk_size = chunk_size or TOKENIZE_CHUNK
  field = opts.tfds_text_field
  fmt = _file_format(builder)
  if fmt == 'array_record':
    source = builder.as_data_source(split=split)
    n = min(limit, len(source)) if limit else len(source)
    return ([_decode(e[field]) for e in
             source.__getitems__(list(range(start, min(start + chunk_size, n))))]
            for start in range(0, n, chunk_size))
  if importlib.util.find_spec('tensorflow') is None:
    raise ValueError(
        f'data.tfds_name={opts.tfds_name!r}: the dataset in data.dir={opts.dir!r} is '
        f'{fmt}, which only TensorFlow reads; rebuild it with `tfds build '
        f'{opts.tfds_name} --data_dir=DIR --file_format=array_record` or install '
        'tensorflow')
  # tf.data, the text feature alone decoded. Untested: TensorFlow is not installed
  # where the tests run, and tfds cannot prepare a tfrecord dataset without it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders=tfds.decode.PartialDecoding({field: True}))
  if limit:
    ds = ds.take(limit)
  return ([_decode(t) for t in batch[field]]
          for batch in tfds.as_numpy(ds.batch(chunk_size)))


class _ExampleNames(collections.abc.Sequence):
  """'<split>/<i>' for the examples of consecutive splits, made on demand (a list of
  millions of names would cost hundreds of MB on every host)."""

  def __init__(self, splits: Sequence[tuple[str, int]]):
    self._splits = tuple(splits)
    self._len = sum(n for _, n in self._splits)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._len))]
    index = int(index)
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f'document {index} not in [0, {self._len})')
    for split, n in self._splits:
      if index < n:
        return f'{split}/{index}'
      index -= n
    raise AssertionError('unreachable')


# ----------------------------------------------------------------------------------
# The tfds caches.


def _tfds_key(opts, builder, *parts: str) -> str:
  return text_cache._sha('tfds', opts.tfds_name, str(builder.version), opts.tfds_text_field,
                         *parts)


def _tfds_vocab(opts, builder) -> str:
  """cache_dir/wordpiece-v<version>-<size>-<key>/vocab.txt, trained if absent on the first
  `vocab_train_examples` examples of the train split, streamed."""
  key = _tfds_key(opts, builder, opts.train_split, str(opts.vocab_train_examples))
  out_dir = opts.cache.path(wordpiece.vocab_dir_name(opts.vocab_size, key, opts.lowercase))
  path = os.path.join(out_dir, 'vocab.txt')
  if not opts.cache.has(path):
    logging.info('Training a %d-entry WordPiece vocabulary on %s %s into %s',
                 opts.vocab_size, opts.tfds_name, opts.train_split, path)
    wordpiece.train_wordpiece(_tfds_text_chunks(opts, builder, opts.train_split,
                                                limit=opts.vocab_train_examples),
                              opts.vocab_size, out_dir, opts.lowercase)
    opts.cache.publish(path)
  return path


def _tfds_packed_paths(opts, builder, split: str,
                       vocab_hash: str) -> tuple[str, str]:
  """(.seqs.npy, .docs.npy) paths of a split's packed cache; no text is read."""
  key = _tfds_key(opts, builder, split, vocab_hash, str(opts.seq_len),
                  str(text_cache._CACHE_VERSION))
  # A readable prefix; the key alone tells caches apart.
  name = re.sub(r'[^A-Za-z0-9.-]+', '_', f'{opts.tfds_name}-{split}').strip('_')
  base = opts.cache.path('packed', f'{name}-T{opts.seq_len}-{key}')
  return f'{base}.seqs.npy', f'{base}.docs.npy'
