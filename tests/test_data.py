"""Tests of gwtn_jax.data: IDX reader, determinism and resume, host sharding, eval
padding, tfds data sources (real loader on tiny generated array_record datasets),
config errors, and one read of the real Debian Fashion-MNIST files."""

import gzip
import os
import struct

import numpy as np
import PIL.Image
import pytest

from gwtn_jax.config import schema
from gwtn_jax.data import augment as aug
from gwtn_jax.data import build_image_data
from gwtn_jax.data import check_data_config
from gwtn_jax.data import DataError
from gwtn_jax.data import DatasetInfo
from gwtn_jax.data import idx as idx_lib
from gwtn_jax.data import image_sources

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
FMNIST_MEAN, FMNIST_STD = 0.2860 * 255, 0.3530 * 255

_IDX_CODES = {np.dtype('uint8'): 0x08, np.dtype('int8'): 0x09, np.dtype('int16'): 0x0B,
              np.dtype('int32'): 0x0C, np.dtype('float32'): 0x0D,
              np.dtype('float64'): 0x0E}


def write_idx(path, array):
  """A tiny IDX writer: magic (0, 0, type, ndim), big-endian dims, big-endian data."""
  array = np.asarray(array)
  header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  data = header + array.astype(array.dtype.newbyteorder('>')).tobytes()
  with (gzip.open(path, 'wb') if str(path).endswith('.gz') else open(path, 'wb')) as f:
    f.write(data)


def make_idx_folder(folder, n_train=50, n_test=23, hw=(8, 8), bad_label_at=None):
  """Train example i has every pixel = i + 1 and label i % 10 (test: i + 101)."""
  os.makedirs(folder, exist_ok=True)
  for split, n, offset, suffix in (('train', n_train, 1, '.gz'), ('test', n_test, 101, '')):
    images = np.broadcast_to((np.arange(n) + offset).astype(np.uint8)[:, None, None],
                             (n,) + hw)
    labels = (np.arange(n) % 10).astype(np.uint8)
    if bad_label_at is not None and split == 'train':
      labels[bad_label_at] = 12
    write_idx(os.path.join(folder, idx_lib.IDX_FILES[(split, 'images')] + suffix), images)
    write_idx(os.path.join(folder, idx_lib.IDX_FILES[(split, 'labels')] + suffix), labels)
  return str(folder)


def data_config(**fields):
  """`config.data`: the schema's defaults with `fields` changed."""
  config = schema.base_config().data
  config.update(fields)
  return config


def idx_config(folder, **overrides):
  return data_config(**dict(
      dict(name='fashion_mnist_idx', dir=str(folder), train_split='train', eval_split='test',
           augment=False, image_size=224, num_train_examples=0, num_eval_examples=0,
           read_threads=2, prefetch=2), **overrides))


def example_ids(batch, offset=1):
  """Recovers the example index from an un-augmented tiny-IDX batch (pixel = i + offset)."""
  pixels = batch['image'][:, 0, 0, 0] * FMNIST_STD + FMNIST_MEAN
  return np.round(pixels).astype(int) - offset


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture
def idx_dir(tmp_path):
  return make_idx_folder(tmp_path / 'idx')


# ----------------------------------------------------------------------------------
# IDX reader.


@pytest.mark.parametrize('suffix', ['', '.gz'])
@pytest.mark.parametrize('array', [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-5, 0, 70000, 2**31 - 1], dtype=np.int32),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    np.array([[-3, 300]], dtype=np.int16),
])
def test_idx_round_trip(tmp_path, suffix, array):
  path = str(tmp_path / ('x-idx' + suffix))
  write_idx(path, array)
  out = idx_lib.read_idx(path)
  assert out.dtype == array.dtype.newbyteorder('=') and out.shape == array.shape
  np.testing.assert_array_equal(out, array)
  np.testing.assert_array_equal(idx_lib.read_idx(path, max_items=1), array[:1])
  assert idx_lib.read_idx_header(path) == (array.dtype.newbyteorder('>'), array.shape)


