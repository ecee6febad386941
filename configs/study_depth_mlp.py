r"""Depth study in the theory's regime: deep thin plain MLPs on Fashion-MNIST, 3 seeds.

Command (from the repository root, after the README's set-up):

  python -m gwtn_jax.main --config=configs/study_depth_mlp.py --workdir=/tmp/study_mlp

Hardware: the 2-core CPU machine this project is developed on (no accelerator).
Expected time: 14 min 08 s here for the four depths (measured); `:deep`'s depth 64 adds about
30 minutes (64 imitation phases per seed, each compiled).
Expected result (measured: test accuracy %, mean +- std over seeds 0, 1, 2; equal thin steps
2400; README, "When does GWTN pay?"):

  depth  scratch       KD            GWTN          probe after imitation  wide (seed 0)
  4      85.21 +-0.13  84.65 +-0.46  84.33 +-0.23  81.53 +-0.40           88.38
  8      83.61 +-0.25  83.64 +-0.11  83.97 +-0.07  81.39 +-0.33           88.62
  16     83.45 +-0.47  80.00 +-2.06  82.28 +-1.29  77.87 +-0.54           88.13
  32     79.29 +-1.44  75.74 +-1.23  73.51 +-2.21  57.36 +-7.65           87.37
  64     70.57 +-1.81  65.03 +-8.93  54.43 +-4.60  22.21 +-5.81           78.31   (:deep)

Scratch degrades with depth; GWTN leads it only at depth 8 (+0.36) and falls further behind the
deeper the network, with its imitation far from converged at 50 and 25 steps per layer.
`:budget` (depth 32; 36 minutes, measured beside a CI run), thin steps 5600 and 15200:

  steps/layer  scratch       KD            GWTN          probe
  150          81.65 +-1.81  80.66 +-1.25  80.26 +-1.36  68.51 +-3.75
  450          85.06 +-0.31  84.16 +-0.67  84.13 +-0.78  80.42 +-4.98

More imitation closes most of GWTN's gap (level with KD at 450), never past scratch.
`:variants` (depth 32, the depth study's budget, shared_data_order; 66 min here beside other
runs), GWTN accuracy % over seeds 0, 1, 2 (scratch 78.98 +-1.70 and KD 76.53 +-0.83 in
every row):

  paper's recipe (default)     71.58 +-5.23     lower layers at 0.1x   71.71 +-3.24
  warmup per phase (10 of 50)  71.58 +-0.62     normalized MSE         67.95 +-3.49
  merged linear pairs          14.66 +-6.59     teacher at half steps  74.80 +-2.47

No variant beats the default beyond seed spread; the merged pairs collapse (README).
`:smoke` runs two depths on a slice of the data in a few minutes; `:budget` runs the
imitation-budget ladder at depth 32 instead of the depth sweep; `:deep` adds depth 64;
`:variants` the recipe variants at depth 32.

What it runs: for each depth, the wide MLP once (seed 0) and, for seeds 0, 1, 2, the thin MLP
from scratch, by KD alone, and by GWTN (layerwise imitation bottom to top, then fine-tuning
with KD), the three at equal thin steps; `study.json`, `study.md`, `study.png` in the workdir.

Choices (ours; the paper has no such recipe):
- MLPs (`gwtn_jax.models.mlp`): plain (no residuals, no normalization), ReLU, He init; hidden
  width 128 wide and 16 thin (thin_width 0.125: k = 8), depths 4, 8, 16, 32 (`study.settings`;
  `:deep` adds 64, where training from scratch clearly degrades, in a workdir it extends).
- The imitation budget is the same at every depth: 1600 steps split evenly over the layers
  (steps_per_point = 1600 / depth, one progressive phase per layer, 'block' granularity:
  the paper's layerwise schedule), then 800 steps of fine-tuning; the controls get the same
  2400 steps. The wide network trains 2400 steps.
- Adam (adamw without decay) at 1e-3 for every stage (cosine, 100 warmup steps for the
  full-length stages; restarted per imitation phase, without warmup), batch 128; KD (control
  and stage 3): alpha 0.5 at T = 4, as in the Fashion-MNIST demo. No augmentation.
- One seed's wide network teaches every seed (the pipeline trains it once, with `seed`).
"""

from gwtn_jax import config_lib

