"""Tests of gwtn_jax.models.bert: sizes, points, scan/unrolled equivalence, masks, heads."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gwtn_jax.models import bert as bert_lib
from gwtn_jax.models import bert_layers

VOCAB = 30522


def _tiny(**overrides):
  """A 3-layer, 64-wide BERT: small enough for the CPU, deep enough for stop_at."""
  kwargs = dict(vocab_size=50, hidden_size=64, num_layers=3, num_heads=2, head_size=32,
                intermediate_size=128, max_position=16)
  kwargs.update(overrides)
  return bert_lib.Bert(**kwargs)


def _ids(seed=0, shape=(2, 8), vocab=50):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


@functools.lru_cache(maxsize=None)
def _init_cached(**overrides):
  model = _tiny(**overrides)
  return model, nn.meta.unbox(model.init(jax.random.key(0), _ids())['params'])


def _init(**overrides):
  """A tiny model and a fresh copy of its (unboxed) parameters, which tests may edit."""
  model, params = _init_cached(**overrides)
  return model, jax.tree.map(lambda a: a, params)


def _num_params(model):
  shapes = jax.eval_shape(
      functools.partial(model.init, head='mlm'), jax.random.key(0),
      jax.ShapeDtypeStruct((1, 8), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


def _expected_params(v, h, layers, ffn, positions=512, types=2):
  """BERT's parameter count by hand, with the pooler + NSP head and the MLM head."""
  embeddings = v * h + positions * h + types * h + 2 * h  # three tables + LayerNorm
  attention = 4 * (h * h + h) + 2 * h                     # q, k, v, out + LayerNorm
  mlp = (h * ffn + ffn) + (ffn * h + h) + 2 * h           # wi, wo + LayerNorm
  pooler_nsp = (h * h + h) + (h * 2 + 2)
  mlm = (h * h + h) + 2 * h + v                           # transform, LayerNorm, bias
  return embeddings + layers * (attention + mlp) + pooler_nsp + mlm


def test_bert_base_parameter_count():
  model = bert_lib.get_bert('base', vocab_size=VOCAB, nsp_head=True)
  expected = _expected_params(VOCAB, 768, 12, 3072)
  assert expected == 110_106_428  # BertForPreTraining's count of unique parameters
  assert _num_params(model) == expected
  assert 109e6 <= expected <= 111e6


def test_bert_large_parameter_count():
  model = bert_lib.get_bert('bert_large', vocab_size=VOCAB, nsp_head=True, scan_layers=True)
  expected = _expected_params(VOCAB, 1024, 24, 4096)
  assert _num_params(model) == expected == 336_226_108
  # Without the pre-training heads (NSP and MLM): BERT-Large's usual 335M.
  heads = (1024 * 2 + 2) + (1024 * 1024 + 1024) + 2 * 1024 + VOCAB
  assert 335e6 <= expected - heads <= 336e6


def test_width_multiplier_and_presets():
  d = bert_lib.get_bert('base', vocab_size=VOCAB, width_multiplier=4 / 3).dims()
  assert (d.hidden, d.num_heads, d.head_size, d.intermediate) == (1024, 16, 64, 4096)
  with pytest.raises(ValueError, match=r'^model\.width_multiplier=1\.1 gives 844\.8 hidden '
                     r'units \(must be an integer multiple of the head size 64\)$'):
    bert_lib.get_bert('base', vocab_size=VOCAB, width_multiplier=1.1).dims()
  with pytest.raises(ValueError, match='model.name'):
    bert_lib.get_bert('huge', vocab_size=VOCAB)
  with pytest.raises(ValueError, match='model.num_heads'):
    bert_lib.Bert(vocab_size=10, hidden_size=128, num_layers=1, num_heads=3,
                  intermediate_size=4).dims()
  sizes = {n: (p.keywords['num_layers'], p.keywords['hidden_size'], p.keywords['num_heads'],
               p.keywords['intermediate_size']) for n, p in bert_lib.BERT_PRESETS.items()}
  assert sizes['bert_tiny'] == (2, 128, 2, 512)
  assert sizes['bert_mini'] == (4, 256, 4, 1024)
  assert sizes['bert_small'] == (4, 512, 8, 2048)
  assert sizes['bert_medium'] == (8, 512, 8, 2048)
  assert sizes['bert_large'] == (24, 1024, 16, 4096)


def test_logical_axes():
  model = _tiny(scan_layers=True, nsp_head=True)
  boxed = jax.eval_shape(model.init, jax.random.key(0), _ids())['params']
  names = jax.tree.map(lambda b: b.names, boxed,
                       is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))
  assert names['embedder']['word']['embedding'] == ('vocab', 'embed')
  assert names['encoder']['attention']['query']['kernel'] == ('layers', 'embed', 'heads', 'kv')
  assert names['encoder']['attention']['out']['kernel'] == ('layers', 'heads', 'kv', 'embed')
  assert names['encoder']['mlp']['wi']['kernel'] == ('layers', 'embed', 'mlp')
  assert names['encoder']['attention_norm']['scale'] == ('layers', 'embed')
  assert names['mlm_head']['output_bias'] == ('vocab',)
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned)):
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert set(leaf.names) <= set(bert_layers.LOGICAL_AXES) | {None}


