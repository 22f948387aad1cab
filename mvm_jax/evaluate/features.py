"""Pooled features of a frozen encoder over a split, extracted once and cached.

Passes over a split (all hosts read disjoint shards; every host ends with
all features):

- view 0: one pass in record order, centre clip and centre crop
  (``make_loader(..., train=False)``);
- views 1 .. train_views-1 (train split only): passes with the training
  augmentation (random clip, resized crop, flip), one clip per record each.

With multi-view testing (``data.eval_temporal_views`` / ``eval_spatial_views``)
the eval pass gives V views per record: V rows with the record's index (the
evaluators average their scores per record).

Pooling: ``'mean'``: the mean of the patch tokens, then the encoder's final
LayerNorm (as mae_st's classifier and our fine-tuning view; the MAE family's
default); ``'cls'``: the [CLS] token after the final LayerNorm; ``'tokens'``
(:data:`TOKENS`, the attentive probe): no pooling, all L patch tokens after
the final LayerNorm, [L, D] per clip in ``token_dtype`` (float16 or float32).

The cache ``{workdir}/features_{split}.npz`` (``tokens_{split}.npz`` for
``'tokens'``) holds the arrays of :class:`Features` and a ``meta`` string
(init_from, checkpoint step, pool, views, model and data config; and
token_dtype for ``'tokens'``); it is reused when its meta matches.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mvm_jax import pixels
from mvm_jax.config_schema import ConfigError
from mvm_jax import data as data_lib
from mvm_jax.evaluate.frozen import FrozenEncoder
from mvm_jax.progress import Progress
from mvm_jax import sharding

POOLS = ('mean', 'cls')
# The unpooled mode of make_extract_fn / extract: every patch token, [N, L, D] (not one of
# POOLS: the linear probe and k-NN need pooled features).
TOKENS = 'tokens'
TOKEN_DTYPES = ('float16', 'float32')
# Data keys that change how fast features come, not what they are.
RUNTIME_DATA_KEYS = ('num_workers', 'prefetch', 'cache_decoded_videos', 'max_bad_fraction')
LOG_EVERY_S = 30.0


@dataclasses.dataclass
class Features:
  """Features of one split, sorted by (view, index); one row per clip.

  Attributes:
    features: float32 [N, D]; with pool 'tokens' (:data:`TokenFeatures`),
      float16 or float32 [N, L, D].
    labels: int32 [N].
    index: int32 [N], record index in the split's source (repeated for the
      eval views of a record with multi-view testing).
    view: int32 [N], 0 = eval pass (centre crop), v >= 1 = v-th augmented pass.
    class_names: the label space (num_classes = len(class_names)).
  """

  features: np.ndarray
  labels: np.ndarray
  index: np.ndarray
  view: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return self.features.shape[0]


# Features of pool 'tokens': ``.features`` is [N, L, D], the patch tokens of each clip.
TokenFeatures = Features


def validate_section(section, name: str) -> None:
  """Check the feature keys of ``config.<name>``: pool, train_views,
  extract_batch_size, train_split, test_split ('' = the source's, see :func:`default_split`)."""
  if section.pool not in POOLS:
    raise ConfigError(f'config.{name}.pool: {section.pool!r} is not one of {POOLS}')
  for key in ('train_views', 'extract_batch_size'):
    if not isinstance(section[key], int) or section[key] < 1:
      raise ConfigError(f'config.{name}.{key}: must be a positive integer, got {section[key]!r}')
  for key in SPLIT_KEYS:
    if not isinstance(section[key], str):
      raise ConfigError(f'config.{name}.{key}: must name a split of config.data.source, got {section[key]!r}')


# An evaluation section's split keys and their roles; '' = the source's split for that role.
SPLIT_KEYS = {'train_split': 'train', 'test_split': 'test'}


def default_split(data_config, role: str) -> str:
  """The split an empty split key means, for role 'train' or 'test', by ``data_config.source``:
  builtin: 'train_windows' / 'test_windows' (its labelled evaluation splits); otherwise 'train',
  and 'test', or 'val' when a csv list ``{split}`` path or a folder has 'val' but no 'test'."""
  if data_config.source == 'builtin':
    return f'{role}_windows'
  if role == 'train':
    return 'train'
  path = os.path.expanduser(data_config.path)

  def exists(split: str) -> bool:
    if data_config.source == 'csv':
      return '{split}' in path and os.path.isfile(path.replace('{split}', split))
    return data_config.source == 'folder' and os.path.isdir(os.path.join(path, split))

  return 'val' if exists('val') and not exists('test') else 'test'


def resolve_splits(config, name: str) -> None:
  """Fill the empty split keys of ``config.<name>`` (:data:`SPLIT_KEYS`) from the source
  (:func:`default_split`) and check that each split opens, before anything compiles.

  Raises:
    ConfigError: one line naming the key, the split and why it does not open.
  """
  section, data = config[name], config.data
  if data.source == 'csv' and '{split}' not in data.path:
    logging.warning(
      'config.data.path=%r has no {split}: every split (config.%s.train_split, test_split) reads this '
      'one list, so the test clips are the train clips',
      data.path,
      name,
    )
  for key, role in SPLIT_KEYS.items():
    split = section[key] or default_split(data, role)
    if data.source != 'tokens':
      try:
        data_lib.build_source(data, split)
      except (ValueError, FileNotFoundError) as e:  # sources.SourceError names the data key
        how = '' if section[key] else f" (empty: the {data.source} source's {role} split)"
        raise ConfigError(f'config.{name}.{key}={split!r}{how}: {e}') from None
    if not section[key]:
      logging.info("config.%s.%s: %r (the %s source's %s split).", name, key, split, data.source, role)
    section[key] = split


def check_batch_size(config, batch_size: int, key: str) -> None:
  """The extraction batch must split evenly over the processes and the data-parallel
  devices of ``config.mesh`` (checked before anything compiles)."""
  dp = sharding.data_parallel_size(sharding.make_mesh(config.mesh))
  if batch_size % dp or batch_size % jax.process_count():
    raise ConfigError(
      f'config.{key}={batch_size} is not a multiple of the {dp} data-parallel devices of '
      f'config.mesh.shape={tuple(config.mesh.shape)} and the {jax.process_count()} process(es)'
    )


def cache_meta(
  frozen: FrozenEncoder, split: str, pool: str, views: int, token_dtype: str = 'float16'
) -> dict:
  """What the cached features depend on; a cache with other meta is re-extracted.
  ``token_dtype`` is part of it for pool 'tokens' only."""
  c = frozen.config
  data = {k: v for k, v in c.data.to_dict().items() if k not in RUNTIME_DATA_KEYS}
  extra = {'token_dtype': token_dtype} if pool == TOKENS else {}
  return json.loads(
    json.dumps(
      dict(
        split=split,
        init_from=frozen.init_from,
        step=frozen.step,
        seed=c.seed,
        pool=pool,
        views=views,
        model=c.model.to_dict(),
        data=data,
        **extra,
      ),
      default=list,
    )
  )


def make_extract_fn(frozen: FrozenEncoder, pool: str, token_dtype: str = 'float16'):
  """Jitted (params, batch) → {'features': f32 [B, V, D], and the batch's other
  entries}. ``batch['video']``: [B, T, H, W, 3], or [B, V, T, H, W, 3] with V
  views per sample (multi-view testing); V = 1 for the former. The batch is
  split over the data axes, the outputs replicated on every device (so every
  host gets all features). Pool 'tokens': 'features' is [B, V, L, D] in
  ``token_dtype``, the L patch tokens after the final LayerNorm ([CLS] dropped)."""
  if pool not in (*POOLS, TOKENS):
    raise ValueError(f'pool must be one of {(*POOLS, TOKENS)}, got {pool!r}')
  if pool == TOKENS and token_dtype not in TOKEN_DTYPES:
    raise ValueError(f'token_dtype must be one of {TOKEN_DTYPES}, got {token_dtype!r}')
  encoder = frozen.encoder
  mean, std = tuple(frozen.config.data.mean), tuple(frozen.config.data.std)

  def extract(params, batch):
    video = pixels.normalize(batch['video'], mean, std)  # uint8 from the loader: normalised here
    clips = video.reshape(-1, *video.shape[-4:])  # [B·V, T, H, W, 3]
    if pool == TOKENS:
      tokens = encoder.apply({'params': params}, clips)  # [B·V, prefix + L, D]
      tokens = tokens[:, getattr(encoder, 'prefix_tokens', 1) :].astype(token_dtype)  # [B·V, L, D]
      features = tokens.reshape(video.shape[0], -1, *tokens.shape[1:])
      return {'features': features, **{k: v for k, v in batch.items() if k != 'video'}}
    if pool == 'mean':
      pooled = encoder.apply({'params': params}, clips, pool='mean')
    else:
      pooled = encoder.apply({'params': params}, clips)[:, 0]
    features = pooled.astype(jnp.float32).reshape(video.shape[0], -1, pooled.shape[-1])
    return {'features': features, **{k: v for k, v in batch.items() if k != 'video'}}

  mesh = frozen.mesh
  return jax.jit(
    extract,
    in_shardings=(frozen.param_shardings, sharding.batch_sharding(mesh)),
    out_shardings=sharding.replicated(mesh),
  )


def _padded(host_batch: dict | None, size: int, num_valid: int, views: np.ndarray, sample_shape) -> dict:
  """Host batch padded to ``size`` samples (of video shape ``sample_shape``);
  ``valid`` marks its first ``num_valid``; ``view`` [size] the pass number of each sample."""
  if host_batch is None:
    host_batch = {
      'video': np.zeros((0, *sample_shape), np.uint8),
      'label': np.zeros((0,), np.int32),
      'index': np.zeros((0,), np.int32),
    }
  n = host_batch['video'].shape[0]
  out = {}
  for key in ('video', 'label', 'index'):
    value = np.asarray(host_batch[key])
    out[key] = np.concatenate([value, np.zeros((size - n, *value.shape[1:]), value.dtype)])
  out['valid'] = np.arange(size) < min(n, num_valid)
  out['view'] = views.astype(np.int32)
  return out


def _run_pass(frozen, extract_fn, loader, *, steps, host_batch_size, num_valid, progress, view_of):
  """Feed ``steps`` host batches (padded; all-padding after the loader ends),
  so every host runs the same number of steps. ``view_of(positions)``: pass
  number of the host's n-th sample. Returns all hosts' valid outputs (numpy)."""
  c = frozen.config
  sample_shape = (c.data.num_frames, c.data.crop_size, c.data.crop_size, 3)  # until a batch shows it
  batch_sharding = sharding.batch_sharding(frozen.mesh)
  iterator = iter(loader)
  outputs, pending, fed = [], None, 0
  try:
    for _ in range(steps):
      host_batch = next(iterator, None)
      if host_batch is not None:
        sample_shape = host_batch['video'].shape[1:]
      views = view_of(fed + np.arange(host_batch_size))
      batch = _padded(host_batch, host_batch_size, num_valid - fed, views, sample_shape)
      fed += host_batch_size
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}
      with sharding.sharding_context(frozen.mesh, frozen.config.mesh.rules):
        result = extract_fn(frozen.params, batch)
      if pending is not None:  # fetch the previous batch while this one runs
        outputs.append(_fetch(pending, progress))
      pending = result
    if pending is not None:
      outputs.append(_fetch(pending, progress))
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def _fetch(result, progress) -> dict:
  """Valid rows of an output on the host, one row per (sample, view)."""
  host = jax.device_get(result)
  keep = host.pop('valid').astype(bool)
  features = np.asarray(host.pop('features'))[keep]  # [n, V, D] (tokens: [n, V, L, D])
  out = {k: np.repeat(np.asarray(v)[keep], features.shape[1]) for k, v in host.items()}
  out['features'] = features.reshape(-1, *features.shape[2:])
  progress.update(int(keep.sum()))
  return out


