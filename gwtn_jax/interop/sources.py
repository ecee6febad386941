"""Where a network comes from: a stage of this library, or another framework's checkpoint.

`teacher_dir` and `thin_init` name one of:

- a stage folder of this library (`WORKDIR/stages/wide`): its `result.json` and `final/`;
- a Hugging Face BERT directory, as `save_pretrained` writes it (`config.json` and
  `model.safetensors` or `pytorch_model.bin`): `BertModel`, `BertForPreTraining`,
  `BertForMaskedLM`, `BertForSequenceClassification`, or the pre-LN
  `RobertaPreLayerNorm*` that `gwtn_jax.export` writes for a pre-LN BERT (`bert_hf`);
- a torchvision or timm ResNet state dict (`.safetensors`, or `.pth`/`.bin` with PyTorch):
  resnet18/34/50/101/152 and wide_resnet50_2/101_2 (`resnet_torch`).

`identify` tells which, from the path alone and small files (config.json); `check` compares
the architecture the source holds with the config's network, before anything is compiled,
and names the config field to change; `load` converts and places the variables in the mesh's
shardings. Every error is one line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from gwtn_jax import storage
from gwtn_jax.interop import tensors as tensors_lib
from gwtn_jax.interop.tensors import InteropError
from gwtn_jax.train import layout

STAGE = 'stage'
HF_BERT = 'hf_bert'
TORCH_RESNET = 'torch_resnet'
HF_CONFIG = 'config.json'


@dataclasses.dataclass(frozen=True)
class Source:
  """A network's source.

  Attributes:
    path: as given.
    kind: STAGE, HF_BERT or TORCH_RESNET.
    field: the config field that named it ('teacher_dir', 'thin_init'), for errors.
  """
  path: str
  kind: str
  field: str

  @property
  def where(self) -> str:
    return f'{self.field}={self.path}'


def identify(path: str, field: str) -> Source:
  """The kind of network `path` holds, from its name and listing alone.

  A folder that is neither a Hugging Face directory nor holds weight files is taken as a stage
  folder, whose own check (`layout.unfinished_reason`) says what is missing there.

  Raises:
    InteropError: one line: a file that is no state dict, or a folder of weight files without
      the config.json that says what they are.
    storage.StorageError: a remote store that does not answer.
  """
  where = f'{field}={path}'
  if not storage.is_remote(path):
    return _identify(path, field, where)
  storage.check_endpoint(where)
  return storage.with_deadline(where, lambda: _identify(path, field, where))


def _identify(path: str, field: str, where: str) -> Source:
  suffixes = (tensors_lib.SAFETENSORS_SUFFIX,) + tensors_lib.TORCH_SUFFIXES
  if storage.isfile(path):
    if path.endswith(suffixes):
      return Source(path, TORCH_RESNET, field)
    raise InteropError(f'{where} is a file but not a state dict: give a torchvision/timm '
                       f'ResNet .safetensors or .pth, a Hugging Face directory or a stage folder')
  if not storage.isdir(path):
    return Source(path, STAGE, field)
  if storage.exists(os.path.join(path, HF_CONFIG)):
    return Source(path, HF_BERT, field)
  names = set(storage.listdir(path))
  weights = sorted(n for n in names if n.endswith(suffixes))
  if weights and not names & {layout.RESULT_FILE, layout.FINAL_DIR, layout.CHECKPOINTS_DIR}:
    raise InteropError(
        f'{where} holds {", ".join(weights[:3])} but no {HF_CONFIG}: give a torchvision/timm '
        f'state dict as the file itself ({field}={os.path.join(path, weights[0])}), or a Hugging '
        f'Face directory with its {HF_CONFIG}')
  return Source(path, STAGE, field)


# --- Architecture checks --------------------------------------------------------------------


# The check and the load each read the files again (not cached: a file may change between two
# runs of one process); a config.json is small, and a ResNet state dict reads in a second or two.
def _hf_config(path: str) -> dict[str, Any]:
  from gwtn_jax.interop import bert_hf  # pylint: disable=g-import-not-at-top
  return bert_hf.read_config(path)


def check(source: Source, model: nn.Module, abstract: Any, role_fields: str,
          thin: nn.Module | None = None) -> None:
  """The architecture `source` holds is `model`'s, before anything is restored or compiled.

  Args:
    source: from `identify` (not a stage folder, which the config check compares by its
      checkpoint's metadata).
    model: the config's network for it (the wide one for a teacher, the thin one for thin_init).
    abstract: its variables' shapes (`jax.eval_shape` of its task's init).
    thin: the thin network, when `model` is its teacher (to say the layer map a deeper
      teacher needs).
    role_fields: how the config names that network, for the message
      (e.g. 'model.wide_name=bert_base, wide_width=1').

  Raises:
    InteropError: one line naming both architectures and the config fields to change.
  """
  if source.kind == HF_BERT:
    _check_bert(source, model, role_fields, thin)
  elif source.kind == TORCH_RESNET:
    _check_resnet(source, model, abstract, role_fields)


def _check_bert(source: Source, model, role_fields: str, thin) -> None:
  from gwtn_jax.interop import bert_hf  # pylint: disable=g-import-not-at-top
  from gwtn_jax.models import bert as bert_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(model, bert_lib.Bert):
    raise InteropError(f'{source.where} holds a Hugging Face BERT, but the config\'s network is '
                       f'a ResNet ({role_fields})')
  hf = _hf_config(source.path)
  tensors_lib.check_readable(bert_hf.weights_file(source.path))
  fields = bert_hf.bert_fields(hf)
  d = model.dims()
  ours = dict(num_layers=d.num_layers, hidden_size=d.hidden, num_heads=d.num_heads,
              intermediate_size=d.intermediate)
  theirs = {k: fields[k] for k in ours}
  if ours != theirs:
    raise InteropError(
        f'{role_fields} but {source.where} holds {bert_hf.describe(hf)}'
        f' (the config gives {d.num_layers} layers of hidden {d.hidden}, {d.num_heads} heads, '
        f'FFN {d.intermediate}): {_bert_fix(theirs, role_fields, thin)}')
  for field, theirs_value, config_field in (
      ('vocab_size', fields['vocab_size'], 'data.vocab_file (the teacher\'s vocab.txt)'),
      ('max_position', fields['max_position'], 'model.max_position'),
      ('type_vocab_size', fields['type_vocab_size'], None),
      ('pre_layer_norm', fields['pre_layer_norm'], 'model.pre_layer_norm'),
      ('layer_norm_eps', fields['layer_norm_eps'], None)):
    mine = getattr(model, field)
    if mine != theirs_value:
      fix = f'set {config_field}' if config_field else 'not a config field of this library'
      raise InteropError(f'{source.where} has {field}={theirs_value} but the config\'s network '
                         f'{field}={mine} ({fix})')


def _bert_fix(theirs: dict[str, int], role_fields: str, thin) -> str:
  """What to set for a BERT of `theirs` sizes: a preset, and the layer map it implies."""
  from gwtn_jax.models import bert as bert_lib  # pylint: disable=g-import-not-at-top
  for name, preset in bert_lib.BERT_PRESETS.items():
    m = preset(vocab_size=2)
    if (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (
        theirs['num_layers'], theirs['hidden_size'], theirs['num_heads'],
        theirs['intermediate_size']):
      wide = 'model.wide_name' if 'wide' in role_fields else 'model.name'
      width = 'wide_width' if 'wide' in role_fields else 'thin_width'
      fix = f'use {wide}={name} and {width}=1'
      layers = theirs['num_layers']
      if thin is not None and thin.num_layers != layers:
        fix += (f', and an imitate.layer_map of {thin.num_layers + 1} entries, one per thin '
                f'point (recipes.even_layer_map({thin.num_layers}, {layers}) spaces them evenly)')
      return fix
  return ('no preset has these sizes; set the model fields to match, or convert another '
          'checkpoint')


def _check_resnet(source: Source, model, abstract, role_fields: str) -> None:
  from gwtn_jax.interop import resnet_torch  # pylint: disable=g-import-not-at-top
  from gwtn_jax.models import resnet as resnet_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(model, resnet_lib.ResNet):
    raise InteropError(f'{source.where} holds a ResNet state dict, but the config\'s network is '
                       f'a BERT ({role_fields})')
  found = resnet_torch.describe(tensors_lib.read_tensors(source.path), source.where)
  expected = resnet_torch.describe(
      resnet_torch.from_variables(_zeros(abstract), model), 'the config')
  if (found.name, found.width_multiplier, found.widths) != (
      expected.name, expected.width_multiplier, expected.widths):
    width = 'wide_width' if 'wide' in role_fields else 'thin_width'
    fix = (f'use model.name={found.name} (or model.wide_name) and {width}='
           f'{found.width_multiplier:g}' if found.widths is None else
           'its per-layer widths follow no width multiplier of this library')
    raise InteropError(f'{role_fields} but {source.where} holds {found.describe()}, not '
                       f'{expected.describe()}: {fix}')
  if found.num_classes != expected.num_classes:
    raise InteropError(f'{source.where} has {found.num_classes} classes but the config\'s network '
                       f'{expected.num_classes}: set model.num_classes={found.num_classes}')


def _zeros(abstract) -> dict[str, Any]:
  """Zeros in the shapes of a network's params and batch_stats (to describe it)."""
  shapes = {c: v for c, v in nn.meta.unbox(abstract).items() if c in ('params', 'batch_stats')}
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


