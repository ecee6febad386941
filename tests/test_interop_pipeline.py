"""Teachers from other frameworks and thin networks out to them, end to end.

Real runs of the pipeline: the tiny BERT demo's wide network exported to a Hugging Face
directory and given back as `teacher_dir`; a random `BertForMaskedLM` (saved with
`save_pretrained`) and a random torchvision `wide_resnet50_2` as teachers of runs without
stage 1; their exports loaded by `transformers` and `torchvision`. No hub downloads.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
from safetensors.torch import load_file
import torch
import torchvision
import transformers

from conftest import tiny_config
from test_interop_resnet import randomize
from gwtn_jax import config_lib
from gwtn_jax import export as export_lib
from gwtn_jax import pipeline
from gwtn_jax.interop import tensors as tensors_lib

pytestmark = pytest.mark.xdist_group('interop_pipeline')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIN_STAGES = ('imitate', 'probe', 'finetune')


def _cli(module, *args, timeout=300):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def _bert(**overrides):
  c = tiny_config('bert', **overrides)
  c.imitate.steps_per_point = 1
  c.finetune.steps = 2
  c.probe.steps = 1
  return c


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  """Run A: the tiny (pre-LN) BERT demo with its wide stage; its wide network exported with
  the command line to a Hugging Face directory; run B: the same thin stages with that
  directory as teacher_dir."""
  root = tmp_path_factory.mktemp('demo')
  run_a = str(root / 'a')
  report_a = pipeline.run(_bert(stages=('wide',) + THIN_STAGES + ('downstream',)), run_a)
  hf_dir = str(root / 'wide_hf')
  done = _cli('gwtn_jax.export', f'--workdir={run_a}', '--network=wide', f'--out={hf_dir}')
  assert done.returncode == 0, done.stderr[-2000:]
  run_b = str(root / 'b')
  config_b = _bert(stages=THIN_STAGES, teacher_dir=hf_dir)
  config_b.data.vocab_file = os.path.join(hf_dir, 'vocab.txt')
  report_b = pipeline.run(config_b, run_b)
  return dict(run_a=run_a, report_a=report_a, hf_dir=hf_dir, run_b=run_b, report_b=report_b,
              root=root)


def test_the_demo_teacher_exported_and_given_back_gives_the_same_thin_results(demo):
  assert set(os.listdir(demo['hf_dir'])) >= {
      'model.safetensors', 'config.json', 'vocab.txt', 'tokenizer_config.json', 'card.json',
      'README.md'}
  card = json.load(open(os.path.join(demo['hf_dir'], 'card.json')))
  assert card['network'] == 'wide' and card['source_run'] == demo['run_a']
  assert card['metrics'] == demo['report_a']['wide']['metrics']
  assert card['command'].startswith('python -m gwtn_jax.export --workdir=')
  # Pre-LN: transformers' RobertaPreLayerNorm, the architecture that computes what ours does.
  assert json.load(open(os.path.join(demo['hf_dir'], 'config.json')))['model_type'] == (
      'roberta-prelayernorm')
  a, b = demo['report_a'], demo['report_b']
  assert 'wide' not in b  # no stage 1 in run B
  for row in ('thin_imitated', 'thin_gwtn'):
    for metric, value in a[row]['metrics'].items():
      if metric in b[row]['metrics']:
        assert b[row]['metrics'][metric] == pytest.approx(value, rel=1e-6, abs=1e-7), (row, metric)


def test_the_exported_thin_bert_and_classifier_load_in_transformers(demo, tmp_path):
  run_a = demo['run_a']
  for network, auto in (('thin_gwtn', transformers.AutoModelForMaskedLM),
                        ('downstream/thin_gwtn', transformers.AutoModelForSequenceClassification)):
    out = str(tmp_path / network.replace('/', '_'))
    export_lib.export(run_a, network, out)
    model = auto.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = 'To be, or not to be: that is the question.'
    ids = tokenizer(text, return_tensors='pt')
    with torch.no_grad():
      logits = model(**ids).logits
    assert np.isfinite(logits.numpy()).all()
    if network.startswith('downstream'):
      assert logits.shape == (1, 2)
  # The tokenizer is the run's: same ids as the data pipeline's tokenizer.
  from gwtn_jax.data import wordpiece  # pylint: disable=g-import-not-at-top
  ours = wordpiece.load_wordpiece(os.path.join(run_a, 'vocab.txt'))
  text = 'Whether \'tis nobler in the mind to suffer The slings and arrows of outrageous fortune'
  assert (tokenizer(text, add_special_tokens=False).input_ids
          == ours.encode(text, add_special_tokens=False).ids)


def test_export_refuses_what_it_cannot_do_in_one_line(demo, tmp_path):
  run_a = demo['run_a']
  done = _cli('gwtn_jax.export', f'--workdir={run_a}', '--network=small_an',
              f'--out={tmp_path}/x')
  assert done.returncode == 2
  line = done.stderr.strip().splitlines()[-1]
  assert '--network=small_an is not in the report' in line and 'thin_gwtn' in line
  done = _cli('gwtn_jax.export', f'--workdir={run_a}')
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
  assert 'Flag --network must have a value' in done.stderr
  with pytest.raises(export_lib.ExportError, match='already holds a model'):
    export_lib.export(run_a, 'wide', demo['hf_dir'])
  before = os.path.getmtime(os.path.join(demo['hf_dir'], 'model.safetensors'))
  export_lib.export(run_a, 'wide', demo['hf_dir'], overwrite=True)
  assert os.path.getmtime(os.path.join(demo['hf_dir'], 'model.safetensors')) >= before
  with pytest.raises(config_lib.ConfigError, match='has no config.json'):
    export_lib.export(str(tmp_path), 'wide', str(tmp_path / 'y'))
  unfinished = tmp_path / 'unfinished'
  unfinished.mkdir()
  (unfinished / 'config.json').write_text(open(os.path.join(run_a, 'config.json')).read())
  with pytest.raises(export_lib.ExportError, match='has no report.json'):
    export_lib.export(str(unfinished), 'wide', str(tmp_path / 'y'))


def _random_bert_for_mlm(vocab_file: str, directory: str) -> None:
  """A BertForMaskedLM of bert_tiny's sizes with random weights, LayerNorms included."""
  vocab = open(vocab_file, encoding='utf-8').read().splitlines()
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=512, max_position_embeddings=32, type_vocab_size=2,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'LayerNorm' in name:
        p.copy_(torch.rand_like(p) + (0.5 if name.endswith('weight') else -0.5))
  model.save_pretrained(directory)
  transformers.BertTokenizer(vocab_file, do_lower_case=True).save_pretrained(directory)


