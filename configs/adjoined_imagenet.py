r"""Adjoined Networks' ImageNet recipe: ResNet-50 and its adjoined quarter-width network.

Command (on every worker of a TPU slice; see tpu_scripts/README.md):

  python -m gwtn_jax.main --config=configs/adjoined_imagenet.py --workdir=gs://BUCKET/an_r50
  python -m gwtn_jax.main --config=configs/adjoined_imagenet.py:dan --workdir=...  # DAN search

Data: ImageNet prepared for tfds as array_record (`tfds build imagenet2012
--file_format=array_record` with the manual download) in `config.data.dir`.

Hardware: a Cloud TPU slice (v4-32 or larger). Expected time and result: not measured by us.
The AN paper reports the adjoined small ResNet-50 (cf = 4) losing little top-1 against the
full ResNet-50 at a fraction of its FLOPs; the numbers are the paper's claims, not ours.

Values and where they come from:
- AN (Nath et al.) and its code: the big network is ResNet-50 (`model.name`, widths 1x: the
  wide network of this pipeline is AN's big one); cf = 4 on every conv with more than 64
  input and output channels; the small network has its own BatchNorm and shares the final
  dense layer; loss CE(big) + lambda * KL(p_big || p_small), lambda = min(4 (e/E)^2, 1) per
  epoch, temperature 1, no stop-gradient; Adam with decoupled weight decay 1e-2; a one-cycle
  cosine schedule peaking at 4e-3; 100 epochs.
- Ours: global batch 1024 and bfloat16 compute; the one-cycle's rise over the first 25% of
  the steps (fastai's default), linear, then cosine to 0; weight decay on kernels only.
- `small_scratch`, AN's control: the same small network alone, with the same recipe.
- `:dan` runs DAN's width search over {C, C/2, C/4} for 10 epochs (ours), then AN on the
  widths found, for the same 100 epochs.
"""

from gwtn_jax import config_lib
from gwtn_jax import recipes

IMAGENET_TRAIN = 1_281_167


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(dan=bool, mesh=str),
                                     'configs/adjoined_imagenet.py')
  config = config_lib.base_config()
  config.mesh = config_lib.mesh_config(args.get('mesh', 'data'))
  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'
  config.thin_width = config.wide_width = 1.0
  recipes.imagenet_data(config.data)
  config.method = 'dan' if args.get('dan') else 'adjoined'

  config.batch_size = 1024
  config.eval_batch_size = 1024
  epoch = IMAGENET_TRAIN // config.batch_size
  config.log_every = 100
  config.eval_every = 5 * epoch
  config.checkpoint_every = epoch

  steps = 100 * epoch
  adam = dict(name='adamw', learning_rate=4e-3, weight_decay=1e-2, weight_decay_on='kernels',
              schedule='cosine', warmup_steps=steps // 4, final_lr_fraction=0.0)
  for stage in ('adjoined', 'small_scratch', 'dan_adjoined'):
    config[stage].steps = steps
    config[stage].optimizer.update(adam)
  config.adjoined.epoch_steps = config.dan_adjoined.epoch_steps = epoch
  config.adjoined.cf = 4
  config.dan.steps = 10 * epoch
  config.dan.epoch_steps = epoch
  config.dan.optimizer.update(adam, warmup_steps=config.dan.steps // 4)
  return config
