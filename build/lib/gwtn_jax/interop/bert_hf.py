"""A Hugging Face BERT directory <-> `gwtn_jax.models.Bert` variables, exactly.

A Hugging Face directory is what `save_pretrained` writes: `config.json` and the weights,
`model.safetensors` or `pytorch_model.bin` (a sharded `*.index.json` checkpoint is refused;
re-save it with a larger `max_shard_size`). Two model types are read and written:

- 'bert' (post-LN, as our ``pre_layer_norm=False``): `BertModel`, `BertForPreTraining`,
  `BertForMaskedLM`, `BertForNextSentencePrediction`, `BertForSequenceClassification`.
- 'roberta-prelayernorm' (pre-LN, as our ``pre_layer_norm=True``): `RobertaPreLayerNormModel`,
  `...ForMaskedLM`, `...ForSequenceClassification`. They compute what our pre-LN BERT does
  (embeddings LayerNorm kept, LayerNorm before each branch, one final LayerNorm) except
  for the positions: RoBERTa numbers a sequence's tokens from ``pad_token_id + 1`` (the
  tokens equal to ``pad_token_id`` get the padding row ``pad_token_id``), where ours
  numbers them from 0. So our position row i is their row ``pad_token_id + 1 + i``
  (``max_position_embeddings = max_position + pad_token_id + 1``; rows up to
  ``pad_token_id`` are exported as zeros and dropped on import). The two agree on
  right-padded inputs whose real tokens are not ``pad_token_id``; at the padded positions
  themselves (masked out as keys, so without effect on the real ones) they differ.

Parameter mapping (torch `Linear` weights are [out, in]; our kernels [in, out]), per layer i
(0-based there, ``encoder_layer_{i+1}`` or slice i of the scanned ``encoder`` here)::

    embeddings.{word,position,token_type}_embeddings  embedder/{word,position,token_type}
    embeddings.LayerNorm                              embedder/norm
    encoder.layer.i.attention.self.{query,key,value}  attention/{query,key,value} [E, H, K]
    encoder.layer.i.attention.output.dense            attention/out [H, K, E]
    encoder.layer.i.attention.output.LayerNorm        attention_norm (post-LN)
    encoder.layer.i.attention.LayerNorm               attention_norm (pre-LN)
    encoder.layer.i.intermediate.dense                mlp/wi
    encoder.layer.i.output.dense                      mlp/wo
    encoder.layer.i.output.LayerNorm                  mlp_norm (post-LN)
    encoder.layer.i.intermediate.LayerNorm            mlp_norm (pre-LN)
    LayerNorm (RoBERTa-PreLayerNorm's last)           final_norm
    pooler.dense / classifier.dense (RoBERTa)         pooler
    cls.predictions.transform.{dense,LayerNorm}, .bias    mlm_head/{transform,norm,output_bias}
    lm_head.{dense,layer_norm}, .bias (RoBERTa)           mlm_head/...
    cls.seq_relationship                              nsp
    classifier / classifier.out_proj (RoBERTa)        classifier

with the prefix 'bert.' or 'roberta_prelayernorm.' on the encoder's names of a model with
heads. The MLM decoder is tied to the word embeddings (its bias to the output bias), as in
ours: `save_pretrained` leaves it out; when present it is checked equal and dropped. Legacy
LayerNorm names ('gamma', 'beta') are read; non-persistent buffers ('position_ids') ignored.
Every conversion is transposes and reshapes only: a round trip is bitwise.

Every failure is an `InteropError`: one line naming the directory or tensor and what is wrong.
Neither PyTorch nor `transformers` is needed (a `pytorch_model.bin` needs PyTorch to read).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from gwtn_jax import storage
from gwtn_jax.interop.tensors import InteropError
from gwtn_jax.interop.tensors import first_few

HF_MODEL_TYPES = ('bert', 'roberta-prelayernorm')
CONFIG_FILE = 'config.json'
WEIGHTS_FILES = ('model.safetensors', 'pytorch_model.bin')
SHARDED_INDEXES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
VOCAB_FILE = 'vocab.txt'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_MAP_FILE = 'special_tokens_map.json'
TOKENIZER_FILE = 'tokenizer.json'

# Our top-level modules that a checkpoint may lack (the caller initializes them).
HEAD_MODULES = ('mlm_head', 'pooler', 'nsp', 'classifier')

# Architecture -> (model_type, prefix of the encoder's names, heads it has, heads it may have).
ARCHITECTURES: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    'BertModel': ('bert', '', (), ('pooler',)),
    'BertForPreTraining': ('bert', 'bert.', ('mlm_head', 'pooler', 'nsp'), ()),
    'BertForMaskedLM': ('bert', 'bert.', ('mlm_head',), ()),
    'BertForNextSentencePrediction': ('bert', 'bert.', ('pooler', 'nsp'), ()),
    'BertForSequenceClassification': ('bert', 'bert.', ('pooler', 'classifier'), ()),
    'RobertaPreLayerNormModel': ('roberta-prelayernorm', '', (), ('pooler',)),
    'RobertaPreLayerNormForMaskedLM': ('roberta-prelayernorm', 'roberta_prelayernorm.',
                                       ('mlm_head',), ()),
    'RobertaPreLayerNormForSequenceClassification': (
        'roberta-prelayernorm', 'roberta_prelayernorm.', ('pooler', 'classifier'), ()),
}
_PREFIXES = {'bert': 'bert.', 'roberta-prelayernorm': 'roberta_prelayernorm.'}

# transformers' defaults of the config fields read here (config.json may leave them out).
_DEFAULTS = {
    'vocab_size': 30522, 'hidden_size': 768, 'num_hidden_layers': 12,
    'num_attention_heads': 12, 'intermediate_size': 3072, 'hidden_act': 'gelu',
    'max_position_embeddings': 512, 'type_vocab_size': 2, 'layer_norm_eps': 1e-12,
    'pad_token_id': 0, 'is_decoder': False, 'add_cross_attention': False,
    'position_embedding_type': 'absolute',
}
_ROBERTA_DEFAULTS = {**_DEFAULTS, 'vocab_size': 50265, 'pad_token_id': 1}

# Names in a state dict that are buffers, not parameters (older transformers saved them).
_BUFFERS = ('embeddings.position_ids', 'embeddings.token_type_ids')


def _join(directory: str, name: str) -> str:
  return f'{str(directory).rstrip("/")}/{name}'


# --- The directory -----------------------------------------------------------------------------


def weights_file(directory: str) -> str:
  """The weights file of a Hugging Face directory: model.safetensors, else pytorch_model.bin.

  Raises:
    InteropError: neither is there (a sharded checkpoint's index is named as such).
  """
  for name in WEIGHTS_FILES:
    path = _join(directory, name)
    if storage.isfile(path):
      return path
  for name in SHARDED_INDEXES:
    if storage.isfile(_join(directory, name)):
      raise InteropError(f'{directory} holds a sharded checkpoint ({name}), which is not read '
                         'here; re-save it in one file (save_pretrained(..., '
                         "max_shard_size='100GB'))")
  raise InteropError(f'{directory} has no weights: neither '
                     f'{" nor ".join(WEIGHTS_FILES)}')


def read_config(directory: str) -> dict[str, Any]:
  """config.json of a Hugging Face BERT directory (local or gs://), checked.

  Checks that the directory has its weights file (`weights_file`) and that the model type is
  one of `HF_MODEL_TYPES`; `bert_fields` checks the rest.

  Raises:
    InteropError: one line: no config.json, not JSON, no weights, or another model type.
  """
  path = _join(directory, CONFIG_FILE)
  if not storage.isfile(path):
    raise InteropError(f'{directory} is not a Hugging Face model directory: it has no '
                       f'{CONFIG_FILE}')
  config = _read_json(path)
  _check_model_type(config, path)
  weights_file(directory)
  return config


def _check_model_type(hf_config: Mapping[str, Any], where: str) -> str:
  model_type = hf_config.get('model_type')
  if model_type not in HF_MODEL_TYPES:
    raise InteropError(
        f'{where}: model_type {model_type!r} is not converted; accepted: '
        f'{", ".join(repr(t) for t in HF_MODEL_TYPES)} (BERT, and the pre-LN '
        'RobertaPreLayerNorm this library exports)')
  return model_type


def _architecture(hf_config: Mapping[str, Any], where: str) -> str | None:
  """The config's (first) architecture, checked against the model type; None if unnamed."""
  model_type = _check_model_type(hf_config, where)
  names = hf_config.get('architectures') or []
  if isinstance(names, str):
    names = [names]
  ours = [n for n, spec in ARCHITECTURES.items() if spec[0] == model_type]
  for name in names:
    if name not in ours:
      raise InteropError(f'{where}: architecture {name} is not converted (no such head here); '
                         f'accepted for model_type {model_type!r}: {", ".join(ours)}')
  return names[0] if names else None


def bert_fields(hf_config: Mapping[str, Any], where: str = CONFIG_FILE) -> dict[str, Any]:
  """The `gwtn_jax.models.Bert` fields of a Hugging Face BERT config.

  Args:
    hf_config: config.json's contents (`read_config`).
    where: its directory or file, for messages.

  Returns:
    vocab_size, hidden_size, num_layers, num_heads, intermediate_size, head_size,
    max_position (for 'roberta-prelayernorm': max_position_embeddings - pad_token_id - 1),
    type_vocab_size, layer_norm_eps, pre_layer_norm, and the heads of its architecture:
    nsp_head, num_classes (both False / 0 when config.json names no architecture).

  Raises:
    InteropError: one line naming what our Bert does not compute: another model type or
      architecture, an activation other than the exact (erf) 'gelu', relative position
      embeddings, a decoder, an embedding size other than the hidden size, ...
  """
  arch = _architecture(hf_config, where)
  roberta = hf_config['model_type'] == 'roberta-prelayernorm'
  defaults = _ROBERTA_DEFAULTS if roberta else _DEFAULTS

  def get(key):
    value = hf_config.get(key)
    return defaults.get(key) if value is None else value

  act = get('hidden_act')
  if act != 'gelu':
    raise InteropError(f"{where}: hidden_act={act!r} is not computed here (our Bert's FFN and "
                       "MLM head use the exact erf GELU, hidden_act 'gelu')")
  position = get('position_embedding_type')
  if position != 'absolute':
    raise InteropError(f'{where}: position_embedding_type={position!r} is not computed here '
                       "(absolute position embeddings only)")
  for key in ('is_decoder', 'add_cross_attention'):
    if get(key):
      raise InteropError(f'{where}: {key}=true is not computed here (our Bert is a '
                         'bidirectional encoder)')
  ints = {}
  for key in ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
              'intermediate_size', 'max_position_embeddings', 'type_vocab_size'):
    value = get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise InteropError(f'{where}: {key}={value!r} must be a positive integer')
    ints[key] = value
  hidden, heads = ints['hidden_size'], ints['num_attention_heads']
  if hidden % heads:
    raise InteropError(f'{where}: hidden_size={hidden} is not a multiple of '
                       f'num_attention_heads={heads}')
  embedding = hf_config.get('embedding_size')
  if embedding is not None and embedding != hidden:
    raise InteropError(f'{where}: embedding_size={embedding} differs from hidden_size={hidden} '
                       '(factorized embeddings are not computed here)')
  eps = get('layer_norm_eps')
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
    raise InteropError(f'{where}: layer_norm_eps={eps!r} must be a positive number')
  max_position = ints['max_position_embeddings']
  if roberta:
    offset = _position_offset(hf_config, where)
    max_position -= offset
    if max_position < 1:
      raise InteropError(f'{where}: max_position_embeddings={ints["max_position_embeddings"]} '
                         f'leaves no position after the {offset} that pad_token_id='
                         f'{offset - 1} reserves')
  num_classes = 0
  if arch is not None and arch.endswith('ForSequenceClassification'):
    labels = hf_config.get('id2label')
    num_classes = len(labels) if labels else int(hf_config.get('num_labels') or 2)
  return dict(
      vocab_size=ints['vocab_size'], hidden_size=hidden,
      num_layers=ints['num_hidden_layers'], num_heads=heads,
      intermediate_size=ints['intermediate_size'], head_size=hidden // heads,
      max_position=max_position, type_vocab_size=ints['type_vocab_size'],
      layer_norm_eps=float(eps), pre_layer_norm=roberta,
      nsp_head=arch in ('BertForPreTraining', 'BertForNextSentencePrediction'),
      num_classes=num_classes)


def _position_offset(hf_config: Mapping[str, Any], where: str) -> int:
  """Where our position 0 is in a roberta-prelayernorm position table: pad_token_id + 1."""
  pad = hf_config.get('pad_token_id', _ROBERTA_DEFAULTS['pad_token_id'])
  if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
    raise InteropError(f'{where}: pad_token_id={pad!r} must be a non-negative integer (it '
                       'offsets the positions of a roberta-prelayernorm model)')
  return pad + 1


def describe(hf_config: Mapping[str, Any]) -> str:
  """'24 layers of hidden 1024, 16 heads, FFN 4096, vocab 30522 (BertForPreTraining)'."""
  f = bert_fields(hf_config)
  names = hf_config.get('architectures') or [f'model_type {hf_config["model_type"]}']
  return (f'{f["num_layers"]} layers of hidden {f["hidden_size"]}, {f["num_heads"]} heads, '
          f'FFN {f["intermediate_size"]}, vocab {f["vocab_size"]} ({names[0]})')


# --- The mapping -------------------------------------------------------------------------------
#
# An entry: (our path in the unrolled layout, their name, kind). The kind says how the arrays
# relate: 'copy'; 'linear' (a transpose); 'heads_in' (their [H*K, E] is our [E, H, K]);
# 'heads_bias' ([H*K] / [H, K]); 'heads_out' ([E, H*K] / [H, K, E]); 'positions' (our rows are
# theirs from `offset` on).


def _norm(ours: tuple[str, ...], theirs: str) -> list[tuple[tuple[str, ...], str, str]]:
  return [(ours + ('scale',), f'{theirs}.weight', 'copy'),
          (ours + ('bias',), f'{theirs}.bias', 'copy')]


def _linear(ours: tuple[str, ...], theirs: str, kind: str = 'linear',
            bias_kind: str = 'copy') -> list[tuple[tuple[str, ...], str, str]]:
  return [(ours + ('kernel',), f'{theirs}.weight', kind),
          (ours + ('bias',), f'{theirs}.bias', bias_kind)]


def _entries(num_layers: int, pre_ln: bool, base: str, pooler: str, classifier: str
             ) -> list[tuple[tuple[str, ...], str, str]]:
  """Every parameter of a Bert with all its heads, and its Hugging Face name."""
  emb = f'{base}embeddings'
  out = [(('embedder', 'word', 'embedding'), f'{emb}.word_embeddings.weight', 'copy'),
         (('embedder', 'position', 'embedding'), f'{emb}.position_embeddings.weight',
          'positions' if pre_ln else 'copy'),
         (('embedder', 'token_type', 'embedding'), f'{emb}.token_type_embeddings.weight',
          'copy')]
  out += _norm(('embedder', 'norm'), f'{emb}.LayerNorm')
  for i in range(num_layers):
    ours = (f'encoder_layer_{i + 1}',)
    theirs = f'{base}encoder.layer.{i}'
    for name in ('query', 'key', 'value'):
      out += _linear(ours + ('attention', name), f'{theirs}.attention.self.{name}',
                     'heads_in', 'heads_bias')
    out += _linear(ours + ('attention', 'out'), f'{theirs}.attention.output.dense', 'heads_out')
    if pre_ln:
      out += _norm(ours + ('attention_norm',), f'{theirs}.attention.LayerNorm')
      out += _norm(ours + ('mlp_norm',), f'{theirs}.intermediate.LayerNorm')
    else:
      out += _norm(ours + ('attention_norm',), f'{theirs}.attention.output.LayerNorm')
      out += _norm(ours + ('mlp_norm',), f'{theirs}.output.LayerNorm')
    out += _linear(ours + ('mlp', 'wi'), f'{theirs}.intermediate.dense')
    out += _linear(ours + ('mlp', 'wo'), f'{theirs}.output.dense')
  if pre_ln:
    out += _norm(('final_norm',), f'{base}LayerNorm')
    out += _linear(('mlm_head', 'transform'), 'lm_head.dense')
    out += _norm(('mlm_head', 'norm'), 'lm_head.layer_norm')
    out.append((('mlm_head', 'output_bias'), 'lm_head.bias', 'copy'))
  else:
    out += _linear(('mlm_head', 'transform'), 'cls.predictions.transform.dense')
    out += _norm(('mlm_head', 'norm'), 'cls.predictions.transform.LayerNorm')
    out.append((('mlm_head', 'output_bias'), 'cls.predictions.bias', 'copy'))
    out += _linear(('nsp',), 'cls.seq_relationship')
  out += _linear(('pooler',), pooler)
  out += _linear(('classifier',), classifier)
  return out


def _decoder(pre_ln: bool) -> tuple[str, str]:
  """The tied MLM decoder's names (weight = word embeddings, bias = output bias)."""
  head = 'lm_head' if pre_ln else 'cls.predictions'
  return f'{head}.decoder.weight', f'{head}.decoder.bias'


def _head_names(pre_ln: bool, base: str, tensors=()) -> tuple[str, str]:
  """(pooler, classifier) names: RoBERTa's classification head holds our pooler."""
  if not pre_ln:
    return f'{base}pooler.dense', 'classifier'
  if 'classifier.dense.weight' in tensors or 'classifier.out_proj.weight' in tensors:
    return 'classifier.dense', 'classifier.out_proj'
  return f'{base}pooler.dense', 'classifier.out_proj'


def _their_shape(kind: str, shape: tuple[int, ...], offset: int) -> tuple[int, ...]:
  if kind == 'linear':
    return tuple(reversed(shape))
  if kind == 'heads_in':
    e, h, k = shape
    return (h * k, e)
  if kind == 'heads_bias':
    return (int(np.prod(shape)),)
  if kind == 'heads_out':
    h, k, e = shape
    return (e, h * k)
  if kind == 'positions':
    return (shape[0] + offset, shape[1])
  return tuple(shape)


def _to_ours(kind: str, a: np.ndarray, shape: tuple[int, ...], offset: int) -> np.ndarray:
  if kind == 'linear':
    return a.T
  if kind in ('heads_in', 'heads_out'):
    return a.T.reshape(shape)
  if kind == 'heads_bias':
    return a.reshape(shape)
  if kind == 'positions':
    return a[offset:]
  return a


def _to_theirs(kind: str, a: np.ndarray, offset: int) -> np.ndarray:
  if kind == 'linear':
    return a.T
  if kind == 'heads_in':
    return a.reshape(a.shape[0], -1).T
  if kind == 'heads_bias':
    return a.reshape(-1)
  if kind == 'heads_out':
    return a.reshape(-1, a.shape[-1]).T
  if kind == 'positions':
    return np.concatenate([np.zeros((offset, a.shape[1]), a.dtype), a])
  return a


def _expected_params(model) -> dict[tuple[str, ...], Any]:
  """Our flat path -> ShapeDtypeStruct of `model`'s params, as its init makes them."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  return traverse_util.flatten_dict(nn.meta.unbox(shapes['params']))


def _unrolled(path: tuple[str, ...], num_layers: int, scan: bool):
  """The unrolled paths of one of our paths ('encoder/...' is one per layer under scan)."""
  if scan and path[0] == 'encoder':
    return [(f'encoder_layer_{i + 1}',) + path[1:] for i in range(num_layers)]
  return [path]


def _check_model(model, fields: Mapping[str, Any], where: str) -> None:
  from gwtn_jax.models import bert as bert_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(model, bert_lib.Bert):
    raise InteropError(f'{where} holds a BERT; the model is a {type(model).__name__}')
  try:
    d = model.dims()
  except ValueError as e:
    raise InteropError(str(e)) from None
  ours = dict(vocab_size=model.vocab_size, hidden_size=d.hidden, num_layers=d.num_layers,
              num_heads=d.num_heads, intermediate_size=d.intermediate, head_size=d.head_size,
              max_position=model.max_position, type_vocab_size=model.type_vocab_size,
              layer_norm_eps=model.layer_norm_eps, pre_layer_norm=model.pre_layer_norm)
  for key, mine in ours.items():
    if fields[key] != mine:
      raise InteropError(f'{where} has {key}={fields[key]!r} but the model {key}={mine!r}')


def _normalized(tensors: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
  """Legacy LayerNorm names (gamma, beta) renamed; buffers left out."""
  out = {}
  for name, array in tensors.items():
    parts = name.split('.')
    if len(parts) >= 2 and parts[-2] in ('LayerNorm', 'layer_norm') and parts[-1] in (
        'gamma', 'beta'):
      name = '.'.join(parts[:-1] + ['weight' if parts[-1] == 'gamma' else 'bias'])
    if name.endswith(_BUFFERS) and name.count('.') <= 2:
      continue
    if name in out:
      raise InteropError(f'{where} has {name} twice (under its legacy gamma/beta name too)')
    out[name] = array
  return out


def to_variables(tensors: Mapping[str, np.ndarray], hf_config: Mapping[str, Any], model,
                 where: str) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
  """`model`'s variables from a Hugging Face BERT state dict.

  Args:
    tensors: Hugging Face name -> array (`gwtn_jax.interop.tensors.read_tensors`).
    hf_config: its config.json (`read_config`).
    model: the `gwtn_jax.models.Bert` to load them into; its sizes, ``pre_layer_norm`` and
      ``layer_norm_eps`` must be the checkpoint's (`bert_fields`); its heads may differ.
    where: the checkpoint, for messages (e.g. its directory).

  Returns:
    (variables, missing, dropped): variables is {'params': nested dict of numpy arrays},
    the tree `model.init` gives (unboxed; scanned or unrolled as ``model.scan_layers`` says;
    its dtypes) less the head modules in `missing`: those of ours (of `HEAD_MODULES`) the
    checkpoint has none of, e.g. ('mlm_head',) for a `BertModel`, for the caller to
    initialize. dropped: the checkpoint's tensors of heads `model` has not (e.g. the pooler
    and NSP head of a `BertForPreTraining` for a model without ``nsp_head``), sorted.

  Raises:
    InteropError: one line: a config we cannot compute (`bert_fields`), a model of other
      sizes, a tensor of the wrong shape, untied MLM output embeddings, or a state dict
      with missing (other than whole heads) or unknown tensors, naming the first few.
  """
  fields = bert_fields(hf_config, where)
  _check_model(model, fields, where)
  pre_ln = fields['pre_layer_norm']
  tensors = _normalized(tensors, where)
  prefix = _PREFIXES[hf_config['model_type']]
  base = prefix if any(n.startswith(prefix) for n in tensors) else ''
  pooler, classifier = _head_names(pre_ln, base, tensors)
  offset = _position_offset(hf_config, where) if pre_ln else 0

  num_layers = model.num_layers
  expected = _expected_params(model)
  scan = bool(model.scan_layers)
  shapes = {}  # unrolled path -> (shape, dtype)
  for path, leaf in expected.items():
    for p in _unrolled(path, num_layers, scan):
      shapes[p] = (leaf.shape[1:] if p != path else leaf.shape, leaf.dtype)
  modules = {p[0] for p in shapes}

  converted, used, missing, dropped = {}, set(), [], []
  for ours, theirs, kind in _entries(num_layers, pre_ln, base, pooler, classifier):
    if ours[0] not in modules:
      if theirs in tensors:
        dropped.append(theirs)
        used.add(theirs)
      continue
    if theirs not in tensors:
      missing.append((ours[0], theirs))
      continue
    shape, dtype = shapes[ours]
    array = np.asarray(tensors[theirs])
    want = _their_shape(kind, shape, offset)
    if array.shape != want:
      raise InteropError(f'{where}: {theirs} has shape {list(array.shape)}, the model needs '
                         f'{list(want)} (for {"/".join(ours)})')
    converted[ours] = _to_ours(kind, array, shape, offset).astype(dtype)
    used.add(theirs)

  # The tied MLM decoder: the word embeddings and the output bias again.
  for name, tied in zip(_decoder(pre_ln), (('embedder', 'word', 'embedding'),
                                           ('mlm_head', 'output_bias'))):
    if name not in tensors:
      continue
    used.add(name)
    if 'mlm_head' not in modules:
      dropped.append(name)
    elif tied in converted and not np.array_equal(np.asarray(tensors[name]),
                                                  converted[tied]):
      raise InteropError(f'{where}: {name} differs from {"/".join(tied)}: the MLM output is '
                         'not tied to the input embeddings, which our Bert cannot hold')

  unknown = sorted(set(tensors) - used)
  absent_modules = {m for m, _ in missing}
  complete = {m for m in absent_modules if m in HEAD_MODULES and not any(
      m == o[0] for o in converted)}
  bad = sorted(t for m, t in missing if m not in complete)
  if bad or unknown:
    parts = ([f'missing {first_few(bad)}'] if bad else []) + (
        [f'unknown {first_few(unknown)}'] if unknown else [])
    raise InteropError(f'{where} is not a state dict of this model: {"; ".join(parts)}')

  params: dict[str, Any] = {}
  for path, leaf in expected.items():
    if path[0] in complete:
      continue
    rows = [converted[p] for p in _unrolled(path, num_layers, scan)]
    value = np.stack(rows) if scan and path[0] == 'encoder' else rows[0]
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return {'params': params}, tuple(m for m in HEAD_MODULES if m in complete), tuple(
      sorted(dropped))


def from_variables(variables: Mapping[str, Any], model, *, pad_token_id: int,
                   architecture: str | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """A Hugging Face state dict and config.json of `model`'s variables.

  Args:
    variables: {'params': ...} of `model` (boxed or not; jax or numpy arrays); head modules
      the architecture does not export may be absent.
    model: its `gwtn_jax.models.Bert`.
    pad_token_id: the vocabulary's [PAD] id (config.json's; a pre-LN model's positions are
      offset by it, see the module docstring).
    architecture: a key of `ARCHITECTURES` of the model's kind. By default a post-LN model
      is a `BertForSequenceClassification` when it has ``num_classes``, else a
      `BertForPreTraining` when it has ``nsp_head``, else a `BertForMaskedLM`; a pre-LN one a
      `RobertaPreLayerNormForSequenceClassification` or `...ForMaskedLM`. Heads the
      architecture has not are left out.

  Returns:
    (state dict: Hugging Face name -> numpy array, without the tied MLM decoder as
    `save_pretrained` writes it; config.json as a dict). Write them with
    `gwtn_jax.interop.tensors.write_safetensors` and json (or `write_model`).

  Raises:
    InteropError: one line: an architecture of the other kind, a head it needs that the
      variables lack, variables that are not the model's, or a pre-LN model with an NSP head
      and no architecture given (RoBERTa-PreLayerNorm has no next-sentence head).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  where = 'the variables'
  d = model.dims()
  pre_ln = bool(model.pre_layer_norm)
  model_type = HF_MODEL_TYPES[1] if pre_ln else HF_MODEL_TYPES[0]
  if architecture is None:
    if pre_ln and model.nsp_head:
      raise InteropError(
          'a pre-LN Bert with nsp_head cannot be exported whole: its Hugging Face form, '
          'RobertaPreLayerNorm, has no next-sentence head; pass architecture='
          "'RobertaPreLayerNormForMaskedLM' (or ...ForSequenceClassification) to leave it out")
    family = 'RobertaPreLayerNorm' if pre_ln else 'Bert'
    if model.num_classes:
      architecture = f'{family}ForSequenceClassification'
    elif model.nsp_head:
      architecture = 'BertForPreTraining'
    else:
      architecture = f'{family}ForMaskedLM'
  if architecture not in ARCHITECTURES or ARCHITECTURES[architecture][0] != model_type:
    kind = 'pre-LN' if pre_ln else 'post-LN'
    accepted = [n for n, spec in ARCHITECTURES.items() if spec[0] == model_type]
    raise InteropError(f'architecture={architecture!r} is not one of a {kind} Bert: '
                       f'{", ".join(accepted)}')
  _, base, needed, optional = ARCHITECTURES[architecture]
  if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or not (
      0 <= pad_token_id < model.vocab_size):
    raise InteropError(f'pad_token_id={pad_token_id!r} must be an id of the vocabulary '
                       f'(0..{model.vocab_size - 1})')

  params = variables['params'] if 'params' in variables else variables
  flat = traverse_util.flatten_dict(nn.meta.unbox(params))
  expected = _expected_params(model)
  have_modules = {p[0] for p in flat}
  for head in needed:
    if head not in have_modules:
      raise InteropError(f'{architecture} needs our {head}, which the variables lack (they '
                         f'hold {", ".join(sorted(have_modules)) or "nothing"})')
  exported = {'embedder', 'encoder', 'final_norm'} | {
      f'encoder_layer_{i + 1}' for i in range(d.num_layers)} | set(needed) | (
          set(optional) & have_modules)
  scan = bool(model.scan_layers)
  ours = {}
  for path, leaf in expected.items():
    if path[0] not in exported:
      continue
    if path not in flat:
      raise InteropError(f'{where} lack {"/".join(path)}: they are not of this model')
    array = np.asarray(flat[path])
    if array.shape != leaf.shape:
      raise InteropError(f'{where}: {"/".join(path)} has shape {list(array.shape)}, the model '
                         f'{list(leaf.shape)}')
    for i, p in enumerate(_unrolled(path, d.num_layers, scan)):
      ours[p] = array[i] if p != path else array

  pooler, classifier = _head_names(
      pre_ln, base, ('classifier.dense.weight',) if architecture.endswith(
          'ForSequenceClassification') else ())
  offset = pad_token_id + 1 if pre_ln else 0
  state = {}
  for path, theirs, kind in _entries(d.num_layers, pre_ln, base, pooler, classifier):
    if path in ours:
      state[theirs] = np.ascontiguousarray(_to_theirs(kind, ours[path], offset))

  dtype = np.asarray(ours[('embedder', 'word', 'embedding')]).dtype
  config = {
      'architectures': [architecture],
      'model_type': model_type,
      'vocab_size': model.vocab_size,
      'hidden_size': d.hidden,
      'num_hidden_layers': d.num_layers,
      'num_attention_heads': d.num_heads,
      'intermediate_size': d.intermediate,
      'hidden_act': 'gelu',
      'hidden_dropout_prob': float(model.dropout_rate),
      'attention_probs_dropout_prob': float(model.attention_dropout_rate),
      'classifier_dropout': None,
      'max_position_embeddings': model.max_position + offset,
      'type_vocab_size': model.type_vocab_size,
      'initializer_range': 0.02,
      'layer_norm_eps': float(model.layer_norm_eps),
      'pad_token_id': pad_token_id,
      'bos_token_id': None,
      'eos_token_id': None,
      'is_decoder': False,
      'add_cross_attention': False,
      'tie_word_embeddings': True,
      'use_cache': True,
      'dtype': 'bfloat16' if dtype.name == 'bfloat16' else str(dtype),
  }
  if architecture.endswith('ForSequenceClassification'):
    config['id2label'] = {str(i): f'LABEL_{i}' for i in range(model.num_classes)}
    config['label2id'] = {f'LABEL_{i}': i for i in range(model.num_classes)}
  return state, config


