r"""The GWTN paper's ImageNet recipe: a thin ResNet-50 by imitation of a 4x-inner-width ResNet-50.

Command (on every worker of a TPU slice; see tpu_scripts/README.md):

  python -m gwtn_jax.main --config=configs/resnet50_imagenet.py --workdir=gs://BUCKET/gwtn_r50

Hardware: a Cloud TPU slice (e.g. v4-64 or larger); ImageNet prepared for tfds as array_record
(`tfds build imagenet2012 --file_format=array_record` with the manual download) in
`config.data.dir` (default: tfds' data_dir).
Expected time: not measured by us. The wide network has about 2.7x ResNet-50's parameters and
FLOPs (68.9M params at 2x; 4x is wider still); its 90 epochs dominate.
Expected result: the paper reports the thin ResNet-50 trained by GWTN above a standard
ResNet-101 (ResNet-101 is about 77.4% top-1; a ResNet-50 from scratch about 76-76.5%). We have not
run this recipe; the numbers are the paper's claims, not ours.

Values and where they come from:
- Paper (Zhou et al., 2020): thin ResNet-50; wide net 4x inner (3x3) width, block outputs
  unchanged so imitation needs no projection; stage-granularity imitation of the four ResNet
  stages, 10 epochs each, SGD momentum 0.9, no weight decay, cosine from 0.1 to 0 per stage.
- Wide stage, the standard ResNet recipe the paper follows (Goyal et al. 2017): SGD 0.9, weight
  decay 1e-4, batch 256 with LR 0.1 scaled linearly with the batch, 5 warmup epochs, x0.1 at
  epochs 30, 60 and 80 of 90.
- Stage 3 (a secondary source: a reproduction of the recipe): 50 epochs of KD from the wide net,
  cosine schedule. alpha = 1.0 (pure KD) and T = 1 are our reading of it; alpha = 0 gives the
  labels-only fine-tuning another review describes.
- Ours: global batch 1024 (LR 0.4 by the linear rule), bfloat16 compute, the stage-3 and control
  optimizers (SGD 0.9, wd 1e-4, cosine, 5 warmup epochs for the controls), and the controls'
  length: 90 epochs = stages 2 + 3, the usual ResNet-50 budget.

Mesh for a 256-chip slice: pure data parallelism (`data` preset; `:mesh=fsdp` for FSDP).
`python -m gwtn_jax.plan --config=configs/resnet50_imagenet.py --devices=256` (global batch
1024, 4 images per chip; GiB per chip; temporaries from XLA:CPU, an estimate):

  preset                    wide stage: params  opt   temp  total   KD/imitation/fine-tuning max
  data (data=256)                       0.832  0.833  2.64   4.31                          2.21
  fsdp (fsdp=64, data=4)                0.013  0.013  2.57   2.60                          1.30

Both fit every chip (v5e 16 GiB, v4 32, v5p 95) with room to spare, so memory does not decide:
FSDP would all-gather every conv kernel in the forward and backward pass of each step for only
4 images per chip, more traffic than data parallelism's one gradient all-reduce, for memory
that is not needed. (FSDP over 256 is refused at start-up: the 64-channel layers cannot split
256 ways, which the planner reports with the parameter's name.) At 4 images per chip the chips
are underused; on a slice this size raise `batch_size` (the learning rates follow it linearly).
"""

from gwtn_jax import config_lib
from gwtn_jax import recipes

IMAGENET_TRAIN = 1_281_167
MESH_PRESET = 'data'  # chosen with gwtn_jax.plan at 256 chips; see the docstring


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(mesh=str, torchvision_teacher=str),
                                     'configs/resnet50_imagenet.py')
  config = config_lib.base_config()
  config.mesh = config_lib.mesh_config(args.get('mesh', MESH_PRESET))
  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'
  config.thin_width = 1.0
  config.wide_width = 4.0
  recipes.imagenet_data(config.data)

  config.batch_size = 1024
  config.eval_batch_size = 1024
  epoch = IMAGENET_TRAIN // config.batch_size
  lr = 0.1 * config.batch_size / 256
  config.log_every = 100
  config.eval_every = 5 * epoch
  config.checkpoint_every = epoch

  config.wide.steps = 90 * epoch
  config.wide.optimizer.update(
      name='sgd', momentum=0.9, learning_rate=lr, weight_decay=1e-4, schedule='step',
      warmup_steps=5 * epoch, decay_boundaries=(30 / 90, 60 / 90, 80 / 90), decay_factor=0.1)

  config.imitate.granularity = 'stage'
  config.imitate.schedule = 'progressive'
  config.imitate.steps_per_point = 10 * epoch
  config.imitate.eval_every = 10 * epoch
  config.imitate.optimizer.update(name='sgd', momentum=0.9, learning_rate=0.1, weight_decay=0.0,
                                  schedule='cosine', final_lr_fraction=0.0)

  config.finetune.steps = 50 * epoch
  config.finetune.alpha = 1.0
  config.finetune.temperature = 1.0
  config.finetune.optimizer.update(name='sgd', momentum=0.9, learning_rate=lr, weight_decay=1e-4,
                                   schedule='cosine')
  config.probe.steps = epoch
  config.probe.optimizer.update(name='sgd', momentum=0.9, learning_rate=lr, weight_decay=0.0,
                                schedule='cosine')
  for control in ('thin_scratch', 'thin_kd'):
    config[control].steps = -1  # imitation (4 x 10 epochs) + fine-tuning (50) = 90 epochs
    config[control].optimizer.update(name='sgd', momentum=0.9, learning_rate=lr,
                                     weight_decay=1e-4, schedule='cosine', warmup_steps=5 * epoch)
  config.thin_kd.alpha = 1.0
  config.thin_kd.temperature = 1.0
  if 'torchvision_teacher' in args:
    torchvision_teacher(config, args['torchvision_teacher'])
  return config


def torchvision_teacher(config, path: str) -> None:
  """torchvision's `wide_resnet50_2` (a state dict, .pth or .safetensors) as the teacher.

  The paper lets an existing trained big model be the wide network; torchvision's has 2x the
  inner (3x3) width of ResNet-50, not the paper's 4x, which the paper allows (any wider
  network whose block outputs match). Its block outputs are ResNet-50's, so imitation needs no
  projection. Stage 1 is dropped (the method's stages without 'wide'); torchvision's ImageNet
  preprocessing (per-channel mean and std, 1000 classes in synset order) is our
  imagenet2012's. The architecture in the file is checked against `wide_width` at start-up.
  """
  config.teacher_dir = path
  config.wide_width = 2.0
