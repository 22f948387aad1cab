"""Tests for mvm_jax.data.randaugment: clip-consistent RandAugment (timm rand-m9-mstd0.5)."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from mvm_jax.data import default_data_config, make_loader, make_sampler, randaugment, validate_data_config
from mvm_jax.data.randaugment import AugOp


def textured_clip(t=3, size=24, seed=0):
  """uint8 [t, size, size, 3]: gradients plus noise, values in about [5, 240] (not full range)."""
  r = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  base = np.stack([15 + 225 * x, 30 + 200 * y, 20 + 150 * (x * y)], -1)
  frames = base[None] + r.uniform(-10, 10, (t, size, size, 3))
  return np.clip(frames, 0, 255).astype(np.uint8)


def small_config(**overrides):
  dc = default_data_config()
  dc.update(num_frames=2, sampling_rate=2, crop_size=16, repeated_sampling=1, num_workers=0, prefetch=0)
  dc.update(overrides)
  return dc


def test_shape_dtype_and_determinism():
  clip = textured_clip()
  for seed in range(5):
    a = randaugment.rand_augment(clip, np.random.default_rng(seed))
    b = randaugment.rand_augment(clip, np.random.default_rng(seed))
    assert a.shape == clip.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_zero_ops_is_identity_and_draws_nothing():
  clip = textured_clip()
  r = np.random.default_rng(3)
  out = randaugment.rand_augment(clip, r, num_ops=0)
  np.testing.assert_array_equal(out, clip)
  assert r.random() == np.random.default_rng(3).random()


def test_same_ops_on_every_frame():
  frame = textured_clip(t=1)[0]
  clip = np.stack([frame] * 4)
  changed = 0
  for seed in range(10):
    out = randaugment.rand_augment(clip, np.random.default_rng(seed), prob=1.0)
    for t in range(1, 4):
      np.testing.assert_array_equal(out[t], out[0])
    changed += not np.array_equal(out[0], frame)
  assert changed >= 8


def test_draw_ops_follows_the_recipe():
  counts = []
  for seed in range(200):
    ops = randaugment.draw_ops(np.random.default_rng(seed))
    counts.append(len(ops))
    for op in ops:
      assert op.name in randaugment.OPS
      if op.name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
        assert 0.1 <= op.arg <= 1.9
      if op.name == 'Rotate':
        assert 20 <= abs(op.arg) <= 30  # 9 +- a few std of 0.5, clipped at 10
  assert set(counts) == {0, 1, 2}
  assert 0.8 < np.mean(counts) < 1.2  # 2 ops x p = 0.5
  ops = randaugment.draw_ops(np.random.default_rng(0), magnitude=9, magnitude_std=0, prob=1.0, num_ops=50)
  assert len(ops) == 50
  for op in ops:
    assert op.arg == randaugment.op_arg(op.name, 9.0, negate=op.arg is not None and op.arg < 0)


def test_op_args_match_timm_mapping():
  assert randaugment.op_arg('Rotate', 9) == pytest.approx(27.0)
  assert randaugment.op_arg('Rotate', 9, negate=True) == pytest.approx(-27.0)
  assert randaugment.op_arg('Posterize', 9) == 3
  assert randaugment.op_arg('Solarize', 9) == 230
  assert randaugment.op_arg('SolarizeAdd', 9) == 99
  assert randaugment.op_arg('Contrast', 9) == pytest.approx(1.72)
  assert randaugment.op_arg('ShearX', 10) == pytest.approx(0.3)
  assert randaugment.op_arg('TranslateYRel', 10) == pytest.approx(0.45)
  assert randaugment.op_arg('Equalize', 9) is None


@pytest.mark.parametrize('name', randaugment.OPS)
def test_each_op_changes_a_textured_image(name):
  clip = textured_clip(t=2)
  op = AugOp(name, randaugment.op_arg(name, 9.0))
  out = randaugment.apply_ops(clip, [op])
  assert out.shape == clip.shape and out.dtype == np.uint8
  assert not np.array_equal(out, clip), name


def test_autocontrast_leaves_a_full_range_image_alone():
  clip = textured_clip(t=1)
  clip[0, 0, 0] = 0
  clip[0, -1, -1] = 255
  out = randaugment.apply_ops(clip, [AugOp('AutoContrast')])
  np.testing.assert_array_equal(out, clip)


def test_pointwise_ops_match_pil():
  clip = textured_clip(t=1)
  img = Image.fromarray(clip[0])
  expected = {
    AugOp('Invert'): ImageOps.invert(img),
    AugOp('Posterize', 3): ImageOps.posterize(img, 3),
    AugOp('Solarize', 100): ImageOps.solarize(img, 100),
  }
  for op, want in expected.items():
    np.testing.assert_array_equal(randaugment.apply_ops(clip, [op])[0], np.asarray(want), err_msg=op.name)
  # 0 bits (magnitude < 2.5): black, as older PIL's posterize (Pillow 13 rejects 0 bits).
  assert not randaugment.apply_ops(clip, [AugOp('Posterize', 0)]).any()
  add = randaugment.apply_ops(clip, [AugOp('SolarizeAdd', 99)])[0].astype(int)
  x = clip[0].astype(int)
  np.testing.assert_array_equal(add, np.where(x < 128, np.minimum(x + 99, 255), x))


def test_config_keys_validated_and_reach_the_train_sampler():
  validate_data_config(small_config(randaugment_ops=2))
  for key, bad in [
    ('randaugment_ops', -1),
    ('randaugment_magnitude', 11.0),
    ('randaugment_magnitude_std', -0.5),
  ]:
    with pytest.raises(ValueError, match=f'config.data.{key}'):
      validate_data_config(small_config(**{key: bad}))
  dc = small_config(randaugment_ops=2, randaugment_magnitude=7.0)
  s = make_sampler(dc, train=True)
  assert (s.randaugment_ops, s.randaugment_magnitude, s.randaugment_magnitude_std) == (2, 7.0, 0.5)


def loader_batches(dc, train, n=2):
  """The videos of the first n batches of 2 of the built-in 'train' split (tests/data/test_transforms.py too)."""
  ds, _ = make_loader(dc, split='train', global_batch_size=2, seed=0, train=train)
  it = iter(ds)
  try:
    return [next(it)['video'] for _ in range(n)]
  finally:
    it.close()


def test_loader_train_batches_differ_eval_batches_do_not():
  plain = loader_batches(small_config(), train=True)
  again = loader_batches(small_config(randaugment_ops=0), train=True)
  aug = loader_batches(small_config(randaugment_ops=2, randaugment_magnitude_std=0.0), train=True)
  for a, b in zip(plain, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(plain, aug))
  # Eval views never augment.
  for a, b in zip(
    loader_batches(small_config(), False, 1), loader_batches(small_config(randaugment_ops=2), False, 1)
  ):
    np.testing.assert_array_equal(a, b)
