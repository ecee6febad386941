"""The shape of a run's config, its defaults, and the check of a whole config before any work.

Config files under `configs/` start from `base_config()` and change what their recipe needs, so
every field below exists in every config and has one meaning. The check (`validate`) runs
before any data is read or anything is compiled, and says what is wrong in one line that
names the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from gwtn_jax import storage
from gwtn_jax.methods import registry
from gwtn_jax.train import layout

def stages_of(config) -> tuple[str, ...]:
  """The stages a run runs: `config.stages`, or those of `config.method` when it is empty
  (a BERT run's method adds the per-network downstream stage)."""
  if config.stages:
    return tuple(config.stages)
  methods = registry.methods()
  if config.method not in methods:
    raise ConfigError(f'method={config.method!r} is unknown; choose one of '
                      f'{tuple(methods)} (or list stages)')
  return methods[config.method] + (registry.per_network_stages() if is_text(config) else ())

IMITATION_GRANULARITIES = ('block', 'stage')
IMITATION_SCHEDULES = ('progressive', 'one_shot')
IMITATION_LOSS_ON = ('current', 'cumulative')
IMITATION_INPUTS = ('own', 'teacher')
DTYPES = ('float32', 'bfloat16', 'float16')


def is_text(config) -> bool:
  """Whether the config's networks are BERTs (text) rather than ResNets (images)."""
  return config.model.name.startswith('bert')


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """An optimizer config (fields documented in `gwtn_jax.train.optim`)."""
  config = ml_collections.ConfigDict(dict(
      name='sgd',
      learning_rate=0.1,
      momentum=0.9,
      nesterov=False,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      weight_decay_on='all',
      schedule='cosine',
      warmup_steps=0,
      final_lr_fraction=0.0,
      decay_boundaries=(0.3, 0.6, 0.8),
      decay_factor=0.1,
      grad_clip_norm=0.0,
  ))
  config.update(overrides)
  return config


def stage_config(**overrides) -> ml_collections.ConfigDict:
  """Fields every stage has: its length, batch, optimizer, and when it evaluates and saves."""
  config = ml_collections.ConfigDict(dict(
      steps=100,           # -1 for the controls: as many as imitate + finetune
      batch_size=0,        # 0: config.batch_size
      optimizer=optimizer_config(),
      eval_every=0,        # 0: config.eval_every
      checkpoint_every=0,  # 0: config.checkpoint_every
  ))
  config.update(overrides)
  return config


# The logical axis names the models annotate parameters with (ResNet, then BERT).
LOGICAL_AXES = ('conv_in', 'conv_out', 'features', 'classes', 'vocab', 'embed', 'heads', 'kv',
                'mlp', 'layers')
# The large activations' axes (models.resnet/bert ACTIVATION_AXES, besides 'batch'): the
# residual stream and every sown (imitated) point, q/k/v, the FFN's hidden layer, the logits.
ACTIVATION_AXES = ('act_length', 'act_embed', 'act_heads', 'act_kv', 'act_mlp', 'act_vocab',
                   'act_height', 'act_width', 'act_channels')
# Mesh presets: the mesh shape and where each logical axis goes (unnamed axes: replicated).
# The batch (of inputs and of every activation) is always split over data x fsdp.
MESH_PRESETS = {
    # Pure data parallelism: every parameter and optimizer moment replicated.
    'data': (dict(data=-1, fsdp=1, tensor=1), {}),
    # FSDP (ZeRO-3): each parameter and its optimizer moments split over `fsdp` along its
    # output-feature axis; XLA all-gathers a layer's weights where it runs.
    'fsdp': (dict(data=1, fsdp=-1, tensor=1),
             {'conv_out': 'fsdp', 'features': 'fsdp', 'embed': 'fsdp'}),
    # FSDP plus tensor parallelism (BERT: heads, FFN and vocabulary over `tensor`,
    # Megatron-style, their activations too; the rest as FSDP).
    'fsdp_tensor': (dict(data=1, fsdp=-1, tensor=2),
                    {'conv_out': 'fsdp', 'features': 'fsdp', 'embed': 'fsdp',
                     'heads': 'tensor', 'mlp': 'tensor', 'vocab': 'tensor',
                     'act_heads': 'tensor', 'act_mlp': 'tensor', 'act_vocab': 'tensor'}),
}


def mesh_config(preset: str = 'data', **shape) -> ml_collections.ConfigDict:
  """`config.mesh` of a preset ('data', 'fsdp', 'fsdp_tensor'); `shape` overrides sizes."""
  if preset not in MESH_PRESETS:
    raise ConfigError(f'mesh preset {preset!r} is unknown; choose one of {tuple(MESH_PRESETS)}')
  sizes, placement = MESH_PRESETS[preset]
  return ml_collections.ConfigDict(dict(
      shape=dict(sizes, **shape),
      num_devices=0,  # 0: all devices
      # Logical axis name -> mesh axes (None: replicated).
      rules=[['batch', ['data', 'fsdp']]] + [[name, placement.get(name)]
                                             for name in LOGICAL_AXES + ACTIVATION_AXES],
  ))


def parse_config_arg(arg: str, allowed: Mapping[str, type], where: str) -> dict[str, Any]:
  """Parses a config file's argument, `--config=FILE:a,b=2`, into {'a': True, 'b': 2}.

  Args:
    arg: the text after the colon ('' for none).
    allowed: name -> type (bool for a flag without value, int or str for `name=value`).
    where: the config file, for the error.

  Raises:
    ValueError: one line naming the unknown or malformed item and what is allowed.
  """
  out: dict[str, Any] = {}
  usage = ', '.join(k if t is bool else f'{k}=...' for k, t in allowed.items())
  for item in filter(None, (part.strip() for part in arg.split(','))):
    name, eq, value = item.partition('=')
    kind = allowed.get(name)
    if kind is None or (kind is bool) == bool(eq):
      raise ValueError(f'{where}: unknown argument {item!r}; use any of: {usage}')
    try:
      out[name] = True if kind is bool else kind(value)
    except ValueError:
      raise ValueError(f'{where}: argument {item!r} needs a {kind.__name__} value') from None
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field a run has, with defaults; config files change what their recipe needs."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The thin runs (scratch, KD, imitation, probe, fine-tuning) are repeated for each seed and
  # the report gives mean and spread; the wide network is trained once, with `seed`.
  config.seeds = (0,)

  config.model = ml_collections.ConfigDict(dict(
      name='cifar_resnet20',  # a ResNet of gwtn_jax.models.MODELS, or a BERT preset (bert_*)
      # The wide network's architecture when it is not the thin one widened: e.g. a 24-layer
      # 'bert_large' teacher for a 'bert_base' student (pair with imitate.layer_map).
      wide_name='',
      num_classes=0,        # 0: the dataset's
      dtype='float32',      # compute dtype (bfloat16 on TPU); parameters stay float32
      stem_strides=1,       # CIFAR-style stem only (2 takes 28x28 to 14x14)
      num_filters=0,        # ResNets: stage 1's base width (0: the preset's; 64 or 16)
      # BERT only.
      pre_layer_norm=False,  # False: post-LN as in BERT; True: pre-LN (learns at small budgets)
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      max_position=512,
      nsp_head=False,
      scan_layers=False,     # nn.scan over the layers (one compiled layer: faster compiles)
      remat=False,           # rematerialize each layer in the backward pass
  ))
  # The thin network is the one shipped; the wide one is the same depth widened (DESIGN.md).
  config.thin_width = 1.0
  config.wide_width = 4.0

  config.data = ml_collections.ConfigDict(dict(
      name='fashion_mnist_idx',
      dir='/usr/share/datasets/fashion-mnist',
      train_split='train',
      eval_split='test',
      augment=True,
      image_size=224,
      num_train_examples=0,
      num_eval_examples=0,
      read_threads=2,
      prefetch=4,
      synthetic_image_shape=(8, 8, 1),
      synthetic_num_classes=4,
      synthetic_num_train=256,
      synthetic_num_eval=64,
  ))

  config.mesh = mesh_config('data')

  # The method compared or run (the methods of gwtn_jax/methods/registry.py); `stages`, when
  # not empty, lists the stages instead.
  config.method = 'gwtn'
  config.stages = ()
  # A trained wide network to use as the teacher when 'wide' is not among the stages: the
  # stage directory of an earlier run (`WORKDIR/stages/wide`).
  config.teacher_dir = ''

  config.batch_size = 128
  config.eval_batch_size = 500
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 2
  # The longest a step may wait for a checkpoint write to finish (orbax saves in the
  # background; a save waits for the one before). Past it, or as soon as a remote store stops
  # answering, the run stops with one line and the earlier checkpoints stay as they were.
  # Raise it for very large models on a slow store.
  config.checkpoint_timeout_s = 600.0
  # A NaN or Inf in the loss or gradients: 'stop' the run (one line naming the stage, step and
  # quantity; nothing non-finite is saved) or 'skip' the step (counted and reported).
  config.on_nonfinite = 'stop'

  config.wide = stage_config()
  config.thin_scratch = stage_config(steps=-1)
  config.thin_kd = stage_config(steps=-1, alpha=0.9, temperature=4.0)
  config.imitate = stage_config(
      # Steps of each progressive phase (one phase per imitated point); with
      # schedule='one_shot', `steps` is the length of the single phase.
      steps_per_point=100,
      schedule='progressive',
      granularity='block',      # 'block': stem + every block; 'stage': the last block of each stage
      loss_on='current',        # progressive: the loss on point l only, or on all points <= l
      inputs='own',             # the thin block reads its own previous output, or the teacher's
      freeze_lower=False,       # progressive: freeze the points below the current one
      normalize=False,          # MSE on LayerNorm-normalized features
      layer_map=(),             # thin point i -> teacher point layer_map[i]; () = identity
      point_weights=(),         # per imitated point; () = all 1
      init_head_from_teacher=True,  # thin head := projection . teacher head (exact merge)
  )
  config.probe = stage_config(steps=200)
  config.finetune = stage_config(alpha=0.5, temperature=4.0)
  # LIT (Koratana et al. 2019): phase 1, teacher-fed sections + KD; phase 2, KD alone. The
  # official code's values: beta 0.75 between KD and the IR loss, alpha 0.95 on the KD term
  # (0.05 on the labels), temperature 6. steps -1: the length of imitate (phase 1) and of
  # finetune (phase 2), so LIT and GWTN train the thin network equally long.
  config.lit = stage_config(steps=-1, sections=0, beta=0.75, alpha=0.95, temperature=6.0)
  config.lit_finetune = stage_config(steps=-1)
  # Adjoined Networks (Nath et al.): the wide architecture and its adjoined small network
  # (the first 1/cf of the filters of every conv with more than 64 input and output
  # channels), trained together from scratch; lambda = min(4 (e/E)^2, 1) per epoch.
  # epoch_steps 0: one pass over the train split at this stage's batch size.
  # threshold: the paper's 64 (a lower one masks more of a CIFAR-size network).
  config.adjoined = stage_config(steps=-1, cf=4, threshold=64, epoch_steps=0)
  # AN's control: its small network (the same widths) trained alone, as long.
  config.small_scratch = stage_config(steps=-1)
  # DAN: a width search over {C, C/2, C/4} per group of channels (Gumbel-softmax, temperature
  # from tau_start to tau_end, exponential), penalized by gamma * expected FLOPs / big FLOPs;
  # the argmax widths are then trained by AN from scratch (dan_adjoined).
  config.dan = stage_config(steps=-1, epoch_steps=0, gamma=1.0, tau_start=5.0, tau_end=0.5,
                            threshold=64)
  config.dan_adjoined = stage_config(steps=-1, epoch_steps=0)
  # BERT only: each network fine-tuned on a classification task (equal steps for all).
  config.downstream = downstream_config()
  return config


def text_data_config(**overrides) -> ml_collections.ConfigDict:
  """`config.data` of a BERT run (fields documented in `gwtn_jax.data.text`)."""
  config = ml_collections.ConfigDict(dict(
      name='shakespeare',   # the embedded corpus, or 'tfds' (a prepared tfds text dataset)
      plays=(),             # shakespeare: a subset of the plays (empty: all 38)
      tfds_name='',
      tfds_text_field='text',
      dir='',               # tfds data_dir ('' = tfds's default)
      train_split='train',
      eval_split='test',
      vocab_size=8000,      # WordPiece entries trained on the train split ...
      vocab_file='',        # ... or a BERT vocab.txt
      vocab_train_examples=1_000_000,  # tfds: train the vocabulary on the first N (0 = all)
      cache_dir='',         # '' = ~/.cache/gwtn_jax/text
      seq_len=128,
      mask_rate=0.15,
      num_train_examples=0,
      num_eval_examples=0,
      read_threads=2,
      prefetch=4,
  ))
  config.update(overrides)
  return config


def downstream_config(**overrides) -> ml_collections.ConfigDict:
  """The downstream stage: its data (`gwtn_jax.data.classify`) and its training."""
  config = stage_config(steps=300, optimizer=optimizer_config(
      name='adamw', learning_rate=1e-4, weight_decay=0.01, weight_decay_on='kernels',
      schedule='cosine', warmup_steps=30))
  config.update(dict(
      name='verse_prose',   # the embedded task, or 'tfds' (e.g. glue/sst2)
      tfds_name='',
      text_field='sentence',
      text_pair_field='',
      label_field='label',
      train_split='train',
      eval_split='validation',
      dir='',
      min_lines=2,
      balance=True,
      num_train_examples=0,
      num_eval_examples=0,
      read_threads=2,
      prefetch=4,
  ))
  config.update(overrides)
  return config


def stage_steps(config, stage: str, thin) -> int:
  """The number of steps a stage runs: its own length rule, else `steps`, where -1 adds up
  the lengths of the stages holding its budget roles (equal budgets).

  Args:
    config: the run's config.
    stage: a stage of the registry.
    thin: the thin network (a length may depend on it, e.g. GWTN's points).
  """
  declared = registry.get(stage)
  if declared.length is not None:
    return declared.length(config, thin)
  steps = config[stage].steps
  if steps == -1 and declared.steps_as:
    return sum(stage_steps(config, other, thin) for role in declared.steps_as
               for other in registry.with_role(role))
  return steps


def stage_value(config, stage: str, field: str):
  """A stage's own value of `field`, or the top-level default where the stage gives 0."""
  return config[stage][field] or config[field]


# Fields a rerun in the same workdir may change: how long stages run, how often they log, eval
# and save, which seeds and stages to run, and how the work is laid out on devices and read from
# disk (a checkpoint restores into another mesh). Anything else would mix two experiments in one
# workdir. Dotted names; a leading '*.' matches the field in every stage.
RERUN_FIELDS = ('seeds', 'stages', 'log_every', 'eval_every', 'checkpoint_every',
                'keep_checkpoints', 'checkpoint_timeout_s', 'on_nonfinite', '*.steps', 'imitate.steps_per_point',
                '*.eval_every', '*.checkpoint_every', 'data.read_threads', 'data.prefetch',
                'mesh.*')
CONFIG_FILE = 'config.json'


class ConfigError(ValueError):
  """A config, a path or an input that is refused; the message is one line."""


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _check_positive_int(value, field: str, allow: Sequence[int] = ()) -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and (value > 0 or value in allow),
           f'{field}={value!r} must be a positive integer' + (f' or one of {tuple(allow)}' if allow else ''))


