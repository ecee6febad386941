"""Model FLOPs counted on the jaxpr: exact for products and convolutions, right under nn.scan."""

import jax
import jax.numpy as jnp
import optax

from gwtn_jax import config_lib
from gwtn_jax import models
from gwtn_jax import report
from gwtn_jax.methods import tasks
from gwtn_jax.methods.supervised import Supervised
from gwtn_jax.parallel import mesh as mesh_lib
from gwtn_jax.train import flops
from gwtn_jax.train import loop
from gwtn_jax.train import metrics
from gwtn_jax.train import state as state_lib


def test_products_and_convolutions_count_two_flops_per_multiply_add():
  assert flops.count(lambda x, w: x @ w, jnp.ones((8, 16)), jnp.ones((16, 32))) == 2 * 8 * 16 * 32
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # Every output element: a 3x3 window over 4 input channels.
  assert flops.count(conv, jnp.ones((2, 5, 5, 4)), jnp.ones((3, 3, 4, 6))) == 2 * (2 * 5 * 5 * 6) * 36
  # A scan's body counts once per iteration; elementwise work not at all.
  scanned = lambda w, x: jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]
  assert flops.count(scanned, jnp.ones((5, 16, 16)), jnp.ones((8, 16))) == 5 * 2 * 8 * 16 * 16
  # What nothing uses is not counted (the compiled program would not compute it).
  dead = lambda x, w: (x @ w, (x @ w.T).sum())[0]
  assert flops.count(dead, jnp.ones((8, 16)), jnp.ones((16, 16))) == 2 * 8 * 16 * 16


def _mlm_step(scan_layers: bool, trainable=None):
  model = models.get_bert('bert_mini', vocab_size=512, width_multiplier=1.0, max_position=64,
                          scan_layers=scan_layers, dropout_rate=0.0, attention_dropout_rate=0.0)
  task = tasks.MaskedLM(seq_len=64, max_predictions=10)
  method = Supervised(model, task, 1, trainable_modules=trainable)
  tx = optax.adamw(1e-3)
  mesh_config = config_lib.mesh_config('data')
  mesh_config.num_devices = 1
  mesh = mesh_lib.make_mesh(mesh_config)
  rules = ()
  sample = {k: jnp.zeros((8,) + v.shape[1:], v.dtype) for k, v in task.sample_batch().items()}
  state, _ = state_lib.abstract_state(method, tx, jax.random.key(0), task.sample_batch(), None,
                                      mesh, rules)
  phase = method.phases()[0]
  counted = loop.step_model_flops(method, phase, tx, jax.random.key(0), mesh, rules, state,
                                  sample, None)
  return counted, (method, phase, tx, mesh, rules, state, sample), model, task


def test_a_scanned_bert_counts_as_its_unrolled_twin_and_near_xlas_unrolled_count():
  scanned, _, model_s, task = _mlm_step(True)
  unrolled, (method, phase, tx, mesh, rules, state, sample), model_u, _ = _mlm_step(False)
  assert scanned == unrolled
  # XLA's cost analysis of the same unrolled step adds the elementwise work: a few % more.
  compiled = loop.jit_train_step(method, phase, tx, jax.random.key(0), mesh, rules,
                                 jax.tree.map(lambda x: x.sharding, state), None).lower(
                                     state, sample, None).compile()
  xla = report.cost_flops(compiled)
  assert unrolled < xla < 1.15 * unrolled, (unrolled, xla)
  # The report's forward FLOPs of a scanned network are its unrolled twin's.
  assert report.forward_flops(model_s, task) == report.forward_flops(model_u, task)


def test_frozen_parts_gradients_are_not_counted():
  full, *_ = _mlm_step(False)
  head_only, *_ = _mlm_step(False, trainable=('mlm_head',))
  forward = full / 3  # a step is about a forward and a backward of twice its cost
  assert head_only < 0.6 * full and head_only > 0.9 * forward, (full, head_only)


def test_the_peak_comes_from_the_config_the_data_sheet_or_a_measurement():
  class Chip:
    def __init__(self, kind, platform):
      self.device_kind, self.platform = kind, platform
  assert metrics.peak_flops(Chip('TPU v5 lite', 'tpu'), 'bfloat16') == (197e12, 'TPU v5 lite data sheet')
  assert metrics.peak_flops(Chip('TPU v5p', 'tpu'), 'float32')[0] == 459e12
  assert metrics.peak_flops(Chip('NVIDIA H200', 'gpu'), 'bfloat16')[0] == 989e12
  assert metrics.peak_flops(Chip('NVIDIA H200', 'gpu'), 'float32')[0] == 494e12
  assert metrics.peak_flops(Chip('NVIDIA H200', 'gpu'), 'bfloat16', configured=500.0) == (
      500e12, 'config')
  assert metrics.peak_flops(Chip('Some NPU', 'npu'), 'bfloat16') == (0.0, 'unknown')
  peak, source = metrics.peak_flops(jax.devices()[0], 'float32')
  assert source == 'measured matmul' and 1e8 < peak * jax.local_device_count() < 1e14
