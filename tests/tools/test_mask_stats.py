"""tools.mask_stats: statistics and pictures of a masker, in process and on the command line."""

import json
import math

import pytest

from mvm_jax.masking import blocks as bm
from tests.conftest import run_module


def test_mask_stats_other_maskers_in_process():
  from configs import vimpac
  from mvm_jax.tools import mask_stats

  c = vimpac.get_config('tiny')
  with c.unlocked():
    c.masking.kind, c.masking.ratio = 'tube', 0.5
  stats, masks = mask_stats.mask_stats(c, samples=16, num_images=2)
  assert masks.shape == (2, 4, 8, 8) and (masks.sum(axis=(2, 3)) == 32).all()  # half of each frame
  assert (
    stats['token_shape'] == [4, 8, 8] and stats['mask_ratio_mean'] == 0.5 and stats['mask_ratio_std'] == 0
  )


def test_mask_stats_cli(tmp_path):
  png = tmp_path / 'masks.png'
  result = run_module(
    'mvm_jax.tools.mask_stats',
    '--config',
    'configs/vimpac.py:small',
    '--token_shape',
    '5,16,16',
    '--num_blocks',
    '5',
    '--samples',
    '4000',
    '--json',
    '--out',
    str(png),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1
  stats = json.loads(lines[0])
  assert set(stats) >= {'mask_ratio_mean', 'mask_ratio_std', 'samples'} and stats['samples'] == 4000
  assert stats['expected_ratio'] == pytest.approx(bm.expected_block_mask_ratio((5, 16, 16), 5))
  assert abs(stats['mask_ratio_mean'] - stats['expected_ratio']) < 4 * stats['mask_ratio_std'] / math.sqrt(
    4000
  )
  from PIL import Image

  with Image.open(png) as img:
    assert img.size[0] > img.size[1] > 0  # 4 rows × 5 panels of 16×16 tokens


def test_mask_stats_takes_the_token_grid_of_the_method():
  from configs import vqvae
  from mvm_jax.tools import mask_stats
  from tests.conftest import micro_config

  c = micro_config()  # MAE: the patch grid of a 4-frame 32² clip in 2×8×8 patches
  stats, _ = mask_stats.mask_stats(c, samples=8)
  assert stats['token_shape'] == [2, 4, 4] and stats['kind'] == c.masking.kind
  assert stats['mask_ratio_mean'] == pytest.approx(c.masking.ratio, abs=1 / 32)
  with pytest.raises(ValueError, match=r"^config\.masking: none in this config; model\.name='vqvae'"):
    mask_stats.mask_stats(vqvae.get_config('tiny'), samples=8)
