r"""Depth study on the product's ResNets: CIFAR-style ResNets 20, 56 and 110 on Fashion-MNIST,
with their shortcuts (`configs/study_depth_resnet.py`) and without (`:plain`, FitNets' regime).

Commands (from the repository root, after the README's set-up):

  python -m gwtn_jax.main --config=configs/study_depth_resnet.py:plain --workdir=/tmp/study_plain
  python -m gwtn_jax.main --config=configs/study_depth_resnet.py --workdir=/tmp/study_resnet

Hardware: the 2-core CPU machine this project is developed on (no accelerator).
Expected time and result: see the README, "When does GWTN pay?" (the measured tables, and
which depths fitted in a session here). With shortcuts (the default), measured (accuracy %,
seed 0; 42 min for the three depths here):

  residual    scratch  KD     GWTN   probe  wide
  ResNet-20   79.98    81.12  76.19  53.40  84.32
  ResNet-56   80.64    82.48  78.61  62.54  85.35
  ResNet-110  81.38    84.46  78.70  66.45  86.01

`:plain`, measured (accuracy %, seed 0; 1 h 02 min
for the first two depths here, beside other runs):

  plain       scratch  KD     GWTN   probe  wide
  ResNet-20   80.35    80.53  73.94  47.48  84.08
  ResNet-56   62.81    53.16  50.37  21.01  62.62
  ResNet-110  stopped: its wide network still at chance (10.3%) at 300 of its 600 steps

`:variants` (plain ResNet-20, seeds 0, 1, 2), GWTN accuracy % (scratch 79.29 +-1.30, KD 79.92
+-1.72; the BatchNorm row's controls train 100 steps longer: 80.14, 80.99):

  paper's recipe 75.03 +-1.24   BatchNorm re-estimated 75.03 +-1.24
  normalized MSE 12.08 +-2.80   normalized MSE x10      9.99 +-0.01
  merged pairs   73.11 +-3.07

`:smoke` runs depths 8 and 20 on a slice of the data;
`:variants` runs the recipe variants on the plain ResNet-20, 3 seeds (`VARIANTS` below).

What it runs: for each depth, the wide ResNet once (seed 0) and the thin ResNet from scratch,
by KD alone, and by GWTN (imitation of the three stage outputs bottom to top, then fine-tuning
with KD), the three at equal thin steps; `study.json`, `study.md`, `study.png` in the workdir.

Choices (ours; the paper has no such recipe):
- The demo's recipe (`configs/fashion_mnist.py`, `recipes.fashion_mnist_gwtn`): stride-2 stem,
  thin width 0.25 (4/8/16 channels), wide width 1.0 (k = 4), SGD, stage granularity (3
  imitated points at every depth: 3 phases to compile however deep the network), KD alpha
  0.5 at T = 4, augmentation on.
- A third of the demo's budget, by time: the wide network 600 steps; the thin networks 600
  (stage 2: 3 x 100, stage 3: 300), the controls as long.
- One seed (0) by default: on this CPU a 110-layer setting costs about as much as the demo.
  Add seeds with `--config.seeds='(0,1,2)'` on a faster machine.
- Plain networks (`model.shortcuts=False`): every residual connection and projection shortcut
  removed, BatchNorm kept, the last BatchNorm scale of a block initialized at 1 (not 0).
"""

from gwtn_jax import config_lib
from gwtn_jax import recipes

DEPTHS = (20, 56, 110)
# `:variants`: recipe variants on the plain ResNet-20 (SGD, so the loss scale matters here,
# and BatchNorm, so its re-estimation applies), seeds 0, 1, 2, every thin arm of a seed on
# the same batches. The MLP study (`study_depth_mlp.py:variants`) measures the others.
VARIANTS = (
    {'variant': 'paper (default)'},
    {'variant': 'BatchNorm re-estimated', 'imitate.bn_refresh_steps': 100},
    {'variant': 'normalized MSE', 'imitate.normalize': True},
    {'variant': 'normalized MSE x10', 'imitate.normalize': True, 'imitate.loss_scale': 10.0},
    {'variant': 'merged linear pairs', 'imitate.projection': 'pair'},
)


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(smoke=bool, plain=bool, variants=bool),
                                     'configs/study_depth_resnet.py')
  config = config_lib.base_config()
  config.model.stem_strides = 2
  config.model.shortcuts = not (args.get('plain') or args.get('variants'))
  config.thin_width = 0.25
  config.wide_width = 1.0
  config.data.name = 'fashion_mnist_idx'
  config.data.dir = '/usr/share/datasets/fashion-mnist'
  config.seeds = (0,)

  config.batch_size = 128
  config.eval_batch_size = 1000
  config.log_every = 100
  config.eval_every = 300
  config.checkpoint_every = 300
  wide, per_point, finetune, depths = 600, 100, 300, DEPTHS
  if args.get('smoke'):
    wide, per_point, finetune, depths = 40, 8, 16, (8, 20)
    config.data.num_train_examples = 2048
    config.data.num_eval_examples = 1000
    config.log_every = config.eval_every = config.checkpoint_every = 20
  recipes.fashion_mnist_gwtn(config, wide_steps=wide, steps_per_point=per_point,
                             probe_steps=max(per_point, 16), finetune_steps=finetune)
  for stage in ('wide', 'thin_scratch', 'thin_kd'):
    config[stage].optimizer.warmup_steps = min(100, finetune // 3)

  config.study.axis = 'model.name'
  config.study.label = ('plain ' if args.get('plain') else '') + 'ResNet depth'
  config.study.settings = tuple(f'cifar_resnet{d}' for d in depths)
  config.model.name = config.study.settings[0]
  if args.get('variants'):
    config.model.name = f'cifar_resnet{depths[0] if args.get("smoke") else 20}'
    config.seeds = (0, 1, 2)
    config.shared_data_order = True
    config.study.axis = 'variant'
    config.study.label = f'recipe variant (plain {config.model.name})'
    config.study.settings = tuple(
        dict(v, **{'imitate.bn_refresh_steps': 8}) if 'imitate.bn_refresh_steps' in v and
        args.get('smoke') else v for v in VARIANTS)
  return config
