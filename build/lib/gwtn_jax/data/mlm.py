"""BERT masking of packed token sequences, each seeded by its own key alone.

Per sequence, from a hash of (seed, global position) alone, vectorized: exactly
max(1, round(mask_rate * n)) of the n non-special positions (not [CLS]/[SEP]/[PAD]) are
chosen uniformly; each chosen one becomes [MASK] with probability 0.8, a random
non-special token (any vocab entry not of the form [...]) with 0.1, stays with 0.1
(`mask_tokens`; the ids of both kinds: `_special_and_replace_ids`).
"""

from __future__ import annotations

import numpy as np

from gwtn_jax.data import augment as aug
from gwtn_jax.data import wordpiece


def _hash_uniform(keys: np.ndarray, seq_len: int, stream: int) -> np.ndarray:
  """float64 [B, T] uniforms in [0, 1) from per-sequence uint64 keys and a stream id."""
  t = np.arange(seq_len, dtype=np.uint64) + np.uint64(stream * seq_len)
  x = keys[:, None] ^ (t[None, :] * np.uint64(0x9E3779B97F4A7C15))
  x = aug._splitmix64(x)  # pylint: disable=protected-access
  return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_tokens(input_ids: np.ndarray, keys: np.ndarray, *, mask_rate: float,
                mask_id: int, special_ids: np.ndarray, replace_ids: np.ndarray):
  """BERT masking of int32 [B, T] ids, each row seeded by its uint64 key alone.

  Returns:
    (input_ids int32, mlm_labels int32 (-1 where not chosen), mlm_weights float32).
  """
  b, t = input_ids.shape
  candidate = ~np.isin(input_ids, special_ids)
  n = candidate.sum(1)
  k = np.where(n > 0, np.maximum(1, np.round(mask_rate * n)), 0).astype(np.int64)
  score = np.where(candidate, _hash_uniform(keys, t, 0), 2.0)
  order = np.argsort(score, axis=1, kind='stable')
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(t)[None, :].repeat(b, 0), axis=1)
  chosen = rank < k[:, None]
  kind = _hash_uniform(keys, t, 1)
  pick = (_hash_uniform(keys, t, 2) * len(replace_ids)).astype(np.int64)
  out = input_ids.copy()
  out[chosen & (kind < 0.8)] = mask_id
  rand = chosen & (kind >= 0.8) & (kind < 0.9)
  out[rand] = replace_ids[np.minimum(pick[rand], len(replace_ids) - 1)]
  labels = np.where(chosen, input_ids, -1).astype(np.int32)
  return out.astype(np.int32), labels, chosen.astype(np.float32)


def _special_and_replace_ids(tokenizer) -> tuple[np.ndarray, np.ndarray]:
  vocab = tokenizer.get_vocab()
  special = np.array(sorted(vocab[t] for t in wordpiece.SPECIAL_TOKENS), np.int32)
  replace = np.array(sorted(i for t, i in vocab.items()
                            if not (t.startswith('[') and t.endswith(']'))), np.int32)
  return special, replace
