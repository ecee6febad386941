r"""LIT's own CIFAR-10 recipe: a ResNet-56 student by teacher-fed sections of a ResNet-110.

Command:

  python -m gwtn_jax.main --config=configs/lit_cifar.py --workdir=DIR
  python -m gwtn_jax.main --config=configs/lit_cifar.py:compare --workdir=DIR   # + KD, scratch

Data: CIFAR-10 through tfds, prepared once as array_record on a machine with network
(`tfds build cifar10 --file_format=array_record --data_dir=DIR`), then
`--config.data.dir=DIR`. Run as is without it, the command stops at once with one line that
says this.

Hardware: one TPU VM (v4-8 / v5e-8) or a GPU; on this project's 2-core CPU it is days.
Expected time and result: not measured by us. LIT (Koratana et al., ICML 2019) reports its
students at or near the accuracy of the ResNet-110 teacher (about 93-94% on CIFAR-10).

Values and where they come from:
- LIT (paper and official code): teacher ResNet-110; teacher and student cut at the three
  stages; beta 0.75 between KD and the IR loss, alpha 0.95 on the KD term inside KD,
  temperature 6; stem and head copied from the teacher and frozen in phase 1; phase 1 175
  epochs of SGD at 0.1, phase 2 (KD alone, the whole student) 125 epochs at 0.01.
- Ours: the student depth (ResNet-56; `model.name` takes cifar_resnet20/32/44), batch 128,
  SGD momentum 0.9, weight decay 1e-4, both phases at a constant learning rate as listed;
  the teacher trained here by the standard recipe (He et al. 2016: 164 epochs, 0.1, x0.1 at
  50% and 75%, weight decay 1e-4), where LIT starts from a trained one (`teacher_dir` takes
  the `stages/wide` folder of an earlier run); standard crop-and-flip augmentation.
- `:compare` adds the thin network from scratch and by KD alone for the same 300 epochs.
"""

from gwtn_jax import config_lib

CIFAR_TRAIN = 50_000


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(compare=bool), 'configs/lit_cifar.py')
  config = config_lib.base_config()
  config.model.name = 'cifar_resnet56'       # the student
  config.model.wide_name = 'cifar_resnet110'  # the teacher: deeper, the same widths
  config.thin_width = config.wide_width = 1.0
  config.data.name = 'cifar10'
  config.data.dir = ''
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.augment = True
  config.method = 'lit'
  if args.get('compare'):
    config.stages = ('wide', 'thin_scratch', 'thin_kd', 'lit', 'lit_finetune')

  config.batch_size = 128
  config.eval_batch_size = 1000
  epoch = CIFAR_TRAIN // config.batch_size
  config.log_every = 100
  config.eval_every = 5 * epoch
  config.checkpoint_every = 5 * epoch
  sgd = dict(name='sgd', momentum=0.9, weight_decay=1e-4)

  config.wide.steps = 164 * epoch
  config.wide.optimizer.update(sgd, learning_rate=0.1, schedule='step',
                               decay_boundaries=(0.5, 0.75), decay_factor=0.1)
  config.lit.update(sections=0, beta=0.75, alpha=0.95, temperature=6.0, steps=175 * epoch)
  config.lit.optimizer.update(sgd, learning_rate=0.1, schedule='constant')
  config.lit_finetune.steps = 125 * epoch
  config.lit_finetune.optimizer.update(sgd, learning_rate=0.01, schedule='constant')
  for control in ('thin_scratch', 'thin_kd'):
    config[control].steps = 300 * epoch
    config[control].optimizer.update(sgd, learning_rate=0.1, schedule='step',
                                     decay_boundaries=(0.5, 0.75), decay_factor=0.1)
  config.thin_kd.alpha = 0.95
  config.thin_kd.temperature = 6.0
  return config
