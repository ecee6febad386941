"""Flax linen models that sow their imitation points; they know nothing of training.

`resnet.py`: width-multiplied ResNets (`get_model`), with explicit per-layer widths
(`WidthPlan`), the norm class as a field, and shortcuts that can be turned off (a plain
network). `mlp.py`: deep plain fully connected networks (`MLP_PRESETS`, `get_model` too).
`bert.py`: width-multiplied BERT (`get_bert`). All expose the same imitation interface: `points()` (one `points.Point` record per point:
name, channels, modules, stage end), `read_points` (the sown outputs by name), `head_modules`,
and `stop_at` / `start_after` in their forward pass.
"""

from gwtn_jax.models.bert import BERT_PRESETS
from gwtn_jax.models.bert import Bert
from gwtn_jax.models.bert import get_bert
from gwtn_jax.models.mlp import MLP
from gwtn_jax.models.mlp import MLP_PRESETS
from gwtn_jax.models.resnet import MODELS
from gwtn_jax.models.resnet import ResNet
from gwtn_jax.models.resnet import WidthPlan
from gwtn_jax.models.resnet import get_model as get_resnet


def get_model(name: str, **kwargs):
  """An image network by preset name: a ResNet of `MODELS` or an MLP of `MLP_PRESETS`.

  Raises:
    ValueError: unknown name (one line naming `model.name` and the choices).
  """
  if name in MLP_PRESETS:
    return MLP_PRESETS[name](**kwargs)
  if name not in MODELS:
    raise ValueError(f'model.name={name!r} is unknown; choose one of: '
                     f'{", ".join([*MODELS, *MLP_PRESETS])}')
  return get_resnet(name, **kwargs)


__all__ = ['BERT_PRESETS', 'Bert', 'MLP', 'MLP_PRESETS', 'MODELS', 'ResNet', 'WidthPlan',
           'get_bert', 'get_model', 'get_resnet']