# --- Whole directories -------------------------------------------------------------------------


def read_model(directory: str, model) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
  """`to_variables` of a Hugging Face directory: (variables, missing heads, dropped names)."""
  from gwtn_jax.interop import tensors as tensors_lib  # pylint: disable=g-import-not-at-top
  config = read_config(directory)
  return to_variables(tensors_lib.read_tensors(weights_file(directory)), config, model,
                      directory)


def write_model(directory: str, variables: Mapping[str, Any], model, *, pad_token_id: int,
                architecture: str | None = None) -> dict[str, Any]:
  """`from_variables` written as model.safetensors and config.json; returns the config."""
  from gwtn_jax.interop import tensors as tensors_lib  # pylint: disable=g-import-not-at-top
  state, config = from_variables(variables, model, pad_token_id=pad_token_id,
                                 architecture=architecture)
  storage.makedirs(directory)
  tensors_lib.write_safetensors(_join(directory, WEIGHTS_FILES[0]), state)
  storage.write_text(_join(directory, CONFIG_FILE), json.dumps(config, indent=2) + '\n')
  return config


# --- The tokenizer -----------------------------------------------------------------------------


def write_tokenizer(directory: str, vocab_file: str, lowercase: bool, max_length: int) -> None:
  """A `transformers` BertTokenizer of our WordPiece vocabulary, in `directory`.

  Writes vocab.txt, tokenizer_config.json and special_tokens_map.json, so that
  `transformers.AutoTokenizer.from_pretrained(directory)` tokenizes as
  `gwtn_jax.data.wordpiece.load_wordpiece(vocab_file, lowercase)` does (the BERT normalizer
  with accents stripped when lowercasing, Chinese characters split, '##' word pieces; and
  it adds [CLS] ... [SEP] when asked to add special tokens, as packing does).

  Raises:
    ValueError: a vocabulary without the special tokens (`wordpiece.read_vocab`; a
      tokenizer.json's is written out as vocab.txt).
  """
  from gwtn_jax.data import wordpiece  # pylint: disable=g-import-not-at-top
  text = ''.join(t + '\n' for t in wordpiece.read_vocab(vocab_file))
  names = ('pad_token', 'unk_token', 'cls_token', 'sep_token', 'mask_token')
  specials = dict(zip(names, wordpiece.SPECIAL_TOKENS))
  config = {
      'tokenizer_class': 'BertTokenizer',
      'do_lower_case': bool(lowercase),
      'strip_accents': None,
      'tokenize_chinese_chars': True,
      'model_max_length': int(max_length),
      'clean_up_tokenization_spaces': False,
      **specials,
  }
  storage.makedirs(directory)
  storage.write_text(_join(directory, VOCAB_FILE), text)
  storage.write_text(_join(directory, TOKENIZER_CONFIG_FILE), json.dumps(config, indent=2) + '\n')
  storage.write_text(_join(directory, SPECIAL_TOKENS_MAP_FILE),
                     json.dumps(specials, indent=2) + '\n')