def test_a_hugging_face_bert_teaches_a_run_without_stage_1(demo, tmp_path):
  hf_dir = str(tmp_path / 'hf')
  _random_bert_for_mlm(os.path.join(demo['run_a'], 'vocab.txt'), hf_dir)
  original = safetensors.numpy.load_file(os.path.join(hf_dir, 'model.safetensors'))
  config = _bert(stages=('imitate', 'finetune'), teacher_dir=hf_dir)
  config.model.pre_layer_norm = False
  # transformers 5 saves the vocabulary in tokenizer.json only.
  assert not os.path.exists(os.path.join(hf_dir, 'vocab.txt'))
  config.data.vocab_file = os.path.join(hf_dir, 'tokenizer.json')
  workdir = str(tmp_path / 'run')
  report = pipeline.run(config, workdir)
  assert np.isfinite(report['thin_gwtn']['metrics']['mlm_loss'])
  # The run's teacher, exported, is the original checkpoint bitwise.
  wide = export_lib.export(workdir, 'wide', str(tmp_path / 'wide'))
  exported = safetensors.numpy.load_file(os.path.join(wide.out, 'model.safetensors'))
  assert set(exported) <= set(original)
  assert set(original) - set(exported) <= {'cls.predictions.decoder.weight',
                                           'cls.predictions.decoder.bias'}  # tied
  for name, value in exported.items():
    assert value.dtype == original[name].dtype, name
    np.testing.assert_array_equal(value, original[name], err_msg=name)
  thin = export_lib.export(workdir, 'thin_gwtn', str(tmp_path / 'thin'))
  model = transformers.AutoModelForMaskedLM.from_pretrained(thin.out)
  assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
  assert transformers.AutoTokenizer.from_pretrained(thin.out).vocab_size == len(
      open(os.path.join(demo['run_a'], 'vocab.txt')).read().splitlines())


