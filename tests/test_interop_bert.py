"""Tests of gwtn_jax.interop.bert_hf against transformers (PyTorch, CPU).

Tiny random models (3 layers, hidden 32, 4 heads, FFN 64, vocab 100) with every LayerNorm and
bias randomized, so that a wrong mapping cannot hide behind ones and zeros:

- parity: Hugging Face BERTs (`save_pretrained`) imported into our Bert (unrolled and scanned)
  give their hidden states and logits on padded batches;
- round trips: import then export gives back every saved tensor bitwise; export then import
  gives back our variables bitwise;
- exports: our post-LN and pre-LN models load in transformers and give our outputs;
- the tokenizer: transformers' BertTokenizer of our vocab.txt tokenizes as ours;
- bad inputs: one-line errors naming what is wrong.
"""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from gwtn_jax.data import wordpiece
from gwtn_jax.interop import bert_hf
from gwtn_jax.interop import tensors as tensors_lib
from gwtn_jax.interop.tensors import InteropError
from gwtn_jax.models import bert as bert_lib

pytestmark = pytest.mark.xdist_group('torch')

LAYERS = 3
SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=32)
NUM_LABELS = 3
HF_ARCHITECTURES = ('BertForPreTraining', 'BertForMaskedLM', 'BertForSequenceClassification',
                    'BertModel')
# What our Bert (with the checkpoint's own heads, `bert_fields`) lacks of each, and drops.
MISSING = {'BertForPreTraining': (), 'BertForMaskedLM': (),
           'BertForSequenceClassification': ('mlm_head',), 'BertModel': ('mlm_head',)}
DROPPED = {'BertForPreTraining': (), 'BertForMaskedLM': (), 'BertForSequenceClassification': (),
           'BertModel': ('pooler.dense.bias', 'pooler.dense.weight')}
# Relative to the outputs' scale; every difference measured is printed (pytest -s).
TOL = dict(rtol=1e-5, atol=2e-5)


def _inputs(seed=0, batch=3, length=12, pad_id=0):
  """Right-padded ids (real tokens never [PAD]), token types and mask: rows of 12, 8, 4 tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, SIZES['vocab_size'], (batch, length))
  types = rng.integers(0, 2, (batch, length))
  mask = np.ones((batch, length), np.int64)
  for row, n in enumerate((length, 8, 4)[:batch]):
    mask[row, n:] = 0
    ids[row, n:] = pad_id
    types[row, n:] = 0
  return ids, types, mask


def _randomize_torch(module, seed):
  """Draws every parameter anew: LayerNorm weights 1 + N(0, 0.2), biases N(0, 0.1), others
  N(0, 0.2) (so that logits and hidden states are of order one)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if 'LayerNorm.weight' in name or 'layer_norm.weight' in name:
        p.copy_(1 + 0.2 * noise)
      elif name.endswith('bias'):
        p.copy_(0.1 * noise)
      else:
        p.copy_(0.2 * noise)
  return module.eval()


