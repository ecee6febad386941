"""Flax linen models that sow their imitation points; they know nothing of training.

`resnet.py`: width-multiplied ResNets (the image pipeline's `get_model`). `bert.py`:
width-multiplied BERT (`get_bert`), not yet wired into the pipeline.
"""

from gwtn_jax.models.bert import BERT_PRESETS
from gwtn_jax.models.bert import Bert
from gwtn_jax.models.bert import get_bert
from gwtn_jax.models.resnet import MODELS
from gwtn_jax.models.resnet import ResNet
from gwtn_jax.models.resnet import get_model

__all__ = ['BERT_PRESETS', 'Bert', 'MODELS', 'ResNet', 'get_bert', 'get_model']
