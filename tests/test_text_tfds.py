"""Tests of the tfds path of the MLM text data (gwtn_jax/data/text.py) on a real tiny
array_record dataset, prepared in a temporary directory without TensorFlow."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import assert_batches_equal
from conftest import take

pytest.importorskip('tokenizers')
tfds = pytest.importorskip('tensorflow_datasets')
from gwtn_jax.config import schema  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import text  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import text_tfds  # pylint: disable=g-import-not-at-top
from gwtn_jax.data import wordpiece  # pylint: disable=g-import-not-at-top

TFDS_NAME = 'gwtn_tiny_text'
SEQ_LEN = 16
NUM_TRAIN, NUM_TEST = 50, 12
_WORDS = ('king', 'lord', 'queen', 'night', 'love', 'death', 'blood', 'heaven', 'the',
          'sweet', 'good', 'thou', 'art', 'noble', 'hamlet', 'tempest')


def _doc(i: int, salt: int) -> str:
  """Example i: 0 to 40 words (one empty document: it packs to no sequence)."""
  rng = np.random.default_rng([salt, i])
  return ' '.join(rng.choice(_WORDS, size=(i * 7 + salt) % 41))


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):

  class GwtnTinyText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'text': tfds.features.Text(), 'title': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: ((i, {'text': _doc(i, salt), 'title': f'{split} {i}'})
                      for i in range(n))
              for split, n, salt in (('train', NUM_TRAIN, 0), ('test', NUM_TEST, 1))}

    def _generate_examples(self):
      raise NotImplementedError

  assert GwtnTinyText.name == TFDS_NAME
  data_dir = str(tmp_path_factory.mktemp('tfds_text'))
  GwtnTinyText(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def _config(tfds_dir, cache_dir, **kw):
  c = dict(name='tfds', tfds_name=TFDS_NAME, tfds_text_field='text', dir=tfds_dir,
           train_split='train', eval_split='test', vocab_size=200, vocab_file='',
           cache_dir=str(cache_dir), seq_len=SEQ_LEN, mask_rate=0.15,
           num_train_examples=0, num_eval_examples=0, read_threads=2, prefetch=2)
  c.update(kw)
  return schema.text_data_config(**c)


def _texts(tfds_dir, split):
  source = tfds.data_source(TFDS_NAME, split=split, data_dir=tfds_dir, download=False)
  return [source[i]['text'].decode('utf-8') for i in range(len(source))]


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('text_tfds_cache')


@pytest.fixture(scope='module')
def data(tfds_dir, cache_dir):
  return text.build_text_data(_config(tfds_dir, cache_dir))


def _no_text(*args, **kwargs):
  raise AssertionError('the text was read')


def test_packing_follows_documents(tfds_dir, data):
  info = data.info
  assert info.name == 'tfds' and info.seq_len == SEQ_LEN
  assert 50 < info.vocab_size <= 200
  for split, seqs, docs, first in (
      ('train', data.train_sequences, data.train_documents, 0),
      ('test', data.eval_sequences, data.eval_documents, NUM_TRAIN)):
    assert seqs.dtype == np.int32 and seqs.shape[1] == SEQ_LEN
    assert (seqs[:, 0] == info.cls_id).all()
    assert ((seqs == info.sep_id).sum(1) == 1).all()
    sep = np.argmax(seqs == info.sep_id, 1)
    assert ((seqs != info.pad_id).sum(1) == sep + 1).all()  # [PAD] only after [SEP].
    # Rows of a document are consecutive, in document order, and only the last is short.
    assert (np.diff(docs) >= 0).all()
    full = sep == SEQ_LEN - 1
    assert not (~full & np.append(np.diff(docs) == 0, False)).any()
    # Unpacked, a document's rows are its example's tokens: no sequence crosses two.
    texts = _texts(tfds_dir, split)
    assert sorted(set(docs.tolist())) == [first + i for i, t in enumerate(texts) if t]
    for i, t in enumerate(texts):
      rows = seqs[docs == first + i]
      body = rows[(rows != info.pad_id) & (rows != info.cls_id) & (rows != info.sep_id)]
      np.testing.assert_array_equal(body, data.tokenizer.encode(t).ids)
      assert -(-len(body) // (SEQ_LEN - 2)) == len(rows)
    assert data.documents[first + 3] == f'{split}/3'
  assert len(data.documents) == NUM_TRAIN + NUM_TEST
  assert data.documents[-1] == f'test/{NUM_TEST - 1}'
  assert data.documents[NUM_TRAIN - 1:NUM_TRAIN + 1] == [
      f'train/{NUM_TRAIN - 1}', 'test/0']


def test_batches_deterministic_resume_and_processes(tfds_dir, cache_dir, data):
  n = data.info.num_train_sequences
  gb = 8
  steps = n // gb + 3  # Crosses an epoch boundary.
  full = take(data.train_batches(global_batch_size=gb, seed=7), steps)
  assert_batches_equal(full, take(data.train_batches(global_batch_size=gb, seed=7),
                                  steps))
  resumed = take(data.train_batches(global_batch_size=gb, seed=7,
                                     start_step=steps - 4), 4)
  assert_batches_equal(full[-4:], resumed)
  assert type(full[0]['input_ids']) is np.ndarray  # Not a memmap.
  parts = [take(text.build_text_data(_config(tfds_dir, cache_dir), process_index=p,
                                      process_count=2)
                 .train_batches(global_batch_size=gb, seed=7, start_step=steps - 4), 4)
           for p in range(2)]
  for s in range(4):
    for k in resumed[s]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][s][k], parts[1][s][k]]), resumed[s][k], err_msg=k)
  batch = next(data.eval_batches(global_batch_size=gb))
  assert batch['input_ids'].shape == (gb, SEQ_LEN) and batch['mask'].all()


def test_cache_read_without_text(tfds_dir, cache_dir, data, monkeypatch, tmp_path):
  monkeypatch.setattr(text_tfds, '_tfds_text_chunks', _no_text)
  again = text.build_text_data(_config(tfds_dir, cache_dir))
  assert isinstance(again.train_sequences, np.memmap)
  assert isinstance(again.eval_sequences, np.memmap)
  assert again.vocab_file == data.vocab_file
  np.testing.assert_array_equal(again.train_sequences, data.train_sequences)
  np.testing.assert_array_equal(again.eval_sequences, data.eval_sequences)
  np.testing.assert_array_equal(again.eval_documents, data.eval_documents)
  limited = text.build_text_data(_config(tfds_dir, cache_dir, num_train_examples=5))
  np.testing.assert_array_equal(limited.train_sequences, data.train_sequences[:5])
  with pytest.raises(AssertionError, match='the text was read'):  # Another seq_len.
    text.build_text_data(_config(tfds_dir, cache_dir, seq_len=SEQ_LEN + 1))

  # prepare_text_cache ahead of time, then a build that reads no text.
  monkeypatch.undo()
  paths = text.prepare_text_cache(_config(tfds_dir, tmp_path, vocab_file=data.vocab_file))
  assert sorted(paths) == ['eval_documents', 'eval_sequences', 'train_documents',
                           'train_sequences', 'vocab']
  assert all(os.path.isfile(p) for p in paths.values())
  assert not [f for f in os.listdir(tmp_path / 'packed') if '.tmp' in f]
  np.testing.assert_array_equal(np.load(paths['train_sequences']), data.train_sequences)
  monkeypatch.setattr(text_tfds, '_tfds_text_chunks', _no_text)
  built = text.build_text_data(_config(tfds_dir, tmp_path, vocab_file=data.vocab_file))
  np.testing.assert_array_equal(built.eval_sequences, data.eval_sequences)


def test_chunking_gives_the_same_sequences(tfds_dir, data, monkeypatch, tmp_path):
  monkeypatch.setattr(text_tfds, 'TOKENIZE_CHUNK', 3)
  chunks = list(text_tfds._tfds_text_chunks(  # pylint: disable=protected-access
      text._parse(_config(tfds_dir, tmp_path)),  # pylint: disable=protected-access
      tfds.builder(TFDS_NAME, data_dir=tfds_dir), 'train'))
  assert [len(c) for c in chunks] == [3] * (NUM_TRAIN // 3) + [NUM_TRAIN % 3]
  small = text.build_text_data(_config(tfds_dir, tmp_path, vocab_file=data.vocab_file))
  np.testing.assert_array_equal(small.train_sequences, data.train_sequences)
  np.testing.assert_array_equal(small.train_documents, data.train_documents)
  np.testing.assert_array_equal(small.eval_sequences, data.eval_sequences)


def test_sliced_splits(tfds_dir, data, tmp_path):
  config = _config(tfds_dir, tmp_path, vocab_file=data.vocab_file,
                   train_split='train[:80%]', eval_split='train[80%:]')
  text.check_text_config(config)
  assert len(tfds.data_source(TFDS_NAME, split='train[80%:]', data_dir=tfds_dir,
                              download=False)) == NUM_TRAIN // 5
  d = text.build_text_data(config)
  assert len(d.documents) == NUM_TRAIN
  assert d.documents[0] == 'train[:80%]/0' and d.documents[-1] == 'train[80%:]/9'
  # Together the two slices pack to the whole split's sequences.
  whole = text.build_text_data(_config(tfds_dir, tmp_path, vocab_file=data.vocab_file))
  np.testing.assert_array_equal(np.concatenate([d.train_sequences, d.eval_sequences]),
                                whole.train_sequences)
  np.testing.assert_array_equal(np.concatenate([d.train_documents, d.eval_documents]),
                                whole.train_documents)


def test_vocab_train_examples(tfds_dir, data, tmp_path, monkeypatch):
  seen = []
  train = text.train_wordpiece

  def counting(chunks, *args):
    chunks = list(chunks)
    seen.extend(chunks)
    return train(chunks, *args)

  monkeypatch.setattr(wordpiece, 'train_wordpiece', counting)
  monkeypatch.setattr(text_tfds, 'TOKENIZE_CHUNK', 4)
  few = text.build_text_data(_config(tfds_dir, tmp_path, vocab_train_examples=6))
  assert few.vocab_file != data.vocab_file
  assert seen == [_texts(tfds_dir, 'train')[:4], _texts(tfds_dir, 'train')[4:6]]


@pytest.mark.parametrize('override, match', [
    (dict(tfds_text_field='body'), r"data.tfds_text_field='body': gwtn_tiny_text has "
                                   r"the features \['text', 'title'\]"),
    (dict(eval_split='validation[:5]'), r"data.eval_split='validation\[:5\]': "
                                        r"gwtn_tiny_text has the splits"),
    (dict(vocab_train_examples=-1), r'data.vocab_train_examples=-1 must be >= 0'),
])
def test_config_errors(tfds_dir, tmp_path, override, match):
  with pytest.raises(ValueError, match=match) as e:
    text.check_text_config(_config(tfds_dir, tmp_path, **override))
  assert '\n' not in str(e.value)


def test_not_prepared(tmp_path):
  with pytest.raises(ValueError, match=r"data.tfds_name='gwtn_tiny_text': the tfds "
                     r'dataset is not prepared in data.dir=.*`tfds build gwtn_tiny_text '
                     r'--data_dir=DIR --file_format=array_record`') as e:
    text.build_text_data(_config(str(tmp_path), tmp_path))
  assert '\n' not in str(e.value)


def test_tfrecord_needs_tensorflow(tfds_dir, tmp_path):
  # tfds cannot write tfrecord files without TensorFlow: the array_record dataset's
  # metadata is made to say tfrecord; it fails before any file is read.
  if __import__('importlib').util.find_spec('tensorflow') is not None:
    pytest.skip('TensorFlow is installed')
  shutil.copytree(os.path.join(tfds_dir, TFDS_NAME), tmp_path / 'tfds' / TFDS_NAME)
  info_file = tmp_path / 'tfds' / TFDS_NAME / '1.0.0' / 'dataset_info.json'
  info = json.loads(info_file.read_text())
  info['fileFormat'] = 'tfrecord'
  info_file.write_text(json.dumps(info))
  config = _config(str(tmp_path / 'tfds'), tmp_path / 'cache')
  with pytest.raises(ValueError, match=r"data.tfds_name='gwtn_tiny_text': the dataset "
                     r'.* is tfrecord, which only TensorFlow reads; rebuild it with '
                     r'`tfds build gwtn_tiny_text --data_dir=DIR '
                     r'--file_format=array_record` or install tensorflow') as e:
    text.build_text_data(config)
  assert '\n' not in str(e.value)
