r"""GWTN for BERT-Base: a thin BERT-Base by imitation of a 4/3-wide BERT-Base (hidden 1024).

Command (on every worker of a TPU slice; see tpu_scripts/README.md):

  python -m gwtn_jax.main --config=configs/bert_base.py --workdir=gs://BUCKET/gwtn_bert
  python -m gwtn_jax.main --config=configs/bert_base.py:devices=256 --workdir=...

  python -m gwtn_jax.main --config=configs/bert_base.py:smoke --workdir=/tmp/bert_smoke

Data: the paper's pre-training text is BooksCorpus + English Wikipedia. tfds has Wikipedia
(`wikipedia/20230601.en`) but not BooksCorpus; this config reads the tfds dataset named in
`data.tfds_name` (default Wikipedia alone; point it at a prepared tfds text dataset that holds
both if you have one). Prepare it once, on a machine with network, as array_record:

  tfds build wikipedia/20230601.en --data_dir=DIR --file_format=array_record

then copy DIR next to the workers (or to GCS) and pass `--config.data.dir=DIR`. Run as is
without the prepared dataset, the command stops at once with a one-line error that says this.
`data.vocab_file` may name bert-base-uncased's vocab.txt (30522 entries); by default a
WordPiece vocabulary of 30522 entries is trained on the train split. The downstream task is a
GLUE task through tfds (`glue/sst2` by default; `tfds build glue/sst2 ...` the same way).

Hardware: a Cloud TPU slice (v4 / v5e / v5p). Expected time and result: not measured by us.
The paper reports that the thin BERT-Base trained by GWTN comes close to BERT-Large.

`:smoke` keeps the structure (12 layers, every stage, the downstream task) and shrinks widths
(thin hidden 64, wide 128), data (the embedded Shakespeare corpus, 4 plays) and steps so the
whole pipeline finishes in a few minutes on a 2-core CPU.

Values and where they come from:
- Devlin et al. (2019), pre-training: batch 256 sequences, 1,000,000 steps, Adam (b1 0.9,
  b2 0.999, eps 1e-6) with decoupled weight decay 0.01, LR 1e-4 with 10,000 warm-up steps
  then linear decay to 0, dropout 0.1, GELU, post-LayerNorm, 15% of tokens masked (80/10/10),
  at most ceil(0.15 * 126) = 19 predictions per sequence. Fine-tuning: LR 2e-5, batch 32,
  3 epochs (SST-2: 67,349 examples -> 6,300 steps).
- GWTN paper: thin BERT-Base; its wide network is ours to choose: hidden, heads and FFN
  scaled by 4/3 (1024, 16 heads of 64, 4096: BERT-Large width at BERT-Base depth, DESIGN.md).
- Ours: sequences of 128 tokens for the whole schedule (Devlin et al. train the last 10% of
  the steps at 512); stage 2: 13 points (the embeddings and 12 layers), progressive, 10,000
  steps each, Adam at 1e-4 restarted per point, MSE on LayerNorm-normalized features; stage
  3: 870,000 steps of MLM + KD on the MLM distribution (alpha 0.5, T 1); the controls get
  stage 2 + 3's 1,000,000 steps; bfloat16 compute; layers under nn.scan, for TPU pods: one
  layer compiled instead of twelve. On a CPU the scanned step costs 1.09x the unrolled one at
  batch 8 (XLA zero-fills and slices the loop's stacked buffers; `benchmarks/README.md`), so
  the CPU configs (`shakespeare_bert.py`, `study_depth_bert.py`) leave `model.scan_layers`
  off; set it False here to run this config on CPUs.
- `:mesh=PRESET` picks another mesh preset (`data`, `fsdp`, `fsdp_tensor`; combine:
  `:devices=256,mesh=data`).
- `:devices=N` keeps the paper's 256M training sequences but on a global batch of 32 per
  device (steps = 256M / batch). Above Devlin et al.'s 256 sequences it trains with LAMB (You
  et al., 2020, the optimizer of large-batch BERT pre-training; the trust ratio per layer,
  each scanned layer its own), in the recipe NVIDIA's DeepLearningExamples publish for its
  phase 1 (sequences of 128): LR 6e-3 at a batch of 65,536, b1 0.9, b2 0.999, eps 1e-6,
  weight decay 0.01, 28.43% of the steps warm-up, then decay to 0 (ours: linear, as Devlin
  et al.'s). At other batch sizes the LR follows the square-root rule from that point
  (You et al.): 6e-3 * sqrt(batch / 65,536), 2.1e-3 at 8,192. Stage 2's phases keep AdamW at
  1e-4 (the LR scaled by sqrt(batch / 256)): they are short and restart per point.

Mesh for a 256-chip slice: FSDP (`fsdp` preset: every parameter and Adam moment split 256 ways).
`python -m gwtn_jax.plan --config=configs/bert_base.py:devices=256,mesh=PRESET --devices=256`
(global batch 8192, 32 sequences of 128 per chip; GiB per chip; temporaries from XLA:CPU, an
estimate):

  preset        wide stage: params  opt   temp  total   thin+teacher stages: total (max)
  data                      0.686  1.371  8.14  10.19                          8.12
  fsdp                      0.003  0.006  6.80   6.81                          5.16
  fsdp_tensor (tensor=2)    0.003  0.006  8.46   8.47                          6.58

All three fit a v5e (16 GiB), v4 (32) and v5p (95). FSDP has the smallest footprint: the
replicated 0.69 GiB of wide parameters and 1.37 GiB of Adam moments (and, in KD, imitation and
fine-tuning, the teacher's 0.69 GiB) shrink to megabytes, and the gradient all-reduce becomes a
reduce-scatter, which also lowers the temporaries; the headroom allows twice the per-chip batch
on a v5e. Tensor parallelism is not needed at this size: with the batch split 128 ways instead
of 256 each chip holds twice the activations (8.46 GiB). Model FLOPs per step are equal
across presets: 3.91 TFLOP per chip for the wide step and 3.54 for KD (`gwtn_jax.train.flops`,
the scanned layers counted per layer, equal to the unrolled count; XLA's cost analysis, which
counts a scan's body once, said 0.445).
"""