def test_points_and_scan_matches_unrolled():
  model, params = _init()
  ids = _ids(1)
  names = ('embeddings', 'layer_1', 'layer_2', 'layer_3')
  assert tuple(p.name for p in model.points()) == names
  assert [p.modules for p in model.points()] == [('embedder',)] + [
      (bert_lib.layer_module_name(i),) for i in (1, 2, 3)]
  assert all(p.layer is None and p.imitated and not p.stage_end for p in model.points())
  assert not model.scan_layers
  scanned = model.clone(scan_layers=True).points()  # every layer a slice of 'encoder'
  assert [p.layer for p in scanned] == [None, 0, 1, 2]
  assert {p.modules for p in scanned[1:]} == {('encoder',)}
  logits, state = model.apply({'params': params}, ids, mutable=['intermediates'])
  assert logits.shape == (2, 8, 50) and logits.dtype == jnp.float32
  points = bert_lib.layer_outputs(state['intermediates'], 3)
  assert sorted(points) == sorted(names)
  assert all(points[n].shape == (2, 8, 64) for n in names)

  # The same parameters in the stacked layout.
  layers = [params.pop(bert_lib.layer_module_name(i)) for i in (1, 2, 3)]
  params['encoder'] = jax.tree.map(lambda *a: jnp.stack(a), *layers)
  for remat in (False, True):
    scan = _tiny(scan_layers=True, remat=remat)
    scan_logits, scan_state = scan.apply({'params': params}, ids, mutable=['intermediates'])
    assert scan_state['intermediates']['layers'][0].shape == (3, 2, 8, 64)
    np.testing.assert_allclose(scan_logits, logits, atol=1e-5, rtol=1e-5)
  scan_points = bert_lib.layer_outputs(scan_state['intermediates'], 3)
  for n in names:
    np.testing.assert_allclose(scan_points[n], points[n], atol=1e-5, rtol=1e-5)

  # stop_at under scan runs the first k stacked layers only.
  out, st = scan.apply({'params': params}, ids, stop_at='layer_2', mutable=['intermediates'])
  assert st['intermediates']['layers'][0].shape == (2, 2, 8, 64)
  np.testing.assert_allclose(out, points['layer_2'], atol=1e-5, rtol=1e-5)


def _flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return cost['flops']


def test_stop_at_returns_point_and_costs_less():
  model, params = _init()
  ids = _ids(2)
  out, state = model.apply({'params': params}, ids, stop_at='layer_1',
                           mutable=['intermediates'])
  assert sorted(state['intermediates']) == ['embeddings', 'layer_1']
  np.testing.assert_array_equal(out, state['intermediates']['layer_1'][0])
  # Nothing after layer_1 is traced: its parameters are not even read.
  del params['encoder_layer_2'], params['encoder_layer_3'], params['mlm_head']
  model.apply({'params': params}, ids, stop_at='layer_1')
  _, full = _init()
  f_full = _flops(lambda p, x: model.apply({'params': p}, x, head='none'), full, ids)
  f_stop = _flops(lambda p, x: model.apply({'params': p}, x, stop_at='layer_1'), full, ids)
  assert f_stop < 0.5 * f_full
  with pytest.raises(ValueError, match='stop_at'):
    model.apply({'params': full}, ids, stop_at='layer_9')


def test_attention_mask_hides_masked_positions():
  model, params = _init()
  ids = _ids(3)
  mask = jnp.ones_like(ids).at[:, 5:].set(0)
  other = ids.at[:, 5:].set((ids[:, 5:] + 7) % 50)
  a = model.apply({'params': params}, ids, attention_mask=mask, head='none')
  b = model.apply({'params': params}, other, attention_mask=mask, head='none')
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5, rtol=1e-5)
  # Without the mask the change does reach the other positions.
  c = model.apply({'params': params}, other, head='none')
  assert not np.allclose(a[:, :5], c[:, :5], atol=1e-3)


@pytest.mark.parametrize('pre_layer_norm', [False, True])
def test_layer_norm_placement_and_dropout(pre_layer_norm):
  model, params = _init(pre_layer_norm=pre_layer_norm)
  assert ('final_norm' in params) == pre_layer_norm
  assert 'norm' in params['embedder']  # both placements normalize the embeddings
  ids = _ids(4)
  apply = functools.partial(model.apply, {'params': params}, ids, head='none')
  eval1, eval2 = apply(), apply()
  assert np.all(np.isfinite(eval1))
  np.testing.assert_array_equal(eval1, eval2)
  train1 = apply(train=True, rngs={'dropout': jax.random.key(1)})
  train2 = apply(train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train1, eval1) and not np.allclose(train1, train2)
  with pytest.raises(Exception):  # no 'dropout' rng
    apply(train=True)


def test_heads_and_tied_mlm_output():
  model, params = _init(nsp_head=True, num_classes=3)
  ids = _ids(5)
  assert model.apply({'params': params}, ids, head='nsp').shape == (2, 2)
  assert model.apply({'params': params}, ids, head='classify').shape == (2, 3)
  assert set(params['mlm_head']) == {'transform', 'norm', 'output_bias'}
  bias = jax.random.normal(jax.random.key(6), (50,))
  params['mlm_head']['output_bias'] = bias
  params['embedder']['word']['embedding'] = jnp.zeros_like(
      params['embedder']['word']['embedding'])
  logits = model.apply({'params': params}, ids)
  np.testing.assert_allclose(logits, jnp.broadcast_to(bias, logits.shape), atol=1e-6)
  with pytest.raises(ValueError, match='head'):
    _tiny().apply({'params': params}, ids, head='nsp')