def tokenizer_options(directory: str) -> tuple[str | None, bool | None]:
  """(its vocabulary's file, do_lower_case) of a Hugging Face directory; None for what it
  lacks. The vocabulary is vocab.txt, else tokenizer.json (transformers 5 writes only that;
  `gwtn_jax.data.wordpiece` reads the WordPiece vocabulary from either).

  do_lower_case comes from tokenizer_config.json (a BertTokenizer's default True when it
  names none), else from tokenizer.json's BERT normalizer.

  Raises:
    InteropError: one line: a BERT tokenizer that `load_wordpiece` would not reproduce
      (strip_accents set otherwise than do_lower_case, Chinese characters not split), or
      an unreadable file.
  """
  vocab = next((p for p in (_join(directory, VOCAB_FILE), _join(directory, TOKENIZER_FILE))
                if storage.isfile(p)), None)
  lower, strip, chinese, where = None, None, None, None
  path = _join(directory, TOKENIZER_CONFIG_FILE)
  if storage.isfile(path):
    where = path
    config = _read_json(path)
    lower = config.get('do_lower_case')
    if lower is None and str(config.get('tokenizer_class', '')).startswith('BertTokenizer'):
      lower = True
    strip, chinese = config.get('strip_accents'), config.get('tokenize_chinese_chars')
  else:
    path = _join(directory, TOKENIZER_FILE)
    if storage.isfile(path):
      where = path
      normalizer = _read_json(path).get('normalizer') or {}
      if normalizer.get('type') == 'BertNormalizer':
        lower = normalizer.get('lowercase')
        strip = normalizer.get('strip_accents')
        chinese = normalizer.get('handle_chinese_chars')
  if lower is not None:
    lower = bool(lower)
    if strip is not None and bool(strip) != lower:
      raise InteropError(f'{where}: strip_accents={strip} with do_lower_case={lower} is not '
                         'what our WordPiece tokenizer does (it strips accents when, and only '
                         'when, it lowercases)')
    if chinese is not None and not chinese:
      raise InteropError(f'{where}: tokenize_chinese_chars=false is not what our WordPiece '
                         'tokenizer does')
  return vocab, lower


def _read_json(path: str) -> dict[str, Any]:
  try:
    value = json.loads(storage.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise InteropError(f'{path} is not JSON ({" ".join(str(e).split())[:120]})') from None
  if not isinstance(value, dict):
    raise InteropError(f'{path} holds a {type(value).__name__}, not a JSON object')
  return value
