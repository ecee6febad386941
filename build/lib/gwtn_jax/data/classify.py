"""Sequence classification data for BERT fine-tuning, on the MLM data's tokenizer.

The examples are tokenized with the WordPiece tokenizer of a `TextData` (`text.py`), so
a model pretrained on that data is fine-tuned on the same token ids. Datasets
(`config.downstream.name`):

- 'verse_prose': the speeches of the Shakespeare plays (`corpus.py`) with at least
  `downstream.min_lines` lines (default 2), labeled verse (1) or prose (0) from their
  line breaks in the Markdown source (`corpus.verse_or_prose`). The tokenizer
  lower-cases and the line breaks are gone from the input, so the model has to tell
  verse from prose from the token sequence alone. Split by play as the MLM data
  (train examples from the train plays, eval examples from the held-out plays;
  `plays` as the MLM config's `data.plays`), so fine-tuning never sees a held-out
  play either. Needs the MLM data of `data.name='shakespeare'`. Before balancing,
  the 31 train plays hold 9763 verse and 4322 prose speeches (69% verse), the 7
  held-out plays 2766 and 646 (81% verse); balanced: 8644 train and 1292 eval
  examples.
- 'tfds': a prepared tfds text classification dataset `downstream.tfds_name` (e.g.
  'glue/sst2', 'glue/mrpc') read through `tfds.data_source` (array_record, no
  TensorFlow) from `downstream.dir`: the text of `text_field`, optionally a second
  segment `text_pair_field`, the label `label_field` (a ClassLabel: its `num_classes`
  and `names` are the classes); splits `train_split` / `eval_split`. Read whole into
  memory at build time, so it suits GLUE-sized datasets.

Examples. [CLS] a [SEP] (token_type_ids 0), or [CLS] a [SEP] b [SEP] with b's tokens
and its [SEP] of token type 1, padded with [PAD] (attention_mask 0) to the MLM data's
seq_len T. A single segment keeps its first T - 2 tokens; a pair shares T - 3 tokens:
the longer segment is cut first, down to half (the first segment gets the odd token).

Which examples, per split (N = `num_train_examples` / `num_eval_examples`, 0 = all):
with `downstream.balance` (default True), every class is undersampled to the same
count, that of the smallest class or N // num_classes if smaller: a fixed-seed
choice within each class (a smaller N keeps a subset of a larger N's choice), kept in
source order (corpus order, tfds index order); chance accuracy is then
1 / num_classes. Without, the first N examples of the source. `info.chance_accuracy`
is always the majority-class fraction of the eval examples used. Set balance=False
for numbers comparable with published GLUE results.

Order, sharding and resumption exactly as `text.py` (`sampling.py`): position k of the
training stream is example perm_e[k mod n] of epoch e = k // n; step s's global batch
is positions [s * GB, (s + 1) * GB) and process p of P takes the contiguous block
s * GB + p * GB/P + [0, GB/P).

Batches (numpy): input_ids, attention_mask, token_type_ids int32 [B, T], label int32
[B]; eval adds mask float32 [B] (0 for padding rows: all [PAD], attention_mask 0,
label 0).

Learnability of 'verse_prose', measured (CPU, 20 s): all 38 plays, data.vocab_size
8000, data.seq_len 128 (9% of the speeches truncated), balance=True (8644 train, 1292
eval examples); features the binary bag of token ids of `ClassifySplit.input_ids`; a
numpy L2 logistic regression (300 full-batch Adam steps) fit on the train plays gets
0.676 (l2=1e-3) / 0.668 (l2=1e-2) accuracy on the held-out plays, multinomial naive
Bayes 0.683, a threshold on the token count 0.53; chance 0.5. With min_lines=4
(cleaner labels, 3568 train examples): 0.64-0.68. So the words alone tell verse from
prose only in part; to do better a model must use word order (metre, syntax), up to
the noise of the typographic labels (`corpus.verse_or_prose`). The command was a
scratch script (not in the repo) doing the above on
`build_classify_data(schema.downstream_config(name='verse_prose'), build_text_data(
schema.text_data_config(name='shakespeare', vocab_size=8000, seq_len=128)))`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import grain
import numpy as np

from gwtn_jax.data import corpus as corpus_lib
from gwtn_jax.data import datasets
from gwtn_jax.data import sampling
from gwtn_jax.data import text as text_lib

NAMES = ('verse_prose', 'tfds')
VERSE_PROSE_CLASSES = ('prose', 'verse')  # Indexed by corpus.PROSE / corpus.VERSE.

_BALANCE_SEED = 0  # Seed of the undersampling choice (the data, not the order).


@dataclasses.dataclass(frozen=True)
class ClassifyInfo:
  """What the model and the trainer need to know about a classification dataset.

  Attributes:
    name: 'verse_prose' or the tfds name.
    num_classes: labels lie in [0, num_classes).
    class_names: the name of each label.
    seq_len: tokens per example incl. the specials (the MLM data's seq_len).
    vocab_size: the tokenizer's vocabulary size.
    num_train_examples, num_eval_examples: examples used (after limits, balancing).
    chance_accuracy: the majority-class fraction of the eval examples used.
  """
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  seq_len: int
  vocab_size: int
  num_train_examples: int
  num_eval_examples: int
  chance_accuracy: float


@dataclasses.dataclass(frozen=True)
class ClassifySplit:
  """One split's examples, tokenized.

  Attributes:
    input_ids, token_type_ids: int32 [N, T].
    labels: int32 [N].
    sources: where each example comes from: its play ('verse_prose') or
      '<split>/<index>' ('tfds').
  """
  input_ids: np.ndarray
  token_type_ids: np.ndarray
  labels: np.ndarray
  sources: tuple[str, ...]


# ----------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class _Options:
  name: str
  tfds_name: str
  text_field: str
  text_pair_field: str
  label_field: str
  train_split: str
  eval_split: str
  dir: str
  min_lines: int
  balance: bool
  num_train_examples: int
  num_eval_examples: int
  read_threads: int
  prefetch: int


# The fields of `config.downstream` read here; their defaults are the schema's
# (`gwtn_jax.config.schema.downstream_config`).
FIELDS = tuple(f.name for f in dataclasses.fields(_Options))


def _parse(config) -> _Options:
  name = datasets.read_fields(config, 'downstream', ('name',))['name']
  if name not in NAMES:
    raise ValueError(f'downstream.name={name!r} is unknown; choose one of: '
                     + ', '.join(NAMES))
  c = datasets.read_fields(config, 'downstream', FIELDS)
  opts = _Options(
      name=name,
      tfds_name=str(c['tfds_name']),
      text_field=str(c['text_field']),
      text_pair_field=str(c['text_pair_field']),
      label_field=str(c['label_field']),
      train_split=str(c['train_split']),
      eval_split=str(c['eval_split']),
      dir=str(c['dir']),
      min_lines=int(c['min_lines']),
      balance=bool(c['balance']),
      num_train_examples=int(c['num_train_examples']),
      num_eval_examples=int(c['num_eval_examples']),
      read_threads=int(c['read_threads']),
      prefetch=int(c['prefetch']),
  )
  text_lib.check_counts(opts, 'downstream')
  if name == 'verse_prose' and opts.min_lines < 2:
    raise ValueError(f'downstream.min_lines={opts.min_lines} must be >= 2 (one line '
                     'shows no line break to label)')
  if name == 'tfds':
    if not opts.tfds_name:
      raise ValueError("downstream.tfds_name is empty; name the tfds text "
                       "classification dataset for downstream.name='tfds'")
    for field in ('text_field', 'label_field'):
      if not getattr(opts, field):
        raise ValueError(f"downstream.{field} is empty; name the tfds feature")
  return opts


def check_classify_config(config) -> None:
  """Finds downstream config errors cheaply (nothing tokenized or read in bulk).

  Args:
    config: `config.downstream` (see `build_classify_data`).

  Raises:
    ValueError: one line naming `downstream.<field>` and the fix: unknown name, bad
      value, a tfds dataset not prepared, a missing split or feature, a label that is
      not a ClassLabel.
  """
  opts = _parse(config)
  if opts.name == 'tfds':
    _tfds_features(_tfds_builder(opts), opts)


# ----------------------------------------------------------------------------------
# Sources: lists of (text, text pair or None, label, source), in source order.


def _tfds_builder(opts: _Options):
  return text_lib.tfds_builder(opts, prefix='downstream')


def _tfds_features(builder, opts: _Options):
  """The label feature, after checking that every named feature exists."""
  features = builder.info.features
  for field in ('text_field', 'text_pair_field', 'label_field'):
    value = getattr(opts, field)
    if value and value not in features:
      raise ValueError(f'downstream.{field}={value!r}: {opts.tfds_name} has the '
                       f'features {sorted(features.keys())}')
  label = features[opts.label_field]
  if getattr(label, 'num_classes', None) is None:
    raise ValueError(f'downstream.label_field={opts.label_field!r}: {opts.tfds_name}\'s '
                     f'{opts.label_field} is a {type(label).__name__}, not a ClassLabel '
                     '(regression tasks are not supported)')
  return label


def _decode(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _tfds_examples(opts: _Options, builder, split_field: str, limit: int,
                   num_classes: int):
  split = getattr(opts, split_field)
  source = builder.as_data_source(split=split)
  n = min(limit, len(source)) if limit else len(source)
  texts, pairs, labels = [], ([] if opts.text_pair_field else None), []
  for i in range(n):
    example = source[i]
    texts.append(_decode(example[opts.text_field]))
    if pairs is not None:
      pairs.append(_decode(example[opts.text_pair_field]))
    labels.append(int(example[opts.label_field]))
  labels = np.array(labels, np.int64)
  if ((labels < 0) | (labels >= num_classes)).any():
    raise ValueError(f'downstream.{split_field}={split!r}: {opts.tfds_name} has labels '
                     f'outside [0, {num_classes}) there (-1: an unlabeled test split); '
                     'choose a labeled split')
  return texts, pairs, labels, tuple(f'{split}/{i}' for i in range(n))


def _verse_prose_examples(passages: Sequence[corpus_lib.Passage], min_lines: int,
                          limit: int):
  labeled = [(p, corpus_lib.verse_or_prose(p, min_lines)) for p in passages]
  labeled = [(p, y) for p, y in labeled if y is not None]
  labeled = labeled[:limit] if limit else labeled
  return ([p.text for p, _ in labeled], None, np.array([y for _, y in labeled], np.int64),
          tuple(p.play for p, _ in labeled))


# ----------------------------------------------------------------------------------
# Balancing and tokenization.


def balance_classes(labels: np.ndarray, num_classes: int, limit: int = 0,
                    seed: int = _BALANCE_SEED) -> np.ndarray:
  """Indices (sorted) keeping an equal number of examples of every class.

  Each class keeps k = min(class counts) of its examples (at most limit //
  num_classes when limit > 0): the first k of `default_rng([seed, class])`'s
  permutation of them, so the choice depends only on the labels and the seed, and a
  smaller k keeps a subset of a larger one's.

  Returns:
    int64 indices into `labels`; empty when a class has no example.
  """
  keep = int(np.bincount(labels, minlength=num_classes).min())
  if limit:
    keep = min(keep, limit // num_classes)
  chosen = [np.random.default_rng([seed, c]).permutation(np.flatnonzero(labels == c))
            for c in range(num_classes)]
  chosen = [members[:keep] for members in chosen]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def encode_examples(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None,
                    seq_len: int, *, cls_id: int, sep_id: int, pad_id: int):
  """[CLS] a [SEP] (b [SEP]) rows, truncated and padded to `seq_len` (module doc).

  Returns:
    (input_ids int32 [N, seq_len], token_type_ids int32 [N, seq_len]).
  """
  first = tokenizer.encode_batch(list(texts), add_special_tokens=False)
  second = (tokenizer.encode_batch(list(pairs), add_special_tokens=False)
            if pairs is not None else None)
  n = len(first)
  ids = np.full((n, seq_len), pad_id, np.int32)
  types = np.zeros((n, seq_len), np.int32)
  budget = seq_len - (3 if second is not None else 2)
  for i in range(n):
    a = first[i].ids
    if second is None:
      a = a[:budget]
      ids[i, :len(a) + 2] = [cls_id, *a, sep_id]
      continue
    b = second[i].ids
    # Longest first: b keeps what a leaves, but at least half the budget.
    nb = min(len(b), max(budget - len(a), budget // 2))
    a, b = a[:budget - nb], b[:nb]
    ids[i, :len(a) + len(b) + 3] = [cls_id, *a, sep_id, *b, sep_id]
    types[i, len(a) + 2:len(a) + len(b) + 3] = 1
  return ids, types


# ----------------------------------------------------------------------------------
# The pipeline.


class ClassifyData:
  """One classification dataset's train and eval pipelines for one process. Built by
  `build_classify_data`.

  Attributes:
    info: the `ClassifyInfo`.
    train, eval: the `ClassifySplit`s used.
    class_counts: {'train', 'eval'}: examples per class of the source split before
      balancing (of its first N examples when not balancing).
    process_index, process_count: this process's place among the readers.
  """

  def __init__(self, info: ClassifyInfo, *, splits: dict[str, ClassifySplit],
               class_counts: dict[str, tuple[int, ...]], pad_id: int,
               read_options: grain.ReadOptions, process_index: int = 0,
               process_count: int = 1):
    self._slices = sampling.ProcessSlices(process_index, process_count, 'examples')
    self.info = info
    self.train, self.eval = splits['train'], splits['eval']
    self.class_counts = class_counts
    self.process_index, self.process_count = process_index, process_count
    self._pad_id = pad_id
    self._read_options = read_options

  def _example(self, ids: np.ndarray, types: np.ndarray,
               labels: np.ndarray) -> dict[str, np.ndarray]:
    return {'input_ids': ids, 'attention_mask': (ids != self._pad_id).astype(np.int32),
            'token_type_ids': types, 'label': labels.astype(np.int32)}

  def train_batches(self, *, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of the training batches from `start_step` on, endlessly.

    Returns:
      An iterator of {'input_ids', 'attention_mask', 'token_type_ids': int32 [B, T],
      'label': int32 [B]}, B = global_batch_size / process_count; the batches equal
      those of an iterator from step 0 after `start_step` batches.
    """
    self._slices.local_batch_size(global_batch_size)  # refused before any batch is built
    split = self.train
    perms = sampling.EpochPermutations(len(split.labels), seed)

    def make_batch(step: int) -> dict[str, np.ndarray]:
      indices = perms.indices(self._slices.positions(step, global_batch_size))
      return self._example(split.input_ids[indices], split.token_type_ids[indices],
                           split.labels[indices])

    return sampling.train_steps(make_batch, start_step, self._read_options)

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Global batches in one pass over the eval examples (the last one padded)."""
    return self._slices.num_batches(len(self.eval.labels), global_batch_size)

  def eval_batches(self, *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of one pass over the eval examples, in order; as
    `train_batches` plus 'mask' float32 [B] (0 on the padding rows of the last
    batch)."""
    local = self._slices.local_batch_size(global_batch_size)
    split = self.eval
    n = len(split.labels)

    def make_batch(step: int) -> dict[str, np.ndarray]:
      positions = self._slices.positions(step, global_batch_size)
      real = positions < n
      ids = np.full((local, self.info.seq_len), self._pad_id, np.int32)
      types = np.zeros((local, self.info.seq_len), np.int32)
      labels = np.zeros(local, np.int32)
      ids[real] = split.input_ids[positions[real]]
      types[real] = split.token_type_ids[positions[real]]
      labels[real] = split.labels[positions[real]]
      batch = self._example(ids, types, labels)
      batch['mask'] = real.astype(np.float32)
      return batch

    return sampling.eval_steps(make_batch, self.num_eval_batches(global_batch_size),
                               self._read_options)


# ----------------------------------------------------------------------------------
# Construction.


def build_classify_data(config, text_data, *, plays: Sequence[str] | str = (),
                        process_index: int = 0, process_count: int = 1) -> ClassifyData:
  """Builds the classification train and eval pipelines of `config` for one process.

  Args:
    config: `config.downstream`, an ml_collections ConfigDict with the fields below
      (every one is needed; `gwtn_jax.config.schema.downstream_config` gives their
      defaults)
      name: 'verse_prose' | 'tfds'.
      tfds_name, text_field, text_pair_field ('' = one segment), label_field,
        train_split, eval_split, dir (the tfds data_dir; '' = tfds default): 'tfds' only.
      min_lines: 'verse_prose' only: speeches with fewer lines are left out.
      balance: undersample every class to the smallest one's count.
      num_train_examples, num_eval_examples: use at most N examples (0 = all):
        N // num_classes of each class if balancing, else the first N.
      read_threads, prefetch: grain threads building batches and batches kept ready.
    text_data: the MLM `TextData`, whose tokenizer and seq_len are used.
    plays: 'verse_prose' only: the MLM config's `data.plays` (tuple or
      comma-separated; empty = all plays).
    process_index, process_count: this process among those reading.

  Raises:
    ValueError: as `check_classify_config`; also 'verse_prose' on MLM data other than
      'shakespeare', a split with no example, balancing with an absent class or a
      limit below num_classes.
  """
  check_classify_config(config)
  opts = _parse(config)
  tinfo = text_data.info
  # Balancing needs the whole split; otherwise only the first N are read.
  head = {split: 0 if opts.balance else getattr(opts, f'num_{split}_examples')
          for split in ('train', 'eval')}
  if opts.name == 'verse_prose':
    if tinfo.name != 'shakespeare':
      raise ValueError(f"downstream.name='verse_prose' needs the MLM data "
                       f"data.name='shakespeare' (its tokenizer and plays), not "
                       f'{tinfo.name!r}')
    plays = tuple(p for p in (plays.split(',') if isinstance(plays, str) else plays)
                  if p)
    class_names = VERSE_PROSE_CLASSES
    train_p, eval_p = corpus_lib.shakespeare_split(plays)
    sources = {'train': _verse_prose_examples(train_p, opts.min_lines, head['train']),
               'eval': _verse_prose_examples(eval_p, opts.min_lines, head['eval'])}
  else:
    builder = _tfds_builder(opts)
    label = _tfds_features(builder, opts)
    class_names = tuple(label.names)
    sources = {split: _tfds_examples(opts, builder, f'{split}_split', head[split],
                                     label.num_classes)
               for split in ('train', 'eval')}
  num_classes = len(class_names)
  ids_of = {t: text_data.tokenizer.token_to_id(t) for t in ('[CLS]', '[SEP]', '[PAD]')}
  splits, counts = {}, {}
  for split, (texts, pairs, labels, where) in sources.items():
    counts[split] = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
    if not len(labels):
      raise ValueError(f'downstream: the {split} split of {opts.name} has no example')
    if opts.balance:
      if min(counts[split]) == 0:
        absent = class_names[counts[split].index(0)]
        raise ValueError(f'downstream.balance=True: the {split} split of {opts.name} '
                         f'has no example of class {absent!r}; set balance=False')
      limit = getattr(opts, f'num_{split}_examples')
      keep = balance_classes(labels, num_classes, limit)
      if not len(keep):
        raise ValueError(f'downstream.num_{split}_examples={limit} keeps no example of '
                         f'each of the {num_classes} classes; raise it or set 0 (all)')
      texts = [texts[i] for i in keep]
      pairs = [pairs[i] for i in keep] if pairs is not None else None
      labels, where = labels[keep], tuple(where[i] for i in keep)
    ids, types = encode_examples(
        text_data.tokenizer, texts, pairs, tinfo.seq_len, cls_id=ids_of['[CLS]'],
        sep_id=ids_of['[SEP]'], pad_id=ids_of['[PAD]'])
    splits[split] = ClassifySplit(ids, types, labels.astype(np.int32), where)
  eval_counts = np.bincount(splits['eval'].labels, minlength=num_classes)
  info = ClassifyInfo(
      name=opts.name if opts.name == 'verse_prose' else opts.tfds_name,
      num_classes=num_classes, class_names=class_names, seq_len=tinfo.seq_len,
      vocab_size=tinfo.vocab_size, num_train_examples=len(splits['train'].labels),
      num_eval_examples=len(splits['eval'].labels),
      chance_accuracy=float(eval_counts.max() / eval_counts.sum()))
  return ClassifyData(
      info, splits=splits, class_counts=counts, pad_id=ids_of['[PAD]'],
      read_options=grain.ReadOptions(num_threads=opts.read_threads,
                                     prefetch_buffer_size=opts.prefetch),
      process_index=process_index, process_count=process_count)
