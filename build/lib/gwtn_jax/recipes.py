"""Recipe pieces that several config files share (imported by them, not copied).

No JAX here: config files import this module.
"""

from __future__ import annotations

from gwtn_jax.config import schema

# SGD with momentum 0.9 and a cosine schedule: the Fashion-MNIST recipes' optimizer.
SGD = dict(name='sgd', momentum=0.9, schedule='cosine')


def shakespeare_bert(config, *, pre_layer_norm: bool) -> None:
  """The Shakespeare BERTs' network and data (the demo's and the depth study's): bert_mini
  depth, thin width 0.5 against 1.0, no dropout; 64-token sequences from the embedded plays,
  a WordPiece vocabulary of 8000, 1024 eval sequences; batch 16."""
  config.model.name = 'bert_mini'
  config.model.pre_layer_norm = pre_layer_norm
  config.model.dropout_rate = 0.0
  config.model.attention_dropout_rate = 0.0
  config.thin_width = 0.5
  config.wide_width = 1.0
  config.data = schema.text_data_config(name='shakespeare', vocab_size=8000, seq_len=64,
                                        num_eval_examples=1024)
  config.batch_size = 16
  config.eval_batch_size = 128


def bert_adamw(learning_rate: float, warmup_steps: int):
  """The Shakespeare BERTs' optimizer: AdamW, b2 0.98, weight decay 0.01 on kernels, warmup
  then cosine decay."""
  return schema.optimizer_config(name='adamw', learning_rate=learning_rate, b2=0.98,
                                 weight_decay=0.01, weight_decay_on='kernels',
                                 schedule='cosine', warmup_steps=warmup_steps)


def imagenet_data(data) -> None:
  """ImageNet (tfds `imagenet2012`, array_record) at 224 x 224 with augmentation, read by 16
  threads: `config.data` of the ImageNet recipes."""
  data.update(dict(name='imagenet2012', dir='', train_split='train', eval_split='validation',
                   image_size=224, augment=True, read_threads=16, prefetch=8))


def fashion_mnist_gwtn(config, *, wide_steps: int, steps_per_point: int, probe_steps: int,
                       finetune_steps: int) -> None:
  """The Fashion-MNIST GWTN recipe's stages (the demo's and the comparison's).

  Stage 1 and the controls: SGD 0.1, weight decay 5e-4, 100 warm-up steps. KD (control and
  stage 3): alpha 0.5 at T 4. Stage 2: stage granularity, SGD 0.1 without weight decay,
  restarted per point; the probe likewise. Stage 3: SGD 0.05, weight decay 5e-4.
  """
  config.wide.steps = wide_steps
  for stage in ('wide', 'thin_scratch', 'thin_kd'):
    config[stage].optimizer.update(SGD, learning_rate=0.1, weight_decay=5e-4, warmup_steps=100)
  config.thin_kd.alpha = 0.5
  config.thin_kd.temperature = 4.0
  config.imitate.granularity = 'stage'
  config.imitate.steps_per_point = steps_per_point
  config.imitate.eval_every = steps_per_point
  config.imitate.optimizer.update(SGD, learning_rate=0.1, weight_decay=0.0)
  config.probe.steps = probe_steps
  config.probe.optimizer.update(SGD, learning_rate=0.1, weight_decay=0.0)
  config.finetune.steps = finetune_steps
  config.finetune.alpha = 0.5
  config.finetune.temperature = 4.0
  config.finetune.optimizer.update(SGD, learning_rate=0.05, weight_decay=5e-4)


def even_layer_map(thin_layers: int, wide_layers: int) -> tuple[int, ...]:
  """`imitate.layer_map` of a BERT imitating a deeper one: the embeddings imitate the
  embeddings and thin layer i the wide layer i * wide_layers / thin_layers (12 of a 24-layer
  teacher: layer 2i), so both networks' tops are aligned and the wide layers are sampled evenly.

  Points are numbered as `Bert.points()`: 0 is 'embeddings', i is 'layer_i'.
  """
  if wide_layers % thin_layers:
    raise ValueError(f'{wide_layers} teacher layers do not divide evenly among {thin_layers}')
  step = wide_layers // thin_layers
  return (0,) + tuple(step * i for i in range(1, thin_layers + 1))
