"""Flax linen models that sow their imitation points; they know nothing of training."""

from gwtn_jax.models.resnet import MODELS
from gwtn_jax.models.resnet import ResNet
from gwtn_jax.models.resnet import get_model

__all__ = ['MODELS', 'ResNet', 'get_model']