# --- Loading ---------------------------------------------------------------------------------


def convert(source: Source, model: nn.Module) -> tuple[dict[str, Any], tuple[str, ...]]:
  """(the variables of `model`, as numpy, from another framework's checkpoint; the head
  modules it lacked, which the caller initializes)."""
  if source.kind == HF_BERT:
    from gwtn_jax.interop import bert_hf  # pylint: disable=g-import-not-at-top
    hf = _hf_config(source.path)
    tensors = tensors_lib.read_tensors(bert_hf.weights_file(source.path))
    variables, missing, dropped = bert_hf.to_variables(tensors, hf, model, source.where)
    if dropped:
      _note(f'{source.where}: not used by the config\'s network (no such head): '
            f'{tensors_lib.first_few(dropped)}')
    return variables, tuple(missing)
  from gwtn_jax.interop import resnet_torch  # pylint: disable=g-import-not-at-top
  return resnet_torch.to_variables(tensors_lib.read_tensors(source.path), model, source.where), ()


def _note(message: str) -> None:
  if jax.process_index() == 0:
    print(f'note: {message}', file=sys.stderr, flush=True)


def load(source: Source, model: nn.Module, task, mesh, rules, seed: int = 0):
  """`model`'s variables from `source`, placed straight into this mesh's shardings.

  A stage folder is restored by orbax; another framework's checkpoint is converted on every
  host (each reads the file) and each device takes its shard. Head modules the checkpoint
  lacks (a `BertModel` has no MLM head) keep a random initialization from `seed`, with a note.
  """
  from gwtn_jax.train import loop  # pylint: disable=g-import-not-at-top
  if source.kind == STAGE:
    return loop.load_stage_output(source.path, model, task, mesh, rules)
  target = loop.model_abstract_variables(model, task, mesh, rules)
  converted, missing = convert(source, model)
  if missing:
    _note(f'{source.where} has no {", ".join(missing)}: randomly initialized (seed {seed})')
    fresh = loop.init_model_variables(model, task, mesh, rules, jax.random.key(seed))
  else:
    fresh = None

  def place(path, abstract):
    keys = tuple(str(getattr(k, 'key', k)) for k in path)
    node = converted
    for key in keys:
      if not isinstance(node, dict) or key not in node:
        if fresh is None or keys[1] not in missing:
          raise InteropError(f'{source.where}: no value for {"/".join(keys)} after conversion')
        node = None
        break
      node = node[key]
    if node is None:
      return _lookup(fresh, keys)
    array = np.asarray(node)
    if array.shape != abstract.shape:
      raise InteropError(f'{source.where}: {"/".join(keys)} is {array.shape}, the config\'s '
                         f'network has {abstract.shape}')
    array = array.astype(abstract.dtype)
    return jax.make_array_from_callback(abstract.shape, abstract.sharding,
                                        lambda index: array[index])

  return jax.tree_util.tree_map_with_path(place, target)


def _lookup(tree, keys):
  for key in keys:
    tree = tree[key]
  return tree

