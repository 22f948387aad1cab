"""mvm_jax.data.transforms: temporal indices, crop boxes, normalisation, color_jitter and the
data.color_jitter / data.grayscale_prob keys."""

import numpy as np
import pytest

from mvm_jax.data import make_sampler, transforms, validate_data_config
from tests.data.test_randaugment import loader_batches, small_config, textured_clip

MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)


def _hue_turn(rgb: np.ndarray) -> np.ndarray:
  """Reference hue in turns [0, 1) of float RGB [..., 3] in [0, 1] (the HSV hexagon)."""
  r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
  return (np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b) / (2 * np.pi)) % 1.0


def test_strength_zero_and_no_grayscale_is_the_identity_and_draws_nothing():
  clip = textured_clip()
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(transforms.color_jitter(clip, rng, 0.0, 0.0), clip)
  assert rng.random() == np.random.default_rng(0).random()


def test_the_same_distortion_on_every_frame_and_deterministic():
  clip = np.repeat(textured_clip(t=1), 3, axis=0)  # three equal frames
  out = transforms.color_jitter(clip, np.random.default_rng(1), 1.0, 0.0)
  assert out.shape == clip.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0], out[1])
  np.testing.assert_array_equal(out[0], out[2])
  np.testing.assert_array_equal(out, transforms.color_jitter(clip, np.random.default_rng(1), 1.0, 0.0))


def test_grayscale_gives_equal_channels_equal_to_the_luma():
  clip = textured_clip()
  out = transforms.color_jitter(clip, np.random.default_rng(0), 0.0, 1.0)
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 1], out[..., 2])
  luma = clip.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  assert np.abs(out[..., 0] - luma).max() <= 0.51


def test_hue_rotates_a_saturated_colour_by_up_to_a_fifth_of_a_turn_per_unit_strength():
  """A mid-saturated colour keeps its luma under a pure hue rotation (YIQ keeps Y) and
  its hue moves within ±0.2 s; different draws give different hues."""
  pixel = np.array([200, 80, 60], np.uint8)
  clip = np.broadcast_to(pixel, (1, 4, 4, 3)).copy()
  hues, lumas = [], []
  for seed in range(40):
    rng = np.random.default_rng(seed)
    out = transforms.color_jitter(clip, rng, 0.5, 0.0)[0, 0, 0] / 255.0
    hues.append(_hue_turn(out))
    lumas.append(out @ transforms.LUMA)
  shift = (np.array(hues) - _hue_turn(pixel / 255.0) + 0.5) % 1.0 - 0.5
  assert np.abs(shift).max() < 0.2 * 0.5 + 0.05  # YIQ and HSV hue differ a little
  assert np.ptp(shift) > 0.1  # the hue does move


def test_config_keys_validated_reach_the_train_sampler_and_change_train_batches_only():
  validate_data_config(small_config(color_jitter=0.5, grayscale_prob=0.2))
  for key, bad in (('color_jitter', -0.1), ('grayscale_prob', 1.5)):
    with pytest.raises(ValueError, match=f'config.data.{key}'):
      validate_data_config(small_config(**{key: bad}))
  s = make_sampler(small_config(color_jitter=0.5, grayscale_prob=0.2), train=True)
  assert (s.color_jitter, s.grayscale_prob) == (0.5, 0.2)
  plain = loader_batches(small_config(), train=True)
  jittered = loader_batches(small_config(color_jitter=0.8), train=True)
  assert all(not np.array_equal(a, b) for a, b in zip(plain, jittered))
  for a, b in zip(
    loader_batches(small_config(), False, 1), loader_batches(small_config(color_jitter=0.8), False, 1)
  ):
    np.testing.assert_array_equal(a, b)  # evaluation views are never distorted


def test_temporal_indices_fit_and_loop():
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = transforms.temporal_indices(10, 30, 4, 3, rng)
    assert idx[0] >= 10 and idx[-1] < 30 and np.all(np.diff(idx) == 3)
  np.testing.assert_array_equal(transforms.temporal_indices(10, 30, 4, 3), [15, 18, 21, 24])
  # Too short: loops inside [start, stop), never leaves the range.
  np.testing.assert_array_equal(transforms.temporal_indices(5, 9, 4, 3), [5, 8, 7, 6])
  idx = transforms.temporal_indices(5, 9, 8, 3, rng)
  assert idx.min() >= 5 and idx.max() < 9


def test_crop_boxes_and_normalize():
  rng = np.random.default_rng(0)
  for _ in range(50):
    top, left, h, w = transforms.random_resized_crop_box(72, 128, rng, (0.5, 1.0), (0.75, 1.3333))
    assert 0 <= top and top + h <= 72 and 0 <= left and left + w <= 128
    assert 0.5 * 72 * 128 * 0.9 <= h * w <= 72 * 128
  assert transforms.center_crop_box(72, 128) == (0, 28, 72, 72)
  x = np.array([[[0, 128, 255]]], np.uint8)
  np.testing.assert_allclose(
    transforms.normalize(x)[0, 0], (np.array([0, 128, 255]) / 255 - MEAN) / STD, rtol=1e-5
  )
  assert transforms.normalize(x).dtype == np.float32
