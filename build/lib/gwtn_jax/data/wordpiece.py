"""The WordPiece vocabulary, and text tokenized with it and packed into sequences.

The vocabulary: BERT's (`tokenizers`), trained (`train_wordpiece`, `cached_vocab`) or
read from a vocab.txt (`load_wordpiece`), the specials `SPECIAL_TOKENS` first. Packing
(`pack_sequences`): each document's tokens cut into rows [CLS] + seq_len - 2 tokens +
[SEP], the last one of a document padded with [PAD].
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from gwtn_jax import storage
from gwtn_jax.data import corpus as corpus_lib
from gwtn_jax.data import text_cache

# pylint: disable=protected-access  # The text modules share their private helpers.

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


def train_wordpiece(texts: Iterable[str] | Iterable[list[str]], vocab_size: int,
                    out_dir: str, lowercase: bool = True) -> str:
  """Trains a BERT WordPiece vocabulary on `texts`; writes and returns out_dir/vocab.txt.

  Args:
    texts: strings, or lists of strings (chunks), consumed once as they come.
    vocab_size, out_dir: the vocabulary's size and directory.
    lowercase: BERT's normalizer lowercases and strips accents (an uncased vocabulary).

  The specials come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. Writes to a
  temporary name and renames, so concurrent trainers never leave a partial file.
  """
  from tokenizers import implementations  # pylint: disable=g-import-not-at-top
  tok = implementations.BertWordPieceTokenizer(lowercase=lowercase)
  tok.train_from_iterator(iter(texts), vocab_size=vocab_size, min_frequency=2,
                          special_tokens=list(SPECIAL_TOKENS), limit_alphabet=1000,
                          show_progress=False)
  os.makedirs(out_dir, exist_ok=True)
  # The trainer numbers its alphabet in hash-map order, which differs from one run (and one
  # host) to the next even on the same texts; the set of tokens does not. So the ids are
  # made canonical: the specials, then every other token in sorted order. WordPiece reads
  # only the set, so the tokenization is the trainer's, and two hosts that both train get
  # the same bytes.
  vocab = set(tok.get_vocab()) - set(SPECIAL_TOKENS)
  tokens = list(SPECIAL_TOKENS) + sorted(vocab)
  path = os.path.join(out_dir, 'vocab.txt')
  tmp = text_cache._tmp_name(path)
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(''.join(t + '\n' for t in tokens))
  os.replace(tmp, path)
  return path


TOKENIZER_JSON = '.json'


def vocab_tokens(text: str, vocab_file: str) -> list[str]:
  """The tokens, by id, of a BERT vocab.txt's text (one per line), or of a Hugging Face
  `tokenizer.json` (a WordPiece model's vocab: what `save_pretrained` of transformers 5
  writes instead of a vocab.txt) when `vocab_file` ends in .json.

  Raises:
    ValueError: one line naming `data.vocab_file`: empty, without a special token, or a
      tokenizer.json that is not a WordPiece one.
  """
  if vocab_file.endswith(TOKENIZER_JSON):
    import json  # pylint: disable=g-import-not-at-top
    try:
      model = json.loads(text).get('model') or {}
    except ValueError:
      raise ValueError(f'data.vocab_file={vocab_file!r} is not JSON; give a BERT vocab.txt or '
                       "a WordPiece tokenizer.json") from None
    if model.get('type') != 'WordPiece' or not isinstance(model.get('vocab'), dict):
      raise ValueError(f'data.vocab_file={vocab_file!r} is a tokenizer.json of a '
                       f'{model.get("type")!r} model, not WordPiece (BERT\'s)')
    vocab = model['vocab']
    tokens = sorted(vocab, key=vocab.get)
  else:
    tokens = [line.rstrip('\r') for line in text.split('\n')]
    while tokens and not tokens[-1]:
      tokens.pop()
  if not any(tokens):
    raise ValueError(f'data.vocab_file={vocab_file!r} is empty; give a BERT vocab.txt (one '
                     "token per line) or '' to train one")
  missing = [t for t in SPECIAL_TOKENS if t not in set(tokens)]
  if missing:
    raise ValueError(f'data.vocab_file={vocab_file!r} lacks the tokens {missing}; a BERT '
                     'vocab.txt has them all')
  return tokens


def read_vocab(vocab_file: str) -> list[str]:
  """`vocab_tokens` of a file (local or gs://), refusing one that is not UTF-8 text."""
  try:
    text = storage.read_text(vocab_file)
  except UnicodeDecodeError:
    raise ValueError(f'data.vocab_file={vocab_file!r} is not UTF-8 text (a binary file?); '
                     'give a BERT vocab.txt, one token per line') from None
  return vocab_tokens(text, vocab_file)


def check_vocab_file(vocab_file: str) -> None:
  """The file is a BERT vocabulary (`read_vocab`)."""
  read_vocab(vocab_file)


def load_wordpiece(vocab_file: str, lowercase: bool = True):
  """A `tokenizers.Tokenizer` for a standard BERT vocab.txt, or a WordPiece tokenizer.json's
  vocabulary (BERT normalizer, pre-tokenizer and WordPiece decoder; no [CLS]/[SEP] added on
  encoding).

  Raises:
    ValueError: when the vocab lacks one of the special tokens.
  """
  from tokenizers import implementations  # pylint: disable=g-import-not-at-top
  with open(vocab_file, encoding='utf-8') as f:
    tokens = vocab_tokens(f.read(), vocab_file)
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = implementations.BertWordPieceTokenizer(vocab, lowercase=lowercase)
  tok = tok._tokenizer  # pylint: disable=protected-access
  tok.post_processor = None  # Packing adds [CLS] / [SEP] itself.
  return tok


def vocab_dir_name(vocab_size: int, key: str, lowercase: bool) -> str:
  """wordpiece-v<version>-<size>-<key>[-cased]: a trained vocabulary's cache folder."""
  return (f'wordpiece-v{text_cache.VOCAB_VERSION}-{vocab_size}-{key}'
          + ('' if lowercase else '-cased'))


def cached_vocab(passages: Sequence[corpus_lib.Passage], vocab_size: int,
                 cache: text_cache._Cache, lowercase: bool = True) -> str:
  """cache/wordpiece-v<version>-<size>-<hash>/vocab.txt, trained on `passages` if absent."""
  out_dir = cache.path(vocab_dir_name(vocab_size, text_cache._passages_hash(passages), lowercase))
  path = os.path.join(out_dir, 'vocab.txt')
  if not cache.has(path):
    train_wordpiece([p.text for p in passages], vocab_size, out_dir, lowercase)
    cache.publish(path)
  return path


def tokenize_passages(tokenizer, passages: Sequence[corpus_lib.Passage],
                      cache_path: str | None = None,
                      cache: text_cache._Cache | None = None):
  """(ids int32 [N], offsets int64 [P + 1]): passage i's tokens are ids[o[i]:o[i+1]].

  Cached in `cache_path` (.npz, in `cache`) when given.
  """
  if cache_path and (cache.has(cache_path) if cache else os.path.isfile(cache_path)):
    with np.load(cache_path) as z:
      return z['ids'], z['offsets']
  ids, offsets = _encode(tokenizer, [p.text for p in passages])
  if cache_path:
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    tmp = text_cache._tmp_name(cache_path) + '.npz'
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