def _randomize_ours(params, seed):
  """Our params with LayerNorm scales 1 + N(0, 0.2), biases N(0, 0.1), the rest N(0, 0.2)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if name == 'scale':
      return 1 + 0.2 * noise
    return (0.1 if name in ('bias', 'output_bias') else 0.2) * noise

  return jax.tree_util.tree_map_with_path(draw, params)


def _hf_outputs(hf, ids, types, mask):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
             attention_mask=torch.tensor(mask), output_hidden_states=True)
  return {k: (tuple(t.numpy() for t in v) if isinstance(v, tuple) else v.numpy())
          for k, v in out.items() if v is not None}


def _ours(model, variables, ids, types, mask, head):
  """(our output of `head`, our sown points) as numpy."""
  out, state = model.apply(variables, jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask),
                           head=head, mutable=['intermediates'])
  points = model.read_points(state['intermediates'])
  return np.asarray(out), {k: np.asarray(v) for k, v in points.items()}


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _check_close(label, ours, theirs):
  print(f'{label}: max abs diff {_max_diff(ours, theirs):.2e} (scale '
        f'{float(np.max(np.abs(theirs))):.2f})')
  np.testing.assert_allclose(ours, theirs, err_msg=label, **TOL)


def _flat(params):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(params)


def _assert_one_line(excinfo, *words):
  message = str(excinfo.value)
  assert '\n' not in message, message
  for word in words:
    assert word in message, (word, message)
  return message


# --- Hugging Face checkpoints -------------------------------------------------------------------


@pytest.fixture(scope='module')
def hf_runs(tmp_path_factory):
  """architecture -> (its save_pretrained directory, its outputs on `_inputs()`)."""
  ids, types, mask = _inputs()
  runs = {}
  for seed, arch in enumerate(HF_ARCHITECTURES):
    config = transformers.BertConfig(**SIZES, num_labels=NUM_LABELS)
    torch.manual_seed(seed)
    hf = _randomize_torch(getattr(transformers, arch)(config), seed)
    directory = str(tmp_path_factory.mktemp(arch))
    hf.save_pretrained(directory)
    runs[arch] = directory, _hf_outputs(hf, ids, types, mask)
  return runs


@pytest.fixture(scope='module')
def imported(hf_runs):
  """(architecture, scan) -> (model, variables, missing, dropped), memoized."""
  cache = {}

  def get(arch, scan=False, **overrides):
    key = (arch, scan, tuple(sorted(overrides.items())))
    if key not in cache:
      directory = hf_runs[arch][0]
      fields = {**bert_hf.bert_fields(bert_hf.read_config(directory)), **overrides}
      model = bert_lib.Bert(**fields, scan_layers=scan)
      cache[key] = (model,) + bert_hf.read_model(directory, model)
    return cache[key]

  return get


def test_read_config_and_fields(hf_runs):
  config = bert_hf.read_config(hf_runs['BertForPreTraining'][0])
  assert bert_hf.describe(config) == (
      '3 layers of hidden 32, 4 heads, FFN 64, vocab 100 (BertForPreTraining)')
  assert bert_hf.bert_fields(config) == dict(
      vocab_size=100, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
      head_size=8, max_position=32, type_vocab_size=2, layer_norm_eps=1e-12,
      pre_layer_norm=False, nsp_head=True, num_classes=0)
  fields = bert_hf.bert_fields(bert_hf.read_config(hf_runs['BertForSequenceClassification'][0]))
  assert (fields['nsp_head'], fields['num_classes']) == (False, NUM_LABELS)
  assert bert_hf.weights_file(hf_runs['BertModel'][0]).endswith('/model.safetensors')


@pytest.mark.parametrize('scan', [False, True], ids=['unrolled', 'scan'])
@pytest.mark.parametrize('arch', HF_ARCHITECTURES)
def test_parity_with_transformers(hf_runs, imported, arch, scan):
  """Every hidden state and every head's logits of the imported model, on a padded batch."""
  _, theirs = hf_runs[arch]
  model, variables, missing, dropped = imported(arch, scan)
  assert (missing, dropped) == (MISSING[arch], DROPPED[arch])
  assert sorted(variables) == ['params']
  ids, types, mask = _inputs()
  head = {'BertForSequenceClassification': 'classify', 'BertModel': 'none'}.get(arch, 'mlm')
  out, points = _ours(model, variables, ids, types, mask, head)
  names = ['embeddings'] + [f'layer_{i}' for i in range(1, LAYERS + 1)]
  assert len(theirs['hidden_states']) == len(names)
  for name, hidden in zip(names, theirs['hidden_states']):
    _check_close(f'{arch} scan={scan} {name}', points[name], hidden)
  if head == 'mlm':
    key = 'prediction_logits' if arch == 'BertForPreTraining' else 'logits'
    _check_close(f'{arch} scan={scan} MLM logits', out, theirs[key])
  elif head == 'classify':
    _check_close(f'{arch} scan={scan} classifier logits', out, theirs['logits'])
  else:
    _check_close(f'{arch} scan={scan} last hidden state', out, theirs['last_hidden_state'])
  if arch == 'BertForPreTraining':
    nsp, _ = _ours(model, variables, ids, types, mask, 'nsp')
    _check_close(f'{arch} scan={scan} NSP logits', nsp, theirs['seq_relationship_logits'])


