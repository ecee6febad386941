"""Image classification data: deterministic, resumable, host-sharded grain pipelines.

Datasets (`config.data.name`):

- 'fashion_mnist_idx': Fashion-MNIST (or MNIST) from a folder of the four standard IDX
  files, raw or .gz (`data.dir`; '' = /usr/share/datasets/fashion-mnist, from the Debian
  package `dataset-fashion-mnist`). Read whole into memory (55 MB); no network, no tfds.
- 'fashion_mnist', 'cifar10', 'imagenet2012', and any other name: prepared tfds datasets
  read through `tfds.data_source` (array_record files; no TensorFlow needed). Images are read
  undecoded (`tfds.decode.SkipDecoding`) and decoded here with PIL, so that JPEG eval
  images can be decoded at reduced scale and no path needs TensorFlow. A dataset the table
  (`datasets.IMAGE_DATASETS`) lacks (cifar100, oxford_flowers102, food101, one's own builder)
  takes its image shape, classes and splits from its builder's info, its features from
  `data.image_key` and `data.label_key` (a ClassLabel), and its pixel statistics from
  `data.stats` (a preset) or `data.mean`/`data.std` (`datasets.pixel_stats`). Images of one
  fixed shape are used as stored (pad-crop-flip augmentation); images of varying sizes are
  cropped to `data.image_size` square, as ImageNet's are (Inception crop for training, center
  crop for eval).
- 'synthetic': learnable random data made on the fly (see
  `image_sources._SyntheticSource`).

The order of the data. Training reads an endless stream of global positions k = 0, 1,
2, ...; position k is example perm_e[k mod n] of epoch e = k // n, where perm_e is
`np.random.default_rng([seed, e]).permutation(n)`. Epochs are concatenated: nothing is
dropped and a batch may span an epoch boundary. The global batch of step s is the
positions [s * GB, (s + 1) * GB); process p of P takes the contiguous block
s * GB + p * GB/P + [0, GB/P), reads only those examples, and augments each with a
generator keyed by (seed, k) alone (`augment.example_keys`). So a batch depends only on
(seed, s, p, P): a run resumed at `start_step=s` sees exactly the batches an
uninterrupted run sees, and the P processes' slices concatenate to the 1-process batch.

The pipeline is a `grain.MapDataset` over step numbers (one element = this process's
slice of one global batch), converted to an `IterDataset` that builds `read_threads`
batches in parallel threads and keeps `prefetch` ready. Elements are whole batches, not
examples, so that the small-image augmentation and normalization run as a few numpy
operations per batch (the GIL makes per-example Python the bottleneck on small images);
ImageNet decoding and cropping are per example inside the batch function, in PIL, which
releases the GIL, so the threads overlap them.

Eval reads positions 0 .. n_eval - 1 in order, cut into global batches the same way; the
last global batch is padded (image 0, label 0, mask 0), so every eval example appears
exactly once over all processes and every process yields the same number of batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from gwtn_jax.data import augment as aug
from gwtn_jax.data import datasets
from gwtn_jax.data import errors
from gwtn_jax.data import idx as idx_lib
from gwtn_jax.data import image_sources
from gwtn_jax.data import sampling

# pylint: disable=protected-access  # The sources are private to images.py.

# The datasets (shapes, classes, eval splits, folders, statistics): `datasets.IMAGE_DATASETS`.
NAMES = tuple(datasets.IMAGE_DATASETS)

# Salt of `augment.example_keys` for the augmentation (`image_sources._SYNTHETIC_SALT` is 2).
_AUGMENT_SALT = 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the trainer need to know about a dataset.

  Attributes:
    name: `config.data.name`.
    num_classes: labels lie in [0, num_classes).
    image_shape: (H, W, C) of the images the pipeline yields.
    num_train: training examples used (after `num_train_examples`).
    num_eval: eval examples used (after `num_eval_examples`).
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int


# ----------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class _Options:
  """`config.data`, checked; `dir` and `eval_split` taken from the dataset's entry in
  `datasets.IMAGE_DATASETS` where they are ''."""
  name: str
  dir: str
  train_split: str
  eval_split: str
  augment: bool
  image_size: int
  num_train_examples: int
  num_eval_examples: int
  read_threads: int
  prefetch: int
  synthetic_image_shape: tuple[int, int, int]
  synthetic_num_classes: int
  synthetic_num_train: int
  synthetic_num_eval: int
  synthetic_noise: float
  synthetic_seed: int
  image_key: str
  label_key: str
  stats: str
  mean: tuple[float, ...]
  std: tuple[float, ...]


# The fields of `config.data` read here; their defaults are the schema's
# (`gwtn_jax.config.schema.base_config`).
FIELDS = tuple(f.name for f in dataclasses.fields(_Options))


def _parse(config) -> _Options:
  """Reads `config` (ml_collections ConfigDict `config.data`, or any attribute bag)."""
  name = datasets.read_fields(config, 'data', ('name',))['name']
  dataset = datasets.image_dataset(name)
  c = datasets.read_fields(config, 'data', FIELDS)
  shape = tuple(int(d) for d in c['synthetic_image_shape'])
  opts = _Options(
      name=name,
      dir=str(c['dir']) or dataset.default_dir,
      train_split=str(c['train_split']),
      eval_split=str(c['eval_split']) or dataset.eval_split,  # generic tfds: see _tfds_builder
      augment=bool(c['augment']),
      image_size=int(c['image_size']),
      num_train_examples=int(c['num_train_examples']),
      num_eval_examples=int(c['num_eval_examples']),
      read_threads=int(c['read_threads']),
      prefetch=int(c['prefetch']),
      synthetic_image_shape=shape,
      synthetic_num_classes=int(c['synthetic_num_classes']),
      synthetic_num_train=int(c['synthetic_num_train']),
      synthetic_num_eval=int(c['synthetic_num_eval']),
      synthetic_noise=float(c['synthetic_noise']),
      synthetic_seed=int(c['synthetic_seed']),
      image_key=str(c['image_key']),
      label_key=str(c['label_key']),
      stats=str(c['stats']),
      mean=tuple(float(v) for v in c['mean']),
      std=tuple(float(v) for v in c['std']),
  )
  for field in ('num_train_examples', 'num_eval_examples', 'read_threads', 'prefetch'):
    if getattr(opts, field) < 0:
      raise ValueError(f'data.{field}={getattr(opts, field)} must be >= 0')
  if opts.image_size <= 0:
    raise ValueError(f'data.image_size={opts.image_size} must be > 0')
  if name == 'synthetic':
    if len(shape) != 3 or min(shape) <= 0 or shape[2] not in (1, 3):
      raise ValueError(f'data.synthetic_image_shape={shape} must be (H, W, C) with '
                       'H, W > 0 and C 1 or 3')
    for field in ('synthetic_num_classes', 'synthetic_num_train',
                  'synthetic_num_eval'):
      if getattr(opts, field) <= 0:
        raise ValueError(f'data.{field}={getattr(opts, field)} must be > 0')
    if opts.synthetic_noise < 0:
      raise ValueError(f'data.synthetic_noise={opts.synthetic_noise} must be >= 0')
  return opts


def _check_idx(opts: _Options) -> None:
  folder = opts.dir
  for field in ('train_split', 'eval_split'):
    if getattr(opts, field) not in ('train', 'test'):
      raise ValueError(f'data.{field}={getattr(opts, field)!r}: the IDX dataset has '
                       "the splits 'train' and 'test'")
  missing = [stem + '[.gz]' for (split, kind), stem in idx_lib.IDX_FILES.items()
             if not os.path.isdir(folder)
             or idx_lib.find_idx_file(folder, split, kind) is None]
  if missing:
    raise ValueError(
        f'data.dir={folder}: no Fashion-MNIST IDX files ({", ".join(missing)}); '
        'install them with `apt-get install dataset-fashion-mnist` or point data.dir '
        'at a folder of them')
  for split in {opts.train_split, opts.eval_split}:
    try:
      idx_lib.check_idx_split(folder, split, datasets.IMAGE_DATASETS[opts.name].num_classes)
    except idx_lib.IdxFormatError as e:
      raise ValueError(f'data.dir={folder}: {e}') from e


def _not_prepared(opts: _Options, version_dir: str | None) -> ValueError:
  where = opts.dir or 'the tfds default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)'
  looked = f' (no {version_dir})' if version_dir else ''
  manual = (' (ImageNet needs its tar files in DIR/downloads/manual first)'
            if opts.name == 'imagenet2012' else '')
  return ValueError(
      f'data.name={opts.name!r}: the tfds dataset {opts.name} is not prepared in '
      f'data.dir={where}{looked}; prepare it on a machine with network with '
      f'`tfds build {opts.name} --data_dir=DIR --file_format=array_record`{manual}, '
      'copy DIR here and set data.dir=DIR')


def _tfds_builder(opts: _Options):
  """The tfds builder of a prepared dataset, or a ValueError saying how to prepare it."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  verbosity = logging.get_verbosity()
  # tfds warns about every folder it probes; the errors here say what matters in one line.
  logging.set_verbosity(logging.ERROR)
  try:
    return _probe_tfds_builder(opts)
  finally:
    logging.set_verbosity(verbosity)