def extract(
  frozen: FrozenEncoder,
  split: str,
  *,
  pool: str,
  views: int,
  batch_size: int,
  extract_fn=None,
  token_dtype: str = 'float16',
  make_loader=None,
) -> Features:
  """Features of ``split``: the centre-crop pass, plus ``views - 1`` augmented passes.

  Args:
    frozen: the encoder.
    split: the source's split ('train' / 'test').
    pool: 'mean' (patch tokens), 'cls' or 'tokens' (unpooled, [N, L, D]).
    views: passes over the split, >= 1.
    batch_size: global extraction batch; a multiple of the data-parallel
      device count and of the process count.
    extract_fn: ``make_extract_fn(frozen, pool, token_dtype)``, when already compiled.
    token_dtype: 'float16' or 'float32', the dtype of pool 'tokens'.
    make_loader: stands in for :func:`mvm_jax.data.make_loader` (same arguments and
      results; e.g. one that replays the clips of an earlier pass).
  """
  c = frozen.config
  shard_index, shard_count = jax.process_index(), jax.process_count()
  host_batch_size = batch_size // shard_count
  extract_fn = extract_fn or make_extract_fn(frozen, pool, token_dtype)
  make_loader = make_loader or data_lib.make_loader
  loader, info = make_loader(
    c.data,
    split=split,
    global_batch_size=batch_size,
    seed=c.seed,
    shard_index=shard_index,
    shard_count=shard_count,
    train=False,
  )
  infos = [info]
  # Rates after the first batch (it compiles).
  progress = Progress(
    f'features {split}', info.num_records * views, unit='clips', every_s=LOG_EVERY_S, warmup_updates=1
  )
  per_host = math.ceil(info.num_records / shard_count)  # the largest shard
  passes = [
    _run_pass(
      frozen,
      extract_fn,
      loader,
      steps=math.ceil(per_host / host_batch_size),
      host_batch_size=host_batch_size,
      num_valid=per_host,
      progress=progress,
      view_of=np.zeros_like,
    )
  ]
  if views > 1:
    data = copy.deepcopy(c.data)
    data.repeated_sampling = 1
    loader, info = make_loader(
      data,
      split=split,
      global_batch_size=batch_size,
      seed=c.seed + 1,
      shard_index=shard_index,
      shard_count=shard_count,
      train=True,
    )
    infos.append(info)
    # Shuffled epochs, each record once per epoch: views - 1 epochs of the shard.
    shard_records = info.shard_records
    per_host = shard_records * (views - 1)
    passes.append(
      _run_pass(
        frozen,
        extract_fn,
        loader,
        steps=math.ceil(per_host / host_batch_size),
        host_batch_size=host_batch_size,
        num_valid=per_host,
        progress=progress,
        view_of=lambda positions: 1 + positions // shard_records,
      )
    )
  out = {k: np.concatenate([p[k] for p in passes]) for k in passes[0]}
  order = np.lexsort((out['index'], out['view']))  # stable: eval views stay in order
  features = Features(
    features=out['features'][order].astype(token_dtype if pool == TOKENS else np.float32),
    labels=out['label'][order].astype(np.int32),
    index=out['index'][order].astype(np.int32),
    view=out['view'][order].astype(np.int32),
    class_names=tuple(info.class_names),
  )
  logging.info(
    '%s; %d features × %s; %d skipped.',
    progress.summary(rate_note=' after the first batch'),
    len(features),
    '×'.join(map(str, features.features.shape[1:])),
    sum(i.skipped.count for i in infos),
  )
  return features