def test_imported_tree_is_models_init(imported):
  """The variables are model.init's tree (shapes, dtypes), unrolled and scanned alike."""
  for scan in (False, True):
    model, variables, _, _ = imported('BertForPreTraining', scan)
    abstract = nn.meta.unbox(jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
    want = {k: (v.shape, v.dtype) for k, v in _flat(abstract['params']).items()}
    got = {k: (v.shape, v.dtype) for k, v in _flat(variables['params']).items()}
    assert got == want
    assert all(isinstance(v, np.ndarray) for v in _flat(variables['params']).values())
  unrolled = _flat(imported('BertForPreTraining', False)[1]['params'])
  scanned = _flat(imported('BertForPreTraining', True)[1]['params'])
  for path, value in scanned.items():
    if path[0] == 'encoder':
      for i in range(LAYERS):
        np.testing.assert_array_equal(value[i], unrolled[(f'encoder_layer_{i + 1}',) + path[1:]])


def test_heads_the_checkpoint_lacks_or_the_model_lacks(hf_runs, imported):
  """A BertModel's pooler is read into a model with one; a PreTraining's extra heads dropped."""
  model, variables, missing, dropped = imported('BertModel', nsp_head=True)
  assert (missing, dropped) == (('mlm_head', 'nsp'), ())
  tensors = tensors_lib.read_tensors(bert_hf.weights_file(hf_runs['BertModel'][0]))
  np.testing.assert_array_equal(variables['params']['pooler']['kernel'],
                                tensors['pooler.dense.weight'].T)
  _, variables, missing, dropped = imported('BertForPreTraining', nsp_head=False)
  assert missing == ()
  assert dropped == ('bert.pooler.dense.bias', 'bert.pooler.dense.weight',
                     'cls.seq_relationship.bias', 'cls.seq_relationship.weight')
  assert 'pooler' not in variables['params'] and 'nsp' not in variables['params']


def test_legacy_names_and_pytorch_bin(hf_runs, imported, tmp_path):
  """gamma/beta LayerNorm names, a saved position_ids buffer and a pytorch_model.bin."""
  source = hf_runs['BertForMaskedLM'][0]
  tensors = tensors_lib.read_tensors(bert_hf.weights_file(source))
  legacy = {}
  for name, value in tensors.items():
    if '.LayerNorm.' in name:
      name = name.replace('.weight', '.gamma').replace('.bias', '.beta')
    legacy[name] = torch.from_numpy(value.copy())
  assert any(n.endswith('LayerNorm.gamma') for n in legacy)
  legacy['bert.embeddings.position_ids'] = torch.arange(32)[None]
  shutil.copy(os.path.join(source, 'config.json'), tmp_path / 'config.json')
  torch.save(legacy, tmp_path / 'pytorch_model.bin')
  assert bert_hf.weights_file(str(tmp_path)).endswith('/pytorch_model.bin')
  model, want, _, _ = imported('BertForMaskedLM')
  got, missing, dropped = bert_hf.read_model(str(tmp_path), model)
  assert (missing, dropped) == ((), ())
  jax.tree.map(np.testing.assert_array_equal, got, want)


# --- Round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize('arch', HF_ARCHITECTURES)
def test_import_export_is_bitwise(hf_runs, imported, arch):
  """Every tensor of the saved model.safetensors comes back bitwise, and nothing else.

  save_pretrained leaves out the tied MLM decoder (weight and bias), and so does the export;
  what is compared is the file's full set of names, shapes, dtypes and bytes.
  """
  directory, _ = hf_runs[arch]
  original = tensors_lib.read_tensors(bert_hf.weights_file(directory))
  overrides = {'nsp_head': True} if arch == 'BertModel' else {}  # To hold its pooler.
  for scan in (False, True):
    model, variables, _, _ = imported(arch, scan, **overrides)
    config = bert_hf.read_config(directory)
    state, exported_config = bert_hf.from_variables(
        variables, model, pad_token_id=config['pad_token_id'], architecture=arch)
    assert sorted(state) == sorted(original)
    for name, value in original.items():
      assert state[name].dtype == value.dtype and state[name].shape == value.shape, name
      assert state[name].tobytes() == value.tobytes(), name
    for key in ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
                'intermediate_size', 'max_position_embeddings', 'type_vocab_size',
                'layer_norm_eps', 'hidden_act', 'architectures', 'model_type'):
      assert exported_config[key] == config[key], key


# --- Our models exported ------------------------------------------------------------------------