def test_a_hugging_face_teacher_is_checked_before_anything_compiles(demo, tmp_path):
  hf_dir = str(tmp_path / 'hf')
  _random_bert_for_mlm(os.path.join(demo['run_a'], 'vocab.txt'), hf_dir)

  def refused(match, **overrides):
    config = _bert(stages=('imitate', 'finetune'), teacher_dir=hf_dir, **{
        'model.pre_layer_norm': False,
        'data.vocab_file': os.path.join(hf_dir, 'tokenizer.json'), **overrides})
    with pytest.raises(config_lib.ConfigError, match=match) as e:
      config_lib.validate(config, str(tmp_path / 'w'))
    assert '\n' not in str(e.value)

  refused(r'but teacher_dir=.* holds 2 layers of hidden 128.*use model\.wide_name=bert_tiny',
          **{'model.wide_name': 'bert_mini'})
  refused(r'model\.name=bert_tiny, wide_width=0\.5 but .* use model\.wide_name=bert_tiny and '
          r'wide_width=1$', wide_width=0.5)
  other = tmp_path / 'other_vocab.txt'
  tokens = open(os.path.join(demo['run_a'], 'vocab.txt'), encoding='utf-8').read().splitlines()
  other.write_text('\n'.join(tokens[:-1] + ['zzzz']) + '\n', encoding='utf-8')
  refused(r'data\.vocab_file=.* is not the vocabulary of teacher_dir=.*set data\.vocab_file=',
          **{'data.vocab_file': str(other)})
  refused('data.lowercase=False but teacher_dir=.* do_lower_case=True',
          **{'data.lowercase': False})
  refused('model.pre_layer_norm', **{'model.pre_layer_norm': True})
  # Another model type, no weights, a truncated file: one line each.
  config_json = os.path.join(hf_dir, 'config.json')
  saved = open(config_json).read()
  json.dump({**json.loads(saved), 'model_type': 'gpt2'}, open(config_json, 'w'))
  refused('gpt2')
  open(config_json, 'w').write(saved)
  weights = os.path.join(hf_dir, 'model.safetensors')
  blob = open(weights, 'rb').read()
  os.remove(weights)
  refused('no weights|model.safetensors')
  open(weights, 'wb').write(blob[:len(blob) // 2])
  refused('model.safetensors is not a readable safetensors file .truncated')
  # Tensors missing: found when the weights are converted, after the config check; the
  # command line says it in one line, exit status 2.
  full = tmp_path / 'full.safetensors'
  full.write_bytes(blob)
  tensors = safetensors.numpy.load_file(str(full))
  del tensors['bert.encoder.layer.1.output.dense.weight']
  tensors_lib.write_safetensors(weights, tensors)
  done = _cli('gwtn_jax.main', '--config=tests/tiny_config.py:bert',
              f'--workdir={tmp_path}/w3', f'--config.teacher_dir={hf_dir}',
              '--config.stages=("imitate",)', '--config.model.pre_layer_norm=False',
              f'--config.data.vocab_file={hf_dir}/tokenizer.json')
  assert done.returncode == 2, done.stderr[-3000:]
  line = done.stderr.strip().splitlines()[-1]
  assert 'bert.encoder.layer.1.output.dense.weight' in line and line.startswith('error:'), line


def _resnet_config(teacher: str, wide_width: float = 2.0):
  c = tiny_config('', stages=('imitate', 'finetune'), teacher_dir=teacher)
  c.model.name = 'resnet50'
  c.thin_width = 1.0
  c.wide_width = wide_width
  c.data.synthetic_image_shape = (32, 32, 3)
  c.data.synthetic_num_classes = 4
  c.data.synthetic_num_train = 16
  c.data.synthetic_num_eval = 8
  c.batch_size = 4
  c.eval_batch_size = 8
  c.imitate.granularity = 'stage'
  c.imitate.schedule = 'one_shot'
  c.imitate.steps = 2
  c.imitate.eval_every = 2
  c.finetune.steps = 2
  c.finetune.eval_every = 2
  return c


def test_a_torchvision_wide_resnet50_2_teaches_a_thin_resnet50(tmp_path):
  torch.manual_seed(0)
  teacher = randomize(torchvision.models.wide_resnet50_2(num_classes=4))
  path = str(tmp_path / 'wide_resnet50_2.pth')
  torch.save(teacher.state_dict(), path)
  # The wrong width is refused at start-up, naming the field.
  with pytest.raises(config_lib.ConfigError, match=r'holds a resnet50 of 2x inner width.*'
                     r'wide_width=2') as e:
    config_lib.validate(_resnet_config(path, wide_width=4.0), str(tmp_path / 'w'))
  assert '\n' not in str(e.value)
  workdir = str(tmp_path / 'run')
  report = pipeline.run(_resnet_config(path), workdir)
  assert 'wide' not in report and np.isfinite(report['thin_gwtn']['metrics']['loss'])
  thin = export_lib.export(workdir, 'thin_gwtn', str(tmp_path / 'thin'))
  state = load_file(os.path.join(thin.out, 'model.safetensors'))
  net = torchvision.models.resnet50(num_classes=4)
  net.load_state_dict(state, strict=True)
  assert thin.card['params'] == sum(p.numel() for p in net.parameters())
  # The exported teacher is the original state dict bitwise.
  wide = export_lib.export(workdir, 'wide', str(tmp_path / 'wide'))
  exported = load_file(os.path.join(wide.out, 'model.safetensors'))
  original = teacher.state_dict()
  assert set(exported) == set(original)
  for name, value in original.items():
    assert torch.equal(exported[name], value), name


def test_thin_init_starts_the_thin_stages_from_a_pretrained_bert_model(demo, tmp_path):
  """A BertModel (no MLM head) of the thin network's sizes as thin_init: with a vanishing
  learning rate the thin network from scratch ends where it started, the checkpoint's tensors
  (to 1e-6), and the head it lacked is initialized (a note says so)."""
  vocab = open(os.path.join(demo['run_a'], 'vocab.txt'), encoding='utf-8').read().splitlines()
  hf_config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
      intermediate_size=256, max_position_embeddings=32)
  torch.manual_seed(1)
  hf_dir = str(tmp_path / 'small')
  transformers.BertModel(hf_config, add_pooling_layer=False).save_pretrained(hf_dir)
  original = safetensors.numpy.load_file(os.path.join(hf_dir, 'model.safetensors'))
  config = _bert(stages=('thin_scratch',), thin_init=hf_dir)
  config.model.pre_layer_norm = False
  config.data.vocab_file = os.path.join(demo['run_a'], 'vocab.txt')
  config.thin_scratch.steps = 2
  # Steps too small to move a float32 weight (the config refuses a zero learning rate).
  config.thin_scratch.optimizer.update(name='sgd', learning_rate=1e-30, momentum=0.0,
                                       weight_decay=0.0, warmup_steps=0)
  workdir = str(tmp_path / 'run')
  pipeline.run(config, workdir)
  out = export_lib.export(workdir, 'thin_scratch', str(tmp_path / 'out')).out
  exported = safetensors.numpy.load_file(os.path.join(out, 'model.safetensors'))
  assert 'cls.predictions.transform.dense.weight' in exported  # the head it lacked
  for name, value in original.items():  # (zeros move by ~1e-33: lr 1e-30 times a gradient)
    np.testing.assert_allclose(exported['bert.' + name], value, rtol=1e-6, atol=1e-25,
                               err_msg=name)
  # thin_init must be the thin network, and be read by a stage.
  config.model.name = 'bert_mini'
  with pytest.raises(config_lib.ConfigError, match=r'model\.name=bert_mini, thin_width=0\.5 '
                     r'but thin_init=.* holds 2 layers of hidden 64'):
    config_lib.validate(config, str(tmp_path / 'w'))
  config.model.name = 'bert_tiny'
  config.stages = ('wide',)
  with pytest.raises(config_lib.ConfigError, match='thin_init=.* would be ignored'):
    config_lib.validate(config, str(tmp_path / 'w'))


def test_an_adjoined_small_network_exports_with_its_own_widths(tmp_path):
  from gwtn_jax.interop import resnet_torch  # pylint: disable=g-import-not-at-top
  config = tiny_config('', stages=('adjoined',))
  config.adjoined.threshold = 4
  config.adjoined.cf = 2
  config.adjoined.steps = 2
  workdir = str(tmp_path / 'run')
  report = pipeline.run(config, workdir)
  done = export_lib.export(workdir, 'small_an', str(tmp_path / 'small'))
  state = safetensors.numpy.load_file(os.path.join(done.out, 'model.safetensors'))
  found = resnet_torch.describe(state, 'the export')
  assert found.name == 'cifar_resnet8' and found.widths is not None
  assert done.card['params'] == report['small_an']['params']
  assert done.card['widths']['inner'] == list(found.widths.inner)
  assert done.card['flops_per_example'] == report['small_an']['flops'] > 0
  # The same tensors come back into the small network (its variables, bitwise).
  small = found.model(stem_strides=1)
  again = resnet_torch.from_variables(resnet_torch.to_variables(state, small, 'x'), small,
                                      num_batches_tracked=int(state['bn1.num_batches_tracked']))
  for name, value in state.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_a_cased_vocabulary_keeps_the_case(tmp_path):
  from gwtn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  cased = data_lib.build_text_data(tiny_config('bert', **{
      'data.lowercase': False, 'data.cache_dir': str(tmp_path)}).data)
  uncased = data_lib.build_text_data(tiny_config('bert', **{
      'data.cache_dir': str(tmp_path)}).data)
  assert cased.vocab_file != uncased.vocab_file  # cached apart
  ids = lambda d, t: d.tokenizer.encode(t, add_special_tokens=False).ids
  assert ids(cased, 'HAMLET') != ids(cased, 'hamlet')
  assert ids(uncased, 'HAMLET') == ids(uncased, 'hamlet')
  assert not np.array_equal(cased.train_sequences[:8], uncased.train_sequences[:8])


@pytest.mark.parametrize('arg', [
    'configs/bert_base.py:hf_teacher=/nonexistent/bert-large-uncased',
    'configs/resnet50_imagenet.py:torchvision_teacher=/nonexistent/wide_resnet50_2.pth'])
def test_the_pretrained_teacher_recipes_validate_and_skip_stage_1(arg):
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, option = arg.split(':')
  spec = importlib.util.spec_from_file_location('recipe', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(option)
  assert 'wide' not in config_lib.stages_of(config)
  config.mesh = config_lib.mesh_config('data')
  config.mesh.num_devices = 1
  config_lib.validate(config, None, data=False)  # what the planner runs
  networks = builders.build_networks(config, builders.static_data_info(config))
  if 'bert' in path:
    assert networks.wide.num_layers == 24 and networks.wide.dims().hidden == 1024
    assert tuple(config.imitate.layer_map) == (0,) + tuple(range(2, 25, 2))
  else:
    assert networks.wide.width_multiplier == 2.0
