"""Behaviour of mvm_jax.masking: counts, index conventions, structure,
randomness and uniformity of every masker, all under jax.jit.

Compilation dominates the runtime on CPU, so all cases of one kind are
compiled together, once (`_jitted_all_cases`), and reused across tests.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mvm_jax import masking

KINDS = ('random', 'tube', 'frame', 'cube')
GRIDS = ((8, 7, 7), (4, 4, 4))
RATIOS = (0.5, 0.75, 0.9)
UNIFORMITY_CASE = ((8, 7, 7), 0.75)  # 2000 samples feed the chi-square tests
# One small cube covers far less than 90%: the fill must still be exact.
FEW_CUBES = (('num_cubes', 1), ('area_range', (0.05, 0.1)), ('temporal_length', (1, 2)))


def _cases(kind):
  """(grid, ratio, kwargs) sampled for `kind`."""
  for grid in GRIDS:
    for ratio in RATIOS:
      # int(T' * (1 - 0.9)) == 0 for T' = 8 and 4: no frame would stay
      # visible, which num_visible rejects (tested below).
      if not (kind == 'frame' and ratio == 0.9):
        yield grid, ratio, ()
  if kind == 'cube':
    yield (8, 7, 7), 0.9, FEW_CUBES


# Less LLVM optimization: halves CPU compile time (the bulk of this file's
# runtime) without changing what the programs compute.
FAST_COMPILE = {
  'xla_backend_optimization_level': 0,
  'xla_llvm_disable_expensive_passes': True,
}


def _batch_size(kind, grid, ratio):
  return 2000 if (grid, ratio) == UNIFORMITY_CASE and kind != 'cube' else 128


@functools.cache
def _jitted_all_cases(kind):
  # One program per kind: compiling the RNG dominates CPU test time, and
  # XLA shares the identical noise computations across ratios.
  batched = [
    (masking.make_masker(kind, g, r, **dict(kw)), _batch_size(kind, g, r)) for g, r, kw in _cases(kind)
  ]
  return jax.jit(
    lambda rng: [masker(rng, batch_size) for masker, batch_size in batched],
    compiler_options=FAST_COMPILE,
  )


@functools.cache
def _all_cases(kind, seed):
  outputs = _jitted_all_cases(kind)(jax.random.key(seed))
  return {case: masking.Mask(*(np.asarray(x) for x in out)) for case, out in zip(_cases(kind), outputs)}


def _sample(kind, grid, ratio, seed=0, kwargs=()):
  """_batch_size(...) masks of one case, as numpy arrays."""
  return _all_cases(kind, seed)[(grid, ratio, kwargs)]


def _grid_masks(kind, grid, ratio):
  """[B, T', H', W'] masks of one case."""
  return masking.mask_to_grid(_sample(kind, grid, ratio).mask, grid)


def _assert_valid_mask(mask, num_tokens, n_keep):
  batch = mask.mask.shape[0]
  assert mask.ids_keep.shape == (batch, n_keep)
  assert mask.ids_restore.shape == mask.mask.shape == (batch, num_tokens)
  assert mask.ids_keep.dtype == mask.ids_restore.dtype == np.int32
  assert mask.mask.dtype == np.float32
  assert set(np.unique(mask.mask)) <= {0.0, 1.0}
  np.testing.assert_array_equal((1 - mask.mask).sum(-1), n_keep)
  np.testing.assert_array_equal(np.take_along_axis(mask.mask, mask.ids_keep, -1), 0)
  # Kept indices are distinct, so they name n_keep different tokens.
  assert all(len(np.unique(row)) == n_keep for row in mask.ids_keep[:50])


@pytest.mark.parametrize('kind,grid,ratio,kwargs', [(kind, *case) for kind in KINDS for case in _cases(kind)])
def test_exact_visible_count(kind, grid, ratio, kwargs):
  n_keep = masking.num_visible(kind, grid, ratio)
  _assert_valid_mask(_sample(kind, grid, ratio, kwargs=kwargs), np.prod(grid), n_keep)


def test_num_visible_values():
  grid = (8, 7, 7)  # N = 392, H'W' = 49
  assert masking.num_visible('random', grid, 0.75) == 98
  assert masking.num_visible('cube', grid, 0.75) == 98
  assert masking.num_visible('tube', grid, 0.75) == 12 * 8
  assert masking.num_visible('frame', grid, 0.75) == 2 * 49
  assert masking.num_visible('random', grid, 0.9) == 39  # int(39.2)


def _inverse_permutation(perm):
  inverse = np.empty_like(perm)
  np.put_along_axis(inverse, perm, np.arange(perm.shape[-1])[None], axis=-1)
  return inverse


@pytest.mark.parametrize('kind', KINDS)
def test_ids_restore_unshuffles(kind):
  grid, ratio = (8, 7, 7), 0.75
  mask = _sample(kind, grid, ratio)
  ids_keep, ids_restore = mask.ids_keep[:16], mask.ids_restore[:16]
  n_keep = ids_keep.shape[-1]
  is_permutation = np.sort(ids_restore, axis=-1) == np.arange(np.prod(grid))
  assert is_permutation.all()
  ids_shuffle = _inverse_permutation(ids_restore)
  np.testing.assert_array_equal(ids_shuffle[:, :n_keep], ids_keep)

  tokens = np.random.default_rng(0).normal(size=(16, np.prod(grid), 3))
  kept = np.take_along_axis(tokens, ids_keep[..., None], axis=1)
  masked = np.take_along_axis(tokens, ids_shuffle[:, n_keep:, None], axis=1)
  restored = np.take_along_axis(np.concatenate([kept, masked], axis=1), ids_restore[..., None], axis=1)
  np.testing.assert_array_equal(restored, tokens)
  # The masked part of the shuffle is exactly the tokens with mask == 1.
  masked_from_mask = np.take_along_axis(mask.mask[:16], ids_shuffle, axis=-1)
  np.testing.assert_array_equal(masked_from_mask[:, n_keep:], 1)


def test_mask_from_scores_matches_numpy_reference():
  rng = np.random.default_rng(1)
  # Ties and +inf (HPM forces hard patches out this way), leading batch axes.
  scores = rng.integers(0, 5, size=(2, 3, 20)).astype(np.float32)
  scores[0, 0, :4] = np.inf
  fn = jax.jit(masking.mask_from_scores, static_argnums=1)
  out = fn(jnp.asarray(scores), 7)

  ids_shuffle = np.argsort(scores, axis=-1, kind='stable')
  np.testing.assert_array_equal(out.ids_keep, ids_shuffle[..., :7])
  np.testing.assert_array_equal(out.ids_restore, np.argsort(ids_shuffle, axis=-1))
  expected_mask = np.ones_like(scores)
  np.put_along_axis(expected_mask, ids_shuffle[..., :7], 0.0, axis=-1)
  np.testing.assert_array_equal(out.mask, expected_mask)
  assert out.mask[0, 0, :4].tolist() == [1, 1, 1, 1]


def test_mask_to_grid_is_t_h_w_order():
  grid = (2, 3, 4)
  values = jnp.arange(2 * 2 * 3 * 4).reshape(2, 24)
  as_grid = np.asarray(masking.mask_to_grid(values, grid))
  assert as_grid.shape == (2, 2, 3, 4)
  assert as_grid[1, 1, 2, 3] == 24 + 1 * 12 + 2 * 4 + 3


@pytest.mark.parametrize('grid', GRIDS)
def test_tube_mask_is_identical_across_time(grid):
  mask = _grid_masks('tube', grid, 0.75)
  np.testing.assert_array_equal(mask, np.broadcast_to(mask[:, :1], mask.shape))


@pytest.mark.parametrize('grid', GRIDS)
def test_frame_mask_covers_whole_frames(grid):
  mask = _grid_masks('frame', grid, 0.75)
  per_frame = mask.reshape(*mask.shape[:2], -1)
  assert np.all((per_frame.min(-1) == per_frame.max(-1)))


def _masked_neighbour_fraction(mask_grid):
  """Mean over masked tokens of the fraction of their 6-neighbours (inside
  the grid) that are masked. mask_grid: [B, T, H, W]."""
  masked = mask_grid.astype(bool)
  padded = np.pad(masked, [(0, 0)] + [(1, 1)] * 3)
  inside = np.pad(np.ones_like(masked), [(0, 0)] + [(1, 1)] * 3)
  neighbours_masked = np.zeros(masked.shape)
  neighbours = np.zeros(masked.shape)
  for axis in (1, 2, 3):
    for shift in (-1, 1):
      window = [slice(None)] + [slice(1, -1)] * 3
      window[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
      neighbours_masked += padded[tuple(window)]
      neighbours += inside[tuple(window)]
  return (neighbours_masked / neighbours)[masked].mean()


def test_cube_mask_is_blocky():
  grid, ratio = (8, 7, 7), 0.5
  cube = _masked_neighbour_fraction(_grid_masks('cube', grid, ratio))
  rand = _masked_neighbour_fraction(_grid_masks('random', grid, ratio))
  assert abs(rand - ratio) < 0.03  # random: neighbours masked at the base rate
  assert cube > rand + 0.2, (cube, rand)


@pytest.mark.parametrize('kind', KINDS)
def test_randomness_contract(kind):
  grid, ratio = (8, 7, 7), 0.75
  first = _sample(kind, grid, ratio, seed=0)
  again = _all_cases.__wrapped__(kind, 0)[(grid, ratio, ())]  # not the cached copy
  np.testing.assert_array_equal(first.mask, again.mask)
  other_seed = _sample(kind, grid, ratio, seed=1)
  assert not np.array_equal(first.mask[:8], other_seed.mask[:8])
  # Samples of one batch differ: 16 draws give 16 distinct masks, except
  # frame masks, which have only C(8, 2) = 28 patterns (~12 distinct).
  distinct = len({row.tobytes() for row in first.mask[:16]})
  assert distinct >= (8 if kind == 'frame' else 16)


def test_batched_sample_b_uses_fold_in():
  # The contract lives in make_masker, whatever the kind.
  kind, grid, ratio = 'random', (4, 4, 4), 0.75
  batched = _sample(kind, grid, ratio, seed=0)
  per_sample = jax.jit(
    functools.partial(masking.random_mask, grid=grid, ratio=ratio),
    compiler_options=FAST_COMPILE,
  )
  for b in range(3):
    single = per_sample(jax.random.fold_in(jax.random.key(0), b))
    for batched_field, single_field in zip(batched, single):
      np.testing.assert_array_equal(batched_field[b], single_field)


def test_documented_jit_usage_has_static_shapes():
  masker = masking.make_masker('tube', (4, 4, 4), 0.75)
  lowered = jax.jit(masker, static_argnums=1).lower(jax.random.key(0), 5)
  shapes = [(x.shape, x.dtype) for x in lowered.out_info]
  assert shapes == [
    ((5, 16), jnp.int32),  # ids_keep: int(16 * 0.25) = 4 positions x 4 frames
    ((5, 64), jnp.int32),
    ((5, 64), jnp.float32),
  ]


def assert_uniform_frequency(counts, num_samples, num_masked, p_value=1e-4):
  """Asserts per-position masking counts fit uniform masking.

  counts: [n] times each of n positions was masked over num_samples
  samples, each masking exactly num_masked of the n positions. With
  p = num_masked / n, S = sum (c - M p)^2 / (M p (1 - p)) has covariance
  rank n - 1 (every sample masks the same total), and S (n - 1) / n is
  approximately chi-square with n - 1 degrees of freedom.
  """
  n = counts.shape[0]
  p = num_masked / n
  statistic = ((counts - num_samples * p) ** 2).sum() / (num_samples * p * (1 - p))
  statistic *= (n - 1) / n
  low, high = stats.chi2.ppf([p_value, 1 - p_value], df=n - 1)
  assert low < statistic < high, f'chi2={statistic:.1f} outside ({low:.1f}, {high:.1f}), df={n - 1}'


def test_uniformity_check_rejects_biased_masker():
  rng = np.random.default_rng(0)
  n, n_keep = 392, 98
  num_samples = 2000
  scores = rng.random((num_samples, n))
  unbiased = np.argsort(np.argsort(scores, axis=1), axis=1) >= n_keep
  assert_uniform_frequency(unbiased.sum(0), num_samples, n - n_keep)
  # The first 40 positions are masked a little more often (~0.79 vs 0.75).
  scores[:, :40] += 0.05
  biased = np.argsort(np.argsort(scores, axis=1), axis=1) >= n_keep
  with pytest.raises(AssertionError, match='chi2'):
    assert_uniform_frequency(biased.sum(0), num_samples, n - n_keep)


def test_random_mask_is_uniform_over_tokens():
  mask = _sample('random', (8, 7, 7), 0.75).mask
  assert_uniform_frequency(mask.sum(0), len(mask), 392 - 98)


def test_tube_mask_is_uniform_over_spatial_positions():
  grid = (8, 7, 7)
  mask = _grid_masks('tube', grid, 0.75)
  per_position = mask[:, 0].reshape(len(mask), 49).sum(0)  # frame 0 stands for all
  assert_uniform_frequency(per_position, len(mask), 49 - 12)


def test_frame_mask_is_uniform_over_frames():
  grid = (8, 7, 7)
  mask = _grid_masks('frame', grid, 0.75)
  per_frame = mask[:, :, 0, 0].sum(0)  # position (0, 0) stands for the frame
  assert_uniform_frequency(per_frame, len(mask), 8 - 2)


@pytest.mark.parametrize('kind', ['unknown', 'block_wise'])
def test_make_masker_rejects_unknown_kind(kind):
  with pytest.raises(ValueError, match='valid kinds') as error:
    masking.make_masker(kind, (8, 7, 7), 0.75)
  assert all(name in str(error.value) for name in KINDS)


@pytest.mark.parametrize('ratio', [0.0, 1.0, -0.1, 1.5])
def test_make_masker_rejects_ratio_outside_open_interval(ratio):
  with pytest.raises(ValueError, match='masking.ratio'):
    masking.make_masker('random', (8, 7, 7), ratio)


def test_ratio_leaving_no_visible_frame_is_rejected():
  with pytest.raises(ValueError, match='masking.ratio'):
    masking.make_masker('frame', (8, 7, 7), 0.9)


def test_cube_rejects_bad_arguments_before_compiling():
  with pytest.raises(ValueError, match='masking.temporal_length'):
    masking.make_masker('cube', (4, 4, 4), 0.75, temporal_length=(1, 5))
  with pytest.raises(ValueError, match='masking.area_range'):
    masking.make_masker('cube', (4, 4, 4), 0.75, area_range=(0.5, 0.2))
  with pytest.raises(TypeError):
    masking.make_masker('random', (4, 4, 4), 0.75, num_cubes=3)
