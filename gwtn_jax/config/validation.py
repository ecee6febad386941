"""The check of a whole config before any data is read or anything is compiled.

First the generic fields (stages and their order, seeds, widths, batch sizes, optimizers,
mesh), then each stage's own check from the registry (`Stage.check`), then the data's and the
model's. Every refusal is a `ConfigError` of one line that names the field (or path).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections

from gwtn_jax import builders
from gwtn_jax import data as data_lib
from gwtn_jax import models
from gwtn_jax import storage
from gwtn_jax.data import datasets
from gwtn_jax.data import wordpiece
from gwtn_jax.interop import sources
from gwtn_jax.config import schema
from gwtn_jax.config import workdir as workdir_lib
from gwtn_jax.config.schema import ConfigError
from gwtn_jax.config.schema import DTYPES
from gwtn_jax.config.schema import IMITATION_GRANULARITIES
from gwtn_jax.config.schema import IMITATION_INPUTS
from gwtn_jax.config.schema import IMITATION_LOSS_ON
from gwtn_jax.config.schema import IMITATION_SCHEDULES
from gwtn_jax.config.schema import is_text
from gwtn_jax.config.schema import stage_steps
from gwtn_jax.config.schema import stage_value
from gwtn_jax.config.schema import stages_of
from gwtn_jax.methods import registry
from gwtn_jax.parallel import mesh as mesh_lib
from gwtn_jax.train import checkpoint as checkpoint_lib
from gwtn_jax.train import layout
from gwtn_jax.train import optim


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _check_positive_int(value, field: str, allow: Sequence[int] = ()) -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and (value > 0 or value in allow),
           f'{field}={value!r} must be a positive integer' + (f' or one of {tuple(allow)}' if allow else ''))


def _check_int(value, field: str, minimum: int) -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f'{field}={value!r} must be an integer >= {minimum}')


def _check_finite(config, prefix: str = '') -> None:
  """Every number anywhere in the config is finite (no field means anything by inf or nan)."""
  for key, value in config.items():
    field = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite(value, field + '.')
      continue
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f'{field}={value!r} must be finite')


# Fields that only some choices read: (field, the choices that read it, what chooses). A field
# set away from its default where nothing reads it is refused: it would be silently ignored.
_OPTIMIZER_FIELDS = (
    ('momentum', ('sgd',), 'name'), ('nesterov', ('sgd',), 'name'),
    ('b1', ('adamw', 'lamb'), 'name'), ('b2', ('adamw', 'lamb'), 'name'),
    ('eps', ('adamw', 'lamb'), 'name'),
    ('weight_decay_on', None, None),
    ('final_lr_fraction', ('cosine', 'linear'), 'schedule'),
    ('decay_boundaries', ('step',), 'schedule'), ('decay_factor', ('step',), 'schedule'),
)
_BERT_MODEL_FIELDS = ('pre_layer_norm', 'dropout_rate', 'attention_dropout_rate',
                      'max_position', 'nsp_head', 'scan_layers', 'remat')


def _check_read(value, default, field: str, why: str) -> None:
  plain = lambda v: tuple(v) if isinstance(v, list) else v  # a config's list is its tuple
  _require(plain(value) == plain(default), f'{field}={value!r} has no effect {why}; drop it (its default is '
           f'{default!r})')


def _check_no_ignored_fields(config, stages) -> None:
  """Refuses a field set away from its default where nothing reads it (it would be ignored)."""
  defaults, base_config = schema.optimizer_config(), schema.base_config()
  for stage in stages:
    opt, field = config[stage].optimizer, f'{stage}.optimizer'
    for name, readers, chooser in _OPTIMIZER_FIELDS:
      if readers and opt[chooser] not in readers:
        _check_read(opt[name], defaults[name], f'{field}.{name}',
                    f"with {field}.{chooser}={opt[chooser]!r}")
    if opt.name == 'sgd' and not opt.weight_decay:
      _check_read(opt.weight_decay_on, defaults.weight_decay_on, f'{field}.weight_decay_on',
                  f'without {field}.weight_decay')
  imitate, base = config.imitate, base_config.imitate
  if imitate.schedule == 'one_shot':
    for name in ('loss_on', 'freeze_lower', 'lower_lr'):  # (steps_per_point: recipes set it for both)
      _check_read(imitate[name], base[name], f'imitate.{name}',
                  "with imitate.schedule='one_shot' (progressive only)")
  else:
    _check_read(imitate.steps, base.steps, 'imitate.steps',
                f'with imitate.schedule={imitate.schedule!r} (one_shot only; a progressive '
                'phase lasts imitate.steps_per_point)')
  model, base = config.model, base_config.model
  if is_text(config):
    for name in ('stem_strides', 'num_filters', 'shortcuts'):
      _check_read(model[name], base[name], f'model.{name}', 'on a BERT (model.name='
                  f'{model.name!r})')
  else:
    for name in _BERT_MODEL_FIELDS:
      _check_read(model[name], base[name], f'model.{name}', 'on a ResNet (BERT only)')
    names = {model.name, model.wide_name or model.name}
    if names <= set(models.MLP_PRESETS):
      for name in ('stem_strides', 'shortcuts'):
        _check_read(model[name], base[name], f'model.{name}',
                    f'on an MLP (model.name={model.name!r}: ResNets only)')
    else:
      _check_read(model.num_layers, base.num_layers, 'model.num_layers',
                  f'on a ResNet (model.name={model.name!r}: MLPs and BERTs only; a ResNet\'s '
                  'depth is its preset)')
      if not any(n.startswith('cifar_') for n in names):
        _check_read(model.stem_strides, base.stem_strides, 'model.stem_strides',
                    f'with the ImageNet stem of model.name={model.name!r} (CIFAR stems only)')
    data, base = config.data, base_config.data
    if data.name != 'imagenet2012':
      _check_read(data.image_size, base.image_size, 'data.image_size',
                  f"with data.name={data.name!r} (imagenet2012 only)")
    if data.name != 'synthetic':
      for name in [n for n in base if n.startswith('synthetic_')]:
        _check_read(data[name], base[name], f'data.{name}',
                    f"with data.name={data.name!r} (synthetic data only)")


def _check_optimizer(opt, field: str) -> None:
  _require(opt.name in optim.OPTIMIZERS, f'{field}.name={opt.name!r} is unknown; choose one of {optim.OPTIMIZERS}')
  _require(opt.schedule in optim.SCHEDULES,
           f'{field}.schedule={opt.schedule!r} is unknown; choose one of {optim.SCHEDULES}')
  _require(opt.learning_rate > 0, f'{field}.learning_rate={opt.learning_rate} must be > 0')
  _require(opt.weight_decay >= 0, f'{field}.weight_decay={opt.weight_decay} must be >= 0')
  _require(0 <= opt.momentum < 1, f'{field}.momentum={opt.momentum} must be in [0, 1)')
  _check_int(opt.warmup_steps, f'{field}.warmup_steps', minimum=0)
  for beta in ('b1', 'b2'):
    _require(0 <= opt[beta] < 1, f'{field}.{beta}={opt[beta]} must be in [0, 1)')
  _require(opt.eps > 0, f'{field}.eps={opt.eps} must be > 0')
  _require(0 <= opt.final_lr_fraction <= 1,
           f'{field}.final_lr_fraction={opt.final_lr_fraction} must be in [0, 1]')
  _require(0 < opt.decay_factor <= 1, f'{field}.decay_factor={opt.decay_factor} must be in (0, 1]')
  _require(opt.grad_clip_norm >= 0,
           f'{field}.grad_clip_norm={opt.grad_clip_norm} must be >= 0 (0: no clipping)')
  _require(opt.weight_decay_on in ('all', 'kernels'),
           f"{field}.weight_decay_on={opt.weight_decay_on!r} must be 'all' or 'kernels'")
  _require(all(0 < b < 1 for b in opt.decay_boundaries),
           f'{field}.decay_boundaries={tuple(opt.decay_boundaries)} must be fractions in (0, 1)')


def _check_teacher_step(config, stage: str, teacher_stage: str, stages, data: bool) -> None:
  """`<stage>.teacher_step`: a step the teacher stage passes (it keeps its network there), or
  a snapshot the stage folder of `teacher_dir` holds."""
  field, step = f'{stage}.teacher_step', config[stage].teacher_step
  _check_int(step, field, minimum=0)
  if not step:
    return
  if teacher_stage in stages:
    total = stage_steps(config, teacher_stage, None)
    _require(step < total, f'{field}={step} must be below {teacher_stage}.steps={total} '
             f'(0 imitates the final {teacher_stage} network)')
    return
  if not data:
    return
  _require(_source(config.teacher_dir, 'teacher_dir').kind == sources.STAGE,
           f'{field}={step} needs teacher_dir to be a stage folder (one that kept its network '
           f'at that step); {config.teacher_dir} is not')
  where = layout.output_dir(config.teacher_dir, step)
  _require(layout.is_complete(where), f'{field}={step}: {where} does not exist; the teacher '
           f'stage keeps a snapshot only at the teacher_step of the run that trained it')


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
    reason = f'cannot be read ({storage.one_line(e)})'
  _require(reason is None, f'teacher_dir={teacher_dir}: {reason}')


def validate(config, workdir: str | None, data: bool = True) -> None:
  """Checks a whole config before any data is read or anything is compiled.

  Args:
    config: the config.
    workdir: the run's folder (None: not checked, for the planner).
    data: check that the datasets exist, and that the networks of `teacher_dir` and
      `thin_init` are the config's (False: the planner, which reads none).

  Raises:
    ConfigError: one line naming the field (or path) and what to do.
  """

  if workdir is not None:
    workdir_lib.check_workdir(workdir)
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
    if (config.teacher_dir and data
        and _source(config.teacher_dir, 'teacher_dir').kind == sources.STAGE):
      check_teacher_dir(config.teacher_dir)
  else:
    _require(not config.teacher_dir,
             f"teacher_dir={config.teacher_dir} is set but stages include '{teacher_stage}', "
             'which trains the teacher itself, so teacher_dir would be ignored; drop one of them')
  for stage in (s for s in stages if known[s].teacher and 'teacher_step' in config[s]):
    _check_teacher_step(config, stage, teacher_stage, stages, data)

  _check_finite(config)
  profile = tuple(config.profile_steps)
  _require(profile == () or (len(profile) == 2 and all(
      isinstance(n, int) and not isinstance(n, bool) for n in profile)
      and 1 <= profile[0] <= profile[1]),
           f'profile_steps={profile} must be () or (start, stop) with 1 <= start <= stop')
  for stage in config.profile_stages:
    _require(stage in stages, f'profile_stages: {stage!r} is not one of the stages run '
             f'{tuple(stages)}')
  _require(config.peak_tflops >= 0, f'peak_tflops={config.peak_tflops} must be >= 0')
  seeds = tuple(config.seeds)
  _require(len(seeds) > 0 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                  for s in seeds),
           f'seeds={seeds} must be a non-empty list of integers >= 0')
  _check_int(config.seed, 'seed', minimum=0)
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
    # The networks the run will build, from the data's shapes; every check below reads them.
    networks = builders.build_networks(config, builders.static_data_info(config))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  thin, wide = networks.thin, networks.wide

  @functools.cache
  def abstract(model, task):  # a network's variables, traced once for every check that reads them
    return jax.eval_shape(functools.partial(task.init, model), jax.random.key(0),
                          task.sample_batch())

  # The networks of teacher_dir and thin_init are read (their metadata, a config.json, a state
  # dict) unless the data are not: the planner sizes a config on a machine without them.
  if config.teacher_dir and registry.teacher_stage() not in stages and data:
    _check_network_source(config, 'teacher_dir', wide, abstract(wide, networks.task), thin)
  if config.thin_init:
    _require(any(registry.get(s).thin_init for s in stages),
             f'thin_init={config.thin_init} is set but none of stages={stages} starts a thin '
             'network afresh (' + ', '.join(s for s in registry.stages()
                                            if registry.get(s).thin_init) + '), so it would be '
             'ignored')
    if data:
      _check_network_source(config, 'thin_init', thin, abstract(thin, networks.task))
  if not is_text(config) and config.model.num_classes:
    from gwtn_jax.data import images  # pylint: disable=g-import-not-at-top
    try:
      classes = datasets.image_shape_and_classes(config.data, images.tfds_image_info)[1]
    except ValueError as e:
      raise ConfigError(str(e)) from None
    _require(config.model.num_classes >= classes,
             f'model.num_classes={config.model.num_classes} is below the {classes} classes of '
             f'data.name={config.data.name!r}; use 0 (the dataset\'s) or at least {classes}')
  if is_text(config):
    _require(config.data.seq_len <= config.model.max_position,
             f'data.seq_len={config.data.seq_len} exceeds model.max_position='
             f'{config.model.max_position}')
    for field in ('dropout_rate', 'attention_dropout_rate'):
      _require(0 <= config.model[field] < 1, f'model.{field}={config.model[field]} must be in [0, 1)')
  for field, model in (('thin_width', thin), ('wide_width', wide)):
    try:
      model.points()
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
  # 0: no imitation (GWTN is then stage 3 alone from the thin initialization: KD-only, when
  # stage 3 and thin_kd are configured alike; the method's sanity check).
  _check_int(imitate.steps_per_point, 'imitate.steps_per_point', minimum=0)
  for stage in stages:
    if known[stage].check is not None:
      try:
        known[stage].check(config, thin, wide)
      except ValueError as e:
        raise ConfigError(str(e)) from None
  # Every stage's section is range-checked, run or not: a bad value is wrong wherever it is.
  for stage in (s for s in known if s in config):
    stage_cfg = config[stage]
    _check_int(stage_cfg.batch_size, f'{stage}.batch_size', minimum=0)
    for field in ('eval_every', 'checkpoint_every'):
      _check_int(stage_cfg[field], f'{stage}.{field}', minimum=0)
    _check_optimizer(stage_cfg.optimizer, f'{stage}.optimizer')
  for stage in stages:
    stage_cfg = config[stage]
    declared = known[stage]
    if declared.length is None:
      _check_positive_int(stage_cfg.steps, f'{stage}.steps',
                          allow=(-1,) if declared.steps_as else ())
    if 'alpha' in stage_cfg:
      _require(0 <= stage_cfg.alpha <= 1, f'{stage}.alpha={stage_cfg.alpha} must be in [0, 1]')
      _require(stage_cfg.temperature > 0, f'{stage}.temperature={stage_cfg.temperature} must be > 0')
    if declared.steps_as and stage_cfg.steps == -1:
      for other in (o for role in declared.steps_as for o in registry.with_role(role)):
        if known[other].length is None:
          _require(config[other].steps > 0,
                   f'{stage}.steps=-1 needs {other}.steps > 0 to count the equal budget')
    try:
      steps = stage_steps(config, stage, thin)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    warmup = stage_cfg.optimizer.warmup_steps
    _require(warmup <= steps,
             f'{stage}.optimizer.warmup_steps={warmup} is longer than the stage ({steps} '
             'steps): it would never reach its learning rate')

  # Last of the field checks: a value out of range or a name unknown says more.
  _check_no_ignored_fields(config, stages)
  _check_int(config.mesh.num_devices, 'mesh.num_devices', minimum=0)
  try:
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
  # The planner (data=False) sizes for other chips than this machine's: it reports the fit.
  _check_shardings(networks, abstract, sizes, mesh_lib.rules_from_config(config.mesh.rules),
                   memory=device_memory_bytes() if data else None)


def _check_shardings(networks, abstract, sizes, rules, memory: float | None) -> None:
  """Every network's parameters split evenly under the mesh rules, and fit the devices' `memory`
  (None: not checked); traced (`abstract(model, task)`), not compiled."""
  checked = [('thin', networks.thin, networks.task), ('wide', networks.wide, networks.task)]
  if networks.downstream is not None:
    down = networks.downstream
    checked += [('thin', down.thin, down.task), ('wide', down.wide, down.task)]
  num_devices = math.prod(sizes.values())
  for role, model, task in checked:
    boxed = abstract(model, task)
    try:
      mesh_lib.check_divisible(boxed, sizes, rules, f'the {role} network')
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if memory is None:
      continue
    params = jax.tree.leaves(nn.meta.unbox(boxed.get('params', {})))
    # A floor of what training needs on each device: parameters and their gradients, split
    # evenly over every device (no sharding does better; optimizer state and activations come
    # on top).
    floor = 2 * sum(math.prod(x.shape) * x.dtype.itemsize for x in params) / num_devices
    field = 'thin_width' if role == 'thin' else 'wide_width'
    _require(floor <= memory,
             f'{field}={model.width_multiplier:g} gives the {role} network '
             f'{sum(math.prod(x.shape) for x in params):,} parameters: training needs at least '
             f'{floor / 2**30:.1f} GiB per device for them and their gradients even split over '
             f'all {num_devices} devices, more than a device has ({memory / 2**30:.1f} GiB); '
             'lower the width or add devices (python -m gwtn_jax.plan sizes a config)')


def _source(path: str, field: str) -> sources.Source:
  try:
    return sources.identify(path, field)
  except (storage.StorageError, ValueError) as e:
    raise ConfigError(str(e)) from None


def _network_fields(config, role: str) -> str:
  """How the config names its `role` network, e.g. 'model.wide_name=bert_base, wide_width=1'."""
  m = config.model
  if role == 'wide' and m.wide_name:
    return f'model.wide_name={m.wide_name}, wide_width={config.wide_width:g}'
  return f'model.name={m.name}, {role}_width={config[f"{role}_width"]:g}'


def _check_network_source(config, field: str, model, model_abstract, thin=None) -> None:
  """The network `config[field]` names (teacher_dir, thin_init) is the config's `model`,
  before anything is restored or compiled; a BERT's tokenizer agrees with `config.data`."""
  source = _source(config[field], field)
  role = 'thin' if field == 'thin_init' else 'wide'
  if source.kind == sources.STAGE:
    if field == 'thin_init':
      check_teacher_dir(config.thin_init)
    _check_stage_network(config, field, role, model_abstract)
    return
  try:
    sources.check(source, model, model_abstract, _network_fields(config, role), thin)
    if source.kind == sources.HF_BERT:
      _check_hf_tokenizer(config, source)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_hf_tokenizer(config, source: sources.Source) -> None:
  """A Hugging Face BERT's vocabulary and lowercasing are the data's: its embeddings are
  rows of its own vocab.txt."""
  from gwtn_jax.interop import bert_hf  # pylint: disable=g-import-not-at-top
  vocab, lowercase = bert_hf.tokenizer_options(source.path)
  if vocab is None:
    _require(bool(config.data.vocab_file),
             f'{source.where} has no vocab.txt or tokenizer.json and data.vocab_file is empty: '
             'its embeddings are rows of its own vocabulary; give it as data.vocab_file')
  else:
    same = bool(config.data.vocab_file) and (
        wordpiece.read_vocab(config.data.vocab_file) == wordpiece.read_vocab(vocab))
    _require(same, f'data.vocab_file={config.data.vocab_file!r} is not the vocabulary of '
                   f'{source.where}, whose embeddings are rows of its own: set '
                   f'data.vocab_file={vocab}')
  if lowercase is not None:
    _require(bool(config.data.lowercase) == lowercase,
             f'data.lowercase={config.data.lowercase} but {source.where} was trained with '
             f'do_lower_case={lowercase}: set data.lowercase={lowercase}')


