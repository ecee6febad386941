"""Data pipelines: tfds data sources and grain, plus the embedded offline datasets.

Images (`images.py`): Fashion-MNIST from IDX files (`idx.py`), tfds `fashion_mnist`,
`cifar10`, `imagenet2012` through `tfds.data_source`, and synthetic data; numpy/PIL
augmentations in `augment.py`. Batches are deterministic functions of (seed, step,
process), so training resumes exactly and each host reads only its own shard.
"""

from gwtn_jax.data.images import build_image_data
from gwtn_jax.data.images import check_data_config
from gwtn_jax.data.images import DatasetInfo
from gwtn_jax.data.images import ImageData

__all__ = ['DatasetInfo', 'ImageData', 'build_image_data', 'check_data_config']