def _probe_tfds_builder(opts: _Options):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(opts.name, data_dir=opts.dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    # Without TensorFlow, tfds may not import the dataset's builder code (cifar10,
    # fashion_mnist); it then finds a dataset only through its prepared files.
    builder = None
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'data.name={opts.name!r}: tfds cannot open the dataset in '
                     f'data.dir={opts.dir!r}: {e}') from e
  if builder is None or not builder.is_prepared():
    raise _not_prepared(opts, builder.data_dir if builder else None)
  file_format = getattr(builder.info, 'file_format', None)
  if file_format is not None and 'array_record' not in str(file_format).lower():
    raise ValueError(
        f'data.name={opts.name!r}: {builder.data_dir} holds {file_format} files, but '
        'tfds.data_source reads array_record; rebuild it with `tfds build '
        f'{opts.name} --data_dir=DIR --file_format=array_record`')
  splits = sorted(builder.info.splits.keys())
  for field in ('train_split', 'eval_split'):
    split = getattr(opts, field) or _default_eval_split(splits)
    try:
      builder.info.splits[split]
    except (KeyError, ValueError) as e:
      raise ValueError(
          f'data.{field}={split!r}: {opts.name} in {builder.data_dir} has the splits '
          f'{splits}') from e
  features = builder.info.features
  for field, kind in (('image_key', 'image'), ('label_key', 'label')):
    key = getattr(opts, field)
    if key not in features:
      raise ValueError(f'data.{field}={key!r}: {opts.name} has no such feature; its features '
                       f'are {sorted(features.keys())}; set data.{field} to its {kind}')
  if not hasattr(features[opts.label_key], 'num_classes'):
    raise ValueError(f'data.label_key={opts.label_key!r}: the feature of {opts.name} is '
                     f'{type(features[opts.label_key]).__name__}, not a ClassLabel: not an '
                     'image classification dataset')
  shape = tuple(features[opts.image_key].shape)
  if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, None)):
    raise ValueError(f'data.image_key={opts.image_key!r}: the feature of {opts.name} has '
                     f'shape {shape}, not (H, W, C) images of 1 or 3 channels')
  return builder