def cache_path(workdir: str, split: str, pool: str = 'mean') -> str:
  """``features_{split}.npz``; ``tokens_{split}.npz`` for pool 'tokens' (so the pooled
  features of the linear probe and k-NN in the same workdir stay cached)."""
  return os.path.join(workdir, f'{"tokens" if pool == TOKENS else "features"}_{split}.npz')


def save(path: str, features: Features, meta: dict) -> None:
  tmp = path + '.tmp.npz'
  np.savez(
    tmp,
    features=features.features,
    labels=features.labels,
    index=features.index,
    view=features.view,
    class_names=np.asarray(features.class_names, dtype=str),
    meta=np.asarray(json.dumps(meta, sort_keys=True)),
  )
  os.replace(tmp, path)


def load_cached(path: str, meta: dict) -> Features | None:
  """The cached features at ``path`` if they were made with ``meta``, else None."""
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    cached = json.loads(str(f['meta']))
    if cached != meta:
      differ = sorted(k for k in set(cached) | set(meta) if cached.get(k) != meta.get(k))
      logging.info('Cached %s was made with other %s: extracting again.', path, ', '.join(differ))
      return None
    return Features(
      features=f['features'],
      labels=f['labels'],
      index=f['index'],
      view=f['view'],
      class_names=tuple(str(n) for n in f['class_names']),
    )


