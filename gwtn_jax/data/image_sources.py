"""Image sources: random access to (uint8 images, labels) by example index.

`_ArraySource`: examples held in memory (the IDX files). `_SyntheticSource`: learnable
random images made on the fly from the example index. `_TfdsSource`: a split of a
prepared tfds dataset (`tfds.data_source`, no TensorFlow). Each has `num_examples` and
`read(indices)`; `images.py` builds them and makes batches of what they read.
"""

from __future__ import annotations

import numpy as np

from gwtn_jax.data import augment as aug

# Salt of `augment.example_keys` for the synthetic noise (`images._AUGMENT_SALT` is 1).
_SYNTHETIC_SALT = 2


class _ArraySource:
  """Examples held in memory as uint8 [N, H, W, C] images and int labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels
    self.num_examples = len(labels)

  def read(self, indices: np.ndarray):
    return self.images[indices], self.labels[indices]


class _SyntheticSource:
  """Learnable random images, made on the fly from the example index.

  Example i has label i mod num_classes (balanced classes) and image
  clip(pattern[label] + noise[j], 0, 255) as uint8, where pattern[c] is a smooth class
  template (a random 4x4xC grid of values in [32, 224], upsampled to HxW by nearest
  neighbour, so small shifts and flips keep it recognizable) shared by train and eval,
  and noise[j] is one of a bank of Gaussian noise images (std `noise` pixel units, its
  own bank per split) picked by a hash of i. The noise bank holds
  min(n, 1024, max(16, 2**23 / (H*W*C))) images (at most 16 MB).
  """

  def __init__(self, num_examples: int, shape: tuple[int, int, int], num_classes: int,
               noise: float, seed: int, split_id: int):
    h, w, c = shape
    self.num_examples = num_examples
    self._num_classes = num_classes
    self._seed, self._split_id = seed % (1 << 64), split_id
    grid = np.random.default_rng([self._seed, 0]).uniform(
        32, 224, size=(num_classes, 4, 4, c))
    rows, cols = (np.arange(h) * 4) // h, (np.arange(w) * 4) // w
    self._patterns = np.round(grid[:, rows][:, :, cols]).astype(np.int16)
    bank = min(num_examples, 1024, max(16, (1 << 23) // (h * w * c)))
    self._noise = np.clip(np.round(np.random.default_rng([self._seed, 1 + split_id])
                                   .normal(0.0, noise, (bank, h, w, c))),
                          -255, 255).astype(np.int16)

  def read(self, indices: np.ndarray):
    labels = (indices % self._num_classes).astype(np.int32)
    keys = aug.example_keys(self._seed, indices, salt=_SYNTHETIC_SALT + self._split_id)
    j = (keys % np.uint64(len(self._noise))).astype(np.intp)
    images = np.clip(self._patterns[labels] + self._noise[j], 0, 255).astype(np.uint8)
    return images, labels


class _TfdsSource:
  """A split of a prepared tfds dataset, read through `tfds.data_source`.

  `read` returns uint8 [B, H, W, C] when `image_shape` is fixed (decoded here), else a
  list of undecoded images (bytes, or arrays for datasets that store raw tensors).
  """

  def __init__(self, name: str, split: str, data_dir: str, limit: int,
               image_shape: tuple[int, ...] | None, image_key: str = 'image',
               label_key: str = 'label'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._what = f'tfds {name} split {split!r}'
    self._image_key, self._label_key = image_key, label_key
    self._source = tfds.data_source(
        name, split=split, data_dir=data_dir or None, download=False,
        decoders={image_key: tfds.decode.SkipDecoding()})
    total = len(self._source)
    self.num_examples = min(total, limit) if limit else total
    self._image_shape = image_shape

  def read(self, indices: np.ndarray):
    try:
      records = self._source.__getitems__([int(i) for i in indices])
    except ModuleNotFoundError as e:
      if 'tensorflow' not in str(e):
        raise
      raise RuntimeError(
          f'{self._what}: a feature of this dataset needs TensorFlow to decode, and '
          'TensorFlow is not installed; `pip install tensorflow-cpu`, or store the '
          'images as encoded Image or uint8 Tensor features') from e
    labels = np.array([r[self._label_key] for r in records], dtype=np.int64)
    raws = [r[self._image_key] for r in records]
    if self._image_shape is None:
      return raws, labels
    images = np.empty((len(raws),) + self._image_shape, np.uint8)
    for i, raw in enumerate(raws):
      img = aug.to_array(aug.decode_image(raw, self._image_shape[-1]))
      if img.shape != self._image_shape:
        raise ValueError(f'{self._what}: example {indices[i]} has an image of shape '
                         f'{img.shape}, expected {self._image_shape}')
      images[i] = img
    return images, labels