def _default_eval_split(splits: Sequence[str]) -> str:
  """A tfds dataset's eval split when `data.eval_split` is '': 'test', else 'validation'."""
  for name in ('test', 'validation'):
    if name in splits:
      return name
  return 'test'


def tfds_image_info(config) -> tuple[tuple[int | None, ...], int]:
  """((H, W, C), classes) of a prepared tfds image dataset, from its builder's info (no
  data read; None where its images vary). `datasets.image_shape_and_classes` reads it for a
  dataset the table lacks.

  Raises:
    ValueError: as `check_data_config`.
  """
  opts = _parse(config)
  return _image_info(opts, _tfds_builder(opts))


def _image_info(opts: _Options, builder) -> tuple[tuple[int | None, ...], int]:
  """`tfds_image_info` from a builder already opened (and checked) by `_tfds_builder`."""
  features = builder.info.features
  shape = tuple(features[opts.image_key].shape)
  if len(shape) == 2:
    shape += (1,)
  return shape, int(features[opts.label_key].num_classes)


def check_data_config(config) -> None:
  """Finds data config errors cheaply, before anything is read in bulk or compiled.

  Args:
    config: `config.data` (see `build_image_data`).

  Raises:
    ValueError: one line naming the field and the fix: an unknown `name`, a bad value,
      a folder without the IDX files, a tfds dataset not prepared in `dir`.
  """
  _check(config)


