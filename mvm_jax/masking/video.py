"""Token maskers for masked video modeling.

Tokens are the T'·H'·W' spacetime patches of a clip, flattened in (t, h, w)
order, so N = T'·H'·W'. A masker draws, for one sample, which tokens the
encoder sees; every masker returns a `Mask` with a static number of visible
tokens so one compiled step serves every batch.

All maskers reduce to one primitive, `mask_from_scores`: give every token a
score, keep the lowest-scoring `num_keep`. The maskers differ only in how
they score:

  random  i.i.d. noise per token (MAE-ST's spacetime-agnostic masking)
  tube    one random rank per spatial position, shared by all frames
  frame   one random rank per frame, shared by all its positions
  cube    union of random spacetime cubes (3-D BEiT block-wise masking)

`make_masker` turns a per-sample masker into a batched one to call inside a
jitted train step.
"""

import functools
import math
from typing import Callable, NamedTuple

import einops
import jax
import jax.numpy as jnp

Grid = tuple[int, int, int]


class Mask(NamedTuple):
  """Which tokens are visible, in three equivalent forms.

  ids_keep:    [..., n_keep] int32, indices (into the N tokens) of visible
               tokens, in shuffled order.
  ids_restore: [..., N] int32, MAE convention: ids_shuffle =
               argsort(scores), ids_restore = argsort(ids_shuffle),
               ids_keep = ids_shuffle[..., :n_keep]. Gathering
               concat(visible, masked) (both in shuffled order) with
               ids_restore puts tokens back in original order.
  mask:        [..., N] float32, 1 = masked (hidden), 0 = visible, in
               original token order.
  """

  ids_keep: jax.Array
  ids_restore: jax.Array
  mask: jax.Array


def mask_from_scores(scores: jax.Array, num_keep: int) -> Mask:
  """Keeps the `num_keep` tokens with the lowest scores.

  Args:
    scores: [..., N] any real or integer dtype; leading axes are batch axes.
      Ties go to the lower token index (stable sort), so callers may use
      +inf to force a token into the masked set.
    num_keep: static number of visible tokens, 0 <= num_keep <= N.

  Returns:
    Mask with ids_keep [..., num_keep], ids_restore [..., N], mask [..., N].
  """
  num_tokens = scores.shape[-1]
  if not 0 <= num_keep <= num_tokens:
    raise ValueError(f'num_keep={num_keep} must be in [0, {num_tokens}]')
  ids_shuffle = jnp.argsort(scores, axis=-1, stable=True).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=-1).astype(jnp.int32)
  ids_keep = ids_shuffle[..., :num_keep]
  # ids_restore[i] is token i's position in shuffled order; the first
  # num_keep positions are the visible ones.
  mask = (ids_restore >= num_keep).astype(jnp.float32)
  return Mask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def mask_to_grid(mask: jax.Array, grid: Grid) -> jax.Array:
  """Reshapes per-token values [..., N] to [..., T', H', W']."""
  t, h, w = grid
  return einops.rearrange(mask, '... (t h w) -> ... t h w', t=t, h=h, w=w)


# --- static visible counts -------------------------------------------------


def _keep_count(total: int, ratio: float) -> int:
  # MAE's rounding: int(L * (1 - mask_ratio)), truncation included.
  return int(total * (1 - ratio))


def _check_ratio(ratio: float) -> None:
  if not 0.0 < ratio < 1.0:
    raise ValueError(f'masking.ratio must be in the open interval (0, 1), got {ratio}')


def _check_kind(kind: str) -> None:
  if kind not in MASKERS:
    raise ValueError(f'unknown masking kind {kind!r}; valid kinds: {sorted(MASKERS)}')


def num_visible(kind: str, grid: Grid, ratio: float) -> int:
  """Static number of visible tokens for masker `kind` on `grid`.

  random/cube: int(N·(1 - ratio)); tube: int(H'W'·(1 - ratio))·T';
  frame: int(T'·(1 - ratio))·H'W'. Kinds added to MASKERS later (e.g.
  HPM's) default to the random count.

  Raises:
    ValueError: unknown kind, ratio outside (0, 1), or a ratio that leaves
      no visible or no masked token on this grid.
  """
  _check_kind(kind)
  _check_ratio(ratio)
  t, h, w = grid
  if kind == 'tube':
    count = _keep_count(h * w, ratio) * t
  elif kind == 'frame':
    count = _keep_count(t, ratio) * h * w
  else:
    count = _keep_count(t * h * w, ratio)
  if not 0 < count < t * h * w:
    raise ValueError(
      f'masking.ratio={ratio} leaves {count} of {t * h * w} tokens '
      f'visible for kind {kind!r} on grid {tuple(grid)}; need at least '
      'one visible and one masked token'
    )
  return count


# --- per-sample maskers: fn(rng, grid, ratio, **kw) -> Mask (unbatched) -----