def test_idx_bad_files(tmp_path):
  bad_magic = tmp_path / 'bad-magic'
  bad_magic.write_bytes(b'\x01\x02\x08\x01' + struct.pack('>I', 2) + b'ab')
  with pytest.raises(idx_lib.IdxFormatError, match=r'bad-magic: not an IDX file'):
    idx_lib.read_idx(str(bad_magic))
  bad_type = tmp_path / 'bad-type'
  bad_type.write_bytes(b'\x00\x00\x07\x01' + struct.pack('>I', 2) + b'ab')
  with pytest.raises(idx_lib.IdxFormatError, match=r'bad-type: unknown IDX type code'):
    idx_lib.read_idx(str(bad_type))
  short = tmp_path / 'short.gz'
  with gzip.open(short, 'wb') as f:
    f.write(b'\x00\x00\x08\x02' + struct.pack('>II', 3, 4) + b'x' * 7)
  with pytest.raises(idx_lib.IdxFormatError, match=r'short.gz: truncated'):
    idx_lib.read_idx(str(short))
  # A gzip file without the .gz suffix is read raw: its magic is 1f8b, not 0000.
  write_idx(str(tmp_path / 'ok.gz'), np.zeros(3, np.uint8))
  os.rename(tmp_path / 'ok.gz', tmp_path / 'ok')
  with pytest.raises(idx_lib.IdxFormatError, match=r'magic number 1f8b'):
    idx_lib.read_idx(str(tmp_path / 'ok'))


def test_idx_folder_mismatch_is_a_config_error(tmp_path):
  folder = make_idx_folder(tmp_path / 'idx')
  write_idx(os.path.join(folder, 't10k-labels-idx1-ubyte'), np.zeros(5, np.uint8))
  with pytest.raises(ValueError, match=r'holds 23 images but .*t10k-labels-idx1-ubyte '
                                       r'holds 5 labels'):
    check_data_config(idx_config(folder))


# ----------------------------------------------------------------------------------
# Order, determinism and resume.


def test_info_and_shapes(idx_dir):
  data = build_image_data(idx_config(idx_dir))
  assert data.info == DatasetInfo(name='fashion_mnist_idx', num_classes=10,
                                  image_shape=(8, 8, 1), num_train=50, num_eval=23)
  batch = next(data.train_batches(global_batch_size=10, seed=0))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (10, 8, 8, 1)
  assert batch['label'].dtype == np.int32 and batch['label'].shape == (10,)