DEPTHS = (4, 8, 16, 32)
DEEP = 64  # `:deep` adds it: about 20 more minutes here (64 phases per seed)
IMITATION_STEPS = 1600   # split over the layers at every depth
FINETUNE_STEPS = 800
# `:budget`: depth 32 with 150 and 450 imitation steps per layer (the depth study's depth-32
# row is the 50 rung, the same config); the controls train as long as imitation + fine-tuning
# at each rung. About 20 minutes here.
BUDGET_DEPTH = 32
BUDGET_STEPS_PER_LAYER = (150, 450)
# `:variants`: the recipe variants the literature points to, at depth 32 (the deepest of the
# four where scratch still learns well) with the depth study's budget, every thin arm of a seed
# on the same batches (shared_data_order). The loss scale is not run: under Adam a factor on
# the loss cancels in the update (but for eps), so it cannot change these runs; BatchNorm
# re-estimation does not apply (the MLPs have no BatchNorm).
VARIANT_DEPTH = 32
VARIANTS = (
    {'variant': 'paper (default)'},
    {'variant': 'lower layers at 0.1x', 'imitate.lower_lr': 0.1},
    {'variant': 'warmup per phase', 'imitate.optimizer.warmup_steps': 10},
    {'variant': 'normalized MSE', 'imitate.normalize': True},
    {'variant': 'merged linear pairs', 'imitate.projection': 'pair'},
    {'variant': 'teacher at half its steps', 'imitate.teacher_step': 1200},
)


def _adam(warmup: int):
  return config_lib.optimizer_config(name='adamw', learning_rate=1e-3, weight_decay=0.0,
                                     schedule='cosine', warmup_steps=warmup)


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(smoke=bool, budget=bool, deep=bool,
                                               variants=bool),
                                     'configs/study_depth_mlp.py')
  config = config_lib.base_config()
  config.model.name = 'mlp4'  # depth: model.num_layers, the study's axis
  config.thin_width = 0.125
  config.wide_width = 1.0
  config.data.name = 'fashion_mnist_idx'
  config.data.dir = '/usr/share/datasets/fashion-mnist'
  config.data.augment = False
  config.seeds = (0, 1, 2)

  config.batch_size = 128
  config.eval_batch_size = 1000
  config.log_every = 200
  config.eval_every = 800
  config.checkpoint_every = 800

  imitation, finetune, depths = IMITATION_STEPS, FINETUNE_STEPS, DEPTHS
  if args.get('deep'):
    depths += (DEEP,)
  if args.get('smoke'):
    imitation, finetune, depths = 64, 32, (2, 4)
    config.data.num_train_examples = 2048
    config.data.num_eval_examples = 1000
    config.seeds = (0, 1)
    config.log_every = config.eval_every = config.checkpoint_every = 32
  for stage in ('wide', 'thin_scratch', 'thin_kd', 'finetune'):
    config[stage].optimizer = _adam(min(100, finetune // 8))
  config.imitate.optimizer = _adam(0)
  config.probe.optimizer = _adam(0)
  config.wide.steps = imitation + finetune
  config.thin_kd.alpha = 0.5
  config.thin_kd.temperature = 4.0
  config.imitate.granularity = 'block'
  config.probe.steps = 200 if not args.get('smoke') else 16
  config.finetune.steps = finetune
  config.finetune.alpha = 0.5
  config.finetune.temperature = 4.0

  config.study.axis = 'model.num_layers'
  config.study.label = 'depth (hidden layers)'
  config.study.settings = tuple(
      {'model.num_layers': d, 'imitate.steps_per_point': imitation // d,
       'imitate.eval_every': imitation // d} for d in depths)
  config.model.num_layers = depths[0]
  config.imitate.steps_per_point = imitation // depths[0]
  if args.get('budget'):
    # The imitation budget at the depth where GWTN fell furthest behind: steps per layer.
    config.model.num_layers = BUDGET_DEPTH
    config.study.axis = 'imitate.steps_per_point'
    config.study.label = f'imitation steps per layer (depth {BUDGET_DEPTH})'
    config.study.settings = tuple({'imitate.steps_per_point': n, 'imitate.eval_every': n}
                                  for n in BUDGET_STEPS_PER_LAYER)
    config.imitate.steps_per_point = BUDGET_STEPS_PER_LAYER[0]
  if args.get('variants'):
    depth = 4 if args.get('smoke') else VARIANT_DEPTH
    config.model.num_layers = depth
    config.imitate.steps_per_point = imitation // depth
    config.imitate.eval_every = imitation // depth
    config.shared_data_order = True
    config.study.axis = 'variant'
    config.study.label = f'recipe variant (depth {depth})'
    config.study.settings = VARIANTS
    if args.get('smoke'):
      config.study.settings = tuple(
          dict(v, **{'imitate.teacher_step': config.wide.steps // 2})
          if 'imitate.teacher_step' in v else v for v in VARIANTS)
  return config
