"""BERT's layers: embeddings, the encoder layer (attention, FFN), the MLM head, initializers.

The parts `gwtn_jax.models.bert.Bert` assembles, in the original BERT's parameter layout (see
that module). This module knows nothing of training.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from gwtn_jax.parallel import axes as axes_lib

# Logical axis names used by the parameters (mapped to mesh axes by rules in the config).
# The position and token-type tables' first axis is unnamed (None): they are small.
LOGICAL_AXES = axes_lib.BERT_LOGICAL_AXES
# Logical names of the large activations' axes (sharding constraints, also mapped by the
# config's rules): the residual stream and every sown point, q/k/v, the FFN's hidden layer and
# the MLM logits. Their own names, not the parameters', so that a rule sharding a weight over
# `fsdp` does not also split the activation that the batch already splits over `fsdp`.
ACTIVATION_AXES = axes_lib.BERT_ACTIVATION_AXES
_STREAM = ('batch', 'act_length', 'act_embed')


def _constrain(x, axes):
  """A no-op unless a step traces the model under a mesh and rules (gwtn_jax.parallel)."""
  return nn.with_logical_constraint(x, axes)
HEADS = ('mlm', 'nsp', 'classify', 'none')

_INIT_STD = 0.02  # BERT's truncated-normal initializer range


def _init(axes):
  return nn.with_logical_partitioning(nn.initializers.truncated_normal(_INIT_STD), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros, axes)


def _ones(axes):
  return nn.with_logical_partitioning(nn.initializers.ones, axes)


def layer_norm(eps: float, dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      scale_init=_ones(('embed',)), bias_init=_zeros(('embed',)), name=name)


def dense(features: int, kernel_axes, dtype: Any, param_dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_init(kernel_axes), bias_init=_zeros(kernel_axes[-1:]),
                  name=name)


def layer_module_name(i: int) -> str:
  """The submodule (params key) of encoder layer ``i`` (1-based) in unrolled mode."""
  return f'encoder_layer_{i}'


@dataclasses.dataclass(frozen=True)
class BertDims:
  """Effective sizes of a Bert after the width multiplier, known before any init.

  Attributes:
    hidden: hidden size (width of every point).
    num_heads: attention heads.
    head_size: width of one head.
    intermediate: FFN inner size.
    num_layers: encoder layers.
  """
  hidden: int
  num_heads: int
  head_size: int
  intermediate: int
  num_layers: int


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout.

  The LayerNorm stays in the pre-LN model too (as in Xiong et al., 2020): without it the
  residual stream starts at the embeddings' 0.02 scale, the first branches' outputs drown the
  token identity, and the model sits at the unigram loss (measured: a pre-LN bert_mini at
  width 0.5 could not memorize one batch in 150 Adam steps without it, and did with it).
  """

  vocab_size: int
  hidden: int
  max_position: int
  type_vocab_size: int
  dropout_rate: float
  layer_norm_eps: float
  pre_layer_norm: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    embed = functools.partial(nn.Embed, features=self.hidden, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    self.word = embed(self.vocab_size, embedding_init=_init(('vocab', 'embed')))
    self.position = embed(self.max_position, embedding_init=_init((None, 'embed')))
    self.token_type = embed(self.type_vocab_size, embedding_init=_init((None, 'embed')))
    self.norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, 'norm')
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, input_ids, token_type_ids, deterministic: bool):
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
    x = _constrain(self.norm(x), _STREAM)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x):
    """Logits against the word-embedding matrix (the tied MLM output)."""
    return self.word.attend(x)


