"""Flax linen models that sow their imitation points; they know nothing of training.

`resnet.py`: width-multiplied ResNets (`get_model`), with explicit per-layer widths
(`WidthPlan`) and the norm class as a field. `bert.py`: width-multiplied BERT (`get_bert`).
Both expose the same imitation interface: `points()` (one `points.Point` record per point:
name, channels, modules, stage end), `read_points` (the sown outputs by name), `head_modules`,
and `stop_at` / `start_after` in their forward pass.
"""

from gwtn_jax.models.bert import BERT_PRESETS
from gwtn_jax.models.bert import Bert
from gwtn_jax.models.bert import get_bert
from gwtn_jax.models.resnet import MODELS
from gwtn_jax.models.resnet import ResNet
from gwtn_jax.models.resnet import WidthPlan
from gwtn_jax.models.resnet import get_model

__all__ = ['BERT_PRESETS', 'Bert', 'MODELS', 'ResNet', 'WidthPlan', 'get_bert', 'get_model']