def _our_model(pre_layer_norm, seed, **overrides):
  model = bert_lib.Bert(vocab_size=SIZES['vocab_size'], hidden_size=32, num_layers=LAYERS,
                        num_heads=4, head_size=8, intermediate_size=64, max_position=32,
                        pre_layer_norm=pre_layer_norm, num_classes=NUM_LABELS, **overrides)
  params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)))
  return model, {'params': _randomize_ours(params['params'], seed)}


@pytest.fixture(scope='module')
def post_ln():
  return _our_model(False, 1, nsp_head=True)


@pytest.fixture(scope='module')
def pre_ln():
  return _our_model(True, 2)


def _load(cls, directory):
  hf, info = cls.from_pretrained(directory, output_loading_info=True)
  problems = {k: v for k, v in info.items() if v and k != 'error_msgs'}
  assert not problems, problems
  return hf.eval()


@pytest.mark.parametrize('arch,cls', [
    ('BertForMaskedLM', transformers.AutoModelForMaskedLM),
    ('BertForPreTraining', transformers.BertForPreTraining),
    ('BertForSequenceClassification', transformers.AutoModelForSequenceClassification)])
def test_post_ln_export_loads_in_transformers(post_ln, tmp_path, arch, cls):
  model, variables = post_ln
  bert_hf.write_model(str(tmp_path), variables, model, pad_token_id=0, architecture=arch)
  hf = _load(cls, str(tmp_path))
  assert type(hf).__name__ == arch
  ids, types, mask = _inputs(seed=3)
  theirs = _hf_outputs(hf, ids, types, mask)
  head = 'classify' if arch == 'BertForSequenceClassification' else 'mlm'
  out, points = _ours(model, variables, ids, types, mask, head)
  for i, name in enumerate(['embeddings'] + [f'layer_{i}' for i in range(1, LAYERS + 1)]):
    _check_close(f'export {arch} {name}', points[name], theirs['hidden_states'][i])
  key = 'prediction_logits' if arch == 'BertForPreTraining' else 'logits'
  _check_close(f'export {arch} {head} logits', out, theirs[key])
  if arch == 'BertForPreTraining':
    nsp, _ = _ours(model, variables, ids, types, mask, 'nsp')
    _check_close(f'export {arch} NSP logits', nsp, theirs['seq_relationship_logits'])
  # And back: the exported heads (and everything below them) bitwise.
  back, missing, _ = bert_hf.read_model(str(tmp_path), model)
  want = _flat(variables['params'])
  got = _flat(back['params'])
  assert set(got) == {k for k in want if k[0] not in missing}
  for path, value in got.items():
    assert value.tobytes() == np.asarray(want[path]).tobytes(), path


