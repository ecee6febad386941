"""BERT (Devlin et al., 2019) that exposes every imitated point.

The encoder of BERT with its pre-training heads (masked LM, next-sentence prediction) and an
optional sequence-classification head, in the layout of the original BERT, so that
parameter counts match it exactly (BERT-Base with its NSP and MLM heads: 110,106,428).

For imitation (Go Wide, Then Narrow) the model:

* sows the embedding output ('embeddings') and every encoder layer output ('layer_1' ..
  'layer_L', 1-based) into the ``intermediates`` collection at the top-level module, so a
  loss reads names rather than positions. With ``scan_layers=True`` the layer outputs are
  sown stacked as one entry, 'layers' [L, B, T, H]; :func:`layer_outputs` gives the same
  name -> array dict in both modes;
* can stop after a point (``stop_at``): later layers are not traced at all (under
  ``scan_layers`` the scan runs over the first k slices of the stacked parameters);
* can start after a point (``start_after``): it then takes that point's [B, T, H] output
  as its input and runs only the layers that follow (teacher-fed imitation, LIT).

``width_multiplier`` makes the wide network of GWTN: it scales the hidden size, the number of
heads (the head size stays ``head_size``) and the FFN size; 4/3 turns BERT-Base into
BERT-Large width at BERT-Base depth. A multiplier that gives a non-integer count is a config
error, raised by :meth:`Bert.dims` without init or compile.

Parameter layout (names are part of the interface)::

    params/embedder/{word,position,token_type,norm}
    params/encoder_layer_{i}/{attention/{query,key,value,out},attention_norm,
                              mlp/{wi,wo},mlp_norm}          (unrolled, i 1-based)
    params/encoder/...  the same, stacked on a leading 'layers' axis (scan_layers=True)
    params/final_norm                                        (pre_layer_norm=True only)
    params/mlm_head/{transform,norm,output_bias}             (output tied to embedder/word)
    params/pooler, params/nsp, params/classifier             (when nsp_head / num_classes)

Modules are not named after their points: Flax forbids a child module and a sown variable of
the same name in one scope, and the sown names must be the point names.

This module knows nothing of training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gwtn_jax.models import points as points_lib
from gwtn_jax.models.bert_layers import HEADS
from gwtn_jax.models.bert_layers import BertDims
from gwtn_jax.models.bert_layers import BertEmbeddings
from gwtn_jax.models.bert_layers import BertLayer
from gwtn_jax.models.bert_layers import MlmHead
from gwtn_jax.models.bert_layers import ScanLayer
from gwtn_jax.models.bert_layers import dense
from gwtn_jax.models.bert_layers import layer_module_name
from gwtn_jax.models.bert_layers import layer_norm
from gwtn_jax.models.points import Point

class Bert(nn.Module):
  """BERT encoder with MLM / NSP / classification heads and named imitation points.

  Attributes:
    vocab_size: word-piece vocabulary size.
    hidden_size: hidden size before the width multiplier.
    num_layers: encoder layers.
    num_heads: attention heads before the width multiplier; must equal
      hidden_size / head_size.
    intermediate_size: FFN inner size before the width multiplier.
    max_position: longest sequence (rows of the position table).
    type_vocab_size: token types (segments).
    dropout_rate: dropout on embeddings and on every residual branch.
    attention_dropout_rate: dropout on attention probabilities.
    layer_norm_eps: LayerNorm epsilon.
    pre_layer_norm: False: post-LN as in BERT (LayerNorm after each residual add). True:
      pre-LN (Xiong et al., 2020: LayerNorm before each branch and one final LayerNorm
      'final_norm' after the last layer; the sown layer outputs are the raw residual streams,
      the final norm is applied only to what the heads read). Both normalize the embeddings.
    width_multiplier: GWTN widening: scales hidden size, heads and FFN size.
    head_size: width of one attention head (fixed under widening).
    nsp_head: add the pooler and the 2-way next-sentence head.
    num_classes: > 0 adds a sequence-classification head on the pooler.
    scan_layers: run the layers under nn.scan (parameters stacked on a leading 'layers'
      axis; the per-layer outputs are sown stacked as 'layers').
    remat: rematerialize each layer in the backward pass (nn.remat).
    dtype: compute dtype (bfloat16 on TPU); logits are float32 whatever it is.
    param_dtype: parameter dtype.
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  pre_layer_norm: bool = False
  width_multiplier: float = 1.0
  head_size: int = 64
  nsp_head: bool = False
  num_classes: int = 0
  scan_layers: bool = False
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # --- Static description (no init, no compile) -------------------------------------------

  def dims(self) -> BertDims:
    """Validates the configuration and returns the effective sizes.

    Callable on an unbound module, so a config validator can run it before any compile.

    Returns:
      The BertDims.

    Raises:
      ValueError: one line naming the offending ``model.*`` field, e.g. a width multiplier
        that gives a non-integer number of heads.
    """
    for field in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                  'intermediate_size', 'max_position', 'type_vocab_size', 'head_size'):
      value = getattr(self, field)
      if int(value) != value or value < 1:
        raise ValueError(f'model.{field}={value!r} must be a positive integer')
    if self.num_heads * self.head_size != self.hidden_size:
      raise ValueError(f'model.num_heads={self.num_heads} times model.head_size='
                       f'{self.head_size} must equal model.hidden_size={self.hidden_size}')
    if self.num_classes < 0 or int(self.num_classes) != self.num_classes:
      raise ValueError(f'model.num_classes={self.num_classes!r} must be a non-negative '
                       'integer')
    w = self.width_multiplier
    if not w > 0:
      raise ValueError(f'model.width_multiplier={w} must be positive')
    hidden = self.hidden_size * w
    heads = hidden / self.head_size
    # A tolerance, because e.g. 768 * (4 / 3) is not exactly 1024 in floating point.
    if abs(heads - round(heads)) > 1e-6 or round(heads) < 1:
      raise ValueError(
          f'model.width_multiplier={w:g} gives {hidden:g} hidden units (must be an integer '
          f'multiple of the head size {self.head_size})')
    ffn = self.intermediate_size * w
    if abs(ffn - round(ffn)) > 1e-6:
      raise ValueError(f'model.width_multiplier={w:g} gives {ffn:g} FFN units (must be an '
                       'integer)')
    heads = int(round(heads))
    return BertDims(hidden=heads * self.head_size, num_heads=heads,
                    head_size=self.head_size, intermediate=int(round(ffn)),
                    num_layers=self.num_layers)

  def points(self) -> tuple[Point, ...]:
    """The points, bottom to top: 'embeddings', 'layer_1', ..., 'layer_L' (no stages).

    Under ``scan_layers`` every layer lives in 'encoder', slice i being 'layer_{i + 1}'.
    """
    hidden = self.dims().hidden
    records = [Point('embeddings', hidden, ('embedder',))]
    for i in range(1, self.num_layers + 1):
      if self.scan_layers:
        records.append(Point(f'layer_{i}', hidden, ('encoder',), layer=i - 1))
      else:
        records.append(Point(f'layer_{i}', hidden, (layer_module_name(i),)))
    return tuple(records)

  def read_points(self, intermediates: Mapping[str, Any]) -> dict[str, Any]:
    """point name -> output, from the ``intermediates`` collection (both layer modes)."""
    return layer_outputs(intermediates, self.num_layers)

  def head_modules(self) -> tuple[str, ...]:
    """The top-level parameters of the output heads (what a linear probe trains)."""
    heads = ('final_norm',) if self.pre_layer_norm else ()
    heads += ('mlm_head', 'pooler')
    if self.nsp_head:
      heads += ('nsp',)
    if self.num_classes:
      heads += ('classifier',)
    return heads

  # --- Forward -------------------------------------------------------------------------------

  @nn.compact
  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
               train: bool = False, start_after: Optional[str] = None,
               stop_at: Optional[str] = None, head: str = 'mlm', mlm_positions=None):
    """Runs the network, or its bottom up to a point.

    Every computed point is sown into ``intermediates`` (as a 1-tuple): 'embeddings', and
    'layer_i' (unrolled) or the stacked 'layers' (scan); read them with
    :func:`layer_outputs`. ``train``, ``stop_at`` and ``head`` pick the graph, so they must
    be static. Initialize with a head that creates every parameter you need: 'mlm' creates
    the MLM head, the pooler and NSP head (``nsp_head``) and the classifier
    (``num_classes``); 'nsp' / 'classify' create only the pooler and their head.

    Args:
      input_ids: [B, T] int token ids, or, with ``start_after``, the [B, T, H] output of
        that point.
      token_type_ids: [B, T] int segment ids; zeros when None.
      attention_mask: [B, T], 1 for real tokens and 0 for padding; all ones when None.
      train: enables dropout (needs the 'dropout' rng).
      start_after: a point name; only the layers after it run, on ``input_ids`` as hidden
        states.
      stop_at: a point name; nothing after it runs and its [B, T, H] output (in ``dtype``)
        is returned.
      head: 'mlm' ([B, T, vocab] logits), 'nsp' ([B, 2]), 'classify' ([B, num_classes]) or
        'none' (the final [B, T, H] hidden states, after 'final_norm' when pre-LN).
      mlm_positions: [B, P] int positions: the MLM head runs at those positions only
        ([B, P, vocab] logits), as BERT's pre-training does (the vocabulary projection is
        the largest matmul of a small BERT).

    Returns:
      float32 logits of ``head``, or the hidden states described above.

    Raises:
      ValueError: bad configuration, unknown point or head, or a head that is not enabled.
    """
    d = self.dims()
    if head not in HEADS:
      raise ValueError(f'head={head!r} is unknown; choose one of: {", ".join(HEADS)}')
    if head == 'nsp' and not self.nsp_head:
      raise ValueError("head='nsp' needs model.nsp_head=True")
    if head == 'classify' and self.num_classes == 0:
      raise ValueError("head='classify' needs model.num_classes > 0")
    points = self.points()
    first, stop = points_lib.span(points, start_after, stop_at)
    expected = '[B, T]' if first == 0 else '[B, T, H] hidden states'
    if input_ids.ndim != (2 if first == 0 else 3):
      raise ValueError(f'expected {expected} input_ids, got shape {input_ids.shape}')
    if input_ids.shape[1] > self.max_position:
      raise ValueError(f'sequence length {input_ids.shape[1]} exceeds '
                       f'model.max_position={self.max_position}')
    batch_shape = input_ids.shape[:2]
    if token_type_ids is None:
      token_type_ids = jnp.zeros(batch_shape, jnp.int32)
    if attention_mask is None:
      attention_mask = jnp.ones(batch_shape, jnp.int32)
    mask = (attention_mask > 0)[:, None, None, :]
    deterministic = not train

    embedder = BertEmbeddings(
        vocab_size=self.vocab_size, hidden=d.hidden, max_position=self.max_position,
        type_vocab_size=self.type_vocab_size, dropout_rate=self.dropout_rate,
        layer_norm_eps=self.layer_norm_eps, pre_layer_norm=self.pre_layer_norm,
        dtype=self.dtype, param_dtype=self.param_dtype, name='embedder')
    if first == 0:
      x = embedder(input_ids, token_type_ids, deterministic)
      self.sow('intermediates', 'embeddings', x)
      if stop == 0:
        return x
    else:
      x = jnp.asarray(input_ids, self.dtype)

    layer_kwargs = dict(
        hidden=d.hidden, num_heads=d.num_heads, head_size=d.head_size,
        intermediate=d.intermediate, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        layer_norm_eps=self.layer_norm_eps, pre_layer_norm=self.pre_layer_norm,
        deterministic=deterministic, dtype=self.dtype, param_dtype=self.param_dtype)
    last = self.num_layers if stop is None else stop  # layers first..last run
    first = max(first, 1)
    if self.scan_layers:
      x = self._scan(x, mask, first, last, layer_kwargs)
    else:
      layer_cls = nn.remat(BertLayer) if self.remat else BertLayer
      for i in range(first, last + 1):
        x = layer_cls(**layer_kwargs, name=layer_module_name(i))(x, mask)
        self.sow('intermediates', f'layer_{i}', x)
    if stop is not None:
      return x

    if self.pre_layer_norm:
      x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, 'final_norm')(x)
    if head == 'none':
      return x

    outputs = {}
    if head == 'mlm':
      y = x
      if mlm_positions is not None:
        y = jnp.take_along_axis(x, mlm_positions[..., None].astype(jnp.int32), axis=1)
      outputs['mlm'] = MlmHead(
          vocab_size=self.vocab_size, hidden=d.hidden, layer_norm_eps=self.layer_norm_eps,
          dtype=self.dtype, param_dtype=self.param_dtype, name='mlm_head')(
              y, embedder.attend)
    # At init ('mlm') every enabled head is created, so one init serves every head.
    want_nsp = head == 'nsp' or (head == 'mlm' and self.nsp_head and self.is_initializing())
    want_cls = head == 'classify' or (
        head == 'mlm' and self.num_classes > 0 and self.is_initializing())
    if want_nsp or want_cls:
      pooled = nn.tanh(dense(d.hidden, ('embed', 'mlp'), self.dtype, self.param_dtype,
                              'pooler')(x[:, 0]))
      if want_nsp:
        outputs['nsp'] = dense(2, ('embed', 'classes'), self.dtype, self.param_dtype,
                                'nsp')(pooled).astype(jnp.float32)
      if want_cls:
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        outputs['classify'] = dense(self.num_classes, ('embed', 'classes'), self.dtype,
                                     self.param_dtype, 'classifier')(pooled).astype(
                                         jnp.float32)
    return outputs[head]

  def _scan(self, x, mask, first: int, last: int, layer_kwargs: Mapping[str, Any]):
    """Runs layers first..last (1-based) under nn.scan; sows their outputs as 'layers'.

    The scan runs over the slices [first - 1, last) of the stacked parameters only, so
    layers outside cost nothing. The sown stack always starts at layer 1: with
    ``first > 1`` the layers below are not computed and not sown (read them with
    :func:`layer_outputs` only when ``first == 1``). At init it creates all layers.
    """
    body = nn.remat(ScanLayer, prevent_cse=False) if self.remat else ScanLayer
    if self.is_initializing():
      first, last = 1, self.num_layers
    length = last - first + 1
    encoder_cls = nn.scan(
        body, variable_axes={'params': 0, 'intermediates': 0},
        split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast,),
        length=length, metadata_params={nn.PARTITION_NAME: 'layers'})
    if length < self.num_layers:
      lo = first - 1
      encoder_cls = nn.map_variables(
          encoder_cls, 'params',
          trans_in_fn=lambda tree: jax.tree.map(lambda a: a[lo:lo + length], tree))
    x, ys = encoder_cls(**layer_kwargs, name='encoder')(x, mask)
    if first == 1:
      self.sow('intermediates', 'layers', ys)
    return x