import math

from gwtn_jax import config_lib
from gwtn_jax import recipes

PAPER_BATCH = 256
PAPER_STEPS = 1_000_000
SST2_TRAIN = 67_349
MESH_PRESET = 'fsdp'  # chosen with gwtn_jax.plan at 256 chips; see the docstring


# LAMB at scale (NVIDIA DeepLearningExamples, BERT pre-training phase 1): LR at this batch,
# and the warm-up fraction.
LAMB_BATCH, LAMB_LR, LAMB_WARMUP = 65_536, 6e-3, 0.2843


def _adamw(lr: float, warmup: int, schedule: str = 'linear', name: str = 'adamw'):
  return config_lib.optimizer_config(
      name=name, learning_rate=lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
      weight_decay_on='kernels', schedule=schedule, warmup_steps=warmup)


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(smoke=bool, devices=int, mesh=str,
                                               hf_teacher=str), 'configs/bert_base.py')
  config = config_lib.base_config()
  config.model.name = 'bert_base'
  config.model.dtype = 'bfloat16'
  config.model.pre_layer_norm = False
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.1
  config.model.scan_layers = True
  config.thin_width = 1.0
  config.wide_width = 4 / 3

  config.data = config_lib.text_data_config(
      name='tfds', tfds_name='wikipedia/20230601.en', tfds_text_field='text',
      train_split='train[:99%]', eval_split='train[99%:]', vocab_size=30522, seq_len=128,
      mask_rate=0.15)

  batch, steps = PAPER_BATCH, PAPER_STEPS
  lr_scale = 1.0
  if 'devices' in args:
    devices = args['devices']
    batch = max(PAPER_BATCH, 32 * devices)
    steps = math.ceil(PAPER_BATCH * PAPER_STEPS / batch)
    lr_scale = math.sqrt(batch / PAPER_BATCH)
  warmup = 10_000 if batch == PAPER_BATCH else max(1, steps // 100)

  config.batch_size = batch
  config.eval_batch_size = batch
  config.log_every = 100
  config.eval_every = 10_000
  config.checkpoint_every = 5_000

  def full_length(stage_steps: int):
    """The optimizer of a stage of about the whole schedule: Devlin et al.'s AdamW, or LAMB
    above their batch."""
    if batch == PAPER_BATCH:
      return _adamw(1e-4, warmup)
    return _adamw(LAMB_LR * math.sqrt(batch / LAMB_BATCH), math.ceil(LAMB_WARMUP * stage_steps),
                  name='lamb')

  config.wide.steps = steps
  config.wide.optimizer = full_length(steps)
  config.thin_scratch.optimizer = full_length(steps)
  config.thin_kd.optimizer = full_length(steps)
  config.thin_kd.alpha = 0.5
  config.thin_kd.temperature = 1.0
  config.imitate.granularity = 'block'
  config.imitate.steps_per_point = max(1, round(steps / 100))
  config.imitate.normalize = True
  config.imitate.optimizer = _adamw(1e-4 * lr_scale, max(1, warmup // 10), schedule='cosine')
  config.probe.steps = max(1, round(steps / 100))
  config.probe.optimizer = _adamw(1e-4 * lr_scale, 0)
  config.finetune.steps = steps - 13 * config.imitate.steps_per_point
  config.finetune.optimizer = full_length(config.finetune.steps)
  config.finetune.alpha = 0.5
  config.finetune.temperature = 1.0

  config.downstream.update(
      name='tfds', tfds_name='glue/sst2', text_field='sentence', label_field='label',
      train_split='train', eval_split='validation')
  down_batch = 32 if 'devices' not in args else max(32, args['devices'])
  config.downstream.batch_size = down_batch
  config.downstream.steps = math.ceil(3 * SST2_TRAIN / down_batch)
  config.downstream.eval_every = 1_000
  config.downstream.optimizer = _adamw(2e-5 * math.sqrt(down_batch / 32),
                                       math.ceil(0.1 * config.downstream.steps))
  config.mesh = config_lib.mesh_config(args.get('mesh', MESH_PRESET))

  if 'hf_teacher' in args:
    hf_teacher(config, args['hf_teacher'])

  if args.get('smoke'):
    config.model.dtype = 'float32'
    config.thin_width = 1 / 12      # hidden 64, 1 head, FFN 256
    config.wide_width = 2 / 12      # hidden 128, 2 heads, FFN 512
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.data = config_lib.text_data_config(
        name='shakespeare', plays=('hamlet', 'the-tempest', 'macbeth', 'cymbeline'),
        vocab_size=2000, seq_len=64, num_eval_examples=64)
    config.downstream.update(name='verse_prose', num_eval_examples=64)
    config.batch_size = 16
    config.eval_batch_size = 32
    config.log_every = 10
    config.eval_every = 20
    config.checkpoint_every = 20
    config.wide.steps = 20
    for stage in ('wide', 'thin_scratch', 'thin_kd', 'finetune'):
      config[stage].optimizer = _adamw(1e-3, 2)
    config.imitate.steps_per_point = 2
    config.imitate.optimizer = _adamw(1e-3, 0, schedule='cosine')
    config.probe.steps = 2
    config.probe.optimizer = _adamw(1e-3, 0)
    config.finetune.steps = 10
    config.downstream.batch_size = 16
    config.downstream.steps = 10
    config.downstream.eval_every = 10
    config.downstream.optimizer = _adamw(1e-4, 1)
  return config


def hf_teacher(config, directory: str) -> None:
  """A Hugging Face `bert-large-uncased` directory as the teacher of the 12-layer BERT-Base.

  The paper lets an existing trained big model be the wide network, its layers not aligned
  with the thin one's. Stage 1 is dropped (the method's stages without 'wide'); the teacher's
  hidden 1024 is imitated through the learnt projections; thin layer i imitates the teacher's
  layer 2i (the embeddings the embeddings: `recipes.even_layer_map`, our reading of the layer
  map the paper implies). The data are tokenized with the teacher's vocab.txt, uncased (the
  config check compares both with the directory's tokenizer). Heads of the checkpoint that
  BERT-Base has not (bert-large-uncased's pooler and NSP head) are left out, with a note.
  """
  config.teacher_dir = directory
  config.model.wide_name = 'bert_large'
  config.wide_width = 1.0
  config.data.vocab_file = f'{directory.rstrip("/")}/vocab.txt'
  config.data.lowercase = True
  config.imitate.layer_map = recipes.even_layer_map(12, 24)