def test_default_architectures():
  for pre, overrides, arch in (
      (False, dict(nsp_head=True), 'BertForSequenceClassification'),
      (False, dict(nsp_head=True, num_classes=0), 'BertForPreTraining'),
      (False, dict(num_classes=0), 'BertForMaskedLM'),
      (True, dict(), 'RobertaPreLayerNormForSequenceClassification'),
      (True, dict(num_classes=0), 'RobertaPreLayerNormForMaskedLM')):
    model = bert_lib.Bert(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, head_size=4,
                          intermediate_size=8, max_position=8, pre_layer_norm=pre,
                          num_classes=overrides.pop('num_classes', 2), **overrides)
    abstract = nn.meta.unbox(jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    _, config = bert_hf.from_variables(variables, model, pad_token_id=0)
    assert config['architectures'] == [arch]


@pytest.mark.parametrize('arch', ['RobertaPreLayerNormForMaskedLM',
                                  'RobertaPreLayerNormForSequenceClassification'])
def test_pre_ln_export_loads_as_roberta_prelayernorm(pre_ln, tmp_path, arch):
  """At the real positions of right-padded rows: every hidden state and the logits."""
  model, variables = pre_ln
  config = bert_hf.write_model(str(tmp_path), variables, model, pad_token_id=0,
                               architecture=arch)
  assert config['model_type'] == 'roberta-prelayernorm'
  assert config['max_position_embeddings'] == 32 + 1
  hf = _load(getattr(transformers, arch), str(tmp_path))
  ids, types, mask = _inputs(seed=4, pad_id=0)
  theirs = _hf_outputs(hf, ids, types, mask)
  head = 'mlm' if arch.endswith('MaskedLM') else 'classify'
  out, points = _ours(model, variables, ids, types, mask, head)
  final, _ = _ours(model, variables, ids, types, mask, 'none')
  real = mask.astype(bool)
  names = ['embeddings'] + [f'layer_{i}' for i in range(1, LAYERS)]
  # transformers' last hidden state is after the final LayerNorm, as our head='none' output.
  for name, ours_h, theirs_h in zip(names + ['final_norm'], [points[n] for n in names] + [final],
                                    theirs['hidden_states']):
    _check_close(f'export {arch} {name} (real positions)', ours_h[real], theirs_h[real])
  if head == 'mlm':
    _check_close(f'export {arch} MLM logits (real positions)', out[real], theirs['logits'][real])
  else:
    _check_close(f'export {arch} classifier logits', out, theirs['logits'])
  # Import of the export: our variables bitwise (the position table offset undone).
  back, missing, dropped = bert_hf.read_model(str(tmp_path), model)
  assert missing == (('pooler', 'classifier') if head == 'mlm' else ('mlm_head',))
  assert dropped == ()
  want = _flat(variables['params'])
  got = _flat(back['params'])
  assert set(got) == {k for k in want if k[0] not in missing}
  for path, value in got.items():
    assert value.tobytes() == np.asarray(want[path]).tobytes(), path


def test_pre_ln_import_from_transformers(tmp_path):
  """A RobertaPreLayerNorm of transformers (pad_token_id 1) imported: the offset positions."""
  config = transformers.RobertaPreLayerNormConfig(**SIZES, pad_token_id=1)
  torch.manual_seed(5)
  hf = _randomize_torch(transformers.RobertaPreLayerNormForMaskedLM(config), 5)
  hf.save_pretrained(str(tmp_path))
  fields = bert_hf.bert_fields(bert_hf.read_config(str(tmp_path)))
  assert (fields['max_position'], fields['pre_layer_norm']) == (32 - 2, True)
  model = bert_lib.Bert(**fields, scan_layers=True)
  variables, missing, dropped = bert_hf.read_model(str(tmp_path), model)
  assert (missing, dropped) == ((), ())
  ids, types, mask = _inputs(seed=6, pad_id=1)
  theirs = _hf_outputs(hf, ids, types, mask)
  out, points = _ours(model, variables, ids, types, mask, 'mlm')
  real = mask.astype(bool)
  _check_close('roberta-prelayernorm import layer_1 (real positions)', points['layer_1'][real],
               theirs['hidden_states'][1][real])
  _check_close('roberta-prelayernorm import MLM logits (real positions)', out[real],
               theirs['logits'][real])


# --- The tokenizer ------------------------------------------------------------------------------

_WORDS = ('the king and queen of denmark speak to their court about love war and honour '
          'while players rehearse lines under bright lanterns near the castle walls').split()
_CASED = ('The', 'King', 'Queen', 'Denmark', '##S', 'É', 'Ö', 'Café')
TEXTS = (
    'The KING of Denmark spoke: "To be, or not to be?" — that is the question!',
    'Café naïve résumé Ångström; ÉCOLE Über-cool façade, Zoë & Øre.',
    "It's 3.14159... isn't it?! (yes) [brackets] {braces} <angle> #hash @at 100% $5",
    'Mixed   spaces\tand\ttabs\nnewlines and 中文字符 and a [MASK] token and [SEP]',
    'unknownwordpieceszzzz qqq xylophone KINGS queens Queen',
)


@pytest.fixture(scope='module')
def vocab_file(tmp_path_factory):
  """A WordPiece vocabulary trained on a few hundred generated lines, plus a few cased tokens."""
  rng = np.random.default_rng(7)
  lines = [' '.join(rng.choice(_WORDS, 12)) + rng.choice(['.', ',', '!', '?', ';'])
           for _ in range(300)]
  lines += ['café naïve résumé ångström über façade zoë øre'] * 5
  path = wordpiece.train_wordpiece(lines, 300, str(tmp_path_factory.mktemp('vocab')))
  with open(path, 'a', encoding='utf-8') as f:
    f.write(''.join(t + '\n' for t in _CASED))
  return path


@pytest.mark.parametrize('lowercase', [True, False])
def test_tokenizer_matches_ours(vocab_file, tmp_path, lowercase):
  bert_hf.write_tokenizer(str(tmp_path), vocab_file, lowercase, 128)
  assert sorted(os.listdir(tmp_path)) == ['special_tokens_map.json', 'tokenizer_config.json',
                                          'vocab.txt']
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert theirs.model_max_length == 128
  ours = wordpiece.load_wordpiece(vocab_file, lowercase)
  unk = ours.token_to_id('[UNK]')
  for text in TEXTS:
    want = ours.encode(text, add_special_tokens=False).ids
    assert theirs(text, add_special_tokens=False).input_ids == want, text
    assert any(i != unk for i in want)
    assert theirs(text).input_ids == [ours.token_to_id('[CLS]')] + want + [
        ours.token_to_id('[SEP]')]
  # The cased tokens are found only without lowercasing: the case test tests something.
  queen = ours.token_to_id('Queen')
  assert (queen in ours.encode(TEXTS[-1], add_special_tokens=False).ids) != lowercase
  assert bert_hf.tokenizer_options(str(tmp_path)) == (str(tmp_path / 'vocab.txt'), lowercase)


def test_tokenizer_options_of_other_directories(tmp_path):
  assert bert_hf.tokenizer_options(str(tmp_path)) == (None, None)
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'BertTokenizer', 'do_lower_case': True, 'strip_accents': False}))
  with pytest.raises(InteropError) as e:
    bert_hf.tokenizer_options(str(tmp_path))
  _assert_one_line(e, 'strip_accents')