def load_or_extract(
  frozen: FrozenEncoder,
  workdir: str,
  split: str,
  *,
  pool: str,
  views: int,
  batch_size: int,
  extract_fn=None,
  token_dtype: str = 'float16',
) -> Features:
  """Features of ``split`` from ``workdir``'s cache if it matches, else extracted and cached."""
  path = cache_path(workdir, split, pool)
  meta = cache_meta(frozen, split, pool, views, token_dtype)
  cached = load_cached(path, meta)
  if cached is not None:
    logging.info('Reusing cached features %s (%d clips, step %d).', path, len(cached), frozen.step)
    return cached
  logging.info('Extracting %s features (%d view(s), pool=%s) into %s.', split, views, pool, path)
  features = extract(
    frozen,
    split,
    pool=pool,
    views=views,
    batch_size=batch_size,
    extract_fn=extract_fn,
    token_dtype=token_dtype,
  )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    save(path, features, meta)
  return features


def train_and_test(frozen: FrozenEncoder, workdir: str, section) -> tuple[Features, Features]:
  """(train, test) features per an evaluator's config section: ``train_views``
  passes over ``train_split``, the eval pass over ``test_split``."""
  extract_fn = make_extract_fn(frozen, section.pool)  # compiled on first use, once for both splits
  train, test = (
    load_or_extract(
      frozen,
      workdir,
      split,
      pool=section.pool,
      views=views,
      batch_size=section.extract_batch_size,
      extract_fn=extract_fn,
    )
    for split, views in ((section.train_split, section.train_views), (section.test_split, 1))
  )
  return train, test
