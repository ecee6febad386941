r"""Depth study on thin post-LayerNorm BERTs in the Shakespeare setting: 4, 8 and 16 layers.

Command (from the repository root, after the README's set-up):

  python -m gwtn_jax.main --config=configs/study_depth_bert.py --workdir=/tmp/study_bert

Hardware: the 2-core CPU machine this project is developed on (no accelerator).
Expected time and result: see the README, "When does GWTN pay?" (the measured table). Measured
(held-out MLM loss, seed 0; 34 min for depth 4 here, beside other runs): depth 4: scratch
6.162, KD 6.219, GWTN 6.352, probe 6.992, wide 6.381 (the wide post-LN BERT stays at the
unigram solution at this budget); depth 8 (about 30 min): scratch 6.183, KD 6.308, GWTN 6.369,
probe 7.580, wide 6.403 (the wide BERT again at the unigram solution); depth 16 (45 min):
scratch 6.414, KD 6.345, GWTN 6.368, probe 7.508, wide 6.402 (every arm at the unigram loss).
`:smoke` runs depths 2 and 4 on four plays in a few minutes.

What it runs: for each depth, the wide BERT once (seed 0) and the thin BERT from scratch, by
KD alone, and by GWTN (imitation of the embeddings and every layer, bottom to top, then
fine-tuning with MLM + KD), the three at equal thin steps; the metric is held-out MLM
accuracy. `study.json`, `study.md`, `study.png` in the workdir.

Choices (ours; the paper has no recipe at this scale):
- Post-LayerNorm (the original BERT's, the hard one to train deep and thin: the demo's
  prototype stayed at the unigram loss for hundreds of steps), no dropout.
- The demo's data and optimizers (`configs/shakespeare_bert.py`): 64-token sequences, batch
  16, AdamW 1e-3 with warmup and cosine; thin width 0.5 (hidden 128), wide 1.0 (256), k = 2.
- Half the demo's budget, by time: the wide BERT 600 steps; stage 2 about 300 steps split
  over the points (the embeddings and every layer: 60, 34 and 18 steps each at depths 4, 8,
  16), stage 3 300 steps; the controls as long as both. No downstream task.
- Stage 2 imitates LayerNorm-normalized features, as the demo does.
- One seed (0): a 16-layer setting costs about twice the whole 4-layer one here. Add seeds
  with `--config.seeds='(0,1,2)'` on a faster machine.
"""

from gwtn_jax import config_lib
from gwtn_jax import recipes

DEPTHS = (4, 8, 16)
IMITATION_STEPS = 300  # split over the depth + 1 points


def get_config(arg: str = ''):
  args = config_lib.parse_config_arg(arg, dict(smoke=bool), 'configs/study_depth_bert.py')
  config = config_lib.base_config()
  recipes.shakespeare_bert(config, pre_layer_norm=False)
  config.stages = ('wide', 'thin_scratch', 'thin_kd', 'imitate', 'probe', 'finetune')
  config.log_every = 50
  config.eval_every = 300
  config.checkpoint_every = 300
  adamw = recipes.bert_adamw

  wide, imitation, finetune, depths = 600, IMITATION_STEPS, 300, DEPTHS
  if args.get('smoke'):
    config.data.plays = ('hamlet', 'the-tempest', 'macbeth', 'cymbeline')
    config.data.vocab_size = 2000
    config.data.num_eval_examples = 128
    config.eval_batch_size = 64
    wide, imitation, finetune, depths = 30, 15, 15, (2, 4)
    config.log_every = config.eval_every = config.checkpoint_every = 15
  config.wide.steps = wide
  for stage in ('wide', 'thin_scratch', 'thin_kd'):
    config[stage].optimizer = adamw(1e-3, min(50, wide // 10))
  config.thin_kd.alpha = 0.5
  config.thin_kd.temperature = 1.0
  config.imitate.granularity = 'block'
  config.imitate.normalize = True
  config.imitate.optimizer = adamw(1e-3, 2)
  config.probe.steps = 100 if not args.get('smoke') else 5
  config.probe.optimizer = adamw(3e-3, 2)
  config.finetune.steps = finetune
  config.finetune.optimizer = adamw(1e-3, min(30, finetune // 5))
  config.finetune.alpha = 0.5
  config.finetune.temperature = 1.0

  config.study.axis = 'model.num_layers'
  config.study.label = 'post-LN BERT depth (layers)'
  config.study.settings = tuple(
      {'model.num_layers': d, 'imitate.steps_per_point': imitation // (d + 1),
       'imitate.eval_every': imitation // (d + 1)} for d in depths)
  config.model.num_layers = depths[0]
  config.imitate.steps_per_point = imitation // (depths[0] + 1)
  return config
