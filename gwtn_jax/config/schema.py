"""The shape of a run's config: every field and its default, and what is read off a config.

Config files under `configs/` start from `base_config()` and change what their recipe needs, so
every field below exists in every config and has one meaning. Importing this module imports
neither JAX nor a model: config files import it. The check of a whole config is
`gwtn_jax.config.validation`; what a rerun in a used workdir may change is
`gwtn_jax.config.workdir`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from gwtn_jax.methods import registry
from gwtn_jax.parallel import axes


class ConfigError(ValueError):
  """A config, a path or an input that is refused; the message is one line."""


def stages_of(config) -> tuple[str, ...]:
  """The stages a run runs: `config.stages`, or those of `config.method` when it is empty
  (a BERT run's method adds the per-network downstream stage; with a `teacher_dir` the method
  does not train its own teacher)."""
  if config.stages:
    return tuple(config.stages)
  methods = registry.methods()
  if config.method not in methods:
    raise ConfigError(f'method={config.method!r} is unknown; choose one of '
                      f'{tuple(methods)} (or list stages)')
  stages = methods[config.method] + (registry.per_network_stages() if is_text(config) else ())
  if config.teacher_dir:
    stages = tuple(s for s in stages if s != registry.teacher_stage())
  return stages

IMITATION_GRANULARITIES = ('block', 'stage')
IMITATION_SCHEDULES = ('progressive', 'one_shot')
IMITATION_LOSS_ON = ('current', 'cumulative')
IMITATION_INPUTS = ('own', 'teacher')
DTYPES = ('float32', 'bfloat16', 'float16')


def is_text(config) -> bool:
  """Whether the config's networks are BERTs (text) rather than ResNets (images)."""
  return config.model.name.startswith('bert')


# How every data section reads its dataset: the first N examples of a split (0 = all), the
# threads building batches and the batches kept ready.
READING = dict(num_train_examples=0, num_eval_examples=0, read_threads=2, prefetch=4)


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


