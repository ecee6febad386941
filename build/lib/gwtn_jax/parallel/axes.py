"""The logical axis names the models annotate their parameters and activations with.

The models (`gwtn_jax.models.resnet`, `gwtn_jax.models.bert`) take their names from here, and
the config schema builds `config.mesh.rules` (logical name -> mesh axes) from the same tuples,
so a rule exists for every name a model uses. No JAX here: the schema, which config files
import, imports this module (and `gwtn_jax/models/__init__.py` imports the models, with JAX).
"""

from __future__ import annotations

# ResNet parameters: conv kernels (HWIO; the spatial axes unnamed), batch-norm scale and bias,
# the classifier's kernel and bias.
RESNET_CONV_KERNEL_AXES = (None, None, 'conv_in', 'conv_out')
RESNET_BN_AXES = ('conv_out',)
RESNET_HEAD_KERNEL_AXES = ('features', 'classes')
RESNET_HEAD_BIAS_AXES = ('classes',)
# ResNet feature maps (every block's output, the imitated points, and the stem's).
RESNET_ACTIVATION_AXES = ('batch', 'act_height', 'act_width', 'act_channels')

# Fully connected (MLP) layers: kernel [in, out] and bias, named as a 1x1 conv's, so that the
# mesh rules of the ResNets apply to them; the head is the ResNets'.
MLP_KERNEL_AXES = ('conv_in', 'conv_out')
MLP_BIAS_AXES = ('conv_out',)

# BERT parameters (the position and token-type tables' first axis is unnamed: they are small).
BERT_LOGICAL_AXES = ('vocab', 'embed', 'heads', 'kv', 'mlp', 'classes', 'layers')
# BERT's large activations: the residual stream and every sown point, q/k/v, the FFN's hidden
# layer and the MLM logits.
BERT_ACTIVATION_AXES = ('batch', 'act_length', 'act_embed', 'act_heads', 'act_kv', 'act_mlp',
                        'act_vocab')

# The batch axis of inputs and activations (always split over data x fsdp by the mesh rules).
BATCH_AXIS = 'batch'


def _names(*groups: tuple) -> tuple[str, ...]:
  """The names of `groups` in order of first appearance, without None and the batch axis."""
  out: list[str] = []
  for group in groups:
    out += [n for n in group if n is not None and n != BATCH_AXIS and n not in out]
  return tuple(out)


# Every parameter axis name (ResNet, then BERT) and every activation axis name besides the
# batch (BERT, then ResNet): the order of the schema's mesh rules.
PARAMETER_AXES = _names(RESNET_CONV_KERNEL_AXES, RESNET_BN_AXES, RESNET_HEAD_KERNEL_AXES,
                        RESNET_HEAD_BIAS_AXES, BERT_LOGICAL_AXES)
ACTIVATION_AXES = _names(BERT_ACTIVATION_AXES, RESNET_ACTIVATION_AXES)
