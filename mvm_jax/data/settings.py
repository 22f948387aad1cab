"""The ``config.data`` section: defaults and validation, with no Grain, PyAV or TensorFlow import.

:mod:`mvm_jax.data.pipeline` re-exports these; the samplers and transforms check their names
against the tuples here.
"""

from __future__ import annotations

import ml_collections

# Names whose implementations live in sampling.py / transforms.py (checked there).
SAMPLER_NAMES = ('clip', 'segment', 'clip_pair', 'frame_pair')
FRAME_PAIR_MODES = ('distant', 'continuous')
SHORT_VIDEOS = ('loop', 'pad', 'skip')

SOURCES = ('builtin', 'csv', 'folder', 'tfds', 'tokens')
# The config.data keys that say where a source reads (strings; '' = unset).
SOURCE_KEYS = (
  'path',
  'root',
  'class_names_file',
  'tfds_name',
  'tfds_data_dir',
  'tfds_video_key',
  'tfds_label_key',
)


def default_data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` section with its defaults (MAE-ST Kinetics recipe)."""
  return ml_collections.ConfigDict(
    dict(
      source='builtin',  # one of SOURCES
      # 'csv': list file of 'path label' or 'path,label' lines, may contain
      # {split} (e.g. 'lists/{split}.csv'); 'folder': directory of class
      # sub-folders, split sub-folders (path/<split>/) used when present.
      path='',
      root='',  # 'csv': directory the listed paths are relative to; '': the list file's
      # Optional class names, one a line (or '<id> <name>' lines, e.g. UCF101's
      # classInd.txt); '': class_<id> ('csv'), folder names, tfds ClassLabel names.
      class_names_file='',
      tfds_name='',  # 'tfds': dataset name[/config][:version], e.g. packed by tools.pack_videos
      tfds_data_dir='',  # 'tfds': data directory; '': tfds's default (~/tensorflow_datasets)
      tfds_video_key='video',  # 'tfds': feature holding the encoded video file (bytes)
      tfds_label_key='label',  # 'tfds': feature holding the label; '': unlabeled
      num_frames=16,  # T
      sampling_rate=4,  # stride between sampled frames
      crop_size=224,  # S
      scale=(0.5, 1.0),  # random resized crop: area fraction range
      aspect_ratio=(0.75, 1.3333),  # random resized crop: w/h range (log-uniform)
      hflip=True,  # random horizontal flip (training)
      # RandAugment after the crop (training only; the same ops on every frame
      # of a view): ops per view (0: off; MAE-ST fine-tuning: 2), magnitude
      # (0 .. 10) and its Gaussian noise std, timm's rand-m9-mstd0.5.
      randaugment_ops=0,
      randaugment_magnitude=9.0,
      randaugment_magnitude_std=0.5,
      # Colour distortion per view (training; transforms.color_jitter): strength s of
      # brightness / contrast / saturation (±0.8 s) and hue (±0.2 s turn), then grayscale
      # with this probability. 0: off (MAE-ST: colour jitter hurts MAE; ViC-MAE Table 6:
      # an ablation; it stops a contrastive term from matching views by colour alone).
      color_jitter=0.0,
      grayscale_prob=0.0,
      repeated_sampling=4,  # k clips per decoded video (training; eval uses 1)
      # Per-record sampler (mvm_jax.data.SAMPLER_NAMES), video per sample:
      # 'clip' [T, S, S, 3] (T frames sampling_rate apart), 'segment' [T, S, S, 3]
      # (SSv2: one frame in each of T equal segments), 'clip_pair' [2, T, S, S, 3]
      # (VIMPAC), 'frame_pair' [2, 1, S, S, 3] (ViC-MAE).
      sampling='clip',
      # Choose frames at this frame rate (strides, gaps and distances count
      # frames at this rate); <= 0: the video's native rate.
      target_fps=0.0,
      clip_pair_max_distance_s=0.0,  # clip_pair: most seconds between the 2 starts; <= 0: any
      clip_pair_min_distance_s=0.0,  # clip_pair: fewest seconds between them (the span: no shared frame)
      frame_pair_mode='distant',  # frame_pair: 'distant' (2 different segments) or 'continuous'
      frame_pair_segments=2,  # frame_pair 'distant': n equal segments
      frame_pair_gap=8,  # frame_pair 'continuous': delta, frames between the two frames
      # Multi-view testing (eval; 'clip' / 'segment'): K clips evenly covering
      # the video x 1 (centre) or 3 (along the long side) crops: video
      # [K * spatial, T, S, S, 3] per sample; 1 x 1: the plain centre clip.
      eval_temporal_views=1,
      eval_spatial_views=1,
      num_workers=2,  # data worker processes per host; 0 = in-process
      prefetch=2,  # elements buffered per worker and batches ahead
      mean=(0.485, 0.456, 0.406),
      std=(0.229, 0.224, 0.225),
      # Frames whose short side exceeds this are downscaled by FFmpeg before
      # cropping (cheap, and the crop is shrunk anyway). -1: auto, 2 x crop_size;
      # 0: decode at native resolution.
      decode_short_side=-1,
      # Per worker process: keep this many decoded videos in memory (LRU) and
      # sample later clips from them; 0: off. For small data sets only: a
      # video takes frames x H x W x 3 bytes (all frames of a record's range,
      # at the decode size; a 100-frame clip at 128 x 228 px: 8.8 MB).
      cache_decoded_videos=0,
      # Stop with an error when more than this fraction of the (at least 8)
      # distinct records tried so far failed to decode; 1.0: never.
      max_bad_fraction=0.5,
      # A video (record range) shorter than a clip's span, (num_frames - 1) x
      # sampling_rate + 1 frames ('clip', 'clip_pair'): 'loop' the clip within it,
      # 'pad' (from its first frame, repeat its last), or 'skip' it. Counted
      # (data/short_videos) and logged once per run; each video at debug level.
      short_videos='loop',
    )
  )


def fail(key: str, message: str):
  """Raise the ValueError of an invalid ``config.data`` value: ``config.data.<key>: <message>``."""
  raise ValueError(f'config.data.{key}: {message}')


def validate_data_config(dc) -> None:
  """Raises ValueError naming the ``config.data`` key of an invalid value."""
  if dc.source not in SOURCES:
    fail('source', f'unknown source {dc.source!r}; known: {list(SOURCES)}')
  for key in SOURCE_KEYS:
    if not isinstance(dc[key], str):
      fail(key, f'must be a string, got {dc[key]!r}')
  if dc.source in ('csv', 'folder') and not dc.path:
    what = 'list file' if dc.source == 'csv' else 'directory'
    fail('path', f'source {dc.source!r} needs data.path (the {what})')
  if dc.source == 'tfds':
    for key in ('tfds_name', 'tfds_video_key'):
      if not dc[key]:
        fail(key, f"source 'tfds' needs data.{key}")
  if dc.source == 'tokens' and not dc.tfds_name:
    fail('tfds_name', "source 'tokens' needs data.tfds_name (written by mvm_jax.tools.extract_tokens)")
  for key in ('num_frames', 'sampling_rate', 'crop_size', 'repeated_sampling'):
    if not isinstance(dc[key], int) or dc[key] < 1:
      fail(key, f'must be a positive integer, got {dc[key]!r}')
  for key in ('num_workers', 'prefetch', 'cache_decoded_videos'):
    if not isinstance(dc[key], int) or dc[key] < 0:
      fail(key, f'must be a non-negative integer, got {dc[key]!r}')
  lo, hi = dc.scale
  if not 0 < lo <= hi <= 1:
    fail('scale', f'need 0 < lo <= hi <= 1, got {tuple(dc.scale)}')
  lo, hi = dc.aspect_ratio
  if not 0 < lo <= hi:
    fail('aspect_ratio', f'need 0 < lo <= hi, got {tuple(dc.aspect_ratio)}')
  for key in ('mean', 'std'):
    if len(dc[key]) != 3:
      fail(key, f'needs 3 values (RGB), got {tuple(dc[key])}')
  if min(dc.std) <= 0:
    fail('std', f'must be positive, got {tuple(dc.std)}')
  if not 0 <= dc.max_bad_fraction <= 1:
    fail('max_bad_fraction', f'must be in [0, 1], got {dc.max_bad_fraction!r}')
  if dc.get('short_videos', 'loop') not in SHORT_VIDEOS:
    fail('short_videos', f'{dc.short_videos!r} is not one of {SHORT_VIDEOS}')
  if dc.decode_short_side < -1:
    fail('decode_short_side', f'must be -1 (auto), 0 (native) or positive, got {dc.decode_short_side}')
  if not isinstance(dc.randaugment_ops, int) or dc.randaugment_ops < 0:
    fail('randaugment_ops', f'must be a non-negative integer (0: off), got {dc.randaugment_ops!r}')
  for key, lo, hi in (('randaugment_magnitude', 0, 10), ('randaugment_magnitude_std', 0, float('inf'))):
    if isinstance(dc[key], bool) or not isinstance(dc[key], (int, float)) or not lo <= dc[key] <= hi:
      fail(key, f'must be a number in [{lo}, {hi}], got {dc[key]!r}')
  for key, hi in (('color_jitter', float('inf')), ('grayscale_prob', 1.0)):
    value = dc.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
      fail(key, f'must be a number in [0, {hi}], got {value!r}')
  _validate_sampling(dc)


def _validate_sampling(dc) -> None:
  """The sampler keys of ``validate_data_config``."""
  if dc.sampling not in SAMPLER_NAMES:
    fail('sampling', f'unknown sampling {dc.sampling!r}; known: {list(SAMPLER_NAMES)}')
  for key in ('target_fps', 'clip_pair_max_distance_s', 'clip_pair_min_distance_s'):
    if isinstance(dc[key], bool) or not isinstance(dc[key], (int, float)):
      fail(key, f'must be a number, got {dc[key]!r}')
  if dc.clip_pair_min_distance_s < 0 or 0 < dc.clip_pair_max_distance_s < dc.clip_pair_min_distance_s:
    fail(
      'clip_pair_min_distance_s',
      f'must be >= 0 and at most clip_pair_max_distance_s ({dc.clip_pair_max_distance_s}), '
      f'got {dc.clip_pair_min_distance_s!r}',
    )
  if dc.frame_pair_mode not in FRAME_PAIR_MODES:
    fail('frame_pair_mode', f'unknown mode {dc.frame_pair_mode!r}; known: {list(FRAME_PAIR_MODES)}')
  if not isinstance(dc.frame_pair_segments, int) or dc.frame_pair_segments < 2:
    fail('frame_pair_segments', f'must be an integer >= 2, got {dc.frame_pair_segments!r}')
  if not isinstance(dc.frame_pair_gap, int) or dc.frame_pair_gap < 0:
    fail('frame_pair_gap', f'must be a non-negative integer, got {dc.frame_pair_gap!r}')
  if not isinstance(dc.eval_temporal_views, int) or dc.eval_temporal_views < 1:
    fail('eval_temporal_views', f'must be a positive integer, got {dc.eval_temporal_views!r}')
  if dc.eval_spatial_views not in (1, 3):
    fail('eval_spatial_views', f'must be 1 (centre) or 3, got {dc.eval_spatial_views!r}')
  if dc.sampling not in ('clip', 'segment'):
    for key in ('eval_temporal_views', 'eval_spatial_views'):
      if dc[key] > 1:
        fail(key, f'multi-view testing needs data.sampling "clip" or "segment", not {dc.sampling!r}')
