"""A pipeline small enough to run every stage in seconds on the CPU.

Used in-process by the tests (through conftest.tiny_config) and as a config file by the tests
that run the real command line:

  python -m gwtn_jax.main --config=tests/tiny_config.py:fmnist --workdir=...

`fmnist` reads the head of the real Debian Fashion-MNIST files (the embedded reader);
without it the data are synthetic. `bert` is a tiny BERT pipeline on four Shakespeare plays,
downstream task included.
"""

from gwtn_jax import config_lib


def get_config(arg: str = ''):
  c = config_lib.base_config()
  c.model.name = 'cifar_resnet8'
  c.thin_width = 0.5
  c.wide_width = 1.0
  c.data.name = 'synthetic'
  c.data.synthetic_image_shape = (8, 8, 1)
  c.data.synthetic_num_classes = 4
  c.data.synthetic_num_train = 256
  c.data.synthetic_num_eval = 64
  c.mesh.num_devices = 1
  c.batch_size = 16
  c.eval_batch_size = 32
  c.log_every = 2
  c.eval_every = 4
  c.checkpoint_every = 2
  c.wide.steps = 4
  c.imitate.steps_per_point = 2
  c.probe.steps = 2
  c.finetune.steps = 2
  if arg == 'fmnist':
    c.data.name = 'fashion_mnist_idx'
    c.data.dir = '/usr/share/datasets/fashion-mnist'
    c.data.num_train_examples = 512
    c.data.num_eval_examples = 128
    c.model.stem_strides = 2
  elif arg == 'bert':
    c.model.name = 'bert_tiny'   # 2 layers; thin hidden 64 (1 head), wide 128 (2 heads)
    c.model.pre_layer_norm = True
    c.model.max_position = 32
    c.data = config_lib.text_data_config(
        plays=('hamlet', 'the-tempest', 'macbeth', 'cymbeline'), vocab_size=300, seq_len=32,
        num_train_examples=256, num_eval_examples=32, read_threads=1, prefetch=2)
    c.downstream.update(steps=2, batch_size=16, num_train_examples=64, num_eval_examples=32,
                        read_threads=1, prefetch=2)
    c.downstream.optimizer.warmup_steps = 1
  elif arg:
    raise ValueError(f'tests/tiny_config.py: unknown argument {arg!r}')
  return c