# --- Bad inputs ---------------------------------------------------------------------------------


def _copy_dir(source, target):
  shutil.copytree(source, target)
  return str(target)


def test_no_config_or_no_weights(hf_runs, tmp_path):
  with pytest.raises(InteropError) as e:
    bert_hf.read_config(str(tmp_path))
  _assert_one_line(e, str(tmp_path), 'config.json')
  shutil.copy(os.path.join(hf_runs['BertModel'][0], 'config.json'), tmp_path / 'config.json')
  with pytest.raises(InteropError) as e:
    bert_hf.read_config(str(tmp_path))
  _assert_one_line(e, str(tmp_path), 'no weights', 'model.safetensors', 'pytorch_model.bin')
  (tmp_path / 'model.safetensors.index.json').write_text('{}')
  with pytest.raises(InteropError) as e:
    bert_hf.read_config(str(tmp_path))
  _assert_one_line(e, 'sharded', 'model.safetensors.index.json')


@pytest.mark.parametrize('model_type', ['roberta', 'gpt2'])
def test_other_model_types(hf_runs, tmp_path, model_type):
  directory = _copy_dir(hf_runs['BertModel'][0], tmp_path / 'm')
  config = json.load(open(os.path.join(directory, 'config.json')))
  config['model_type'] = model_type
  json.dump(config, open(os.path.join(directory, 'config.json'), 'w'))
  with pytest.raises(InteropError) as e:
    bert_hf.read_config(directory)
  _assert_one_line(e, repr(model_type), "'bert'", "'roberta-prelayernorm'")


def test_truncated_safetensors(hf_runs, imported, tmp_path):
  directory = _copy_dir(hf_runs['BertForMaskedLM'][0], tmp_path / 'm')
  path = os.path.join(directory, 'model.safetensors')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  model = imported('BertForMaskedLM')[0]
  with pytest.raises(InteropError) as e:
    bert_hf.read_model(directory, model)
  _assert_one_line(e, path)


def test_missing_and_unknown_tensors(hf_runs, imported):
  directory = hf_runs['BertForPreTraining'][0]
  config = bert_hf.read_config(directory)
  tensors = tensors_lib.read_tensors(bert_hf.weights_file(directory))
  model = imported('BertForPreTraining')[0]
  gone = sorted(n for n in tensors if '.layer.1.' in n)
  partial = {k: v for k, v in tensors.items() if k not in gone}
  with pytest.raises(InteropError) as e:
    bert_hf.to_variables(partial, config, model, 'the test dir')
  message = _assert_one_line(e, 'the test dir', 'missing', gone[0], 'more')
  assert 'unknown' not in message
  extra = {**tensors, 'bert.encoder.layer.7.output.dense.weight': tensors[gone[0]],
           'bert.adapter.weight': np.zeros(3, np.float32)}
  with pytest.raises(InteropError) as e:
    bert_hf.to_variables(extra, config, model, 'the test dir')
  _assert_one_line(e, 'unknown', 'bert.adapter.weight', 'bert.encoder.layer.7.output.dense')
  # A head half there is not a missing head.
  no_transform = {k: v for k, v in tensors.items() if 'transform.dense' not in k}
  with pytest.raises(InteropError) as e:
    bert_hf.to_variables(no_transform, config, model, 'the test dir')
  _assert_one_line(e, 'missing', 'cls.predictions.transform.dense.bias')


