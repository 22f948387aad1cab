"""Video data (and pre-extracted tokens): decoding (PyAV), sources, samplers, per-clip transforms, Grain pipeline.

Entry points: ``default_data_config()`` (the ``config.data`` section) and, for every source
(videos or pre-extracted tokens), train and eval, ``make_loader(...)`` -> (grain dataset of host
batches, LoaderInfo) and ``build_source(...)`` -> a ``Source`` (:mod:`mvm_jax.data.loader`).
"""

import importlib

# Names load their module on first use (PEP 562), so that `mvm_jax.data.settings` (the config
# section) imports without Grain or PyAV.
_MODULE_OF = {
  'VideoBlob': 'decode',
  'VideoCache': 'decode',
  'VideoDecodeError': 'decode',
  'decode_frames': 'decode',
  'decode_video': 'decode',
  'probe_video': 'decode',
  'LoaderInfo': 'loader_base',
  'build_source': 'loader',
  'default_data_config': 'settings',
  'make_loader': 'loader',
  'make_sampler': 'pipeline',
  'validate_data_config': 'settings',
  'SAMPLERS': 'sampling',
  'ClipPairSampler': 'sampling',
  'ClipSampler': 'sampling',
  'FramePairSampler': 'sampling',
  'Sampler': 'sampling',
  'SegmentSampler': 'sampling',
  'Record': 'source',
  'Source': 'source',
  'SourceError': 'sources',
  'TokenRecord': 'tokens',
  'TokenSource': 'tokens',
  'VideoRecord': 'sources',
  'VideoSource': 'sources',
  'builtin_source': 'sources',
  'folder_source': 'sources',
  'list_source': 'sources',
}


def __getattr__(name):
  if name in _MODULE_OF:
    return getattr(importlib.import_module(f'mvm_jax.data.{_MODULE_OF[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
  'SAMPLERS',
  'ClipPairSampler',
  'ClipSampler',
  'FramePairSampler',
  'LoaderInfo',
  'Sampler',
  'Record',
  'SegmentSampler',
  'Source',
  'SourceError',
  'TokenRecord',
  'TokenSource',
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