def _random_ranks(rng: jax.Array, n: int) -> jax.Array:
  """[n] int32: a random permutation of 0..n-1, used as distinct scores.

  argsort of 32-bit random keys: uniform up to key collisions (chance
  below 1e-5 for n <= 256). jax.random.permutation does the same with an
  extra key split, which costs more compile time.
  """
  keys = jax.random.bits(rng, (n,))
  return jnp.argsort(keys).astype(jnp.int32)


def random_mask(rng: jax.Array, grid: Grid, ratio: float) -> Mask:
  """Spacetime-agnostic random masking (MAE-ST default).

  Returns Mask with ids_keep [n_keep], ids_restore [N], mask [N], where
  n_keep = int(N·(1 - ratio)).
  """
  num_tokens = math.prod(grid)
  scores = jax.random.uniform(rng, (num_tokens,))
  return mask_from_scores(scores, num_visible('random', grid, ratio))


def tube_mask(rng: jax.Array, grid: Grid, ratio: float) -> Mask:
  """Space-only masking broadcast over time: the same H'W' positions are
  hidden in every frame.

  Returns Mask with ids_keep [n_keep], ids_restore [N], mask [N], where
  n_keep = int(H'W'·(1 - ratio))·T'.
  """
  t, h, w = grid
  # Distinct integer ranks (not float noise) so that a position's T' copies
  # tie only with each other and are kept or masked together.
  scores = einops.repeat(_random_ranks(rng, h * w), 's -> (t s)', t=t)
  return mask_from_scores(scores, num_visible('tube', grid, ratio))


def frame_mask(rng: jax.Array, grid: Grid, ratio: float) -> Mask:
  """Time-only masking: whole frames are hidden or visible.

  Returns Mask with ids_keep [n_keep], ids_restore [N], mask [N], where
  n_keep = int(T'·(1 - ratio))·H'W'.
  """
  t, h, w = grid
  scores = einops.repeat(_random_ranks(rng, t), 't -> (t s)', s=h * w)
  return mask_from_scores(scores, num_visible('frame', grid, ratio))


def default_num_cubes(
  grid: Grid,
  ratio: float,
  temporal_length: tuple[int, int | None] = (1, None),
  area_range: tuple[float, float] = (0.1, 0.4),
) -> int:
  """Number of cubes that covers `ratio` of the clip with high probability.

  With cubes covering an expected fraction f of the clip, K independent
  cubes would leave about (1 - f)^K uncovered. Cubes lie inside the grid,
  so border tokens are covered less often than that; K = 4·log(1 - ratio)
  / log(1 - f) (four times the naive count) left 0.2% of 1000 samples
  short of `ratio` at ratio 0.9 on 8×14×14 (those get a few random
  tokens; the count stays exact).
  """
  t_min, t_max = temporal_length[0], temporal_length[1] or grid[0]
  fraction = ((t_min + t_max) / 2 / grid[0]) * (sum(area_range) / 2)
  fraction = min(max(fraction, 1e-3), 0.999)
  return max(1, math.ceil(4 * math.log(1 - ratio) / math.log(1 - fraction)))


def _check_cube_args(grid, temporal_length, area_range, aspect_range, num_cubes):
  t_min, t_max = temporal_length
  if not 1 <= t_min <= t_max <= grid[0]:
    raise ValueError(
      f"masking.temporal_length={temporal_length} must satisfy 1 <= min <= max <= T'={grid[0]}"
    )
  if not 0 < area_range[0] <= area_range[1] <= 1:
    raise ValueError(f'masking.area_range={area_range} must satisfy 0 < min <= max <= 1')
  if not 0 < aspect_range[0] <= aspect_range[1]:
    raise ValueError(f'masking.aspect_range={aspect_range} must satisfy 0 < min <= max')
  if num_cubes < 1:
    raise ValueError(f'masking.num_cubes={num_cubes} must be >= 1')


def _scale_to_int(u, low, high):
  """Maps u ~ U[0, 1) to integers uniform in [low, high] (inclusive)."""
  offset = jnp.floor(u * (high - low + 1)).astype(jnp.int32)
  return low + jnp.minimum(offset, high - low)  # u·count may round up


def _cubes_from_uniforms(u, grid, temporal_length, area_range, aspect_range):
  """Turns u [K, 6] ~ U[0, 1) into K cubes: (starts, sizes), each [K, 3] int32.

  One uniform draw feeds every cube parameter: each separate jax.random
  call (randint especially) adds seconds of CPU compile time.
  """
  t, h, w = grid
  length_t = _scale_to_int(u[:, 0], *temporal_length)
  # BEiT's block: area and log-aspect uniform, sides rounded, clipped.
  area = (area_range[0] + u[:, 1] * (area_range[1] - area_range[0])) * (h * w)
  log_min, log_max = math.log(aspect_range[0]), math.log(aspect_range[1])
  aspect = jnp.exp(log_min + u[:, 2] * (log_max - log_min))
  length_h = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
  length_w = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
  sizes = jnp.stack([length_t, length_h, length_w], axis=-1)
  # Start uniform over the offsets that keep the cube inside the grid.
  starts = _scale_to_int(u[:, 3:6], 0, jnp.asarray(grid, jnp.int32) - sizes)
  return starts, sizes


