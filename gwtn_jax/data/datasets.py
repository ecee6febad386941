"""The one table of the image datasets, and how the data modules read their config.

`IMAGE_DATASETS` is what is known of each image dataset before reading it: its images' shape,
its classes, its eval split, where it is read from, its pixel statistics and its augmentation
padding. The loader (`images.py`) and the planner (`builders.static_data_info`) both read it.

The data modules keep no defaults of their own: every field they read is in the config schema
(`gwtn_jax.config.schema`: `base_config().data`, `text_data_config()`, `downstream_config()`),
with its default there; `read_fields` reads them. No JAX, grain or numpy here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """What is known of an image dataset before reading it.

  Attributes:
    source: 'idx' (a folder of IDX files), 'tfds' (a prepared tfds dataset) or 'synthetic'.
    image_shape: (H, W, C) of its images; () where the config sets it (imagenet2012:
      `data.image_size`; synthetic: `data.synthetic_image_shape`). The loader takes the
      shape the files hold (an IDX folder of other images, a tfds dataset's features).
    num_classes: labels lie in [0, num_classes); 0 where the config sets it (synthetic). A
      tfds dataset's loader takes its ClassLabel's.
    eval_split: the split evaluated on when `data.eval_split` is ''.
    default_dir: where it is read from when `data.dir` is '' ('': tfds's default data_dir).
    mean, std: per-channel pixel mean and std (0..255) of its training set; () for synthetic
      data (from its config, see `image_sources._SyntheticSource`).
    crop_pad: zero padding of the pad-crop-flip augmentation, in pixels per side; 0:
      min(H, W) // 8, at least 1 (synthetic; 4 at 32x32, like CIFAR-10). ImageNet is
      Inception-cropped instead.
  """
  source: str
  image_shape: tuple[int, ...]
  num_classes: int
  eval_split: str
  default_dir: str = ''
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  crop_pad: int = 0


# Per-channel pixel statistics (0..255) of common training sets: `data.stats` names one, and a
# tfds dataset of one of these names takes its own.
STATS = {
    'imagenet': ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    'cifar10': ((0.4914 * 255, 0.4822 * 255, 0.4465 * 255),
                (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)),
    'cifar100': ((0.5071 * 255, 0.4865 * 255, 0.4409 * 255),
                 (0.2673 * 255, 0.2564 * 255, 0.2762 * 255)),
    'fashion_mnist': ((0.2860 * 255,), (0.3530 * 255,)),
    'mnist': ((0.1307 * 255,), (0.3081 * 255,)),
}
_FASHION_MNIST_STATS = dict(mean=STATS['fashion_mnist'][0], std=STATS['fashion_mnist'][1])

# Fashion-MNIST's 28x28 images get a crop padding of 2 (shifts up to +-2 px, 7%): its objects
# fill most of the frame.
IMAGE_DATASETS = {
    'fashion_mnist_idx': ImageDataset(
        'idx', (28, 28, 1), 10, 'test', default_dir='/usr/share/datasets/fashion-mnist',
        crop_pad=2, **_FASHION_MNIST_STATS),
    'fashion_mnist': ImageDataset('tfds', (28, 28, 1), 10, 'test', crop_pad=2,
                                  **_FASHION_MNIST_STATS),
    'cifar10': ImageDataset('tfds', (32, 32, 3), 10, 'test', crop_pad=4,
                            mean=STATS['cifar10'][0], std=STATS['cifar10'][1]),
    'imagenet2012': ImageDataset('tfds', (), 1000, 'validation',
                                 mean=STATS['imagenet'][0], std=STATS['imagenet'][1]),
    'synthetic': ImageDataset('synthetic', (), 0, 'test'),
}

# Any other `data.name` is a prepared tfds image classification dataset (cifar100,
# oxford_flowers102, food101, one's own builder): its image shape, classes and splits come from
# the builder's info when it is read; its eval split '' is 'test', else 'validation'.
GENERIC_TFDS = ImageDataset('tfds', (), 0, '')


def image_dataset(name) -> ImageDataset:
  """The table's entry of `data.name`; any other name is a tfds dataset (`GENERIC_TFDS`).

  Raises:
    ValueError: one line, for a name that cannot be a tfds dataset's.
  """
  if name in IMAGE_DATASETS:
    return IMAGE_DATASETS[name]
  if not isinstance(name, str) or not re.fullmatch(r'[\w./:]+', name):
    raise ValueError(f'data.name={name!r} is neither one of {", ".join(IMAGE_DATASETS)} nor '
                     'the name of a tfds dataset')
  return GENERIC_TFDS


def pixel_stats(config, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel (0..255) that `config` (`config.data`) normalizes with:
  `data.mean`/`data.std` if given, else the preset `data.stats`, else the dataset's own (the
  table's entry, or the preset of its name).

  Raises:
    ValueError: one line naming the fields to set, for a dataset with no known statistics,
      or statistics of another channel count.
  """
  name, mean, std, preset = config.name, tuple(config.mean), tuple(config.std), config.stats
  if bool(mean) != bool(std):
    raise ValueError(f'data.mean={mean} and data.std={std}: give both, or neither')
  if not mean and preset:
    if preset not in STATS:
      raise ValueError(f'data.stats={preset!r} is unknown; choose one of: {", ".join(STATS)}, '
                       'or give data.mean and data.std')
    mean, std = STATS[preset]
  if not mean:
    entry = IMAGE_DATASETS.get(name)
    if entry is not None and entry.mean:
      mean, std = entry.mean, entry.std
    elif name in STATS:
      mean, std = STATS[name]
    else:
      raise ValueError(f'data.name={name!r} has no known pixel statistics: set data.stats (one '
                       f'of {", ".join(STATS)}) or data.mean and data.std (per channel, 0..255)')
  source = 'data.mean/data.std' if config.mean else f"data.stats={preset or name!r}"
  if len(mean) != channels or len(std) != channels:
    raise ValueError(f'{source} has {len(mean)} channels; the images of data.name={name!r} '
                     f'have {channels}')
  if any(v <= 0 for v in std):
    raise ValueError(f'data.std={std} must be > 0')
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def image_shape_and_classes(config, tfds_info=None) -> tuple[tuple[int, ...], int]:
  """The (H, W, C) images and the classes of `config` (`config.data`), from the table and the
  config alone, without reading the data (for planning).

  Args:
    config: `config.data`.
    tfds_info: for a dataset the table lacks, a function (config) -> ((H, W, C) with None for
      a varying side, classes) that reads its tfds builder's info (`images.tfds_image_info`).
  """
  dataset = image_dataset(config.name)
  if config.name == 'imagenet2012':
    return (int(config.image_size), int(config.image_size), 3), dataset.num_classes
  if dataset.source == 'synthetic':
    return (tuple(int(d) for d in config.synthetic_image_shape),
            int(config.synthetic_num_classes))
  if dataset is GENERIC_TFDS:
    if tfds_info is None:
      raise ValueError(f'data.name={config.name!r}: its shape and classes are in its tfds '
                       'builder\'s info, which was not read')
    shape, classes = tfds_info(config)
    if None in shape[:2]:  # images of varying sizes are cropped to image_size
      shape = (int(config.image_size), int(config.image_size), shape[2] or 3)
    return tuple(int(d) for d in shape), int(classes)
  return dataset.image_shape, dataset.num_classes


def read_fields(config, prefix: str, names: Iterable[str]) -> dict[str, Any]:
  """The fields `names` of `config` (a ConfigDict or any attribute bag), with no defaults.

  Args:
    config: `config.data` or `config.downstream`.
    prefix: its name in the run's config, for the error ('data', 'downstream').
    names: the fields.

  Raises:
    ValueError: one line naming the first missing field, `<prefix>.<field>`.
  """
  out = {}
  for name in names:
    try:
      out[name] = getattr(config, name)
    except (AttributeError, KeyError):
      raise ValueError(f'{prefix}.{name} is missing; make the config from '
                       'gwtn_jax.config.schema (base_config, text_data_config, '
                       'downstream_config), which gives every field its default') from None
  return out
