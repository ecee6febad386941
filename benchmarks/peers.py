r"""This project's train steps against what users would write instead, on one machine, alternating.

  python benchmarks/peers.py                            # every case, 5 interleaved rounds
  python benchmarks/peers.py --cases=imitation --rounds=9
  python benchmarks/peers.py --cases=floor --rounds=15       # imitation against its floor
  python benchmarks/peers.py --cases=resnet50,bert --profile=12   # and where our steps spend
  python benchmarks/peers.py --dtype=bfloat16 --resnet_batch=256 --bert_batch=64   # a GPU

Cases (same sizes, dtype and optimizer on both sides; random data and weights, timing only):

- `resnet50`: one SGD-with-momentum train step of ResNet-50 at 224x224: ours (the loop's jitted
  step) against torchvision's `resnet50()` eager and under `torch.compile`.
- `bert`: one AdamW MLM step of BERT-Base at sequence 128, 20 masked positions a sequence: ours
  with scanned and unrolled layers against Hugging Face's `BertForMaskedLM` (which, as its
  users run it, projects every position onto the vocabulary; ours projects the masked ones,
  as BERT's pre-training does) and `BertForPreTraining` (MLM + NSP).
- `imitation`: one GWTN stage-2 step of the Fashion-MNIST demo's last phase (the thin
  ResNet-20 at width 0.25 imitating the wide one's last stage through a 1x1 projection), ours
  against the same in plain PyTorch (teacher forward without gradients, thin forward, the
  projection, MSE, backward, SGD): the cost of the method, not only of a supervised step.
- `floor`: for each demo of `--floor_configs` (the Fashion-MNIST ResNet and the Shakespeare
  BERT, their own batch, data and optimizer), the last imitation phase's step against its
  floor: the teacher's forward to the imitated point plus a minimal thin train step to it
  (forward, up-projection, MSE, backward, update), each jitted alone. It prints the model
  FLOPs of the three and `ours / floor` per round (the target: at most 1.05).

`--profile=N` traces one step of each of our contenders after the timings and prints its N
costliest kinds of XLA op (the host trace of `jax.profiler`): where a step's time goes.

The flax examples' ResNet (`examples/imagenet`) is not a pip package and this machine cannot
download it, so it is not a contender here (the issue's figures for it were measured apart).

Each round times `--steps` steps of every contender in turn, after one compile and `--warmup`
steps each; the table gives each contender's median ms per step over the rounds with its
interquartile range, and the median over rounds of the per-round ratio to our first contender
of the case (its IQR beside it): on a shared machine only ratios within a round resolve a few
per cent.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

from absl import app
from absl import flags

_CASES = flags.DEFINE_list('cases', ['resnet50', 'bert', 'imitation', 'floor'], 'Cases to run.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved rounds.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per contender per round.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after the compile.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_RESNET_BATCH = flags.DEFINE_integer('resnet_batch', 8, 'ResNet-50 batch.')
_BERT_BATCH = flags.DEFINE_integer('bert_batch', 8, 'BERT-Base batch.')
_IMITATION_BATCH = flags.DEFINE_integer('imitation_batch', 128, 'Imitation batch.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', True, 'Also time torch.compile.')
_PROFILE = flags.DEFINE_integer(
    'profile', 0, 'After the timings, trace one step of each of our contenders with '
    'jax.profiler and print this many of its costliest kinds of XLA op (0: none).')
_FLOOR_CONFIGS = flags.DEFINE_list(
    'floor_configs', ['configs/fashion_mnist.py', 'configs/shakespeare_bert.py'],
    "The demos whose last imitation phase the 'floor' case times against its floor.")

Step = Callable[[], None]  # one train step, returning when its work is done


# --- This project's steps -----------------------------------------------------------------------


def _ours(method, task, batch, optimizer, teacher_model=None, phase_index=0) -> Step:
  """The loop's jitted step of `method` on a one-device mesh, state donated like the loop's."""
  import jax  # pylint: disable=g-import-not-at-top
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop, optim  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  mesh_config = config_lib.mesh_config('data')
  mesh_config.num_devices = 1
  mesh = mesh_lib.make_mesh(mesh_config)
  rules = mesh_lib.rules_from_config(mesh_config.rules)
  phases = list(method.phases())
  tx, _ = optim.make_optimizer(optimizer, [p.steps for p in phases])
  rng = jax.random.key(0)
  sample = task.sample_batch()
  _, shardings = state_lib.abstract_state(method, tx, rng, sample, None, mesh, rules)
  state = [state_lib.create_state(method, tx, rng, sample, None, shardings)]
  teacher = teacher_shardings = None
  if teacher_model is not None:
    teacher = loop.init_model_variables(teacher_model, task, mesh, rules, jax.random.key(1))
    teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher)
  step = loop.jit_train_step(method, phases[phase_index], tx, rng, mesh, rules, shardings,
                             teacher_shardings)
  batch = mesh_lib.put_global_batch(batch, mesh)

  def run():
    state[0], metrics = step(state[0], batch, teacher)
    jax.block_until_ready(metrics)
  return run


def _optimizer(**fields):
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.optimizer_config(schedule='constant', **fields)


# --- The cases --------------------------------------------------------------------------------


def resnet50_case(batch_size: int, dtype: str) -> list[tuple[str, Step]]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  from gwtn_jax import models  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import tasks  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods.supervised import Supervised  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch_size, 224, 224, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, batch_size).astype(np.int32)
  model = models.get_model('resnet50', num_classes=1000, dtype=jnp.dtype(dtype))
  task = tasks.ImageClassification((224, 224, 3))
  method = Supervised(model, task, 10)
  sgd = _optimizer(name='sgd', learning_rate=0.1, momentum=0.9)
  contenders = [('ours (jax)', _ours(method, task, {'image': images, 'label': labels,
                                                    'mask': np.ones(batch_size, np.float32)},
                                     sgd))]

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)

  def torch_step(compiled: bool) -> Step:
    net = torchvision.models.resnet50().to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    fwd = torch.compile(net) if compiled else net
    def run():
      opt.zero_grad(set_to_none=True)
      with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
        loss = torch.nn.functional.cross_entropy(fwd(x), y)
      loss.backward()
      opt.step()
      _sync(device)
    return run

  contenders.append(('torchvision eager', torch_step(False)))
  if _TORCH_COMPILE.value:
    contenders.append(('torchvision torch.compile', torch_step(True)))
  return contenders


def bert_case(batch_size: int, dtype: str) -> list[tuple[str, Step]]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from gwtn_jax import models  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import tasks  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods.supervised import Supervised  # pylint: disable=g-import-not-at-top

  seq, vocab, predictions = 128, 30522, 20
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, vocab, (batch_size, seq)).astype(np.int32)
  weights = np.zeros((batch_size, seq), np.float32)
  for row in weights:
    row[rng.choice(seq, predictions, replace=False)] = 1.0
  labels = np.where(weights > 0, ids, -1).astype(np.int32)
  batch = {'input_ids': ids, 'token_type_ids': np.zeros_like(ids),
           'attention_mask': np.ones_like(ids), 'mlm_labels': labels, 'mlm_weights': weights,
           'mask': np.ones(batch_size, np.float32)}
  task = tasks.MaskedLM(seq_len=seq, max_predictions=predictions)
  contenders = []
  for scan in (True, False):
    model = models.get_bert('bert_base', vocab_size=vocab, scan_layers=scan,
                            dtype=jnp.dtype(dtype))
    method = Supervised(model, task, 10)
    adamw = _optimizer(name='adamw', learning_rate=1e-4, weight_decay=0.01)
    contenders.append((f'ours (jax), {"scanned" if scan else "unrolled"} layers',
                       _ours(method, task, batch, adamw)))

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  t_ids = torch.from_numpy(ids.astype(np.int64)).to(device)
  t_labels = torch.from_numpy(np.where(weights > 0, ids, -100).astype(np.int64)).to(device)
  t_mask = torch.ones_like(t_ids)

  def hf_step(cls) -> Step:
    net = cls(transformers.BertConfig(vocab_size=vocab)).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    extra = {'next_sentence_label': torch.zeros(batch_size, dtype=torch.long, device=device)
             } if cls is transformers.BertForPreTraining else {}
    def run():
      opt.zero_grad(set_to_none=True)
      with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
        loss = net(input_ids=t_ids, attention_mask=t_mask, labels=t_labels, **extra).loss
      loss.backward()
      opt.step()
      _sync(device)
    return run

  contenders.append(('HF BertForMaskedLM eager', hf_step(transformers.BertForMaskedLM)))
  contenders.append(('HF BertForPreTraining eager', hf_step(transformers.BertForPreTraining)))
  return contenders


def imitation_case(batch_size: int, dtype: str) -> list[tuple[str, Step]]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from gwtn_jax import config_lib, models, recipes  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import tasks  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods.imitation import Imitation  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config()
  recipes.fashion_mnist_gwtn(config, wide_steps=1800, steps_per_point=300, probe_steps=200,
                             finetune_steps=900)
  net = lambda w: models.get_model('cifar_resnet20', num_classes=10, width_multiplier=w,
                                   stem_strides=2, dtype=jnp.dtype(dtype))
  thin, wide = net(0.25), net(1.0)
  task = tasks.ImageClassification((28, 28, 1))
  method = Imitation(thin, wide, task, config.imitate)
  sgd = _optimizer(name='sgd', learning_rate=0.1, momentum=0.9)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch_size, 28, 28, 1)).astype(np.float32)
  batch = {'image': images, 'label': np.zeros(batch_size, np.int32),
           'mask': np.ones(batch_size, np.float32)}
  last = len(method.phases()) - 1
  contenders = [('ours (jax), last phase',
                 _ours(method, task, batch, sgd, teacher_model=wide, phase_index=last))]

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  student, teacher = _torch_cifar_trunk(4).to(device).train(), _torch_cifar_trunk(16).to(device)
  teacher.eval()  # the teacher's forward uses its running statistics, as ours does
  up = torch.nn.Conv2d(16, 64, 1, bias=False).to(device)
  params = list(student.parameters()) + list(up.parameters())
  opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      with torch.no_grad():
        target = teacher(x)
      loss = torch.nn.functional.mse_loss(up(student(x)), target)
    loss.backward()
    opt.step()
    _sync(device)
  contenders.append(('plain PyTorch eager', run))
  return contenders


# --- Imitation against its floor ----------------------------------------------------------------


def _load_config(spec: str):
  """A config file's `get_config(arg)`, from 'path' or 'path:arg' (as `--config` takes it)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('peers_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def floor_case(spec: str):
  """A demo's last GWTN imitation phase (the loop's jitted step, the config's mesh, one batch
  of the demo's data) against its floor: the teacher's forward to the imitated point, and a
  minimal thin train step to that point (forward, the 1x1 up-projection, MSE, backward,
  the same optimizer), each jitted alone with the same inputs. The step may cost at most
  1.05x the sum of the two (issue 16).

  Returns:
    (contenders, {name of a sum: the contenders it adds up}, the model FLOPs of one call of
    'ours', 'teacher' and 'thin').
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from gwtn_jax import builders, config_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import base  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import imitation  # pylint: disable=g-import-not-at-top
  from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import loop, optim  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  config = _load_config(spec)
  if config.imitate.inputs != 'own' or config.imitate.projection != 'up':
    raise ValueError(f'{spec}: the floor is that of imitation with its own inputs and an '
                     "up-projection (imitate.inputs='own', imitate.projection='up')")
  with tempfile.TemporaryDirectory() as tmp:
    config_lib.validate(config, tmp)
  exp = builders.build_experiment(config)
  mesh, rules, task, thin, wide = exp.mesh, exp.rules, exp.task, exp.thin, exp.wide
  batch = mesh_lib.put_global_batch(
      next(exp.data.train_batches(global_batch_size=config.batch_size, seed=0)), mesh)
  method = imitation.Imitation(thin, wide, task, config.imitate)
  phases = list(method.phases())
  phase = [p for p in phases if p.key is not None][-1]
  thin_point, wide_point = method.points[phase.key]
  sample = task.sample_batch()
  rng = jax.random.key(0)
  tx, _ = optim.make_optimizer(config.imitate.optimizer, [p.steps for p in phases])
  _, shardings = state_lib.abstract_state(method, tx, rng, sample, None, mesh, rules)
  state = [state_lib.create_state(method, tx, rng, sample, None, shardings)]
  teacher = loop.init_model_variables(wide, task, mesh, rules, jax.random.key(1))
  teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher)
  step = loop.jit_train_step(method, phase, tx, rng, mesh, rules, shardings, teacher_shardings)

  def ours():
    state[0], metrics = step(state[0], batch, teacher)
    jax.block_until_ready(metrics)

  @jax.jit
  def teacher_forward(variables, batch):
    _, out = task.forward(wide, variables, batch, train=False, stop_at=wide_point,
                          mutable=['intermediates'])
    return wide.read_points(out['intermediates'])[wide_point]

  targets = teacher_forward(teacher, batch)

  def teacher_part():
    jax.block_until_ready(teacher_forward(teacher, batch))

  # The minimal thin step: only the modules up to the point (and the projection) exist; the
  # partial forward creates nothing above it.
  variables = nn.meta.unbox(jax.jit(lambda r: task.init(thin, r, sample))(rng))
  keep = set(m for p in thin.points()[:[p.name for p in thin.points()].index(thin_point) + 1]
             for m in p.modules)
  params = {'student': {k: v for k, v in variables['params'].items() if k in keep},
            'up': jnp.zeros(method.up[thin_point], jnp.float32)
            if thin_point in method.up else None}
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  positions = task.position_weights(batch)
  floor = [(params, model_state, tx.init(params))]  # the step's own (stateless) optimizer

  @functools.partial(jax.jit, donate_argnums=(0,))
  def thin_step(carry, batch, targets, step_rng):
    params, model_state, opt_state = carry

    def loss_fn(params):
      y, new_state = task.forward(thin, {'params': params['student'], **model_state}, batch,
                                  train=True, rng=step_rng, stop_at=thin_point)
      if params['up'] is not None:
        y = jnp.einsum('...c,cd->...d', y, params['up'].astype(y.dtype))
      t = targets
      if config.imitate.normalize:  # the same loss as the step's
        y, t = imitation.layer_norm(y), imitation.layer_norm(t)
      return jnp.mean(base.feature_mse(y, t, positions)), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), {**model_state, **new_state}, opt_state), loss

  def thin_part():
    floor[0], loss = thin_step(floor[0], batch, targets, rng)
    jax.block_until_ready(loss)

  from gwtn_jax.train import flops as flops_lib  # pylint: disable=g-import-not-at-top
  counts = {'ours': loop.step_model_flops(method, phase, tx, rng, mesh, rules, state[0], batch,
                                          teacher),
            'teacher': flops_lib.count(teacher_forward, teacher, batch),
            'thin': flops_lib.count(thin_step, floor[0], batch, targets, rng)}
  name = f'ours, last phase ({phase.name})'
  contenders = [(name, ours), ('floor: teacher forward to the point', teacher_part),
                ('floor: thin step to the point', thin_part)]
  sums = {'floor: the two summed': ('floor: teacher forward to the point',
                                    'floor: thin step to the point')}
  return contenders, sums, counts


def _torch_cifar_trunk(width: int):
  """The demo's CIFAR ResNet-20 trunk in PyTorch (stride-2 3x3 stem, 3 stages of 3 basic
  blocks of width w, 2w, 4w, projection shortcuts where the shape changes), up to the last
  block: what the last imitation phase runs."""
  import torch  # pylint: disable=g-import-not-at-top
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  layers = [nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
  cin = width
  for stage, cout in enumerate((width, 2 * width, 4 * width)):
    for block in range(3):
      layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
      cin = cout
  return nn.Sequential(*layers)


def _sync(device: str) -> None:
  if device == 'cuda':
    import torch  # pylint: disable=g-import-not-at-top
    torch.cuda.synchronize()


# --- Timing -------------------------------------------------------------------------------------


def _quartiles(values: list[float]) -> tuple[float, float, float]:
  if len(values) < 2:
    return values[0], values[0], values[0]
  q1, q2, q3 = statistics.quantiles(values, n=4, method='inclusive')
  return q1, q2, q3


def interleaved(contenders: list[tuple[str, Step]], rounds: int, steps: int, warmup: int
                ) -> dict[str, list[float]]:
  """Seconds per step of each contender in each round, the contenders timed in turn."""
  for _, run in contenders:
    for _ in range(1 + warmup):  # the compile, then warm-up
      run()
  times = {name: [] for name, _ in contenders}
  for _ in range(rounds):
    for name, run in contenders:
      start = time.perf_counter()
      for _ in range(steps):
        run()
      times[name].append((time.perf_counter() - start) / steps)
  return times


def op_profile(run: Step, top: int) -> str:
  """The costliest kinds of XLA op of one call of `run` (jax.profiler's host trace; a kind is
  an op's name without its number: 'copy_bitcast_fusion', 'dynamic-update-slice_fusion'),
  their ms and share of the step."""
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      run()
    events = json.load(gzip.open(glob.glob(f'{tmp}/**/*.trace.json.gz', recursive=True)[0]))
  kinds = collections.Counter()
  for e in events['traceEvents']:
    name = e.get('name', '')
    # Complete events of the executed ops; the runtime's spans (`Class::method`) and
    # Python's (`$file:line`) left out.
    if e.get('ph') != 'X' or '::' in name or name.startswith(('$', 'PjitFunction')):
      continue
    base, _, suffix = name.rpartition('.')
    kinds[base if suffix.isdigit() and base else name] += e['dur'] / 1e3
  total = sum(kinds.values())
  lines = [f'  {"op kind":40s} {"ms":>9s} {"share":>6s}']
  lines += [f'  {k[:40]:40s} {ms:9.1f} {ms / total:6.1%}' for k, ms in kinds.most_common(top)]
  lines.append(f'  {"all ops":40s} {total:9.1f}')
  return '\n'.join(lines)


def table(case: str, times: dict[str, list[float]]) -> str:
  names = list(times)
  ours = times[names[0]]
  lines = [f'\n{case}', f'{"contender":42s} {"ms/step (median, IQR)":>28s} '
           f'{"ratio to " + names[0] + " (median, IQR)":>36s}']
  for name in names:
    lo, mid, hi = _quartiles([1e3 * t for t in times[name]])
    ratio = [t / o for t, o in zip(times[name], ours)]
    rlo, rmid, rhi = _quartiles(ratio)
    lines.append(f'{name:42s} {mid:12.1f} ({lo:7.1f}-{hi:7.1f}) '
                 f'{rmid:20.2f} ({rlo:.2f}-{rhi:.2f})')
  return '\n'.join(lines)


CASES = {'resnet50': (resnet50_case, _RESNET_BATCH), 'bert': (bert_case, _BERT_BATCH),
         'imitation': (imitation_case, _IMITATION_BATCH), 'floor': (floor_case, None)}


def _with_sums(times: dict[str, list[float]], sums: dict[str, tuple[str, ...]]
               ) -> dict[str, list[float]]:
  """`times` and, per round, the sum of the named contenders' times (a floor made of parts)."""
  out = dict(times)
  for name, parts in sums.items():
    out[name] = [sum(t) for t in zip(*(times[p] for p in parts))]
  return out


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  unknown = set(_CASES.value) - set(CASES)
  if unknown:
    raise app.UsageError(f'--cases: unknown {sorted(unknown)}; choose from {sorted(CASES)}')
  torch.set_num_threads(os.cpu_count() or 1)
  print(f'{platform.node()}: {os.cpu_count()} CPUs, jax {jax.__version__} on '
        f'{jax.devices()[0].device_kind}, torch {torch.__version__} '
        f'({"cuda" if torch.cuda.is_available() else "cpu"}), dtype {_DTYPE.value}; '
        f'{_ROUNDS.value} rounds of {_STEPS.value} steps', flush=True)
  for case in _CASES.value:
    build, batch_flag = CASES[case]
    if batch_flag is None:  # the floor: one table per demo config, its own batch and dtype
      for spec in _FLOOR_CONFIGS.value:
        contenders, sums, counts = build(spec)
        print(f'{spec}: model GFLOP per step: ours {counts["ours"] / 1e9:.3f}, floor '
              f'{counts["teacher"] / 1e9:.3f} (teacher) + {counts["thin"] / 1e9:.3f} (thin)',
              flush=True)
        times = interleaved(contenders, _ROUNDS.value, _STEPS.value, _WARMUP.value)
        times = _with_sums(times, sums)
        print(table(f'{case}: {spec}', times), flush=True)
        ours, floor = next(iter(times.values())), next(iter(sums))
        lo, mid, hi = _quartiles([o / f for o, f in zip(ours, times[floor])])
        print(f'ours / floor: {mid:.3f} (IQR {lo:.3f}-{hi:.3f}) over {len(ours)} rounds; '
              f'the target is at most 1.05', flush=True)
      continue
    contenders = build(batch_flag.value, _DTYPE.value)
    print(table(f'{case} (batch {batch_flag.value})',
                interleaved(contenders, _ROUNDS.value, _STEPS.value, _WARMUP.value)),
          flush=True)
    for name, run in contenders if _PROFILE.value else ():
      if name.startswith('ours'):
        print(f'{name}: one step traced\n{op_profile(run, _PROFILE.value)}', flush=True)


if __name__ == '__main__':
  app.run(main)
