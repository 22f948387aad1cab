"""The one entry to the data: ``make_loader`` (and ``build_source``) for every source, train and eval.

``config.data.source`` picks the pipeline: 'tokens' reads pre-extracted VQ tokens
(:func:`mvm_jax.data.tokens.make_token_loader`), every other source decodes videos
(:func:`mvm_jax.data.pipeline.make_video_loader`). Both read a
:class:`~mvm_jax.data.source.Source`, share the Grain graph of :mod:`mvm_jax.data.loader_base`
and return a :class:`~mvm_jax.data.loader_base.LoaderInfo`. By default a loader reads this
process's shard of the records (``jax.process_index()`` of ``jax.process_count()``).
"""

from __future__ import annotations

import grain

from mvm_jax.data import pipeline
from mvm_jax.data.loader_base import LoaderInfo
from mvm_jax.data.source import Source


def build_source(data_config, split: str) -> Source:
  """The source ``data_config.source`` names, for ``split``: a
  :class:`~mvm_jax.data.tokens.TokenSource` for 'tokens', else a
  :class:`~mvm_jax.data.sources.VideoSource` (:func:`mvm_jax.data.pipeline.build_video_source`).

  Raises:
    SourceError (a ValueError): a setting is wrong, or the split does not open; names the key.
  """
  if data_config.source == 'tokens':
    from mvm_jax.data import tokens  # here: importing tensorflow_datasets takes ~1 s

    return tokens.TokenSource(data_config.tfds_name, split, data_dir=data_config.tfds_data_dir or None)
  return pipeline.build_video_source(data_config, split)


def make_loader(
  data_config,
  *,
  split: str,
  global_batch_size: int,
  seed: int,
  train: bool = True,
  shard_index: int | None = None,
  shard_count: int | None = None,
  source: Source | None = None,
) -> tuple[grain.IterDataset, LoaderInfo]:
  """Builds the host-local input pipeline ``data_config`` names, for training or evaluation.

  Args:
    data_config: the ``config.data`` ConfigDict (see default_data_config).
    split: split of the source ('train' / 'test' for builtin).
    global_batch_size: samples per step over all shards; this shard yields
      ``global_batch_size // shard_count``.
    seed: data seed in [0, 2**32); same seed -> same batches, whatever
      ``num_workers``.
    train: True: shuffled, reshuffled each epoch, endless, random crops (video) or
      positions, ``repeated_sampling`` samples per record, last partial batch dropped.
      False: one pass in record order, centre clip (and crop), 1 sample per record,
      last batch may be smaller.
    shard_index / shard_count: the shard to read (shards read disjoint records); None:
      this process's, ``jax.process_index()`` / ``jax.process_count()`` (call after
      ``jax.distributed.initialize`` on several hosts).
    source: read this source instead of the one ``data_config.source`` names (a
      :class:`~mvm_jax.data.tokens.TokenSource` for 'tokens', else a
      :class:`~mvm_jax.data.sources.VideoSource`).

  Returns:
    (dataset, info). ``iter(dataset)`` is a ``grain.DatasetIterator`` yielding host batches,
    ``{'video': uint8 [b, T, S, S, 3], 'label': i32 [b], 'index': i32 [b]}`` (video
    sources, :mod:`mvm_jax.data.pipeline`) or ``{'tokens': i32 [b, (2,) T, h, w], 'label',
    'index'}`` ('tokens', :mod:`mvm_jax.data.tokens`); ``index`` is the record's index in
    the split. Its ``get_state()`` / ``set_state()`` (JSON-serializable dicts) checkpoint
    and resume it exactly, for an iterator built with the same arguments and data config.
    Close iterators with ``it.close()`` to stop worker processes promptly; with
    ``num_workers > 0`` the main module must be import-safe (``if __name__ ==
    '__main__':``) because workers are spawned.

  Raises:
    ValueError / SourceError: naming the ``config.data`` key at fault.
  """
  if shard_index is None or shard_count is None:
    import jax  # here: the data modules import no JAX

    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  kwargs = dict(
    split=split,
    global_batch_size=global_batch_size,
    seed=seed,
    shard_index=shard_index,
    shard_count=shard_count,
    train=train,
    source=source,
  )
  if data_config.source == 'tokens':
    from mvm_jax.data import tokens  # here: importing tensorflow_datasets takes ~1 s

    return tokens.make_token_loader(data_config, **kwargs)
  return pipeline.make_video_loader(data_config, **kwargs)