class BertLayer(nn.Module):
  """One transformer encoder layer: self-attention and a GELU FFN, each with a residual.

  Post-LN (BERT): x = LN(x + f(x)). Pre-LN: x = x + f(LN(x)).
  ``deterministic`` is a field (not a call argument) so that nn.scan and nn.remat see only
  arrays.
  """

  hidden: int
  num_heads: int
  head_size: int
  intermediate: int
  dropout_rate: float
  attention_dropout_rate: float
  layer_norm_eps: float
  pre_layer_norm: bool
  deterministic: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    """Applies the layer.

    Args:
      x: [B, T, H] hidden states.
      mask: [B, 1, 1, T] boolean attention mask (False: key position masked out).

    Returns:
      [B, T, H] hidden states.
    """
    norm = functools.partial(layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
    dropout = nn.Dropout(self.dropout_rate)

    # Self-attention.
    y = norm('attention_norm')(x) if self.pre_layer_norm else x
    y = self._attention(y, mask)
    y = dropout(y, deterministic=self.deterministic)
    x = x + y
    if not self.pre_layer_norm:
      x = norm('attention_norm')(x)

    # FFN.
    y = norm('mlp_norm')(x) if self.pre_layer_norm else x
    y = _Mlp(self.hidden, self.intermediate, self.dtype, self.param_dtype, name='mlp')(y)
    y = dropout(y, deterministic=self.deterministic)
    x = x + y
    if not self.pre_layer_norm:
      x = norm('mlp_norm')(x)
    return _constrain(x, _STREAM)

  def _attention(self, x, mask):
    return _SelfAttention(
        num_heads=self.num_heads, head_size=self.head_size, hidden=self.hidden,
        dropout_rate=self.attention_dropout_rate, deterministic=self.deterministic,
        dtype=self.dtype, param_dtype=self.param_dtype, name='attention')(x, mask)


class _SelfAttention(nn.Module):
  """Multi-head self-attention; q/k/v kernels [embed, heads, kv], out [heads, kv, embed]."""

  num_heads: int
  head_size: int
  hidden: int
  dropout_rate: float
  deterministic: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    proj = functools.partial(_Einsum, '...e,ehk->...hk', (self.hidden, self.num_heads,
                                                          self.head_size),
                             ('embed', 'heads', 'kv'), ('heads', 'kv'), dtype=self.dtype,
                             param_dtype=self.param_dtype)
    q, k, v = (_constrain(proj(name=name)(x), ('batch', 'act_length', 'act_heads', 'act_kv'))
               for name in ('query', 'key', 'value'))
    use_dropout = not self.deterministic and self.dropout_rate > 0
    y = nn.dot_product_attention(
        q, k, v, mask=mask, dropout_rate=self.dropout_rate,
        dropout_rng=self.make_rng('dropout') if use_dropout else None,
        deterministic=not use_dropout, dtype=self.dtype,
        # A bf16 softmax over long sequences loses the small probabilities.
        force_fp32_for_softmax=True)
    return _Einsum('...hk,hke->...e', (self.num_heads, self.head_size, self.hidden),
                   ('heads', 'kv', 'embed'), ('embed',), dtype=self.dtype,
                   param_dtype=self.param_dtype, name='out')(y)


class _Einsum(nn.Module):
  """A dense layer over several axes: `kernel` of `shape` (BERT's init), `bias` of the output.

  In place of nn.DenseGeneral, which draws a flat kernel and reshapes the boxed value; under
  logical rules in scope (the jitted steps) that applies the 3-axis constraint to the 2-D draw
  and fails. Same parameter names and shapes as DenseGeneral.
  """

  equation: str
  shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  bias_axes: tuple[str, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', _init(self.kernel_axes), self.shape, self.param_dtype)
    bias_shape = self.shape[-len(self.bias_axes):]
    bias = self.param('bias', _zeros(self.bias_axes), bias_shape, self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.einsum(self.equation, x, kernel) + bias


class _Mlp(nn.Module):
  """The FFN: Dense 'wi' [embed, mlp], exact GELU, Dense 'wo' [mlp, embed]."""

  hidden: int
  intermediate: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = dense(self.intermediate, ('embed', 'mlp'), self.dtype, self.param_dtype, 'wi')(x)
    x = _constrain(nn.gelu(x, approximate=False), ('batch', 'act_length', 'act_mlp'))
    return dense(self.hidden, ('mlp', 'embed'), self.dtype, self.param_dtype, 'wo')(x)


class ScanLayer(BertLayer):
  """BertLayer with nn.scan's (carry, x) -> (carry, y) signature; y is the layer output."""

  @nn.compact
  def __call__(self, x, mask):
    x = super().__call__(x, mask)
    return x, x


class MlmHead(nn.Module):
  """Dense + GELU + LayerNorm, then logits tied to the word embeddings, plus a bias."""

  vocab_size: int
  hidden: int
  layer_norm_eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attend: Callable[[Any], Any]):
    """Args: x [B, T, H]; attend: the word embedding's ``attend``. Returns [B, T, V] f32."""
    x = dense(self.hidden, ('embed', 'mlp'), self.dtype, self.param_dtype, 'transform')(x)
    x = nn.gelu(x, approximate=False)
    x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, 'norm')(x)
    bias = self.param('output_bias', _zeros(('vocab',)), (self.vocab_size,),
                      self.param_dtype)
    logits = attend(x).astype(jnp.float32) + bias.astype(jnp.float32)
    return _constrain(logits, ('batch', 'act_length', 'act_vocab'))
