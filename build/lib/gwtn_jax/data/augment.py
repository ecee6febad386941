"""Image augmentations and preprocessing in numpy and PIL, seeded per example.

Every random choice for an example comes from a 64-bit key that depends only on the
training seed and the example's global position in the concatenated stream of epochs
(`example_keys`), so a batch is the same whichever process, thread or resumed run makes
it.

- Small images (CIFAR-10, Fashion-MNIST, synthetic): `pad_crop_flip` -- ZERO padding by
  `pad` pixels on each side (as torchvision's RandomCrop(padding=...) and the original
  ResNet CIFAR recipe), a random crop back to the original size, and a horizontal flip
  with probability 1/2. Vectorized over the batch: one gather, no Python per example.
- ImageNet (PIL, per example): `inception_crop` for training (random area in [8%, 100%]
  of the image, aspect ratio log-uniform in [3/4, 4/3], 10 tries, then a center crop of
  the whole image clamped to that ratio range -- torchvision's RandomResizedCrop),
  resized to `size` x `size`, plus a random horizontal flip; `center_crop` for eval
  (resize the shorter side to size / 0.875, then a central size x size crop). Resizing
  is PIL's bilinear filter, which widens its support when shrinking (antialiased).
"""

from __future__ import annotations

import io
import math

import numpy as np
import PIL.Image

# Resize filter for ImageNet crops (antialiased when downscaling).
RESAMPLE = PIL.Image.Resampling.BILINEAR
# Eval: resize the shorter side to size / EVAL_CROP_FRACTION, then center crop `size`.
EVAL_CROP_FRACTION = 0.875

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finalizer, elementwise on a uint64 array (wrapping arithmetic)."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def example_keys(seed: int, positions: np.ndarray, salt: int = 0) -> np.ndarray:
  """Per-example 64-bit keys: a hash of (seed, salt, global position).

  Args:
    seed: any Python int (taken modulo 2**64).
    positions: int array of global example positions (>= 0).
    salt: separates independent uses of the same seed and positions.

  Returns:
    uint64 array of positions' shape.
  """
  base = _splitmix64(np.array([(seed ^ (salt * 0x632BE59BD9B4E019)) & _MASK64],
                              dtype=np.uint64))
  return _splitmix64(base + np.asarray(positions).astype(np.uint64))


def pad_crop_flip(images: np.ndarray, keys: np.ndarray, pad: int) -> np.ndarray:
  """Zero-pad, random crop back to size, random horizontal flip; per example.

  Args:
    images: uint8 [B, H, W, C].
    keys: uint64 [B] from `example_keys`; example b's offsets and flip depend only on
      keys[b].
    pad: pixels of zero padding on each side (crop offsets range over [0, 2 * pad]).

  Returns:
    uint8 [B, H, W, C].
  """
  b, h, w, _ = images.shape
  span = np.uint64(2 * pad + 1)
  dy = (keys % span).astype(np.intp)
  dx = ((keys >> np.uint64(21)) % span).astype(np.intp)
  flip = ((keys >> np.uint64(42)) & np.uint64(1)).astype(bool)
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = dy[:, None] + np.arange(h)  # [B, H]
  cols = np.where(flip[:, None], np.arange(w)[::-1], np.arange(w)) + dx[:, None]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def decode_image(raw, channels: int = 3, min_side: int = 0) -> PIL.Image.Image:
  """Encoded bytes (JPEG, PNG, ...) or a uint8 array -> a PIL image of `channels`.

  Args:
    raw: encoded bytes, a uint8 [H, W] or [H, W, C] array, or a PIL image.
    channels: 3 (RGB) or 1 (grayscale).
    min_side: if > 0, a JPEG may be decoded at a reduced scale (PIL's draft mode,
      a power-of-2 DCT downscale, much faster) as long as its shorter side stays
      >= min_side. Used for eval, whose first step shrinks the image anyway.
  """
  if isinstance(raw, (bytes, bytearray, memoryview)):
    img = PIL.Image.open(io.BytesIO(raw))
    if min_side > 0 and img.format == 'JPEG':
      width, height = img.size
      r = min_side / min(width, height)
      if r < 1:
        img.draft(img.mode, (math.ceil(width * r), math.ceil(height * r)))
  elif isinstance(raw, np.ndarray):
    img = PIL.Image.fromarray(raw[..., 0] if raw.ndim == 3 and raw.shape[-1] == 1
                              else raw)
  elif isinstance(raw, PIL.Image.Image):
    img = raw
  else:
    raise TypeError(f'cannot decode an image from {type(raw).__name__}')
  mode = 'RGB' if channels == 3 else 'L'
  return img if img.mode == mode else img.convert(mode)


def to_array(img: PIL.Image.Image) -> np.ndarray:
  """PIL image -> uint8 [H, W, C] (C = 1 for grayscale)."""
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def inception_crop(img: PIL.Image.Image, rng: np.random.Generator, size: int,
                   area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3),
                   tries: int = 10, flip: bool = True) -> np.ndarray:
  """Random-resized ("Inception") crop to size x size, then a random horizontal flip.

  Args:
    img: the decoded image.
    rng: this example's generator (seeded from its key).
    size: output side.
    area_range: fraction of the image area the crop covers.
    ratio_range: crop width / height, sampled log-uniformly.
    tries: samples to draw before falling back to a center crop of the whole image
      (clamped to `ratio_range`).
    flip: flip horizontally with probability 1/2.

  Returns:
    uint8 [size, size, C].
  """
  width, height = img.size
  area = width * height
  log_ratio = (math.log(ratio_range[0]), math.log(ratio_range[1]))
  for _ in range(tries):
    target_area = area * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * ratio)))
    h = int(round(math.sqrt(target_area / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      break
  else:
    in_ratio = width / height
    if in_ratio < ratio_range[0]:
      w, h = width, int(round(width / ratio_range[0]))
    elif in_ratio > ratio_range[1]:
      w, h = int(round(height * ratio_range[1])), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  out = img.resize((size, size), RESAMPLE, box=(left, top, left + w, top + h))
  if flip and rng.random() < 0.5:
    out = out.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  return to_array(out)


def center_crop(img: PIL.Image.Image, size: int,
                crop_fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """Resize the shorter side to size / crop_fraction, then take the central size x size.

  Done as one PIL resize of the central box, which equals resize-then-crop.

  Returns:
    uint8 [size, size, C].
  """
  width, height = img.size
  side = min(width, height) * crop_fraction  # the crop, in source pixels
  left, top = (width - side) / 2, (height - side) / 2
  return to_array(img.resize((size, size), RESAMPLE,
                             box=(left, top, left + side, top + side)))


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """uint8 [..., C] -> float32 (x - mean) / std, mean and std per channel (0..255)."""
  out = images.astype(np.float32)
  out -= mean
  out *= (1.0 / std).astype(np.float32)
  return out