# The logical axis names the models annotate parameters with (ResNet, then BERT), and their
# large activations' axes besides the batch (BERT, then ResNet): the models' own names, from
# `gwtn_jax.parallel.axes`.
LOGICAL_AXES = axes.PARAMETER_AXES
ACTIVATION_AXES = axes.ACTIVATION_AXES
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
      rules=[[axes.BATCH_AXIS, ['data', 'fsdp']]] + [[name, placement.get(name)]
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
      # a ResNet of gwtn_jax.models.MODELS, a plain MLP of MLP_PRESETS (mlp<depth>), or a BERT
      # preset (bert_*)
      name='cifar_resnet20',
      # The wide network's architecture when it is not the thin one widened: e.g. a 24-layer
      # 'bert_large' teacher for a 'bert_base' student (pair with imitate.layer_map).
      wide_name='',
      num_classes=0,        # 0: the dataset's
      dtype='float32',      # compute dtype (bfloat16 on TPU); parameters stay float32
      stem_strides=1,       # CIFAR-style stem only (2 takes 28x28 to 14x14)
      num_filters=0,        # ResNets: stage 1's base width (0: the preset's; 64 or 16); MLPs:
                            # the hidden width (0: the preset's 128)
      shortcuts=True,       # ResNets: False removes every residual connection (a plain net)
      num_layers=0,          # BERTs: encoder layers; MLPs: hidden layers (0: the preset's)
      # BERT only.
      pre_layer_norm=False,  # False: post-LN as in BERT; True: pre-LN (learns at small budgets)
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      max_position=512,
      nsp_head=False,
      # nn.scan over the layers: one compiled layer, faster compiles (TPU pods); on a CPU
      # the step costs 1.09-1.19x the unrolled one (benchmarks/README.md)
      scan_layers=False,
      remat=False,           # rematerialize each layer in the backward pass
  ))
  # The thin network is the one shipped; the wide one is the same depth widened (DESIGN.md).
  config.thin_width = 1.0
  config.wide_width = 4.0

  # The image data (fields documented in `gwtn_jax.data.images`; the datasets, their shapes,
  # classes, eval splits and folders in `gwtn_jax.data.datasets`). A BERT run replaces it
  # with `text_data_config()`.
  config.data = ml_collections.ConfigDict(dict(
      name='fashion_mnist_idx',
      dir='',               # '' = the dataset's: /usr/share/datasets/fashion-mnist (IDX), tfds's
      train_split='train',
      eval_split='',        # '' = the dataset's: 'test' ('validation' for imagenet2012)
      augment=True,
      # The side of the square crops of a dataset whose images vary in size (imagenet2012,
      # oxford_flowers102, food101, ...); a dataset of one image shape keeps it.
      image_size=224,
      **READING,
      # tfds datasets (any name the table of gwtn_jax.data.datasets lacks is one): the image
      # and the label (ClassLabel) features.
      image_key='image',
      label_key='label',
      # Pixel statistics (per channel, 0..255) the images are normalized with: '' = the
      # dataset's own (the table's, or the preset of its name), or a preset of
      # gwtn_jax.data.datasets.STATS ('imagenet', 'cifar10', 'cifar100', 'fashion_mnist',
      # 'mnist'); mean/std override both.
      stats='',
      mean=(),
      std=(),
      # 'synthetic' only.
      synthetic_image_shape=(8, 8, 1),
      synthetic_num_classes=4,
      synthetic_num_train=256,
      synthetic_num_eval=64,
      synthetic_noise=48.0,  # std of the pixel noise, in 0..255 units
      synthetic_seed=0,      # seed of the class patterns and noise (the data, not the order)
  ))

  config.mesh = mesh_config('data')

  # The method compared or run (the methods of gwtn_jax/methods/registry.py); `stages`, when
  # not empty, lists the stages instead.
  config.method = 'gwtn'
  config.stages = ()
  # A trained wide network to use as the teacher when 'wide' is not among the stages: the
  # stage directory of an earlier run (`WORKDIR/stages/wide`), a Hugging Face BERT directory
  # (`save_pretrained`'s config.json and model.safetensors or pytorch_model.bin), or a
  # torchvision/timm ResNet state dict (.safetensors, .pth); see `gwtn_jax.interop.sources`.
  # Its architecture is checked against the config's wide network before anything compiles.
  config.teacher_dir = ''
  # A pretrained thin network that the thin stages which start fresh (thin_scratch, thin_kd,
  # imitate) start from instead of a random initialization, of the same kinds as teacher_dir
  # ('' = random). Its missing heads (a BertModel's MLM head) stay randomly initialized.
  config.thin_init = ''

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

  # True: every thin stage of a seed reads the same batches in the same order (stage 3 reads
  # the batches the controls read first), so arm differences lose the data-order noise and
  # GWTN with no imitation is KD-only exactly. False: each stage its own order (the demos').
  config.shared_data_order = False
  # One device's peak FLOP/s (in TFLOP/s) that the logs' MFU divides by. 0: the chip's data
  # sheet (TPU v4, v5e, v5p, v6e; A100, H100, H200: `gwtn_jax.train.metrics.PEAK_FLOPS`), or on
  # a CPU the host's measured float32 matmul rate.
  config.peak_tflops = 0.0
  # A jax.profiler trace (TensorBoard's profile plugin, Perfetto) of steps (start, stop),
  # 1-based and inclusive, of every stage this invocation runs (or of `profile_stages` only),
  # under WORKDIR/profile/<stage>/. () : no trace.
  config.profile_steps = ()
  config.profile_stages = ()

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
      # The recipe variants of the depth study (README, "When does GWTN pay?"); the defaults
      # are the paper's plain recipe.
      # Progressive: the learning-rate multiplier of the points below the current one (1: they
      # train along at the phase's rate; MobileBERT keeps 0.1; 0 is freeze_lower).
      lower_lr=1.0,
      # A factor on the imitation loss (normalized or not). With SGD it is a learning-rate
      # factor; Adam's update does not see it (but for eps); eval reports the unscaled loss.
      loss_scale=1.0,
      # After the last phase, this many steps that only re-estimate the thin network's
      # BatchNorm statistics on its own inputs (running averages at the model's momentum;
      # nothing else moves). 0: none. ResNets only.
      bn_refresh_steps=0,
      # 'up': a projection up to the teacher's width for the loss only (the thin network is
      # unchanged). 'pair': the paper's Figure 1: thin point i feeds block i+1 through the
      # up-projection and a learned down-projection, merged exactly into block i+1's first
      # linear map at export (only where a block reads its input through a linear map alone:
      # MLPs and ResNets with model.shortcuts=False).
      projection='up',
      # The teacher stage's step whose network is imitated (0: its final network). The
      # teacher stage then also keeps its network at that step (`snapshots/<step>/`); KD in
      # stage 3 and the controls keep the final teacher.
      teacher_step=0,
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
  # A study (`gwtn_jax.study`): the pipeline once per value of one config field (dotted, e.g.
  # 'model.name' or 'imitate.steps_per_point'), every seed, and study.json/md/png over them.
  # '' = a single run. share_teacher: a setting whose teacher stage would train exactly as
  # the first setting's (the axis changes only later stages' fields) reads the first
  # setting's teacher (`teacher_dir`) instead of training it again (our choice: the study
  # compares thin arms, and one teacher is both cheaper and the fairer comparison).
  config.study = ml_collections.ConfigDict(dict(axis='', settings=(), label='',
                                                share_teacher=True))
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
      # BERT's normalizer lowercases and strips accents (uncased vocabularies); False for a
      # cased one. A Hugging Face teacher's `do_lower_case` must agree (checked).
      lowercase=True,
      vocab_train_examples=1_000_000,  # tfds: train the vocabulary on the first N (0 = all)
      cache_dir='',         # '' = ~/.cache/gwtn_jax/text
      seq_len=128,
      mask_rate=0.15,
      **READING,
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
      **READING,
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
