"""`token_ce`: VIMPAC masked-token cross-entropy over masked non-PAD positions.

Needs in `outputs`:
  logits         [B, T, H, W, V] float  scores over the V VQ codes (or [B, P, V]
                 with 'positions', see below)
  target_tokens  [B, T, H, W] int32     the uncorrupted tokens
  token_mask     [B, T, H, W] bool      True = masked (a prediction target)
  pad            [B, T, H, W] bool      optional; True = PAD, never a target
  positions      [B, P] int32           optional; logits [B, P, V] were computed
                 only at these flat (t, h, w) indices (`VimpacModel(positions=)`):
                 targets, mask and PAD are gathered there

A position is scored when it is masked, not PAD and its target is a code
(0 <= target < V; PAD and the other special ids never are). The loss is the
sum of the cross-entropies over scored positions divided by their GLOBAL count
(the whole batch, not per sample or per device), so with the batch sharded
the result equals the one-device value: it is plain array math on global
arrays and the partitioner inserts the reductions.

Metrics:
  token_ce/mask_accuracy     argmax == target over scored positions
  token_ce/unigram_baseline  accuracy of always predicting the most frequent
                             target among this batch's scored positions
  token_ce/masked_fraction   masked / non-PAD positions (the realised mask ratio)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mvm_jax.objectives import registry


def _gather_positions(x, positions):
  """[B, T, H, W] → [B, P] at the flat (t, h, w) indices `positions` [B, P]."""
  flat = x.reshape(x.shape[0], -1)
  return jnp.take_along_axis(flat, positions.astype(jnp.int32), axis=1)


def token_ce_terms(logits, targets, mask, pad=None):
  """Cross-entropy and accuracy sums over scored positions.

  Args:
    logits: [..., V] float scores.
    targets: [...] int target ids.
    mask: [...] bool, True = masked.
    pad: [...] bool or None, True = PAD (never scored).

  Returns:
    dict of scalars: 'ce_sum' (float32 sum of cross-entropies), 'correct' (argmax hits),
    'count' (scored positions), 'unigram_hits' (scored positions whose target is the
    most frequent scored target), all float32.
  """
  vocab = logits.shape[-1]
  targets = targets.astype(jnp.int32)
  valid = mask.astype(bool) & (targets >= 0) & (targets < vocab)
  if pad is not None:
    valid = valid & ~pad.astype(bool)
  weight = valid.astype(jnp.float32)
  safe = jnp.where(valid, targets, 0)  # in-range index where unscored (weight 0)
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  ce = logz - target_logit
  correct = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
  counts = jnp.zeros((vocab,), jnp.float32).at[safe.reshape(-1)].add(weight.reshape(-1))
  return {
    'ce_sum': jnp.sum(ce * weight),
    'correct': jnp.sum(correct * weight),
    'count': jnp.sum(weight),
    'unigram_hits': jnp.max(counts),
  }


@registry.register('token_ce')
def make_token_ce(config):
  del config

  def token_ce(outputs, batch):
    del batch
    targets, mask, pad = outputs['target_tokens'], outputs['token_mask'], outputs.get('pad')
    non_pad = jnp.ones(mask.shape, jnp.float32) if pad is None else (~pad.astype(bool)).astype(jnp.float32)
    masked_fraction = jnp.sum(mask.astype(bool) & (non_pad > 0)) / jnp.maximum(jnp.sum(non_pad), 1.0)
    if outputs.get('positions') is not None:
      positions = outputs['positions']
      targets, mask = _gather_positions(targets, positions), _gather_positions(mask, positions)
      pad = None if pad is None else _gather_positions(pad, positions)
    t = token_ce_terms(outputs['logits'], targets, mask, pad)
    count = jnp.maximum(t['count'], 1.0)
    loss = t['ce_sum'] / count
    metrics = {
      'token_ce/mask_accuracy': t['correct'] / count,
      'token_ce/unigram_baseline': t['unigram_hits'] / count,
      'token_ce/masked_fraction': masked_fraction.astype(jnp.float32),
    }
    return loss, metrics

  return token_ce