def layer_outputs(intermediates: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
  """The sown points as {'embeddings', 'layer_1', ..., 'layer_k'} in both layer modes.

  Args:
    intermediates: the model's ``intermediates`` collection (values as sown: 1-tuples).
    num_layers: the model's number of layers (an upper bound: with ``stop_at`` only the
      computed layers are present).

  Returns:
    point name -> [B, T, H] array, for every point present.
  """
  def unwrap(v):
    return v[0] if isinstance(v, (tuple, list)) else v

  out = {}
  if 'embeddings' in intermediates:
    out['embeddings'] = unwrap(intermediates['embeddings'])
  if 'layers' in intermediates:
    stacked = unwrap(intermediates['layers'])
    for i in range(min(stacked.shape[0], num_layers)):
      out[f'layer_{i + 1}'] = stacked[i]
  for i in range(1, num_layers + 1):
    if f'layer_{i}' in intermediates:
      out[f'layer_{i}'] = unwrap(intermediates[f'layer_{i}'])
  return out


# --- Presets -----------------------------------------------------------------------------------

def _preset(layers: int, hidden: int, heads: int, ffn: int) -> Callable[..., Bert]:
  return functools.partial(Bert, num_layers=layers, hidden_size=hidden, num_heads=heads,
                           intermediate_size=ffn, head_size=hidden // heads)


BERT_PRESETS: dict[str, Callable[..., Bert]] = {
    'bert_tiny': _preset(2, 128, 2, 512),
    'bert_mini': _preset(4, 256, 4, 1024),
    'bert_small': _preset(4, 512, 8, 2048),
    'bert_medium': _preset(8, 512, 8, 2048),
    'bert_base': _preset(12, 768, 12, 3072),
    'bert_large': _preset(24, 1024, 16, 4096),
}


def get_bert(name: str, **overrides) -> Bert:
  """Builds a registered BERT.

  Args:
    name: a key of BERT_PRESETS ('bert_base'; the short 'base' works too).
    **overrides: Bert fields (``vocab_size`` is required), overriding the preset.

  Returns:
    The unbound Bert.

  Raises:
    ValueError: unknown name.
  """
  key = name if name in BERT_PRESETS else f'bert_{name}'
  if key not in BERT_PRESETS:
    raise ValueError(f'model.name={name!r} is unknown; choose one of: '
                     f'{", ".join(BERT_PRESETS)}')
  return BERT_PRESETS[key](**overrides)