def _check(config) -> tuple[_Options, Any]:
  """`check_data_config`'s work; returns the options and, for a tfds dataset, its builder
  (opened once, for `build_image_data` to read from), else None."""
  opts = _parse(config)
  builder = None
  if opts.name == 'fashion_mnist_idx':
    _check_idx(opts)
  elif datasets.image_dataset(opts.name).source == 'tfds':
    builder = _tfds_builder(opts)
    shape, _ = datasets.image_shape_and_classes(config, lambda _: _image_info(opts, builder))
    datasets.pixel_stats(config, shape[2])
  return opts, builder


# ----------------------------------------------------------------------------------
# The pipeline.

Transform = Callable[[Any, np.ndarray], np.ndarray]


class ImageData:
  """One image dataset's train and eval pipelines for one process. Built by
  `build_image_data`.

  Attributes:
    info: the `DatasetInfo`.
    process_index, process_count: this process's place among the readers.
  """

  def __init__(self, info: DatasetInfo, *, train_source, eval_source,
               train_transform: Transform, eval_transform: Callable[[Any], np.ndarray],
               mean: Sequence[float], std: Sequence[float],
               read_options: grain.ReadOptions, process_index: int = 0,
               process_count: int = 1):
    self._slices = sampling.ProcessSlices(process_index, process_count, 'examples')
    self.info = info
    self.process_index, self.process_count = process_index, process_count
    self._train, self._eval = train_source, eval_source
    self._train_transform, self._eval_transform = train_transform, eval_transform
    self._mean = np.asarray(mean, np.float32)
    self._std = np.asarray(std, np.float32)
    self._read_options = read_options

  def _read(self, source, indices: np.ndarray, split: str):
    images, labels = source.read(indices)
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= self.info.num_classes)
    if bad.any():
      i = int(np.argmax(bad))
      raise errors.DataError(
          f'{self.info.name} {split}: example {int(indices[i])} has label '
          f'{int(labels[i])}, outside [0, num_classes={self.info.num_classes})')
    return images, labels.astype(np.int32)

  def train_batches(self, *, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of the training batches from `start_step` on, endlessly.

    Args:
      global_batch_size: examples per step over all processes; a multiple of
        process_count.
      seed: shuffling and augmentation seed (any int).
      start_step: the first step yielded; the batches equal those of an iterator
        from step 0 after `start_step` batches.

    Returns:
      An iterator of {'image': float32 [B, H, W, C] normalized, 'label': int32 [B]},
      B = global_batch_size / process_count.
    """
    self._slices.local_batch_size(global_batch_size)  # refused before any batch is built
    n = self._train.num_examples
    perms = sampling.EpochPermutations(n, seed)

    def make_batch(step: int) -> dict[str, np.ndarray]:
      positions = self._slices.positions(step, global_batch_size)
      indices = perms.indices(positions)
      images, labels = self._read(self._train, indices, 'train')
      keys = aug.example_keys(seed, positions, salt=_AUGMENT_SALT)
      images = self._train_transform(images, keys)
      return {'image': aug.normalize(images, self._mean, self._std), 'label': labels}

    return sampling.train_steps(make_batch, start_step, self._read_options)

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Global batches in one pass over the eval split (the last one padded)."""
    return self._slices.num_batches(self._eval.num_examples, global_batch_size)

  def eval_batches(self, *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of one pass over the eval split, in a fixed order.

    Returns:
      `num_eval_batches(global_batch_size)` batches of {'image': float32 [B, H, W, C],
      'label': int32 [B], 'mask': float32 [B]} (mask 1 for real examples, 0 for the
      padding of the last global batch, whose image and label are 0).
    """
    local = self._slices.local_batch_size(global_batch_size)
    n = self._eval.num_examples
    h, w, c = self.info.image_shape

    def make_batch(step: int) -> dict[str, np.ndarray]:
      positions = self._slices.positions(step, global_batch_size)
      real = positions < n
      image = np.zeros((local, h, w, c), np.float32)
      label = np.zeros((local,), np.int32)
      if real.any():
        images, labels = self._read(self._eval, positions[real], 'eval')
        image[real] = aug.normalize(self._eval_transform(images), self._mean, self._std)
        label[real] = labels
      return {'image': image, 'label': label, 'mask': real.astype(np.float32)}

    return sampling.eval_steps(make_batch, self.num_eval_batches(global_batch_size),
                               self._read_options)


# ----------------------------------------------------------------------------------
# Construction.


def _identity(images, keys=None):
  del keys
  return images


def _crop_flip(pad: int) -> Transform:
  return lambda images, keys: aug.pad_crop_flip(images, keys, pad)


def _imagenet_train(size: int, channels: int = 3) -> Transform:
  """Inception crop and flip to size x size (images of varying sizes, for training)."""
  def transform(raws, keys):
    out = np.empty((len(raws), size, size, channels), np.uint8)
    for i, (raw, key) in enumerate(zip(raws, keys)):
      out[i] = aug.inception_crop(aug.decode_image(raw, channels),
                                  np.random.default_rng(int(key)), size)
    return out
  return transform


def _imagenet_eval(size: int, channels: int = 3) -> Callable[[Any], np.ndarray]:
  """The central crop of the image resized to size / 0.875 (images of varying sizes)."""
  min_side = math.ceil(size / aug.EVAL_CROP_FRACTION)

  def transform(raws, keys=None):
    del keys
    out = np.empty((len(raws), size, size, channels), np.uint8)
    for i, raw in enumerate(raws):
      out[i] = aug.center_crop(aug.decode_image(raw, channels, min_side=min_side), size)
    return out
  return transform


def build_image_data(config, *, process_index: int = 0,
                     process_count: int = 1) -> ImageData:
  """Builds the train and eval pipelines of `config` for one process.

  Args:
    config: `config.data`, an ml_collections ConfigDict with the fields below (every one
      is needed; `gwtn_jax.config.schema.base_config` gives their defaults)
      name: 'fashion_mnist_idx' | 'fashion_mnist' | 'cifar10' | 'imagenet2012' |
        'synthetic' (`datasets.IMAGE_DATASETS`), or the name of any prepared tfds image
        classification dataset.
      dir: the IDX folder for 'fashion_mnist_idx' ('' = /usr/share/datasets/
        fashion-mnist); the tfds data_dir for tfds names ('' = tfds default).
      train_split, eval_split: the splits; eval_split '' = the dataset's own ('test';
        'validation' for ImageNet).
      augment: augment training images (eval never): pad-crop-flip with zero padding
        of 4 px (CIFAR-10), 2 px (Fashion-MNIST) or min(H, W) // 8 px (synthetic);
        Inception crop + flip (ImageNet; without augment, training uses the eval
        center crop).
      image_size: the side of the square crops of images of varying sizes (ImageNet, and
        any tfds dataset whose image feature has no fixed shape); ignored for the others.
      image_key, label_key: a tfds dataset's image and ClassLabel features.
      stats, mean, std: the pixel statistics (`datasets.pixel_stats`).
      num_train_examples, num_eval_examples: use only the first N examples of the
        split (0 = all).
      read_threads: threads building batches in parallel.
      prefetch: batches kept ready.
      synthetic_image_shape: (H, W, C).
      synthetic_num_classes: the classes.
      synthetic_num_train, synthetic_num_eval: split sizes.
      synthetic_noise: std of the pixel noise in 0..255 units.
      synthetic_seed: seed of the class patterns and noise (the data, not the order).
    process_index, process_count: this process among those reading (jax.process_index()
      and jax.process_count() in a multi-host run).

  Returns:
    The `ImageData`.

  Raises:
    ValueError: as `check_data_config`.
  """
  opts, builder = _check(config)
  name = opts.name
  cropped = False  # images of varying sizes, cropped to image_size
  if name == 'synthetic':
    shape = opts.synthetic_image_shape
    make = lambda n, split_id: image_sources._SyntheticSource(  # pylint: disable=g-long-lambda
        n, shape, opts.synthetic_num_classes, opts.synthetic_noise,
        opts.synthetic_seed, split_id)
    train = make(_head(opts.synthetic_num_train, opts.num_train_examples), 0)
    evals = make(_head(opts.synthetic_num_eval, opts.num_eval_examples), 1)
    num_classes = opts.synthetic_num_classes
    std = math.sqrt(192.0 ** 2 / 12 + opts.synthetic_noise ** 2)
    mean_std = ((128.0,) * shape[2], (std,) * shape[2])
  elif name == 'fashion_mnist_idx':
    folder = opts.dir
    train = image_sources._ArraySource(*idx_lib.read_idx_split(
        folder, opts.train_split, opts.num_train_examples))
    evals = image_sources._ArraySource(*idx_lib.read_idx_split(
        folder, opts.eval_split, opts.num_eval_examples))
    shape = train.images.shape[1:]
    num_classes = datasets.IMAGE_DATASETS[name].num_classes
    mean_std = datasets.pixel_stats(config, shape[2])
  else:
    stored, num_classes = _image_info(opts, builder)
    cropped = name == 'imagenet2012' or None in stored[:2]
    channels = stored[2] or 3
    if cropped:
      shape, fixed = (opts.image_size, opts.image_size, channels), None
    else:
      shape = fixed = tuple(int(d) for d in stored)
    eval_split = opts.eval_split or _default_eval_split(list(builder.info.splits.keys()))
    read = lambda split, limit: image_sources._TfdsSource(  # pylint: disable=g-long-lambda
        name, split, opts.dir, limit, fixed, opts.image_key, opts.label_key)
    train = read(opts.train_split, opts.num_train_examples)
    evals = read(eval_split, opts.num_eval_examples)
    mean_std = datasets.pixel_stats(config, shape[2])

  if cropped:
    eval_transform = _imagenet_eval(opts.image_size, shape[2])
    train_transform = (_imagenet_train(opts.image_size, shape[2]) if opts.augment
                       else eval_transform)
  else:
    eval_transform = _identity
    pad = datasets.image_dataset(name).crop_pad or max(1, min(shape[:2]) // 8)
    train_transform = _crop_flip(pad) if opts.augment else _identity
  for split, source in (('train', train), ('eval', evals)):
    if source.num_examples == 0:
      raise ValueError(f'data: the {split} split of {name} is empty')

  info = DatasetInfo(name=name, num_classes=int(num_classes),
                     image_shape=tuple(int(d) for d in shape),
                     num_train=train.num_examples, num_eval=evals.num_examples)
  return ImageData(
      info, train_source=train, eval_source=evals, train_transform=train_transform,
      eval_transform=eval_transform, mean=mean_std[0], std=mean_std[1],
      read_options=grain.ReadOptions(num_threads=opts.read_threads,
                                     prefetch_buffer_size=opts.prefetch),
      process_index=process_index, process_count=process_count)


def _head(total: int, limit: int) -> int:
  return min(total, limit) if limit else total
