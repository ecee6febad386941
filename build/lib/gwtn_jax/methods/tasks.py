"""What a network is trained to do: how it reads a batch, its loss, its KD and its eval sums.

A method (supervised, distillation, imitation) is written once for every task: it asks its
`Task` to run a network on a batch and to score the outputs. Three tasks:

- `ImageClassification`: a ResNet on `image` -> `label`; metrics accuracy, loss.
- `MaskedLM`: a BERT's MLM head at the masked positions of `input_ids` -> `mlm_labels`;
  metrics mlm_accuracy, mlm_loss (per masked token); KD is the KL between the teacher's and
  the student's vocabulary distributions at the masked positions (stage 3 of GWTN for BERT).
- `SequenceClassification`: a BERT's classification head on the [CLS] pooler -> `label`;
  metrics accuracy, loss (the downstream task).

Eval sums are over the batch and carry their own `count` (examples, or masked tokens for the
MLM), which the loop divides by once the whole eval split is summed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gwtn_jax.methods import base


class Task:
  """The base: running a network on a batch; subclasses score its outputs."""

  curve_metric = 'accuracy'        # the eval metric the report's plot follows
  report_metrics: tuple[str, ...] = ('accuracy', 'loss')
  head: str | None = None          # the model's `head` argument, for the models that have one
  tokens_per_example: int | None = None  # a text task's sequence length (for tokens/s)

  # --- Inputs ------------------------------------------------------------------------------

  def sample_batch(self) -> dict[str, np.ndarray]:
    """A one-example batch of zeros: the shapes networks are initialized with."""
    raise NotImplementedError

  def inputs(self, batch: Mapping[str, Any]) -> tuple[Any, ...]:
    """The model's positional inputs."""
    raise NotImplementedError

  def position_weights(self, batch: Mapping[str, Any]) -> jax.Array | None:
    """[B, T] weights of the positions of a sequence (0 on padding), or None."""
    del batch
    return None

  def head_kwargs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    del batch
    return {} if self.head is None else {'head': self.head}

  # --- Running a network -------------------------------------------------------------------

  def init(self, model: nn.Module, rng: jax.Array, batch: Mapping[str, Any]):
    """The model's fresh variables (logically boxed), every head it has created."""
    kwargs = {} if self.head is None else {'head': self.head}
    return model.init(rng, *self.inputs(batch), train=False, **kwargs)

  def forward(self, model: nn.Module, variables: Mapping[str, Any], batch: Mapping[str, Any],
              *, train: bool, rng: jax.Array | None = None, inputs: Any = None,
              mutable: Sequence[str] = (), **kwargs):
    """Runs `model` on the batch (or on `inputs` in place of its first input).

    In training mode the model's BatchNorm statistics (if any) are updated and dropout (if
    any) draws from `rng`.

    Returns:
      (output, the updated collections: `mutable` plus 'batch_stats' when training).
    """
    args = self.inputs(batch)
    if inputs is not None:
      args = (inputs,) + tuple(args[1:])
    mutable = list(mutable)
    if train and 'batch_stats' in variables:
      mutable.append('batch_stats')
    rngs = {'dropout': rng} if train and rng is not None else None
    if not mutable:
      return model.apply(variables, *args, train=train, rngs=rngs, **kwargs), {}
    return model.apply(variables, *args, train=train, rngs=rngs, mutable=mutable, **kwargs)

  def outputs(self, model: nn.Module, variables: Mapping[str, Any], batch: Mapping[str, Any],
              *, train: bool, rng: jax.Array | None = None):
    """The task's outputs (logits) and the model's non-parameter collections afterwards."""
    out, updates = self.forward(model, variables, batch, train=train, rng=rng,
                                **self.head_kwargs(batch))
    state = {k: updates.get(k, v) for k, v in variables.items() if k != 'params'}
    return out, state

  # --- Scores ------------------------------------------------------------------------------

  def loss(self, logits: jax.Array, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
    """(mean loss, train metrics) of a batch."""
    raise NotImplementedError

  def kd(self, logits: jax.Array, teacher_logits: jax.Array, batch: Mapping[str, Any],
         temperature: float) -> jax.Array:
    """Mean T^2 * KL(teacher || student) over what the loss averages over."""
    raise NotImplementedError

  def eval_sums(self, logits: jax.Array, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    raise NotImplementedError


class _Classification(Task):
  """One label per example: cross-entropy, accuracy."""

  def loss(self, logits, batch):
    loss = jnp.mean(base.cross_entropy(logits, batch['label']))
    return loss, {'accuracy': base.batch_accuracy(logits, batch['label'])}

  def kd(self, logits, teacher_logits, batch, temperature):
    del batch
    return jnp.mean(base.kd_loss(logits, teacher_logits, temperature))

  def eval_sums(self, logits, batch):
    return base.classification_sums(logits, batch['label'], batch['mask'])


class ImageClassification(_Classification):
  """A ResNet on `image` [B, H, W, C] float32 -> `label` [B] int32."""

  def __init__(self, image_shape: Sequence[int]):
    self.image_shape = tuple(image_shape)

  def sample_batch(self):
    return {'image': np.zeros((1,) + self.image_shape, np.float32),
            'label': np.zeros((1,), np.int32)}

  def inputs(self, batch):
    return (batch['image'],)


def _text_sample(seq_len: int) -> dict[str, np.ndarray]:
  ids = np.zeros((1, seq_len), np.int32)
  return {'input_ids': ids, 'token_type_ids': ids, 'attention_mask': np.ones_like(ids)}


class _Text:
  """What the BERT tasks share: their inputs and their padding."""

  seq_len: int

  @property
  def tokens_per_example(self) -> int:
    return self.seq_len

  def inputs(self, batch):
    return batch['input_ids'], batch['token_type_ids'], batch['attention_mask']

  def position_weights(self, batch):
    return batch['attention_mask'].astype(jnp.float32)


class SequenceClassification(_Text, _Classification):
  """A BERT's classification head on `input_ids` (+ segments, mask) -> `label` [B]."""

  head = 'classify'

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def sample_batch(self):
    return dict(_text_sample(self.seq_len), label=np.zeros((1,), np.int32))


class MaskedLM(_Text, Task):
  """A BERT's MLM head at the masked positions.

  The batch marks its masked positions with `mlm_weights` [B, T] (1 where chosen) and
  `mlm_labels` [B, T]; the head runs on the `max_predictions` positions of largest weight
  of each row (every chosen one: the masking chooses at most that many), so the vocabulary
  projection costs P / T of the full one, as in BERT's pre-training.

  Args:
    seq_len: tokens per sequence.
    max_predictions: the most masked positions in one sequence.
  """

  head = 'mlm'
  curve_metric = 'mlm_loss'
  report_metrics = ('mlm_accuracy', 'mlm_loss')

  def __init__(self, seq_len: int, max_predictions: int):
    self.seq_len, self.max_predictions = seq_len, max_predictions

  def sample_batch(self):
    return dict(_text_sample(self.seq_len), mlm_labels=np.full((1, self.seq_len), -1, np.int32),
                mlm_weights=np.zeros((1, self.seq_len), np.float32))

  def _predictions(self, batch):
    """(positions [B, P], labels [B, P], weights [B, P]) of the masked tokens."""
    weights, positions = jax.lax.top_k(batch['mlm_weights'], self.max_predictions)
    labels = jnp.take_along_axis(batch['mlm_labels'], positions, axis=1)
    return positions, jnp.maximum(labels, 0), weights

  def head_kwargs(self, batch):
    return {'head': 'mlm', 'mlm_positions': self._predictions(batch)[0]}

  def loss(self, logits, batch):
    _, labels, weights = self._predictions(batch)
    loss = base.masked_mean(base.cross_entropy(logits, labels), weights)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return loss, {'mlm_accuracy': base.masked_mean(correct, weights)}

  def kd(self, logits, teacher_logits, batch, temperature):
    _, _, weights = self._predictions(batch)
    return base.masked_mean(base.kd_loss(logits, teacher_logits, temperature), weights)

  def eval_sums(self, logits, batch):
    _, labels, weights = self._predictions(batch)
    weights = weights * batch['mask'][:, None]
    loss = base.cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {'mlm_loss': jnp.sum(loss * weights), 'mlm_accuracy': jnp.sum(correct * weights),
            'count': jnp.sum(weights)}
