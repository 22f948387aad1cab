"""Video data: decoding (PyAV), sources, samplers, per-clip transforms, Grain pipeline.

Entry points: ``default_data_config()`` (the ``config.data`` section) and
``make_loader(...)`` -> (grain dataset of host batches, LoaderInfo).
"""

from mvm_jax.data.decode import (
  VideoBlob,
  VideoCache,
  VideoDecodeError,
  decode_frames,
  decode_video,
  probe_video,
)
from mvm_jax.data.pipeline import (
  LoaderInfo,
  build_source,
  default_data_config,
  make_loader,
  make_sampler,
  validate_data_config,
)
from mvm_jax.data.sampling import (
  SAMPLERS,
  ClipPairSampler,
  ClipSampler,
  FramePairSampler,
  Sampler,
  SegmentSampler,
)
from mvm_jax.data.sources import (
  SourceError,
  VideoRecord,
  VideoSource,
  builtin_source,
  folder_source,
  list_source,
)

__all__ = [
  'SAMPLERS',
  'ClipPairSampler',
  'ClipSampler',
  'FramePairSampler',
  'LoaderInfo',
  'Sampler',
  'SegmentSampler',
  'SourceError',
  'VideoBlob',
  'VideoCache',
  'VideoDecodeError',
  'VideoRecord',
  'VideoSource',
  'build_source',
  'builtin_source',
  'decode_frames',
  'decode_video',
  'default_data_config',
  'folder_source',
  'list_source',
  'make_loader',
  'make_sampler',
  'probe_video',
  'validate_data_config',
]