def _check_optimizer(opt, field: str) -> None:
  from gwtn_jax.train import optim  # pylint: disable=g-import-not-at-top
  _require(opt.name in optim.OPTIMIZERS, f'{field}.name={opt.name!r} is unknown; choose one of {optim.OPTIMIZERS}')
  _require(opt.schedule in optim.SCHEDULES,
           f'{field}.schedule={opt.schedule!r} is unknown; choose one of {optim.SCHEDULES}')
  _require(opt.learning_rate > 0, f'{field}.learning_rate={opt.learning_rate} must be > 0')
  _require(opt.weight_decay >= 0, f'{field}.weight_decay={opt.weight_decay} must be >= 0')
  _require(0 <= opt.momentum < 1, f'{field}.momentum={opt.momentum} must be in [0, 1)')
  _require(opt.warmup_steps >= 0, f'{field}.warmup_steps={opt.warmup_steps} must be >= 0')
  _require(opt.weight_decay_on in ('all', 'kernels'),
           f"{field}.weight_decay_on={opt.weight_decay_on!r} must be 'all' or 'kernels'")
  _require(all(0 < b < 1 for b in opt.decay_boundaries),
           f'{field}.decay_boundaries={tuple(opt.decay_boundaries)} must be fractions in (0, 1)')


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable: tried for real, with a probe file.

  The same for a local folder and a gs:// one (a bucket that does not exist, an object where
  the folder should be, an endpoint that does not answer: one line each, within seconds).
  """
  try:
    storage.check_writable_folder(workdir, '--workdir')
  except storage.StorageError as e:
    raise ConfigError(str(e)) from None


def check_teacher_dir(teacher_dir: str) -> None:
  """`teacher_dir` must hold a finished stage: its result.json and a complete final/."""
  try:
    if storage.is_remote(teacher_dir):
      storage.check_endpoint(f'teacher_dir={teacher_dir}')
    reason = storage.with_deadline(f'teacher_dir={teacher_dir}',
                                   lambda: layout.unfinished_reason(teacher_dir))
  except storage.StorageError as e:
    raise ConfigError(str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    reason = f'cannot be read ({type(e).__name__}: {" ".join(str(e).split())[:200]})'
  _require(reason is None, f'teacher_dir={teacher_dir}: {reason}')


def validate(config, workdir: str | None, data: bool = True) -> None:
  """Checks a whole config before any data is read or anything is compiled.

  Args:
    config: the config.
    workdir: the run's folder (None: not checked, for the planner).
    data: check that the datasets exist (False: the planner, which reads none).

  Raises:
    ConfigError: one line naming the field (or path) and what to do.
  """
  # Imported here so that config files can import this module without pulling in JAX models.
  from gwtn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top

  if workdir is not None:
    check_workdir(workdir)
  stages = stages_of(config)
  known = registry.stages()
  names = tuple(known)
  for stage in stages:
    _require(stage in known, f'stages: {stage!r} is unknown; choose from {names}')
  _require(len(set(stages)) == len(stages), f'stages={stages} lists a stage twice')
  order = [names.index(s) for s in stages]
  _require(order == sorted(order), f'stages={stages} is out of order; the order is {names}')
  for stage in stages:
    source = known[stage].init_from or known[stage].arch_from
    _require(source in ('', registry.TEACHER) or source in stages,
             f"stages: '{stage}' starts from the output of '{source}', which is not in stages")
  teacher_stage = registry.teacher_stage()
  if teacher_stage not in stages:
    if any(known[s].reads_teacher for s in stages):
      _require(bool(config.teacher_dir),
               f"teacher_dir is empty but stages has no '{teacher_stage}'; give the stage folder "
               f"of a trained wide network (WORKDIR/stages/{teacher_stage}) or add "
               f"'{teacher_stage}' to stages")
    if config.teacher_dir:
      check_teacher_dir(config.teacher_dir)

  seeds = tuple(config.seeds)
  _require(len(seeds) > 0 and all(isinstance(s, int) for s in seeds),
           f'seeds={seeds} must be a non-empty list of integers')
  _require(len(set(seeds)) == len(seeds), f'seeds={seeds} repeats a seed')

  _require(config.model.dtype in DTYPES, f'model.dtype={config.model.dtype!r} must be one of {DTYPES}')
  for field in ('thin_width', 'wide_width'):
    _require(config[field] > 0, f'{field}={config[field]} must be > 0')
  if config.model.wide_name:
    _require(is_text(config) == config.model.wide_name.startswith('bert'),
             f'model.wide_name={config.model.wide_name!r} and model.name={config.model.name!r} '
             'must both be BERTs or both ResNets')
  _require(config.wide_width >= config.thin_width or bool(config.model.wide_name),
           f'wide_width={config.wide_width} is below thin_width={config.thin_width}; the wide '
           'network is the teacher and must be at least as wide')

  try:
    if not data:
      pass
    elif is_text(config):
      data_lib.check_text_config(config.data)
      if set(registry.per_network_stages()) & set(stages):  # the downstream task's data
        data_lib.check_classify_config(config.downstream)
        _require(config.downstream.name != 'verse_prose' or config.data.name == 'shakespeare',
                 "downstream.name='verse_prose' is a task on the Shakespeare plays; it needs "
                 f"data.name='shakespeare' (not {config.data.name!r}) or a tfds downstream task")
    else:
      data_lib.check_data_config(config.data)
  except ValueError as e:
    message = str(e)
    if is_text(config) and config.data.name == 'tfds' and 'not prepared' in message:
      message += ('; or use the embedded Shakespeare corpus: --config.data.name=shakespeare '
                  '--config.downstream.name=verse_prose (a few-minute run: the config\'s '
                  '\':smoke\' variant)')
    raise ConfigError(message) from None
  try:
    thin = builders.build_model(config, 'thin', num_classes=10, vocab_size=1000)
    wide = builders.build_model(config, 'wide', num_classes=10, vocab_size=1000)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if is_text(config):
    _require(config.data.seq_len <= config.model.max_position,
             f'data.seq_len={config.data.seq_len} exceeds model.max_position='
             f'{config.model.max_position}')
    for field in ('dropout_rate', 'attention_dropout_rate'):
      _require(0 <= config.model[field] < 1, f'model.{field}={config.model[field]} must be in [0, 1)')
  for field, model in (('thin_width', thin), ('wide_width', wide)):
    try:
      model.point_channels()
    except ValueError as e:
      raise ConfigError(str(e).replace('model.width_multiplier', field)) from None

  _check_positive_int(config.batch_size, 'batch_size')
  _check_positive_int(config.eval_batch_size, 'eval_batch_size')
  for field in ('log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints'):
    _check_positive_int(config[field], field)

  timeout = config.checkpoint_timeout_s
  _require(isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0,
           f'checkpoint_timeout_s={timeout} must be a finite number of seconds > 0')
  _require(config.on_nonfinite in ('stop', 'skip'),
           f"on_nonfinite={config.on_nonfinite!r} must be 'stop' or 'skip'")

  imitate = config.imitate
  _require(imitate.granularity in IMITATION_GRANULARITIES,
           f'imitate.granularity={imitate.granularity!r} must be one of {IMITATION_GRANULARITIES}')
  _require(imitate.schedule in IMITATION_SCHEDULES,
           f'imitate.schedule={imitate.schedule!r} must be one of {IMITATION_SCHEDULES}')
  _require(imitate.loss_on in IMITATION_LOSS_ON,
           f'imitate.loss_on={imitate.loss_on!r} must be one of {IMITATION_LOSS_ON}')
  _require(imitate.inputs in IMITATION_INPUTS,
           f'imitate.inputs={imitate.inputs!r} must be one of {IMITATION_INPUTS}')
  # Every equal budget counts imitation's steps, so they are checked whatever the stages.
  _check_positive_int(imitate.steps_per_point, 'imitate.steps_per_point')
  for stage in stages:
    if known[stage].check is not None:
      try:
        known[stage].check(config, thin, wide)
      except ValueError as e:
        raise ConfigError(str(e)) from None
  for stage in stages:
    stage_cfg = config[stage]
    declared = known[stage]
    if declared.length is None:
      _check_positive_int(stage_cfg.steps, f'{stage}.steps',
                          allow=(-1,) if declared.steps_as else ())
    _require(stage_cfg.batch_size >= 0, f'{stage}.batch_size={stage_cfg.batch_size} must be >= 0')
    _check_optimizer(stage_cfg.optimizer, f'{stage}.optimizer')
    if 'alpha' in stage_cfg:
      _require(0 <= stage_cfg.alpha <= 1, f'{stage}.alpha={stage_cfg.alpha} must be in [0, 1]')
      _require(stage_cfg.temperature > 0, f'{stage}.temperature={stage_cfg.temperature} must be > 0')
    if declared.steps_as and stage_cfg.steps == -1:
      for other in (o for role in declared.steps_as for o in registry.with_role(role)):
        if known[other].length is None:
          _require(config[other].steps > 0,
                   f'{stage}.steps=-1 needs {other}.steps > 0 to count the equal budget')
    try:
      stage_steps(config, stage, thin)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  try:
    from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = config.mesh.num_devices or jax.device_count()
    _require(num_devices <= jax.device_count(),
             f'mesh.num_devices={num_devices} but only {jax.device_count()} devices exist')
    sizes = mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dp = sizes['data'] * sizes['fsdp']
  for stage in stages:
    batch = stage_value(config, stage, 'batch_size')
    _require(batch % dp == 0,
             f'{stage}.batch_size={batch} is not divisible by the {dp} data-parallel devices '
             f'(mesh data x fsdp)')
  _require(config.eval_batch_size % dp == 0,
           f'eval_batch_size={config.eval_batch_size} is not divisible by the {dp} data-parallel devices')
  _check_shardings(config, sizes)


def _check_shardings(config, sizes) -> None:
  """Every network's parameters split evenly under the mesh rules (traced, not compiled)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import tasks  # pylint: disable=g-import-not-at-top
  from gwtn_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  info = builders.static_data_info(config)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  if is_text(config):
    networks = [(role, builders.build_model(config, role, classes, info.vocab_size),
                 tasks.SequenceClassification(info.seq_len) if classes else
                 tasks.MaskedLM(info.seq_len, 1))
                for role in builders.ROLES
                for classes in ((0, info.downstream_classes)
                                if set(registry.per_network_stages()) & set(stages_of(config))
                                else (0,))]
  else:
    networks = [(role, builders.build_model(config, role, info.num_classes),
                 tasks.ImageClassification(info.image_shape)) for role in builders.ROLES]
  for role, model, task in networks:
    boxed = jax.eval_shape(functools.partial(task.init, model), jax.random.key(0),
                           task.sample_batch())
    try:
      mesh_lib.check_divisible(boxed, sizes, rules, f'the {role} network')
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _flatten(tree, prefix: str = '') -> dict[str, object]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _may_change(field: str) -> bool:
  for pattern in RERUN_FIELDS:
    if pattern.startswith('*.') and field.endswith(pattern[1:]):
      return True
    if pattern.endswith('.*') and field.startswith(pattern[:-1]):
      return True
    if field == pattern:
      return True
  return False


def changed_fields(old: dict, new: dict) -> list[str]:
  """Dotted fields whose values differ between two configs (as JSON), other than RERUN_FIELDS."""
  a, b = _flatten(old), _flatten(new)
  return sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f) and not _may_change(f))


def check_workdir_config(config, workdir: str) -> None:
  """Refuses a config that differs from the one the workdir was started with.

  Raises:
    ConfigError: one line naming the fields that differ.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not storage.exists(path):
    return
  import json  # pylint: disable=g-import-not-at-top
  old = json.loads(storage.read_text(path))
  new = json.loads(config.to_json_best_effort())
  fields = changed_fields(old, new)
  if fields:
    old_flat, new_flat = _flatten(old), _flatten(new)
    shown = ', '.join(f'{f} ({old_flat.get(f)!r} -> {new_flat.get(f)!r})' for f in fields[:6])
    more = f' and {len(fields) - 6} more' if len(fields) > 6 else ''
    raise ConfigError(
        f'--workdir={workdir} was started with another config: {shown}{more} differ; rerun with '
        'the same config, use a new workdir, or pass --start_over to set the old run aside')