def test_epochs_are_permutations_concatenated(idx_dir):
  data = build_image_data(idx_config(idx_dir))
  # 50 examples, batches of 20: step 2 spans epochs 0 and 1; 5 steps = 2 epochs.
  batches = take(data.train_batches(global_batch_size=20, seed=3), 5)
  ids = np.concatenate([example_ids(b) for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(labels, ids % 10)
  np.testing.assert_array_equal(np.sort(ids[:50]), np.arange(50))
  np.testing.assert_array_equal(np.sort(ids[50:]), np.arange(50))
  assert not np.array_equal(ids[:50], ids[50:])  # reshuffled each epoch
  assert not np.array_equal(ids[:50], np.arange(50))


def test_resume_equals_skipping(idx_dir):
  data = build_image_data(idx_config(idx_dir, augment=True))
  full = take(data.train_batches(global_batch_size=20, seed=7), 8)
  for start in (1, 2, 5):
    resumed = take(data.train_batches(global_batch_size=20, seed=7, start_step=start),
                   8 - start)
    assert_batches_equal(resumed, full[start:])
  # A fresh ImageData (a restarted process) gives the same batches too.
  again = build_image_data(idx_config(idx_dir, augment=True, read_threads=0))
  assert_batches_equal(take(again.train_batches(global_batch_size=20, seed=7,
                                                start_step=3), 5), full[3:])


def test_seeds_differ(idx_dir):
  data = build_image_data(idx_config(idx_dir))
  a = next(data.train_batches(global_batch_size=20, seed=0))
  b = next(data.train_batches(global_batch_size=20, seed=1))
  assert not np.array_equal(example_ids(a), example_ids(b))


def test_augment_changes_images_not_labels(tmp_path):
  # Distinct pixels so that shifts and flips are visible.
  folder = make_idx_folder(tmp_path / 'idx', n_train=40)
  rng = np.random.default_rng(0)
  write_idx(os.path.join(folder, 'train-images-idx3-ubyte.gz'),
            rng.integers(1, 256, (40, 8, 8), dtype=np.uint8))
  plain = build_image_data(idx_config(folder, augment=False))
  augmented = build_image_data(idx_config(folder, augment=True))
  a = take(plain.train_batches(global_batch_size=20, seed=5), 2)
  b = take(augmented.train_batches(global_batch_size=20, seed=5), 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['label'], y['label'])
    changed = np.any(x['image'] != y['image'], axis=(1, 2, 3))
    assert changed.mean() > 0.5
  # Eval is never augmented.
  assert_batches_equal(list(plain.eval_batches(global_batch_size=8)),
                       list(augmented.eval_batches(global_batch_size=8)))


def test_pad_crop_flip_is_a_shift_or_flip_with_zero_padding():
  images = np.arange(1, 2 * 6 * 6 + 1, dtype=np.uint8).reshape(2, 6, 6, 1)
  keys = aug.example_keys(0, np.arange(2))
  out = aug.pad_crop_flip(images, keys, pad=2)
  for b in range(2):
    candidates = []
    padded = np.pad(images[b], ((2, 2), (2, 2), (0, 0)))
    for dy in range(5):
      for dx in range(5):
        crop = padded[dy:dy + 6, dx:dx + 6]
        candidates += [crop, crop[:, ::-1]]
    assert any(np.array_equal(out[b], c) for c in candidates)
  # Depends only on each example's own key.
  np.testing.assert_array_equal(aug.pad_crop_flip(images[1:], keys[1:], 2), out[1:])


# ----------------------------------------------------------------------------------
# Host sharding.


@pytest.mark.parametrize('augment', [False, True])
def test_process_slices_concatenate_to_the_global_batch(idx_dir, augment):
  config = idx_config(idx_dir, augment=augment)
  one = take(build_image_data(config).train_batches(global_batch_size=12, seed=4,
                                                    start_step=2), 6)
  for count in (2, 3):
    slices = [take(build_image_data(config, process_index=p, process_count=count)
                   .train_batches(global_batch_size=12, seed=4, start_step=2), 6)
              for p in range(count)]
    for step, batch in enumerate(one):
      for key in batch:
        np.testing.assert_array_equal(
            np.concatenate([s[step][key] for s in slices]), batch[key])
      assert all(len(s[step]['label']) == 12 // count for s in slices)


def test_batch_size_must_divide_among_processes(idx_dir):
  data = build_image_data(idx_config(idx_dir), process_index=1, process_count=2)
  with pytest.raises(ValueError, match=r'global_batch_size=9 .* process_count=2'):
    data.train_batches(global_batch_size=9, seed=0)
  with pytest.raises(ValueError, match=r'process_count=2'):
    data.num_eval_batches(9)
  with pytest.raises(ValueError, match=r'process_index=2'):
    build_image_data(idx_config(idx_dir), process_index=2, process_count=2)


# ----------------------------------------------------------------------------------
# Eval.


@pytest.mark.parametrize('count', [1, 2, 3])
def test_eval_covers_every_example_once(idx_dir, count):
  config = idx_config(idx_dir)
  datas = [build_image_data(config, process_index=p, process_count=count)
           for p in range(count)]
  assert all(d.num_eval_batches(6) == 4 for d in datas)  # ceil(23 / 6)
  per_process = [list(d.eval_batches(global_batch_size=6)) for d in datas]
  assert all(len(batches) == 4 for batches in per_process)
  ids, seen_pad = [], 0
  for step in range(4):
    for p in range(count):
      batch = per_process[p][step]
      assert batch['mask'].dtype == np.float32 and batch['mask'].shape == (6 // count,)
      real = batch['mask'] == 1
      assert set(np.unique(batch['mask'])) <= {0.0, 1.0}
      ids.extend(example_ids({'image': batch['image'][real]}, offset=101))
      np.testing.assert_array_equal(batch['label'][real], np.array(ids[-real.sum():]) % 10
                                    if real.any() else [])
      assert np.all(batch['image'][~real] == 0) and np.all(batch['label'][~real] == 0)
      seen_pad += int((~real).sum())
  assert ids == list(range(23))  # every example once, in order
  assert seen_pad == 1


def test_subsampling_takes_the_head(idx_dir):
  data = build_image_data(idx_config(idx_dir, num_train_examples=20, num_eval_examples=7))
  assert (data.info.num_train, data.info.num_eval) == (20, 7)
  ids = np.concatenate([example_ids(b) for b in
                        take(data.train_batches(global_batch_size=10, seed=0), 2)])
  np.testing.assert_array_equal(np.sort(ids), np.arange(20))
  eval_batches = list(data.eval_batches(global_batch_size=4))
  assert len(eval_batches) == 2 and sum(b['mask'].sum() for b in eval_batches) == 7


def test_bad_label_is_reported(tmp_path):
  folder = make_idx_folder(tmp_path / 'idx', n_train=10, bad_label_at=3)
  # At start-up: the labels file is scanned (it is small).
  with pytest.raises(ValueError, match=r'train-labels-idx1-ubyte.gz: example 3 has label 12, '
                                       r'outside \[0, 10\)'):
    check_data_config(idx_config(folder))
  # Met while reading (data no start-up check can see, e.g. a tfds record): a DataError.
  good = make_idx_folder(tmp_path / 'good', n_train=10)
  data = build_image_data(idx_config(good))
  images, labels = idx_lib.read_idx_split(folder, 'train')
  data._train = image_sources._ArraySource(images, labels)  # pylint: disable=protected-access
  with pytest.raises(DataError, match=r'example 3 has label 12, outside \[0, '
                                      r'num_classes=10\)'):
    next(data.train_batches(global_batch_size=10, seed=0))


def test_truncated_and_mislabelled_idx_files_are_found_at_start_up(tmp_path):
  folder = make_idx_folder(tmp_path / 'idx', n_train=40)
  images = os.path.join(folder, idx_lib.IDX_FILES[('train', 'images')] + '.gz')
  labels = os.path.join(folder, idx_lib.IDX_FILES[('test', 'labels')])
  whole = open(images, 'rb').read()
  open(images, 'wb').write(whole[:len(whole) // 2])  # a download cut short
  with pytest.raises(ValueError, match='gzip trailer gives .* truncated or corrupt'):
    check_data_config(idx_config(folder))
  open(images, 'wb').write(b'not gzip at all')
  with pytest.raises(ValueError, match='not a readable gzip file'):
    check_data_config(idx_config(folder))
  open(images, 'wb').write(whole)
  check_data_config(idx_config(folder))
  raw = open(labels, 'rb').read()
  open(labels, 'wb').write(raw[:-3])
  with pytest.raises(ValueError, match=r'bytes, but its header declares .*: truncated'):
    check_data_config(idx_config(folder))
  open(labels, 'wb').write(raw + b'xx')
  with pytest.raises(ValueError, match='trailing bytes'):
    check_data_config(idx_config(folder))


# ----------------------------------------------------------------------------------
# Config errors.


def test_unknown_name(tmp_path):
  # Any name the table lacks is a tfds dataset's: one that is not prepared is refused so.
  with pytest.raises(ValueError, match=r"data.name='foo': the tfds dataset foo is not "
                                       r'prepared in data.dir='):
    check_data_config(data_config(name='foo', dir=str(tmp_path)))
  with pytest.raises(ValueError, match=r"data.name='my data!' is neither one of "
                                       r'fashion_mnist_idx, fashion_mnist, cifar10'):
    check_data_config(data_config(name='my data!'))


def test_missing_idx_folder(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(ValueError) as e:
    check_data_config(idx_config(missing))
  message = str(e.value)
  assert f'data.dir={missing}: no Fashion-MNIST IDX files' in message
  assert 'train-images-idx3-ubyte[.gz]' in message
  assert '`apt-get install dataset-fashion-mnist`' in message
  folder = make_idx_folder(tmp_path / 'idx')
  os.remove(os.path.join(folder, 't10k-images-idx3-ubyte'))
  with pytest.raises(ValueError, match=r'no Fashion-MNIST IDX files '
                                       r'\(t10k-images-idx3-ubyte\[.gz\]\)'):
    build_image_data(idx_config(folder))


def test_bad_values():
  with pytest.raises(ValueError, match=r'data.eval_split=.validation.: the IDX dataset'):
    check_data_config(idx_config(DEBIAN_DIR, eval_split='validation'))
  with pytest.raises(ValueError, match=r'data.read_threads=-1 must be >= 0'):
    check_data_config(idx_config(DEBIAN_DIR, read_threads=-1))


# ----------------------------------------------------------------------------------
# tfds: the real loader on tiny array_record datasets prepared here, offline. (The
# dataset is built by the real tfds builder class with its real features, its example
# generator swapped for ours; images go in as PIL images, which tfds encodes to
# PNG/JPEG without TensorFlow. tfds.testing.mock_data is not used: in tfds 4.9.10 its
# data source skips the image encoding and its __getitems__ is broken.)


def prepare_fake_tfds(data_dir, name, splits):
  """Prepares `name` in `data_dir` with split -> list of (uint8 image, label)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def generate(builder, examples):
    for i, (image, label) in enumerate(examples):
      example = {}
      for key in builder.info.features.keys():
        if key == 'image':
          example[key] = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1
                                             else image)
        elif key == 'label':
          example[key] = int(label)
        else:
          example[key] = f'example_{i}'
      yield f'example_{i}', example

  if name in ('cifar10', 'fashion_mnist'):
    # Legacy builders, which tfds imports only with TensorFlow present.
    import tensorflow_datasets.image_classification  # pylint: disable=g-import-not-at-top,unused-import
  with tfds.core.registered.skip_registration():
    fake = type('FakeBuilder', (tfds.builder_cls(name),), {
        'name': name,
        '_split_generators': lambda self, dl: {s: generate(self, ex)
                                              for s, ex in splits.items()}})
  fake(data_dir=str(data_dir), file_format='array_record').download_and_prepare()


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  rng = np.random.default_rng(0)
  cifar = {split: [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 10)
                   for i in range(n)] for split, n in (('train', 12), ('test', 5))}
  prepare_fake_tfds(data_dir, 'cifar10', cifar)
  imagenet = {split: [(rng.integers(0, 256, (20 + 3 * i, 30 - 2 * i, 3),
                                    dtype=np.uint8), 990 + i) for i in range(n)]
              for split, n in (('train', 6), ('validation', 4))}
  prepare_fake_tfds(data_dir, 'imagenet2012', imagenet)
  return str(data_dir), cifar


def tfds_config(name, data_dir, **overrides):
  return data_config(**dict(
      dict(name=name, dir=data_dir, train_split='train',
           eval_split='validation' if name == 'imagenet2012' else 'test', augment=True,
           image_size=224, num_train_examples=0, num_eval_examples=0, read_threads=2,
           prefetch=2), **overrides))


def test_tfds_cifar10_through_the_real_loader(tfds_dir):
  data_dir, examples = tfds_dir
  config = tfds_config('cifar10', data_dir)
  check_data_config(config)
  data = build_image_data(config)
  assert data.info == DatasetInfo(name='cifar10', num_classes=10,
                                  image_shape=(32, 32, 3), num_train=12, num_eval=5)
  # Eval images come back as written (PNG is lossless), normalized with CIFAR stats,
  # in the split's stored order (tfds shuffles examples when it prepares a split; the
  # test labels 0..4 are distinct, so they identify the examples).
  (batch,) = list(data.eval_batches(global_batch_size=8))
  mean = np.array([0.4914, 0.4822, 0.4465]) * 255
  std = np.array([0.2470, 0.2435, 0.2616]) * 255
  pixels = np.round(batch['image'][:5] * std + mean).astype(np.uint8)
  labels = batch['label'][:5]
  np.testing.assert_array_equal(np.sort(labels), np.arange(5))
  np.testing.assert_array_equal(pixels, np.stack([examples['test'][l][0] for l in labels]))
  np.testing.assert_array_equal(batch['label'][5:], [0, 0, 0])
  np.testing.assert_array_equal(batch['mask'], [1, 1, 1, 1, 1, 0, 0, 0])
  assert [b['label'].tolist() for b in data.eval_batches(global_batch_size=8)] == [
      batch['label'].tolist()]  # a fixed order
  full = take(data.train_batches(global_batch_size=4, seed=1), 4)
  assert full[0]['image'].shape == (4, 32, 32, 3)
  assert_batches_equal(take(data.train_batches(global_batch_size=4, seed=1,
                                               start_step=2), 2), full[2:])
  halves = [take(build_image_data(config, process_index=p, process_count=2)
                 .train_batches(global_batch_size=4, seed=1), 4) for p in range(2)]
  for step in range(4):
    np.testing.assert_array_equal(
        np.concatenate([h[step]['image'] for h in halves]), full[step]['image'])


def test_tfds_imagenet_crops(tfds_dir):
  data_dir, _ = tfds_dir
  config = tfds_config('imagenet2012', data_dir, image_size=16)
  data = build_image_data(config)
  assert data.info == DatasetInfo(name='imagenet2012', num_classes=1000,
                                  image_shape=(16, 16, 3), num_train=6, num_eval=4)
  # eval_split '' (the schema's default) is the dataset's own: ImageNet's 'validation'.
  assert build_image_data(tfds_config('imagenet2012', data_dir, image_size=16,
                                      eval_split='')).info == data.info
  full = take(data.train_batches(global_batch_size=4, seed=2), 3)
  for batch in full:
    assert batch['image'].shape == (4, 16, 16, 3) and np.isfinite(batch['image']).all()
    assert set(batch['label']) <= set(range(990, 996))
  assert_batches_equal(take(data.train_batches(global_batch_size=4, seed=2,
                                               start_step=1), 2), full[1:])
  batches = list(data.eval_batches(global_batch_size=3))
  assert [b['mask'].sum() for b in batches] == [3, 1]
  np.testing.assert_array_equal(np.sort(np.concatenate([b['label'] for b in batches])[:4]),
                                [990, 991, 992, 993])
  assert all(b['image'].shape == (3, 16, 16, 3) for b in batches)


def test_tfds_not_prepared(tmp_path):
  with pytest.raises(ValueError) as e:
    check_data_config(tfds_config('cifar10', str(tmp_path)))
  message = str(e.value)
  assert 'tfds dataset cifar10 is not prepared' in message
  assert f'data.dir={tmp_path}' in message and 'tfds build cifar10' in message


def test_tfds_unknown_split(tfds_dir):
  data_dir, _ = tfds_dir
  with pytest.raises(ValueError, match=r"data.eval_split='validation': cifar10 .* has "
                                       r"the splits \['test', 'train'\]"):
    check_data_config(tfds_config('cifar10', data_dir, eval_split='validation'))


def test_inception_and_center_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  img = PIL.Image.fromarray(image)
  out = aug.inception_crop(img, np.random.default_rng(1), 8)
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  # Impossible areas force the fallback: the whole (square) image, resized.
  fallback = aug.inception_crop(img, np.random.default_rng(1), 32,
                                area_range=(2.0, 3.0), flip=False)
  np.testing.assert_array_equal(fallback, image)
  # The eval crop of a 32x32 image at 28 is its central 28x28 (0.875 * 32 = 28).
  np.testing.assert_array_equal(aug.center_crop(img, 28), image[2:30, 2:30])


# ----------------------------------------------------------------------------------
# Synthetic data.


def test_synthetic_is_learnable_and_deterministic():
  config = data_config(
      name='synthetic', augment=True, read_threads=2, prefetch=2,
      synthetic_image_shape=(8, 8, 3), synthetic_num_classes=4, synthetic_num_train=256,
      synthetic_num_eval=64)
  data = build_image_data(config)
  assert data.info == DatasetInfo(name='synthetic', num_classes=4, image_shape=(8, 8, 3),
                                  num_train=256, num_eval=64)
  batches = take(data.train_batches(global_batch_size=64, seed=0), 4)
  images = np.concatenate([b['image'] for b in batches]).reshape(256, -1)
  labels = np.concatenate([b['label'] for b in batches])
  means = np.stack([images[labels == c].mean(0) for c in range(4)])
  (evals,) = list(data.eval_batches(global_batch_size=64))
  distances = ((evals['image'].reshape(64, 1, -1) - means[None]) ** 2).sum(-1)
  assert (distances.argmin(1) == evals['label']).mean() > 0.9
  assert abs(float(images.mean())) < 0.5 and 0.5 < float(images.std()) < 1.5
  assert_batches_equal(take(build_image_data(config).train_batches(
      global_batch_size=64, seed=0, start_step=2), 2), batches[2:])


# ----------------------------------------------------------------------------------
# The real files of the Debian package (CI installs dataset-fashion-mnist).


def test_debian_fashion_mnist():
  assert os.path.isdir(DEBIAN_DIR), (
      f'{DEBIAN_DIR} is missing: apt-get install dataset-fashion-mnist')
  config = idx_config('', augment=True, read_threads=2, prefetch=2)  # '' = default
  check_data_config(config)
  data = build_image_data(config)
  assert data.info == DatasetInfo(name='fashion_mnist_idx', num_classes=10,
                                  image_shape=(28, 28, 1), num_train=60000,
                                  num_eval=10000)
  batch = next(data.train_batches(global_batch_size=128, seed=0))
  assert batch['image'].shape == (128, 28, 28, 1)
  evals = list(data.eval_batches(global_batch_size=1000))
  labels = np.concatenate([b['label'] for b in evals])
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
  images = np.concatenate([b['image'] for b in evals])
  assert abs(float(images.mean())) < 0.05 and abs(float(images.std()) - 1) < 0.05