def _first_covering_cube(starts, sizes, grid):
  """[N] int32: index of the first cube covering each token, K if none."""
  num_cubes = starts.shape[0]
  inside = []
  for axis, extent in enumerate(grid):  # the three axes, not samples
    coord = jnp.arange(extent)[None, :]
    start = starts[:, axis : axis + 1]
    inside.append((coord >= start) & (coord < start + sizes[:, axis : axis + 1]))
  in_t, in_h, in_w = inside  # [K, T'], [K, H'], [K, W']
  covered = in_t[:, :, None, None] & in_h[:, None, :, None] & in_w[:, None, None, :]
  covered = covered.reshape(num_cubes, -1)  # [K, N]
  cube_index = jnp.arange(num_cubes, dtype=jnp.int32)[:, None]
  return jnp.where(covered, cube_index, num_cubes).min(axis=0)


def cube_mask(
  rng: jax.Array,
  grid: Grid,
  ratio: float,
  *,
  num_cubes: int | None = None,
  temporal_length: tuple[int, int | None] = (1, None),
  area_range: tuple[float, float] = (0.1, 0.4),
  aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
) -> Mask:
  """Block-wise spacetime masking: hidden tokens form random cubes.

  Construction (static shapes, exact count):
    1. Draw K = `num_cubes` cubes. Each has temporal length uniform in
       `temporal_length` (max None = T'); a spatial rectangle with area
       uniform in `area_range`·H'W' and aspect ratio log-uniform in
       `aspect_range`, sides rounded and clipped to the grid (BEiT's
       block); and a start uniform over the offsets that fit the grid.
    2. Score each token by the index k of the first cube covering it, then
       by its raster index: score = k·N + n. Tokens no cube covers get
       K·N + a random 24-bit key, so they come last in random order.
    3. Mask the N - n_keep lowest-scoring tokens: whole cubes in draw
       order, then the last cube partly (its first tokens in (t, h, w)
       order, so still a contiguous chunk). Visible = highest scores.
  Default K (`default_num_cubes`) makes step 3 need the random fallback
  only rarely; the count is exact either way.

  Returns Mask with ids_keep [n_keep], ids_restore [N], mask [N], where
  n_keep = int(N·(1 - ratio)).
  """
  temporal_length = (temporal_length[0], temporal_length[1] or grid[0])
  if num_cubes is None:
    num_cubes = default_num_cubes(grid, ratio, temporal_length, area_range)
  _check_cube_args(grid, temporal_length, area_range, aspect_range, num_cubes)
  num_tokens = math.prod(grid)
  u = jax.random.uniform(rng, (num_cubes * 6 + num_tokens,))
  starts, sizes = _cubes_from_uniforms(
    u[: num_cubes * 6].reshape(num_cubes, 6),
    grid,
    temporal_length,
    area_range,
    aspect_range,
  )
  first_cube = _first_covering_cube(starts, sizes, grid)
  # A random 24-bit key orders uncovered tokens (cheaper to compile than a
  # permutation); rare equal keys fall back to token order.
  fill_key = (u[num_cubes * 6 :] * 2**24).astype(jnp.int32)
  tie_break = jnp.where(first_cube < num_cubes, jnp.arange(num_tokens), fill_key)
  mask_order = first_cube * num_tokens + tie_break  # lowest = masked first
  return mask_from_scores(-mask_order, num_visible('cube', grid, ratio))


MASKERS: dict[str, Callable[..., Mask]] = {
  'random': random_mask,
  'tube': tube_mask,
  'frame': frame_mask,
  'cube': cube_mask,
}


def make_masker(kind: str, grid: Grid, ratio: float, **kwargs) -> Callable[[jax.Array, int], Mask]:
  """Builds a batched masker `masker(rng, batch_size) -> Mask`.

  Sample b uses `jax.random.fold_in(rng, b)`; the result has ids_keep
  [B, n_keep], ids_restore [B, N], mask [B, N]. `batch_size` must be static
  under jit (e.g. `jax.jit(masker, static_argnums=1)`). `kwargs` go to the
  per-sample masker (e.g. cube's `num_cubes`).

  Raises:
    ValueError: unknown kind, ratio outside (0, 1), or invalid masker
      arguments; checked here, before any compilation.
  """
  _check_kind(kind)
  grid = tuple(int(g) for g in grid)
  num_visible(kind, grid, ratio)
  per_sample = functools.partial(MASKERS[kind], grid=grid, ratio=ratio, **kwargs)
  jax.eval_shape(per_sample, jax.random.key(0))  # validates kwargs eagerly

  def masker(rng: jax.Array, batch_size: int) -> Mask:
    sample_ids = jnp.arange(batch_size)
    sample_rngs = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, sample_ids)
    return jax.vmap(per_sample)(sample_rngs)

  return masker
