"""VIMPAC token masking: block masking, its i.i.d. ablation and [MASK] corruption.

VIMPAC masks discrete VQ tokens (a [T, H, W] code map per clip) and predicts
the hidden codes. Unlike `masking.video` (a static number of visible
tokens, for sparse encoders), these maskers return a boolean mask [B, T, H, W]
(True = masked) whose count varies per sample: the backbone is dense and sees
every position, masked ones as [MASK].

  block  union of K random spacetime blocks (VIMPAC §3.1, Appendix B.1): for
         each block independently lT ~ U{1..floor(2T/3)}, lH ~ U{1..H//2},
         lW ~ U{1..W//2} (inclusive), start uniform over the offsets that keep
         it inside the map. (The paper says "2/3 round up"; floor is what the
         reference code does and what reproduces its Table 9.)
  iid    each token masked independently with probability p (paper Eq. 2, the
         Table 15 ablation), by default p = the block masker's expected ratio;
         `exact_count=True` instead masks exactly round(p·n) of the n non-PAD
         tokens.

PAD positions are never masked. Sample b's mask depends only on
`jax.random.fold_in(rng, b)`, as in `video.make_masker`.

`corrupt_tokens` turns a mask into the model input: masked tokens become
[MASK], or BERT's 80/10/10 ([MASK] / random code / unchanged), drawn per token
(the reference's `mask_3d_rand_replace` draws once per block).

Token ids (codes, PAD, [MASK]) live in `mvm_jax.token_vocab`.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

Shape3 = tuple[int, int, int]

MASKERS = ('block', 'iid')
BERT_MASK_FRACTION = 0.8  # of masked tokens shown as [MASK]
BERT_RANDOM_FRACTION = 0.1  # ... as a random code; the rest stay unchanged


# --- block geometry ----------------------------------------------------------


def _check_shape(token_shape) -> Shape3:
  shape = tuple(int(s) for s in token_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f'token_shape must be three positive ints (T, H, W), got {token_shape!r}')
  return shape


def max_block_lengths(token_shape) -> Shape3:
  """Largest block side per axis: (floor(2T/3), H//2, W//2), each at least 1."""
  t, h, w = _check_shape(token_shape)
  return (max(1, 2 * t // 3), max(1, h // 2), max(1, w // 2))


def _random_1d(fn, rng, shape, *args):
  """fn(rng, shape, *args), drawn flat and reshaped (same distribution): threefry
  draws of 3 or more dimensions cost seconds of XLA CPU compile time each."""
  return fn(rng, (math.prod(shape),), *args).reshape(shape)


def blocks_from_bits(bits: jax.Array, token_shape) -> tuple[jax.Array, jax.Array]:
  """Random 32-bit words [..., 6] → one block each: (starts, lengths), each [..., 3]
  int32 in (t, h, w) order. Lengths are uniform in 1..max_block_lengths, starts
  uniform in 0..extent - length (words modulo the count: bias < 2^-26)."""
  shape = _check_shape(token_shape)
  bits = jnp.asarray(bits, jnp.uint32)
  lengths = 1 + bits[..., :3] % jnp.asarray(max_block_lengths(shape), jnp.uint32)
  starts = bits[..., 3:] % (jnp.asarray(shape, jnp.uint32) - lengths + 1)
  return starts.astype(jnp.int32), lengths.astype(jnp.int32)


def sample_blocks(rng: jax.Array, token_shape, num_blocks: int) -> tuple[jax.Array, jax.Array]:
  """Draws K blocks for one sample: (starts, lengths), each [K, 3] int32 (`blocks_from_bits`)."""
  return blocks_from_bits(_random_1d(jax.random.bits, rng, (num_blocks, 6), jnp.uint32), token_shape)


def blocks_cover(starts: jax.Array, lengths: jax.Array, token_shape) -> jax.Array:
  """[K, 3] starts and lengths → [K, T, H, W] bool, True where block k covers."""
  inside = []
  for axis, extent in enumerate(_check_shape(token_shape)):  # the three axes
    coord = jnp.arange(extent)[None, :]
    start = starts[:, axis : axis + 1]
    inside.append((coord >= start) & (coord < start + lengths[:, axis : axis + 1]))
  in_t, in_h, in_w = inside
  return in_t[:, :, None, None] & in_h[:, None, :, None] & in_w[:, None, None, :]


def _per_sample_rngs(rng: jax.Array, batch: int) -> jax.Array:
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(batch))


def _check_pad(pad, batch: int, shape: Shape3):
  if pad is not None and tuple(pad.shape) != (batch,) + shape:
    raise ValueError(f'pad has shape {tuple(pad.shape)}, expected {(batch,) + shape}')


def block_mask(
  rng: jax.Array, batch: int, token_shape, num_blocks: int, pad: jax.Array | None = None
) -> jax.Array:
  """VIMPAC block masking.

  Args:
    rng: PRNG key; sample b uses `fold_in(rng, b)`.
    batch: static batch size B.
    token_shape: static (T, H, W) of the token map.
    num_blocks: static K >= 1 (VIMPAC: 5 on 5×16×16, 6 on 5×32×32).
    pad: optional [B, T, H, W] bool, True = PAD (never masked).

  Returns:
    [B, T, H, W] bool, True = masked: the union of K blocks, minus PAD.
  """
  shape = _check_shape(token_shape)
  if num_blocks < 1:
    raise ValueError(f'masking.num_blocks={num_blocks} must be >= 1')
  _check_pad(pad, batch, shape)
  return _block_mask(rng, int(batch), shape, int(num_blocks), pad)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _block_mask(rng, batch, shape, num_blocks, pad):
  def one(sample_rng):
    starts, lengths = sample_blocks(sample_rng, shape, num_blocks)
    return blocks_cover(starts, lengths, shape).any(axis=0)

  mask = jax.vmap(one)(_per_sample_rngs(rng, batch))
  return mask if pad is None else mask & ~pad.astype(bool)


# --- expected ratio, closed form -------------------------------------------


@functools.cache
def _axis_coverage(extent: int, max_length: int) -> tuple[Fraction, ...]:
  """P(one block covers position x) along one axis, x = 0 .. extent - 1:
  (1/m) Σ_{l=1..m} #{starts s ≤ x < s + l} / (extent - l + 1)."""
  probs = []
  for x in range(extent):
    total = Fraction(0)
    for length in range(1, max_length + 1):
      starts = min(x, extent - length) - max(0, x - length + 1) + 1
      total += Fraction(max(starts, 0), extent - length + 1)
    probs.append(total / max_length)
  return tuple(probs)


def block_coverage_probability(token_shape) -> np.ndarray:
  """[T, H, W] float64: q(t, h, w), the probability that one block covers the
  position (the axes are independent, so q = q_T(t)·q_H(h)·q_W(w))."""
  shape = _check_shape(token_shape)
  axes = [np.asarray(_axis_coverage(e, m), np.float64) for e, m in zip(shape, max_block_lengths(shape))]
  return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


@functools.cache
def _expected_ratio_exact(shape: Shape3, num_blocks: int) -> Fraction:
  # Positions with equal per-axis probabilities share q; count them once.
  counts = [collections.Counter(_axis_coverage(e, m)) for e, m in zip(shape, max_block_lengths(shape))]
  total = Fraction(0)
  for qt, nt in counts[0].items():
    for qh, nh in counts[1].items():
      for qw, nw in counts[2].items():
        total += nt * nh * nw * (1 - (1 - qt * qh * qw) ** num_blocks)
  return total / math.prod(shape)


def expected_block_mask_ratio(token_shape, num_blocks: int, exact: bool = False) -> float | Fraction:
  """Expected fraction of masked tokens under `block_mask` (no PAD), in closed form:
  mean over positions of 1 - (1 - q(pos))^K, q from `block_coverage_probability`.

  Exact rational arithmetic; `exact=True` returns the Fraction, else a float.
  E.g. 5×16×16, K=5: 0.1445 (paper Table 9: 14.5%).
  """
  if num_blocks < 1:
    raise ValueError(f'masking.num_blocks={num_blocks} must be >= 1')
  ratio = _expected_ratio_exact(_check_shape(token_shape), int(num_blocks))
  return ratio if exact else float(ratio)


# --- i.i.d. ablation -----------------------------------------------------------


def iid_mask(
  rng: jax.Array,
  batch: int,
  token_shape,
  ratio: float,
  pad: jax.Array | None = None,
  exact_count: bool = False,
) -> jax.Array:
  """I.i.d. token masking (BERT; VIMPAC Eq. 2 and Table 15).

  Default: each non-PAD token is masked independently with probability
  `ratio` (as the reference's Bernoulli masking). `exact_count=True`: exactly
  round(ratio·n) of the sample's n non-PAD tokens, uniformly at random.

  Returns [B, T, H, W] bool, True = masked; sample b uses `fold_in(rng, b)`.
  """
  shape = _check_shape(token_shape)
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f'masking ratio {ratio} is outside [0, 1]')
  _check_pad(pad, batch, shape)
  return _iid_mask(rng, int(batch), shape, jnp.float32(ratio), pad, bool(exact_count))


@functools.partial(jax.jit, static_argnums=(1, 2, 5))
def _iid_mask(rng, batch, shape, ratio, pad, exact_count):
  pad = jnp.zeros((batch,) + shape, bool) if pad is None else pad.astype(bool)

  def one(sample_rng, sample_pad):
    u = _random_1d(jax.random.uniform, sample_rng, shape)
    if not exact_count:
      return (u < ratio) & ~sample_pad
    scores = jnp.where(sample_pad, jnp.inf, u).reshape(-1)
    rank = jnp.argsort(jnp.argsort(scores)).reshape(shape)
    count = jnp.round(ratio * jnp.sum(~sample_pad)).astype(rank.dtype)
    return (rank < count) & ~sample_pad

  return jax.vmap(one)(_per_sample_rngs(rng, batch), pad)


# --- batched masker -----------------------------------------------------------


def make_token_masker(
  kind: str,
  token_shape,
  *,
  num_blocks: int = 5,
  ratio: float | None = None,
  exact_count: bool = False,
) -> Callable[..., jax.Array]:
  """`masker(rng, batch, pad=None) -> [B, T, H, W] bool` (batch static under jit).

  kind 'block': `block_mask` with `num_blocks`. kind 'iid': `iid_mask` with
  `ratio`, or (None) the block masker's expected ratio for `num_blocks`.
  Arguments are checked here, before any compilation.
  """
  shape = _check_shape(token_shape)
  if kind == 'block':
    expected_block_mask_ratio(shape, num_blocks)  # validates num_blocks
    return lambda rng, batch, pad=None: block_mask(rng, batch, shape, num_blocks, pad)
  if kind == 'iid':
    p = expected_block_mask_ratio(shape, num_blocks) if ratio is None else float(ratio)
    if not 0.0 <= p <= 1.0:
      raise ValueError(f'masking ratio {p} is outside [0, 1]')
    return lambda rng, batch, pad=None: iid_mask(rng, batch, shape, p, pad, exact_count)
  raise ValueError(f'unknown VIMPAC masking kind {kind!r}; valid kinds: {list(MASKERS)}')


# --- model input ------------------------------------------------------------------


def corrupt_tokens(
  rng: jax.Array,
  tokens: jax.Array,
  mask: jax.Array,
  mask_id: int,
  vocab_size: int,
  bert: bool = False,
) -> jax.Array:
  """The model input: `tokens` with masked positions replaced.

  Args:
    rng: PRNG key (used with `bert`; sample b uses `fold_in(rng, b)`).
    tokens: [B, ...] int codes.
    mask: [B, ...] bool, True = masked (never PAD, as the maskers return it).
    mask_id: the [MASK] id (`token_vocab.special_token_ids(vocab_size).mask_id`).
    vocab_size: random replacements are uniform in [0, vocab_size).
    bert: False: every masked token becomes [MASK] (VIMPAC default). True:
      BERT 80/10/10, drawn per token: [MASK], a random code, unchanged.

  Returns:
    [B, ...] tokens of `tokens`' dtype.
  """
  if tokens.shape != mask.shape:
    raise ValueError(f'tokens {tokens.shape} and mask {mask.shape} differ in shape')
  return _corrupt_tokens(rng, tokens, mask, int(mask_id), int(vocab_size), bool(bert))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _corrupt_tokens(rng, tokens, mask, mask_id, vocab_size, bert):
  mask = mask.astype(bool)
  if not bert:
    return jnp.where(mask, jnp.asarray(mask_id, tokens.dtype), tokens)

  def one(sample_rng, sample_tokens, sample_mask):
    u_rng, code_rng = jax.random.split(sample_rng)
    u = _random_1d(jax.random.uniform, u_rng, sample_tokens.shape)
    codes = _random_1d(jax.random.randint, code_rng, sample_tokens.shape, 0, vocab_size, sample_tokens.dtype)
    replaced = jnp.where(
      u < BERT_MASK_FRACTION,
      jnp.asarray(mask_id, sample_tokens.dtype),
      jnp.where(u < BERT_MASK_FRACTION + BERT_RANDOM_FRACTION, codes, sample_tokens),
    )
    return jnp.where(sample_mask, replaced, sample_tokens)

  return jax.vmap(one)(_per_sample_rngs(rng, tokens.shape[0]), tokens, mask)
