"""Where our recipes follow the official code: each test would have caught a
deviation found by running both side by side (initialisation, ViC-MAE's
projector statistics, decoder [CLS] and mask ratio, frame-level sin-cos
positions, the MAE-ST lr rule, VIMPAC's extraction crop). HPM's floor and
per-epoch α are in masking/test_hard_patches.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import mae_st, vic_mae, vimpac
from mvm_jax import config as config_lib
from mvm_jax.data import transforms
from mvm_jax.models import heads, vit
from mvm_jax.train import optimizer


@pytest.mark.parametrize('patch,dim', [((2, 8, 8), 128), ((2, 16, 16), 384)])
def test_patch_embedding_init_is_xavier_on_the_flattened_conv(patch, dim):
  """mae_st: xavier_uniform on the [D, C·t·p·p] view: std sqrt(2 / (C·t·p² + D)),
  not Flax's 5-D fans that also multiply D by t·p² (5.7-13x smaller)."""
  module = vit.PatchEmbed(patch, dim)
  video = jnp.zeros((1,) + tuple(2 * s for s in patch) + (3,))
  kernel = nn.unbox(module.init(jax.random.key(0), video))['params']['proj']['kernel']
  assert kernel.shape == patch + (3, dim)
  fan_in = 3 * int(np.prod(patch))
  want = np.sqrt(2.0 / (fan_in + dim))
  np.testing.assert_allclose(np.std(np.asarray(kernel)), want, rtol=0.03)
  bound = np.sqrt(6.0 / (fan_in + dim))
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound


def test_frame_level_sincos_has_no_constant_temporal_term():
  """One temporal token: sin-cos positions are the 2-D spatial table, nothing added."""
  tokens, _ = vit.SeparablePosEmbed((1, 4, 4), 32, 'sincos').apply({})
  np.testing.assert_allclose(tokens, vit.sincos_spatial(4, 4, 32), atol=0)
  # With several frames the temporal term stays (frame 1 differs from frame 0).
  tokens, _ = vit.SeparablePosEmbed((2, 4, 4), 32, 'sincos').apply({})
  np.testing.assert_allclose(
    tokens[:16] - vit.sincos_spatial(4, 4, 32), np.tile(vit.sincos_1d([0], 32), (16, 1))
  )
  assert not np.allclose(tokens[16:], tokens[:16])


def _projector(num_views):
  return heads.Projector(hidden=16, out=8, num_layers=3, bn_last=True, num_views=num_views)


def test_per_view_projector_normalises_each_view_on_its_own():
  """[2B, D] views adjacent: per-view BN = the joint projector applied to each view's
  [B, D] on its own (shared weights); running averages updated once per view."""
  x = jax.random.normal(jax.random.key(0), (12, 10)) + jnp.tile(jnp.array([[0.0], [3.0]]), (6, 1))
  variables = _projector(2).init(jax.random.key(1), x)
  per_view, updates = _projector(2).apply(variables, x, mutable=['batch_stats'])
  views = x.reshape(6, 2, 10)
  stats = variables
  want = []
  for v in range(2):
    out, new = _projector(1).apply(stats, views[:, v], mutable=['batch_stats'])
    stats = {**stats, **new}
    want.append(out)
  np.testing.assert_allclose(per_view, jnp.stack(want, 1).reshape(12, -1), rtol=1e-5, atol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), updates, {'batch_stats': stats['batch_stats']}
  )
  joint, _ = _projector(1).apply(variables, x, mutable=['batch_stats'])
  assert not np.allclose(joint, per_view, atol=1e-3)  # the views' offset differs: so do the statistics


def test_vic_mae_presets_follow_the_released_code():
  for preset in ('tiny', 'vit_b', 'vit_b_paper', 'mae_simsiam', 'mae_vicreg'):
    c = vic_mae.get_config(preset)
    assert c.masking.ratio == 0.5, preset
    assert c.model.decoder_cls == 'encoder', preset
    assert c.contrastive.bn_stats == 'per_view', preset
    config_lib.validate(c)
  assert vimpac.get_config('tiny').contrastive.bn_stats == 'joint'  # VIMPAC's SyncBN sees both clips


def test_bad_bn_stats_fails_naming_the_key():
  c = vic_mae.get_config('tiny')
  c.contrastive.bn_stats = 'per_device'
  with pytest.raises(config_lib.ConfigError, match='contrastive.bn_stats'):
    config_lib.validate(c)


def test_lr_batch_unit_clips_or_videos():
  c = mae_st.get_config('vit_b')  # batch 512 clips, repeated sampling 4
  assert optimizer.peak_learning_rate(c) == pytest.approx(1.6e-3)
  c.optim.lr_batch_unit = 'videos'  # mae_st's code: blr × videos per step / 256
  assert optimizer.peak_learning_rate(c) == pytest.approx(8e-4 * 128 / 256)
  c.optim.lr_batch_unit = 'samples'
  with pytest.raises(config_lib.ConfigError, match='optim.lr_batch_unit'):
    config_lib.validate(c)


def test_vimpac_extraction_resizes_the_short_side_then_crops_the_centre():
  """`resize_short_side`: our box crop + one resize gives the same picture as the two-step
  resize-then-crop of VIMPAC's extraction (160 then 128², its fine-tuning tokens). Its pre-training
  reads only the tokens of 128 then 128² (`only_one_aug`: `…_hflip0_128center128`): the presets'
  full short side."""
  rng = np.random.default_rng(0)
  small = rng.integers(0, 255, (1, 25, 38, 3), dtype=np.uint8)
  frames = np.stack([np.asarray(Image.fromarray(f).resize((300, 200), Image.BILINEAR)) for f in small])
  ours = transforms.eval_view(frames, crop_size=128, resize_short_side=160)[0]
  resized = np.asarray(Image.fromarray(frames[0]).resize((240, 160), Image.BILINEAR))
  top, left = (160 - 128) // 2, (240 - 128) // 2
  two_step = resized[top : top + 128, left : left + 128]
  assert np.abs(ours.astype(int) - two_step.astype(int)).mean() < 2.0
  full = transforms.eval_view(frames, crop_size=128)[0]  # the full short side: a different view
  assert np.abs(full.astype(int) - two_step.astype(int)).mean() > 5.0
  for preset in ('small', 'base', 'large_half'):
    assert vimpac.get_config(preset).tokenizer.extract_resize_short_side == 0


def test_mae_st_paper_presets_normalise_pixels_as_mae_st_and_so_do_their_evaluators():
  """mae_st's Kinetics loader normalises with mean 0.45, std 0.225 (util/kinetics.py) in pre-training
  and fine-tuning; the paper presets do, and so do fine-tuning's of the same names and the evaluators' `kinetics` ones."""
  import importlib

  pairs = [(name, p) for name in ('mae_st', 'finetune') for p in ('vit_b', 'vit_l', 'vit_h')]
  for name, preset in pairs + [(name, 'kinetics') for name in ('knn', 'linear_probe', 'attentive_probe')]:
    data = importlib.import_module(f'configs.{name}').get_config(preset).data
    assert (tuple(data.mean), tuple(data.std)) == ((0.45,) * 3, (0.225,) * 3), (name, preset)
  assert tuple(importlib.import_module('configs.mae_st').get_config('tiny').data.mean) == (
    0.485,
    0.456,
    0.406,
  )