def test_wrong_shapes_untied_decoder_and_model_mismatch(hf_runs, imported):
  directory = hf_runs['BertForMaskedLM'][0]
  config = bert_hf.read_config(directory)
  tensors = tensors_lib.read_tensors(bert_hf.weights_file(directory))
  model = imported('BertForMaskedLM')[0]
  bad = {**tensors, 'bert.pooler.dense.weight': np.zeros((32, 32), np.float32)}
  bad['cls.predictions.transform.dense.weight'] = np.zeros((32, 31), np.float32)
  with pytest.raises(InteropError) as e:
    bert_hf.to_variables(bad, config, model, 'd')
  _assert_one_line(e, 'cls.predictions.transform.dense.weight', '[32, 31]', '[32, 32]')
  untied = {**tensors, 'cls.predictions.decoder.weight':
            tensors['bert.embeddings.word_embeddings.weight'] + 1}
  with pytest.raises(InteropError) as e:
    bert_hf.to_variables(untied, config, model, 'd')
  _assert_one_line(e, 'cls.predictions.decoder.weight', 'tied')
  tied = {**tensors, 'cls.predictions.decoder.weight':
          tensors['bert.embeddings.word_embeddings.weight'],
          'cls.predictions.decoder.bias': tensors['cls.predictions.bias']}
  assert bert_hf.to_variables(tied, config, model, 'd')[1:] == ((), ())
  other = model.clone(num_layers=2)
  with pytest.raises(InteropError) as e:
    bert_hf.to_variables(tensors, config, other, 'd')
  _assert_one_line(e, 'num_layers=3', 'num_layers=2')


@pytest.mark.parametrize('key,value,words', [
    ('hidden_act', 'gelu_new', ('hidden_act', 'gelu_new', "'gelu'")),
    ('hidden_act', 'relu', ('hidden_act', 'relu')),
    ('position_embedding_type', 'relative_key', ('position_embedding_type', 'relative_key')),
    ('is_decoder', True, ('is_decoder',)),
    ('architectures', ['BertForTokenClassification'], ('BertForTokenClassification',)),
    ('num_attention_heads', 5, ('num_attention_heads=5',)),
])
def test_configs_we_cannot_compute(hf_runs, key, value, words):
  config = bert_hf.read_config(hf_runs['BertModel'][0])
  with pytest.raises(InteropError) as e:
    bert_hf.bert_fields({**config, key: value}, 'the dir')
  _assert_one_line(e, 'the dir', *words)


def test_exports_we_refuse(post_ln):
  model, variables = post_ln
  with pytest.raises(InteropError) as e:
    bert_hf.from_variables(variables, model, pad_token_id=0,
                           architecture='RobertaPreLayerNormForMaskedLM')
  _assert_one_line(e, 'RobertaPreLayerNormForMaskedLM', 'post-LN', 'BertForMaskedLM')
  no_nsp = {'params': {k: v for k, v in variables['params'].items() if k != 'nsp'}}
  with pytest.raises(InteropError) as e:
    bert_hf.from_variables(no_nsp, model, pad_token_id=0, architecture='BertForPreTraining')
  _assert_one_line(e, 'BertForPreTraining', 'nsp')
  pre = model.clone(pre_layer_norm=True)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: pre.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  with pytest.raises(InteropError) as e:
    bert_hf.from_variables(zeros, pre, pad_token_id=0)
  _assert_one_line(e, 'nsp_head', 'next-sentence', 'RobertaPreLayerNorm')
  state, _ = bert_hf.from_variables(zeros, pre, pad_token_id=0,
                                    architecture='RobertaPreLayerNormForMaskedLM')
  assert not any('seq_relationship' in n or 'pooler' in n for n in state)