def _check_stage_network(config, field: str, role: str, model_abstract) -> None:
  """The stage folder `config[field]` holds the config's `role` network (`model_abstract`: its
  traced variables): same arrays, same shapes, from the checkpoint's metadata, before anything
  is restored or compiled."""
  where = f'{field}={config[field]}'
  try:
    found = checkpoint_lib.final_shapes(os.path.join(config[field], layout.FINAL_DIR))
  except checkpoint_lib.CheckpointError as e:
    raise ConfigError(f'{where}: its {layout.FINAL_DIR}/ network cannot be read: '
                      f'{storage.one_line(e)}') from None
  if not found:
    raise ConfigError(f'{where}: its {layout.FINAL_DIR}/ network holds no arrays (truncated, '
                      'or not written by this library); rerun the stage that wrote it')
  expected = checkpoint_lib.flat_shapes(nn.meta.unbox(
      {c: v for c, v in model_abstract.items() if c in ('params', 'batch_stats')}))
  # Parameters first: their names say more than the statistics'.
  expected = dict(sorted(expected.items(), key=lambda kv: not kv[0].startswith('params/')))
  wide = f'the config\'s {role} network ({_network_fields(config, role)})'
  for path, shape in expected.items():
    if path not in found:
      raise ConfigError(f'{where} holds another architecture: it lacks {path} {shape} of {wide}'
                        f' ({len(found)} arrays there, {len(expected)} expected)')
    if found[path] != shape:
      raise ConfigError(f'{where} holds another network: {path} is {found[path]} there but '
                        f'{shape} in {wide}; is it a thin stage, or another width?')
  extra = sorted(set(found) - set(expected))
  if extra:
    raise ConfigError(f'{where} holds another architecture: {extra[0]} {found[extra[0]]} is '
                      f'not in {wide} ({len(found)} arrays there, {len(expected)} expected)')


def device_memory_bytes() -> float | None:
  """The memory of one local device (None if unknown): an accelerator's limit, or the host's
  memory shared by its CPU devices."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get('bytes_limit'):
    return float(stats['bytes_limit'])
  if device.platform == 'cpu':
    try:
      host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
      return None
    return host / jax.local_device_count()
  return None
