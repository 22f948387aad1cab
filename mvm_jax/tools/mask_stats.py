"""Masking ratio a masker actually induces, over many sampled masks, and a picture of a few.

  python -m mvm_jax.tools.mask_stats --config configs/vimpac.py:small \\
      --token_shape 5,16,16 --num_blocks 5 --samples 20000 [--json] [--out masks.png]

Prints the mean and standard deviation over samples of the per-sample masked
fraction (and, for VIMPAC block masking, the closed-form expectation);
`--json` prints exactly one JSON object {"mask_ratio_mean", "mask_ratio_std",
"samples", ...} on stdout. `--out` writes a PNG: one row per sample, one panel
per time step, masked tokens black, visible grey.

The masker is `config.masking.kind`: 'block' / 'iid' (mvm_jax.masking.blocks,
`--num_blocks` overrides masking.num_blocks) or one of mvm_jax.masking.MASKERS
(ratio from masking.ratio, on the token grid). The token grid is
`--token_shape`, else the token grid of the config's method (`Method.token_grid`):
VIMPAC tokens (num_frames, crop/8, crop/8), or the patch grid of an MAE config.
Masks are sampled on device in equal chunks.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mvm_jax import console, masking, methods
from mvm_jax.masking import blocks
from mvm_jax.methods import vimpac

CHUNK = 4096  # samples per jitted call


def masking_section(config):
  """`config.masking`; a ValueError naming it when the config's method masks nothing (a VQ-VAE)."""
  m = config.get('masking')
  if m is None:
    raise ValueError(f'config.masking: none in this config; model.name={config.model.name!r} masks nothing')
  return m


def token_shape_of(config) -> tuple[int, int, int]:
  """The token grid the config's masks cover: its method's `token_grid` (VIMPAC's tokens, an MAE's
  patch grid)."""
  masking_section(config)
  return methods.get(config).token_grid(config)


def make_sampler(config, token_shape, num_blocks=None):
  """`sample(rng, batch) -> [batch, T, H, W] bool` (True = masked) and the closed-form
  expected ratio (None where there is none) for `config.masking`."""
  m = masking_section(config)
  kind = m.kind
  if kind in blocks.MASKERS:
    k = m.get('num_blocks', 5) if num_blocks is None else num_blocks
    masker = vimpac.token_masker(config, token_shape, k)
    expected = blocks.expected_block_mask_ratio(token_shape, k)
    if kind == 'iid' and not m.get('match_block_ratio', True):
      expected = float(m.ratio)
    return (lambda rng, batch: masker(rng, batch)), expected
  if kind in masking.MASKERS:
    batched = masking.make_masker(kind, token_shape, m.ratio)
    t, h, w = token_shape
    sample = lambda rng, batch: batched(rng, batch).mask.reshape(batch, t, h, w) > 0
    return sample, None
  known = sorted(set(masking.MASKERS) | set(blocks.MASKERS))
  raise ValueError(f'config.masking.kind: unknown masker {kind!r}; known: {known}')


def sample_masks(sample, rng: jax.Array, samples: int, keep: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Samples `samples` masks in equal chunks (one compilation; chunk c uses fold_in(rng, c)).

  Returns (ratios [samples] float64, the masked fraction of each mask; the first
  `keep` masks [keep, T, H, W] bool).
  """
  chunk = max(1, min(CHUNK, samples))

  @jax.jit
  def one_chunk(r):
    masks = sample(r, chunk)
    return masks.mean(axis=(1, 2, 3), dtype=jnp.float32), masks[:keep]

  ratios, first = [], None
  for c in range(-(-samples // chunk)):
    chunk_ratios, masks = one_chunk(jax.random.fold_in(rng, c))
    ratios.append(np.asarray(chunk_ratios, np.float64))
    first = np.asarray(masks) if first is None else first
  return np.concatenate(ratios)[:samples], first


def write_png(path: str, masks: np.ndarray, scale: int = 8) -> None:
  """masks [N, T, H, W] bool → PNG: one row per sample, one panel per time step;
  masked tokens black, visible ones grey, white gaps between panels."""
  from PIL import Image

  from mvm_jax.visualize import tile_rows

  pixels = np.where(masks, 0, 200).astype(np.uint8)[..., None].repeat(3, axis=-1)
  Image.fromarray(tile_rows(list(pixels), scale=scale)).save(path)


def mask_stats(
  config, token_shape=None, num_blocks=None, samples: int = 20000, seed: int = 0, num_images: int = 0
) -> tuple[dict, np.ndarray]:
  """Statistics over `samples` masks and the first `num_images` of them.

  Returns ({'mask_ratio_mean', 'mask_ratio_std', 'samples', 'kind', 'token_shape'[,
  'num_blocks', 'expected_ratio']}, masks [num_images, T, H, W] bool).
  """
  token_shape = tuple(int(s) for s in (token_shape or token_shape_of(config)))
  sample, expected = make_sampler(config, token_shape, num_blocks)
  ratios, masks = sample_masks(sample, jax.random.PRNGKey(seed), samples, keep=num_images)
  stats = {
    'mask_ratio_mean': float(ratios.mean()),
    'mask_ratio_std': float(ratios.std()),
    'samples': int(samples),
    'kind': config.masking.kind,
    'token_shape': list(token_shape),
  }
  if config.masking.kind in blocks.MASKERS:
    stats['num_blocks'] = int(config.masking.get('num_blocks', 5) if num_blocks is None else num_blocks)
  if expected is not None:
    stats['expected_ratio'] = float(expected)
  return stats, masks


def main(argv):
  del argv
  f = flags.FLAGS
  config = f.config
  token_shape = tuple(int(s) for s in f.token_shape.split(',')) if f.token_shape else None
  stats, masks = mask_stats(
    config, token_shape, f.num_blocks, f.samples, f.seed, f.num_images if f.out else 0
  )
  if f.out:
    write_png(f.out, masks)
  if f.json:
    print(json.dumps(stats))
    return
  t, h, w = stats['token_shape']
  name = stats['kind'] + (f' K={stats["num_blocks"]}' if 'num_blocks' in stats else '')
  print(f'masker {name} on {t}×{h}×{w} tokens, {stats["samples"]} samples')
  print(f'  mask ratio mean {100 * stats["mask_ratio_mean"]:.3f}%  std {100 * stats["mask_ratio_std"]:.3f}%')
  if 'expected_ratio' in stats:
    print(f'  closed form     {100 * stats["expected_ratio"]:.3f}%')
  if f.out:
    print(f'  wrote {f.out}')


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_string('token_shape', '', 'T,H,W token grid; default: from the config.')
  flags.DEFINE_integer(
    'num_blocks', None, 'Block masking: number of blocks K (overrides masking.num_blocks).'
  )
  flags.DEFINE_integer('samples', 20000, 'Masks to sample.')
  flags.DEFINE_integer('seed', 0, 'PRNG seed.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of text.')
  flags.DEFINE_string('out', '', 'Write a PNG of sampled masks here.')
  flags.DEFINE_integer('num_images', 4, 'Masks (rows) in the PNG.')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=console.parse_flags)
