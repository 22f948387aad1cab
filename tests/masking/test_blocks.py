"""VIMPAC block masking: Table 9 ratios, closed form, bounds, PAD, per-sample keys, corruption."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax import token_vocab
from mvm_jax.masking import blocks as bm

# VIMPAC (Tan et al., 2021), Appendix B.1, Table 9: induced masking ratio (%) for
# K = 4, 5, 6, 7, 8 blocks, by token map (length, frame size / 8, frame size / 8).
PAPER_TABLE9 = {
  (5, 16, 16): (11.9, 14.5, 17.0, 19.4, 21.7),
  (5, 32, 32): (10.6, 13.1, 15.2, 17.5, 19.5),
  (10, 16, 16): (10.4, 12.8, 15.0, 17.1, 19.2),
  (10, 32, 32): (9.3, 11.4, 13.4, 15.4, 17.2),
}
TABLE9_BLOCKS = (4, 5, 6, 7, 8)
MC_SAMPLES = 20000


def _mc_ratios(shape, bits):
  """[N, 5] masked fractions for K = 4..8: the union of the first K of 8 blocks made by
  `blocks_from_bits` (as `block_mask` makes them; see the union test below) from random
  words bits [N, 8, 6], in one jitted vmap on device. Each (t, h) row of the union is a
  W-bit word (W <= 32), so a block costs T·H word ORs instead of T·H·W booleans."""
  t, h, w = shape
  assert w <= 32 and bits.shape[1:] == (max(TABLE9_BLOCKS), 6)

  def one(sample_bits):
    starts, lengths = bm.blocks_from_bits(sample_bits, shape)
    inside = [
      (jnp.arange(e)[None] >= starts[:, a : a + 1]) & (jnp.arange(e)[None] < (starts + lengths)[:, a : a + 1])
      for a, e in enumerate(shape)
    ]  # [K, T], [K, H], [K, W]
    w_bits = jnp.sum(inside[2].astype(jnp.uint32) << jnp.arange(w, dtype=jnp.uint32), axis=-1)  # [K]
    union, ratios = jnp.zeros((t, h), jnp.uint32), []
    for k in range(max(TABLE9_BLOCKS)):
      union = union | jnp.where(inside[0][k][:, None] & inside[1][k][None, :], w_bits[k], 0)
      if k + 1 in TABLE9_BLOCKS:
        ratios.append(jnp.sum(jax.lax.population_count(union)) / (t * h * w))
    return jnp.stack(ratios)

  return np.asarray(jax.jit(jax.vmap(one))(bits), np.float64)


def _random_words(shape, seed=0):
  # Host random words: the same uniform 32-bit words jax.random.bits gives, without
  # compiling threefry for every test.
  return np.random.default_rng(seed).integers(0, 2**32, size=shape, dtype=np.uint32)


@pytest.mark.parametrize('shape', list(PAPER_TABLE9))
def test_table9_ratio_closed_form_and_monte_carlo(shape):
  paper = np.asarray(PAPER_TABLE9[shape])
  closed = np.asarray([100 * bm.expected_block_mask_ratio(shape, k) for k in TABLE9_BLOCKS])
  ratios = 100 * _mc_ratios(shape, _random_words((MC_SAMPLES, max(TABLE9_BLOCKS), 6)))
  mc, stderr = ratios.mean(0), ratios.std(0) / math.sqrt(MC_SAMPLES)
  print(f'{shape}: paper {paper} closed {closed.round(3)} MC {mc.round(3)} ± {stderr.round(3)}')
  np.testing.assert_array_less(np.abs(closed - paper), 0.3)
  np.testing.assert_array_less(np.abs(mc - paper), 0.3)
  np.testing.assert_array_less(np.abs(mc - closed), 4 * stderr)


def _block_distribution(extent, max_length):
  """All (start, length) along one axis with their probabilities."""
  return [
    (s, length, 1 / max_length / (extent - length + 1))
    for length in range(1, max_length + 1)
    for s in range(extent - length + 1)
  ]


def test_closed_form_equals_exhaustive_enumeration():
  # K = 1 and K = 2 by enumerating every block (pair) with its probability.
  shape = (3, 4, 5)
  axes = [_block_distribution(e, m) for e, m in zip(shape, bm.max_block_lengths(shape))]
  covers, probs = [], []
  for (st, lt, pt), (sh, lh, ph), (sw, lw, pw) in itertools.product(*axes):
    c = np.zeros(shape, bool)
    c[st : st + lt, sh : sh + lh, sw : sw + lw] = True
    covers.append(c.reshape(-1))
    probs.append(pt * ph * pw)
  covers, probs = np.asarray(covers, np.float64), np.asarray(probs)
  assert probs.sum() == pytest.approx(1.0)
  one = probs @ covers.mean(1)
  union = np.maximum(covers[:, None, :], covers[None, :, :]).mean(-1)
  two = probs @ union @ probs
  assert bm.expected_block_mask_ratio(shape, 1) == pytest.approx(one, abs=1e-12)
  assert bm.expected_block_mask_ratio(shape, 2) == pytest.approx(two, abs=1e-12)
  assert np.mean(bm.block_coverage_probability(shape)) == pytest.approx(one, abs=1e-12)
  exact = bm.expected_block_mask_ratio(shape, 2, exact=True)
  assert float(exact) == pytest.approx(two, abs=1e-12) and exact.denominator > 1


def test_block_lengths_and_starts_within_bounds():
  shape = (5, 16, 16)
  assert bm.max_block_lengths(shape) == (3, 8, 8)
  assert bm.max_block_lengths((10, 32, 32)) == (6, 16, 16)
  starts, lengths = jax.jit(bm.blocks_from_bits, static_argnums=1)(_random_words((20000, 6)), shape)
  starts, lengths = np.asarray(starts), np.asarray(lengths)
  extent, max_len = np.asarray(shape), np.asarray(bm.max_block_lengths(shape))
  assert (lengths >= 1).all() and (lengths <= max_len).all() and (starts >= 0).all()
  assert (starts + lengths <= extent).all()
  for axis in range(3):  # every length occurs, about uniformly
    counts = np.bincount(lengths[:, axis], minlength=max_len[axis] + 1)[1:]
    assert counts.min() > 0.8 * len(lengths) / max_len[axis]
    assert (starts[:, axis] == 0).any() and (starts[:, axis] + lengths[:, axis] == extent[axis]).any()
  # Each block covers exactly its box.
  cover = bm.blocks_cover(jnp.asarray(starts[:50]), jnp.asarray(lengths[:50]), shape)
  np.testing.assert_array_equal(np.asarray(cover).sum((1, 2, 3)), lengths[:50].prod(1))


# One (batch, shape, K) for the batched-masker tests, so they share compilations.
SHAPE, K, BATCH = (5, 16, 16), 5, 1000


def _uniform_pad(seed, p):
  return np.random.default_rng(seed).random((BATCH,) + SHAPE) < p


def test_block_mask_union_of_per_sample_blocks_ratio_and_batch_independence():
  rng = jax.random.PRNGKey(7)
  masks = bm.block_mask(rng, BATCH, SHAPE, K)
  assert masks.shape == (BATCH,) + SHAPE and masks.dtype == bool
  masks = np.asarray(masks)
  one = jax.jit(lambda r: bm.blocks_cover(*bm.sample_blocks(r, SHAPE, K), SHAPE).any(0))
  for b in (0, 1, 2, BATCH - 1):  # sample b is a function of fold_in(rng, b) alone
    np.testing.assert_array_equal(masks[b], np.asarray(one(jax.random.fold_in(rng, b))))
  np.testing.assert_array_equal(np.asarray(bm.block_mask(rng, 3, SHAPE, K)), masks[:3])
  assert len({m.tobytes() for m in masks[:50]}) == 50  # samples differ
  ratios = masks.mean(axis=(1, 2, 3), dtype=np.float64)  # the public masker's own ratio
  assert abs(ratios.mean() - bm.expected_block_mask_ratio(SHAPE, K)) < 4 * ratios.std() / math.sqrt(BATCH)


def test_pad_never_masked():
  pad = _uniform_pad(1, 0.4)
  rng = jax.random.PRNGKey(7)
  free, masks = bm.block_mask(rng, BATCH, SHAPE, K), bm.block_mask(rng, BATCH, SHAPE, K, pad)
  masks, free, iid = np.asarray(masks), np.asarray(free), np.asarray(bm.iid_mask(rng, BATCH, SHAPE, 0.3, pad))
  assert not (masks & pad).any()
  np.testing.assert_array_equal(masks, free & ~pad)  # PAD only removes
  assert not (iid & pad).any()  # exact_count: in the next test
  assert 0.29 < iid.sum() / (~pad).sum() < 0.31


def test_iid_masker_ratio_and_exact_count():
  ratio = bm.expected_block_mask_ratio(SHAPE, K)
  pad = _uniform_pad(2, 0.3)
  masker = bm.make_token_masker('iid', SHAPE, num_blocks=K)  # ratio matched to K blocks
  masks = np.asarray(masker(jax.random.PRNGKey(0), BATCH, pad))
  n = (~pad).sum()
  assert not (masks & pad).any()
  assert abs(masks.sum() / n - ratio) < 4 * math.sqrt(ratio * (1 - ratio) / n)
  assert masks.sum(axis=(1, 2, 3)).std() > 0  # Bernoulli: the count varies
  exact = np.asarray(bm.iid_mask(jax.random.PRNGKey(1), BATCH, SHAPE, 0.3, pad, exact_count=True))
  np.testing.assert_array_equal(exact.sum(axis=(1, 2, 3)), np.round(0.3 * (~pad).sum(axis=(1, 2, 3))))
  assert not (exact & pad).any()


def _codes(seed, vocab):
  return np.random.default_rng(seed).integers(0, vocab, size=(BATCH,) + SHAPE).astype(np.int32)


def test_special_tokens_and_mask_corruption():
  assert token_vocab.special_token_ids(8192) == (8192, 8193, 8196, 8197)
  assert (token_vocab.PAD_ID, token_vocab.MASK_ID, token_vocab.NUM_EMBEDDINGS) == (8193, 8196, 8197)
  assert token_vocab.special_token_ids(100) == (100, 101, 104, 105)
  tokens = _codes(0, token_vocab.VOCAB_SIZE)
  mask = bm.block_mask(jax.random.PRNGKey(7), BATCH, SHAPE, K)
  plain = bm.corrupt_tokens(jax.random.PRNGKey(2), tokens, mask, token_vocab.MASK_ID, token_vocab.VOCAB_SIZE)
  np.testing.assert_array_equal(np.asarray(plain), np.where(mask, token_vocab.MASK_ID, tokens))


def test_bert_corruption_shares():
  vocab = token_vocab.VOCAB_SIZE
  tokens, mask = _codes(0, vocab), _uniform_pad(1, 0.5)  # any mask will do
  out = bm.corrupt_tokens(jax.random.PRNGKey(2), tokens, mask, token_vocab.MASK_ID, vocab, bert=True)
  out, tokens, mask = np.asarray(out), np.asarray(tokens), np.asarray(mask)
  np.testing.assert_array_equal(out[~mask], tokens[~mask])
  masked_out, masked_in = out[mask], tokens[mask]
  n = masked_out.size  # ~640k
  as_mask = (masked_out == token_vocab.MASK_ID).mean()
  random = (masked_out != token_vocab.MASK_ID) & (masked_out != masked_in)
  kept = (masked_out == masked_in).mean()  # includes random draws that hit the same code (1e-5)
  tol = 5 * math.sqrt(0.8 * 0.2 / n)
  assert abs(as_mask - 0.8) < tol and abs(random.mean() - 0.1) < tol and abs(kept - 0.1) < tol
  assert masked_out[random].min() >= 0 and masked_out[random].max() < vocab


def test_masker_arguments_are_checked():
  with pytest.raises(ValueError, match='unknown VIMPAC masking kind'):
    bm.make_token_masker('cube', (5, 16, 16))
  with pytest.raises(ValueError, match='num_blocks'):
    bm.block_mask(jax.random.PRNGKey(0), 2, (5, 16, 16), 0)
  with pytest.raises(ValueError, match='token_shape'):
    bm.block_mask(jax.random.PRNGKey(0), 2, (16, 16), 5)
