"""RandAugment for video clips, the same ops and magnitudes on every frame.

MAE-ST fine-tunes with "RandAug (9, 0.5)", timm's ``rand-m9-mstd0.5``: per
clip, ``num_ops = 2`` ops drawn uniformly (with replacement) from :data:`OPS`,
each applied with probability ``prob = 0.5``, at a magnitude drawn from
``N(magnitude, magnitude_std)`` and clipped to ``[0, 10]``. Everything random
(the ops, whether each applies, its magnitude, the sign of a signed op) is
drawn ONCE per clip, then every frame gets the same ops with the same
arguments, so motion stays coherent. Image-dependent ops (AutoContrast,
Equalize, and Contrast's grey mean) use each frame's own statistics, as
PIL on each frame does (and as MAE-ST / SlowFast do).

Magnitude ``m`` in ``[0, 10]`` maps to op arguments as timm's default
(non-"increasing") transforms do:

=============  =========================================================
op             argument at magnitude m
=============  =========================================================
AutoContrast   none (per-channel stretch to [0, 255])
Equalize       none (per-channel histogram equalization)
Invert         none
Rotate         +-(m / 10) * 30 degrees (random sign)
Posterize      keep int((m / 10) * 4) most significant bits (0 .. 4)
Solarize       invert pixels >= min(256, int((m / 10) * 256))
SolarizeAdd    add min(128, int((m / 10) * 110)) to pixels < 128 (clip 255)
Color          enhance factor (m / 10) * 1.8 + 0.1 (1: unchanged)
Contrast       enhance factor (m / 10) * 1.8 + 0.1
Brightness     enhance factor (m / 10) * 1.8 + 0.1
Sharpness      enhance factor (m / 10) * 1.8 + 0.1
ShearX/Y       +-(m / 10) * 0.3 shear (random sign)
TranslateX/YRel  +-(m / 10) * 0.45 of the width / height (random sign)
=============  =========================================================

Geometric ops resample bicubically (MAE-ST's ``AUG.INTERPOLATION``) and fill
uncovered pixels with grey (128, 128, 128), timm's default fill.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# timm's default RandAugment op list (``_RAND_TRANSFORMS``), in its order.
OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'SolarizeAdd',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
)
MAX_MAGNITUDE = 10.0  # magnitudes are clipped to [0, MAX_MAGNITUDE]
FILL = (128, 128, 128)
RESAMPLE = Image.Resampling.BICUBIC

_SIGNED = frozenset({'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'})
_ENHANCE = {
  'Color': ImageEnhance.Color,
  'Contrast': ImageEnhance.Contrast,
  'Brightness': ImageEnhance.Brightness,
  'Sharpness': ImageEnhance.Sharpness,
}


@dataclasses.dataclass(frozen=True)
class AugOp:
  """One drawn op: ``name`` (in :data:`OPS`) with its argument (None: no argument).

  ``arg`` is degrees (Rotate), bits kept (Posterize), a threshold (Solarize),
  an addend (SolarizeAdd), an enhance factor, a shear factor or a fraction of
  the image size (TranslateXRel / TranslateYRel).
  """

  name: str
  arg: float | int | None = None


def op_arg(name: str, magnitude: float, negate: bool = False) -> float | int | None:
  """The argument of op ``name`` at ``magnitude`` in [0, 10] (table in the module doc).

  ``negate`` flips the sign of a signed op (Rotate, Shear*, Translate*Rel).
  """
  if name not in OPS:
    raise ValueError(f'unknown RandAugment op {name!r}; known: {list(OPS)}')
  level = magnitude / MAX_MAGNITUDE
  if name in ('AutoContrast', 'Equalize', 'Invert'):
    return None
  if name == 'Posterize':
    return int(level * 4)
  if name == 'Solarize':
    return min(256, int(level * 256))
  if name == 'SolarizeAdd':
    return min(128, int(level * 110))
  if name in _ENHANCE:
    return level * 1.8 + 0.1
  scale = {'Rotate': 30.0, 'ShearX': 0.3, 'ShearY': 0.3}.get(name, 0.45)
  return -level * scale if negate else level * scale


def draw_ops(
  rng: np.random.Generator,
  *,
  num_ops: int = 2,
  magnitude: float = 9.0,
  magnitude_std: float = 0.5,
  prob: float = 0.5,
) -> list[AugOp]:
  """Draws one clip's ops (the ops that will apply, in order; maybe none).

  ``num_ops`` ops uniform over :data:`OPS` with replacement; then, op by op,
  one draw decides whether it applies (probability ``prob``), and if so one
  for its magnitude (``N(magnitude, magnitude_std)``; ``magnitude_std = inf``:
  uniform in ``[0, magnitude]``; 0: exactly ``magnitude``), clipped to
  ``[0, 10]``, and for a signed op one for its sign (as timm, per image).
  ``num_ops = 0`` draws nothing from ``rng``.
  """
  if num_ops <= 0:
    return []
  ops = []
  for i in rng.integers(0, len(OPS), size=num_ops):
    name = OPS[int(i)]
    if prob < 1.0 and rng.random() > prob:
      continue
    m = float(magnitude)
    if math.isinf(magnitude_std):
      m = float(rng.uniform(0.0, magnitude))
    elif magnitude_std > 0:
      m = float(rng.normal(magnitude, magnitude_std))
    m = min(max(m, 0.0), MAX_MAGNITUDE)
    negate = bool(rng.random() > 0.5) if name in _SIGNED else False
    ops.append(AugOp(name, op_arg(name, m, negate)))
  return ops


def _lut(op: AugOp) -> list[int] | None:
  """The 256-entry lookup table of a pointwise op (None: not pointwise)."""
  x = np.arange(256)
  if op.name == 'Invert':
    y = 255 - x
  elif op.name == 'Posterize':
    if op.arg >= 8:
      return None  # the identity: skip the lookup
    y = x & (~((1 << (8 - op.arg)) - 1) & 0xFF)
  elif op.name == 'Solarize':
    y = np.where(x < op.arg, x, 255 - x)
  elif op.name == 'SolarizeAdd':
    y = np.where(x < 128, np.minimum(255, x + op.arg), x)
  else:
    return None
  return y.astype(np.int64).tolist() * 3  # the same table for R, G and B


def _apply(img: Image.Image, op: AugOp, lut: list[int] | None) -> Image.Image:
  """One op on one RGB PIL image."""
  name, arg = op.name, op.arg
  if lut is not None:
    return img.point(lut)
  if name == 'AutoContrast':
    return ImageOps.autocontrast(img)
  if name == 'Equalize':
    return ImageOps.equalize(img)
  if name == 'Posterize':  # arg >= 8: unchanged
    return img
  if name in _ENHANCE:
    return _ENHANCE[name](img).enhance(arg)
  if name == 'Rotate':
    return img.rotate(arg, resample=RESAMPLE, fillcolor=FILL)
  # Affine ops: PIL maps each output pixel (x, y) to input (a x + b y + c, d x + e y + f).
  w, h = img.size
  matrix = {
    'ShearX': (1, arg, 0, 0, 1, 0),
    'ShearY': (1, 0, 0, arg, 1, 0),
    'TranslateXRel': (1, 0, arg * w, 0, 1, 0),
    'TranslateYRel': (1, 0, 0, 0, 1, arg * h),
  }[name]
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=RESAMPLE, fillcolor=FILL)


def apply_ops(frames: np.ndarray, ops: Sequence[AugOp]) -> np.ndarray:
  """Applies ``ops`` in order to every frame.

  Args:
    frames: uint8 [T, H, W, 3].
    ops: from :func:`draw_ops` (or built by hand).

  Returns:
    uint8 [T, H, W, 3]; ``frames`` itself when ``ops`` is empty.
  """
  if not ops:
    return frames
  luts = [_lut(op) for op in ops]
  out = np.empty(frames.shape, np.uint8)
  for t, frame in enumerate(frames):
    img = Image.fromarray(np.ascontiguousarray(frame))
    for op, lut in zip(ops, luts):
      img = _apply(img, op, lut)
    out[t] = np.asarray(img)
  return out


def rand_augment(
  frames: np.ndarray,
  rng: np.random.Generator,
  *,
  num_ops: int = 2,
  magnitude: float = 9.0,
  magnitude_std: float = 0.5,
  prob: float = 0.5,
) -> np.ndarray:
  """RandAugment on a clip: ops drawn once (:func:`draw_ops`), applied to every frame.

  Args:
    frames: uint8 [T, H, W, 3].
    rng: the clip's randomness (``num_ops = 0`` draws nothing).
    num_ops / magnitude / magnitude_std / prob: timm's n / m / mstd / p
      (``rand-m9-mstd0.5``: 2, 9, 0.5, 0.5).

  Returns:
    uint8 [T, H, W, 3] (``frames`` itself when no op applies).
  """
  ops = draw_ops(rng, num_ops=num_ops, magnitude=magnitude, magnitude_std=magnitude_std, prob=prob)
  return apply_ops(frames, ops)
