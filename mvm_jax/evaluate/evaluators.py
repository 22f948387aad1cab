"""Evaluators that run every K steps of pre-training: does it learn? (big_vision-style).

``config.evaluators`` holds named sections, each one evaluator::

  c.evaluators.knn = dict(kind='knn', every_steps=100, train_split='train_windows',
                          test_split='test_windows', data=dict(num_workers=0), k=20)

``train_and_evaluate`` runs the due evaluators on every process (feature
extraction is collective) at every multiple of their ``every_steps`` and at
the run's last step, on the encoder of the current training parameters; one
extraction per (data, split, views, pool) is shared by all evaluators of a
step. At a run's first evaluation each evaluator also scores two floors,
kept in ``{workdir}/evaluators/baselines.json`` (a resumed run reads them
back): a randomly initialised encoder of the run's model and clip settings
(seed ``config.seed + 1``), and raw pixels (per clip, the mean over its
spacetime patches of the normalized t×p×p×3 patch vector). Process 0 writes
TensorBoard scalars ``eval/<name>/<metric>`` (with ``_random_init`` and
``_raw_pixels`` beside them), appends ``{workdir}/evaluators/history.jsonl``
and redraws ``{workdir}/images/evaluators.png`` (a panel per metric vs step,
dashed lines for the floors).

Keys of every section (:data:`COMMON`):
  kind                one of :data:`KINDS` ('knn', 'linear_probe', 'attentive_probe',
                      'feature_stats').
  every_steps         evaluate at multiples of this step (and at the last step).
  data                overrides of the run's ``config.data`` for the labelled
                      held-out data: the source keys (source, path with ``{split}``,
                      root, class_names_file, tfds_*), loader keys (num_workers, ...),
                      eval views, hflip; not the clip keys (num_frames, crop_size,
                      sampling_rate, mean, std: the run's). Pair sampling
                      (frame_pair, clip_pair) becomes 'clip' unless set here.
  train_split, test_split
                      splits of that source: fit / memory bank on the first, score the second
                      ('' = the source's, see mvm_jax/evaluate/features.py default_split).
  train_views         passes over train_split (1 = centre crop; n > 1 adds n - 1
                      augmented passes).
  pool                'mean' (patch tokens, then the final LayerNorm) or 'cls'.
  extract_batch_size  clips per extraction step (global; a multiple of the
                      data-parallel devices and of the processes).
  keep_decoded_mb     keep a pass's decoded clips in memory (per process) when they
                      fit in this many MB, and replay them at later evaluations
                      instead of decoding again (they are the same clips each time:
                      centre crops, augmented views from a fixed seed); 0: decode
                      every time. Larger passes stream as usual.
Evaluators share an extraction when data, splits, train_views and pool agree.

Kinds and their own keys (metrics in brackets):
  knn            [top1, %] weighted k-NN (cosine, exp(sim / τ) votes; see knn.py):
                 k, temperature.
  linear_probe   [top1, %] closed-form ridge regression of one-hot labels on the
                 standardized features (seconds, no SGD): l2_grid (λ = l2 × rows;
                 with several, the best on a held-out part of the train records, by
                 ``holdout_fraction``, is refitted on all of them).
  attentive_probe
                 [top1, %] the attentive probe (configs/attentive_probe.py) on the
                 patch tokens, trained at each evaluation (tens of seconds on a CPU for
                 600 clips of 64 tokens): token_dtype, num_queries, num_heads,
                 mlp_ratio, base_lr, weight_decay, batch_size, epochs, warmup_epochs.
  feature_stats  [effective_rank, between_class_share] of the features of
                 ``split`` ('train', 'test' or 'both'): exp of the entropy of the
                 normalized singular values of the centred features, and
                 trace(between-class scatter) / trace(total scatter) of the
                 standardized features.

Test views (``data.eval_temporal_views`` × ``eval_spatial_views``) are averaged
per record, as in knn.py / linear_probe.py. Each evaluation logs one line
(``eval step 200 (1.1 s): knn top1 41.0 (random 30.0, pixels 25.0); ...``);
its wall time is left out of the training step time. A step evaluated again
after a resume from an earlier checkpoint keeps its last history entry.

A new kind is a subclass of :class:`Evaluator` registered with
``@register('name')`` (or ``KINDS['name'] = cls``); its ``evaluate(frozen,
step)`` gets a :class:`~mvm_jax.evaluate.frozen.FrozenEncoder` (the run's
encoder at ``step``, or a floor's) and may extract what it needs itself or
through ``self.features`` (the shared :class:`FeatureCache`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mvm_jax import data as data_lib
from mvm_jax.config_schema import ConfigError
from mvm_jax.evaluate import attentive_probe as attentive_probe_lib
from mvm_jax.evaluate import features as features_lib
from mvm_jax.evaluate import frozen as frozen_lib
from mvm_jax.evaluate import knn as knn_lib
from mvm_jax.evaluate import linear_probe as linear_probe_lib
from mvm_jax.evaluate import report

COMMON = dict(
  kind='',
  every_steps=0,
  data={},
  train_split='train',
  test_split='test',
  train_views=1,
  pool='mean',
  extract_batch_size=32,
  keep_decoded_mb=256.0,
)
PAIR_SAMPLINGS = ('clip_pair', 'frame_pair')
BASELINES = ('random_init', 'raw_pixels')
BASELINE_SEED_OFFSET = 1  # the random-init floor uses config.seed + 1
SUBDIR = 'evaluators'
BASELINES_FILE = 'baselines.json'
HISTORY_FILE = 'history.jsonl'
PLOT_FILE = 'evaluators.png'  # under {workdir}/images

KINDS: dict[str, type[Evaluator]] = {}


def register(kind: str):
  """Class decorator: ``@register('attentive_probe')`` adds an Evaluator subclass to KINDS."""

  def add(cls):
    cls.kind = kind
    KINDS[kind] = cls
    return cls

  return add


# --- metrics on features --------------------------------------------------------------------


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float64)[np.asarray(labels)]


def ridge_solver(x: np.ndarray, y: np.ndarray):
  """Ridge regression with an unpenalised bias: x [N, D], targets y [N, C] →
  ``solve(lam) -> (w [D, C], b [C])`` minimising ||x w + b - y||² + lam ||w||².

  One eigendecomposition of the smaller Gram matrix (D×D, or N×N when N < D)
  serves every lam.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mx, my = x.mean(0), y.mean(0)
  xc, yc = x - mx, y - my
  if xc.shape[0] >= xc.shape[1]:
    e, q = np.linalg.eigh(xc.T @ xc)
    z = q.T @ (xc.T @ yc)

    def solve(lam):
      w = q @ (z / (e + lam)[:, None])
      return w, my - mx @ w

  else:  # dual form: w = xcᵀ (xc xcᵀ + lam)⁻¹ yc
    e, q = np.linalg.eigh(xc @ xc.T)
    z = q.T @ yc

    def solve(lam):
      w = xc.T @ (q @ (z / (e + lam)[:, None]))
      return w, my - mx @ w

  return solve


def ridge_probe(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  num_classes: int,
  *,
  l2_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
  groups: np.ndarray | None = None,
  holdout_fraction: float = 0.25,
  seed: int = 0,
) -> tuple[np.ndarray, float]:
  """A fast linear probe: ridge regression of one-hot labels on standardized features.

  Features are standardized with the train statistics; lam = l2 × (rows fitted).
  With several ``l2_grid`` values, a ``holdout_fraction`` of the train
  ``groups`` (record indices: the views of a record stay together; default one
  group per row) is held out, the l2 with the best held-out top-1 is kept (ties:
  the larger), and the probe is refitted on all train rows.

  Args:
    train_x: float [N, D]; train_y: int [N] in [0, num_classes).
    test_x: float [M, D].

  Returns:
    (scores float32 [M, C]: argmax = prediction, the chosen l2).
  """
  x_train, x_test = linear_probe_lib.standardize(np.asarray(train_x), np.asarray(test_x))
  y = one_hot(train_y, num_classes)
  l2_grid = sorted(float(v) for v in l2_grid)
  chosen = l2_grid[-1]
  groups = np.arange(len(train_y)) if groups is None else np.asarray(groups)
  distinct = np.unique(groups)
  if len(l2_grid) > 1 and len(distinct) >= 2:
    n_held = min(max(int(round(holdout_fraction * len(distinct))), 1), len(distinct) - 1)
    held = np.isin(groups, np.random.default_rng(seed).permutation(distinct)[:n_held])
    solve = ridge_solver(x_train[~held], y[~held])
    best = -1.0
    for l2 in l2_grid:
      w, b = solve(l2 * int((~held).sum()))
      accuracy = float(np.mean(np.argmax(x_train[held] @ w + b, 1) == np.asarray(train_y)[held]))
      if accuracy >= best:
        best, chosen = accuracy, l2
  w, b = ridge_solver(x_train, y)(chosen * len(y))
  return (x_test @ w + b).astype(np.float32), chosen


def effective_rank(x: np.ndarray) -> float:
  """exp of the Shannon entropy of the normalized singular values of the centred
  features x [N, D] (Roy & Vetterli, 2007): k for k equal singular values, 1 for
  rank one; 0 for constant features. Singular values below 1e-6 of the largest
  are left out (from the eigenvalues of the smaller Gram matrix: seconds for
  N = 10⁵, D = 10³)."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(0)
  gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x
  s = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
  if s.max() <= 0:
    return 0.0
  s = s[s > 1e-6 * s.max()]  # the Gram matrix's rounding (~1e-8 of the largest) is no direction
  p = s / s.sum()
  return float(np.exp(-np.sum(p * np.log(p))))


def between_class_share(x: np.ndarray, labels: np.ndarray) -> float:
  """trace(between-class scatter) / trace(total scatter) of the standardized
  features x [N, D] with labels [N]: the share of the feature variance that the
  class means explain. 1 when each row is its class mean; about (C - 1) / (N - 1)
  for label-independent features. Constant dimensions are left out; 0 if all are."""
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0)
  keep = std > 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0)))
  if not keep.any():
    return 0.0
  z = (x[:, keep] - mean[keep]) / std[keep]
  _, inverse = np.unique(np.asarray(labels), return_inverse=True)
  sums = np.zeros((inverse.max() + 1, z.shape[1]))
  np.add.at(sums, inverse, z)
  between = np.sum(sums**2 / np.bincount(inverse)[:, None])
  return float(between / np.sum(z**2))


# --- the shared feature extraction ----------------------------------------------------------


def _data_key(data) -> str:
  return json.dumps(
    {k: v for k, v in data.to_dict().items() if k not in features_lib.RUNTIME_DATA_KEYS},
    sort_keys=True,
    default=list,
  )


class DecodedClips:
  """Stands in for :func:`mvm_jax.data.make_loader` in feature extraction and keeps the host
  batches of a pass in memory when they fit in ``budget_mb``, to replay them at later
  evaluations instead of decoding again. The passes are the same every time (centre
  clips and crops; augmented views from a fixed seed), so replaying changes nothing
  but the time. Per process: each host keeps its own shard."""

  def __init__(self):
    self._kept: dict[tuple, tuple[list[dict], bool, Any]] = {}
    self.decoded_passes = 0

  def loader(self, budget_mb: float):
    """A ``make_loader`` that keeps passes of at most ``budget_mb`` MB (0: none)."""

    def make_loader(
      data_config, *, split, global_batch_size, seed, train=True, shard_index=None, shard_count=None
    ):
      key = (_data_key(data_config), split, global_batch_size, seed, shard_index, shard_count, train)
      if key in self._kept:
        batches, exhausted, info = self._kept[key]
        return _Replay(batches, exhausted), info
      self.decoded_passes += 1
      loader, info = data_lib.make_loader(
        data_config,
        split=split,
        global_batch_size=global_batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        train=train,
      )
      if budget_mb <= 0:
        return loader, info
      return _Recording(
        loader, int(budget_mb * 2**20), lambda kept: self._kept.__setitem__(key, (*kept, info))
      ), info

    return make_loader


class _Recording:
  """Iterates a loader, keeping its batches; on ``close`` hands (batches, exhausted) to
  ``keep`` unless they outgrew ``budget`` bytes."""

  def __init__(self, loader, budget: int, keep):
    self._loader, self._budget, self._keep = loader, budget, keep

  def __iter__(self):
    return _RecordingIterator(iter(self._loader), self._budget, self._keep)


class _RecordingIterator:
  def __init__(self, iterator, budget: int, keep):
    self._iterator, self._budget, self._keep = iterator, budget, keep
    self._batches: list[dict] | None = []
    self._bytes, self._exhausted = 0, False

  def __next__(self):
    try:
      batch = next(self._iterator)
    except StopIteration:
      self._exhausted = True
      raise
    if self._batches is not None:
      self._bytes += sum(np.asarray(v).nbytes for v in batch.values())
      if self._bytes > self._budget:
        self._batches = None  # too big to keep: stream
      else:
        self._batches.append({k: np.asarray(v) for k, v in batch.items()})
    return batch

  def close(self):
    if hasattr(self._iterator, 'close'):
      self._iterator.close()
    if self._batches is not None:
      self._keep((self._batches, self._exhausted))


class _Replay:
  """The kept batches of a pass, in order; asking past them is an error unless the pass had ended."""

  def __init__(self, batches: list[dict], exhausted: bool):
    self._batches, self._exhausted = batches, exhausted

  def __iter__(self):
    return _ReplayIterator(self._batches, self._exhausted)


class _ReplayIterator:
  def __init__(self, batches, exhausted):
    self._batches, self._exhausted, self._next = batches, exhausted, 0

  def __next__(self):
    if self._next == len(self._batches):
      if self._exhausted:
        raise StopIteration
      raise RuntimeError('a replayed pass was asked for more batches than its first run read')
    self._next += 1
    return self._batches[self._next - 1]

  def close(self):
    pass


class FeatureCache:
  """Features per (encoder, data, split, views, pool), extracted once and shared by the
  evaluators of an evaluation step (``clear()`` after it). Jitted extraction
  functions (one compilation per encoder and pool) and small passes' decoded clips
  (:class:`DecodedClips`) are kept for the whole run."""

  def __init__(self):
    self._features: dict[tuple, features_lib.Features] = {}
    self._extract_fns: dict[tuple, Any] = {}
    self.clips = DecodedClips()

  def get(
    self,
    frozen: frozen_lib.FrozenEncoder,
    config,
    split: str,
    *,
    views: int,
    pool: str,
    batch_size: int,
    keep_decoded_mb: float = 0.0,
    token_dtype: str = 'float16',
  ):
    """Features of ``split`` of ``config.data`` (an evaluator's) by ``frozen``'s encoder;
    pool 'tokens' (:data:`features.TOKENS`): the patch tokens [N, L, D] in ``token_dtype``.
    The raw-pixel encoder pools by the mean (its tokens: the patch vectors)."""
    if isinstance(frozen.encoder, frozen_lib.PixelFeatureEncoder) and pool != features_lib.TOKENS:
      pool = 'mean'
    dtype = token_dtype if pool == features_lib.TOKENS else 'float32'
    key = (frozen.describe(), frozen.step, _data_key(config.data), split, views, pool, dtype)
    if key not in self._features:
      frozen = dataclasses.replace(frozen, config=config)
      fn_key = (id(frozen.encoder), pool, dtype)
      if fn_key not in self._extract_fns:  # holds the encoder too, so its id stays unique
        extract_fn = features_lib.make_extract_fn(frozen, pool, token_dtype)
        self._extract_fns[fn_key] = (frozen.encoder, extract_fn)
      self._features[key] = features_lib.extract(
        frozen,
        split,
        pool=pool,
        views=views,
        batch_size=batch_size,
        extract_fn=self._extract_fns[fn_key][1],
        token_dtype=token_dtype,
        make_loader=self.clips.loader(keep_decoded_mb),
      )
    return self._features[key]

  def clear(self) -> None:
    self._features.clear()


# --- evaluators -----------------------------------------------------------------------------


class Evaluator:
  """One named section of ``config.evaluators``.

  A kind sets ``DEFAULTS`` (its own keys), ``METRICS`` (the names ``evaluate``
  returns), may extend ``check`` (validation, naming keys as
  ``config.<key>.<name>``) and implements ``evaluate``.

  Attributes:
    name: the section's name (the scalars' prefix ``eval/<name>/``).
    section: the resolved section (:data:`COMMON` + DEFAULTS + the config's keys).
    config: the run's config with this evaluator's ``data``.
    cache: the :class:`FeatureCache` shared by the run's evaluators.
  """

  kind = ''
  DEFAULTS: dict = {}
  METRICS: tuple[str, ...] = ()

  def __init__(self, name: str, section: ml_collections.ConfigDict, run_config, cache: FeatureCache):
    self.name, self.section, self.cache = name, section, cache
    self.every_steps = int(section.every_steps)
    self.config = copy.deepcopy(run_config)
    self.config.unlock()
    self.config.data = eval_data_config(run_config.data, section.data, f'evaluators.{name}')
    for key, role in features_lib.SPLIT_KEYS.items():  # '' = the source's split
      section[key] = section[key] or features_lib.default_split(self.config.data, role)

  @classmethod
  def check(cls, section, key: str) -> None:
    """Raise ConfigError naming ``config.<key>.<field>`` for an invalid value."""
    features_lib.validate_section(section, key)
    mb = section.keep_decoded_mb
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb < 0:
      raise ConfigError(f'config.{key}.keep_decoded_mb: must be a number >= 0, got {mb!r}')

  def evaluate(self, frozen: frozen_lib.FrozenEncoder, step: int) -> dict[str, float]:
    """Metrics of ``frozen``'s encoder: {metric: value}. Runs on every process."""
    raise NotImplementedError

  # The features this kind reads: None = the section's pool; features.TOKENS = the patch tokens.
  POOL: str | None = None

  def features(self, frozen, split: str, views: int = 1) -> features_lib.Features:
    s = self.section
    return self.cache.get(
      frozen,
      self.config,
      split,
      views=views,
      pool=self.POOL or s.pool,
      batch_size=s.extract_batch_size,
      keep_decoded_mb=s.keep_decoded_mb,
      token_dtype=s.get('token_dtype', 'float16'),
    )

  def train_and_test(self, frozen) -> tuple[features_lib.Features, features_lib.Features]:
    s = self.section
    return self.features(frozen, s.train_split, s.train_views), self.features(frozen, s.test_split)

  def signature(self) -> dict:
    """What its baselines depend on: recomputed when it changes."""
    section = {k: v for k, v in self.section.to_dict().items() if k != 'every_steps'}
    c = self.config
    return json.loads(
      json.dumps(
        dict(section=section, model=c.model.to_dict(), data=json.loads(_data_key(c.data)), seed=c.seed),
        default=list,
      )
    )


@register('knn')
class KnnEvaluator(Evaluator):
  """Weighted k-NN top-1 (%) of the test split against the train split (knn.knn_scores)."""

  DEFAULTS = dict(k=20, temperature=0.07)
  METRICS = ('top1',)

  @classmethod
  def check(cls, section, key):
    super().check(section, key)
    if isinstance(section.k, bool) or not isinstance(section.k, int) or section.k < 1:
      raise ConfigError(f'config.{key}.k: must be a positive integer, got {section.k!r}')
    if not section.temperature > 0:
      raise ConfigError(f'config.{key}.temperature: must be positive, got {section.temperature!r}')

  def evaluate(self, frozen, step):
    train, test = self.train_and_test(frozen)
    k = self.section.k
    scores = knn_lib.knn_scores(
      train.features, train.labels, test.features, train.num_classes, (k,), self.section.temperature
    )[k]
    scores, labels = report.aggregate_views(scores, test.labels, test.index)
    return {'top1': report.topk_accuracy(scores, labels, 1)}


@register('linear_probe')
class LinearProbeEvaluator(Evaluator):
  """Closed-form ridge linear probe top-1 (%) (:func:`ridge_probe`)."""

  DEFAULTS = dict(l2_grid=(1e-3, 1e-2, 1e-1, 1.0, 10.0), holdout_fraction=0.25)
  METRICS = ('top1',)

  @classmethod
  def check(cls, section, key):
    super().check(section, key)
    grid = section.l2_grid
    if (
      not isinstance(grid, (tuple, list))
      or not grid
      or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in grid)
    ):
      raise ConfigError(f'config.{key}.l2_grid: need one or more positive numbers, got {grid!r}')
    if not 0 < section.holdout_fraction < 1:
      raise ConfigError(f'config.{key}.holdout_fraction: must be in (0, 1), got {section.holdout_fraction!r}')

  def evaluate(self, frozen, step):
    train, test = self.train_and_test(frozen)
    s = self.section
    scores, l2 = ridge_probe(
      train.features,
      train.labels,
      test.features,
      train.num_classes,
      l2_grid=tuple(s.l2_grid),
      groups=train.index,
      holdout_fraction=s.holdout_fraction,
      seed=self.config.seed,
    )
    scores, labels = report.aggregate_views(scores, test.labels, test.index)
    logging.info('eval %s, %s: ridge l2 %g (of %s)', self.name, frozen.describe(), l2, tuple(s.l2_grid))
    return {'top1': report.topk_accuracy(scores, labels, 1)}


@register('attentive_probe')
class AttentiveProbeEvaluator(Evaluator):
  """Attentive probe top-1 (%): a learned-query cross-attention head + linear classifier
  trained on the frozen patch tokens (evaluate/attentive_probe.py ``fit_and_score``; the
  head's keys as in configs/attentive_probe.py). Its floors: the random-init encoder's
  tokens, and the raw patch vectors as tokens. ``pool`` is not used."""

  DEFAULTS = dict(attentive_probe_lib.HEAD_DEFAULTS)
  METRICS = ('top1',)
  POOL = features_lib.TOKENS

  @classmethod
  def check(cls, section, key):
    super().check(section, key)
    attentive_probe_lib.validate_head(section, key)

  def evaluate(self, frozen, step):
    train, test = self.train_and_test(frozen)
    result = attentive_probe_lib.fit_and_score(train, test, self.section, seed=self.config.seed)
    return {'top1': result['top1']}


@register('feature_stats')
class FeatureStatsEvaluator(Evaluator):
  """Effective rank and between-class variance share of the features (no classifier)."""

  DEFAULTS = dict(split='both')
  METRICS = ('effective_rank', 'between_class_share')
  SPLITS = ('train', 'test', 'both')

  @classmethod
  def check(cls, section, key):
    super().check(section, key)
    if section.split not in cls.SPLITS:
      raise ConfigError(f'config.{key}.split: {section.split!r} is not one of {cls.SPLITS}')

  def evaluate(self, frozen, step):
    s = self.section
    parts = []
    if s.split in ('train', 'both'):
      parts.append(self.features(frozen, s.train_split, s.train_views))
    if s.split in ('test', 'both'):
      parts.append(self.features(frozen, s.test_split))
    x = np.concatenate([p.features for p in parts])
    y = np.concatenate([p.labels for p in parts])
    return {'effective_rank': effective_rank(x), 'between_class_share': between_class_share(x, y)}


# --- config ---------------------------------------------------------------------------------


def eval_data_config(run_data, overrides, key: str) -> ml_collections.ConfigDict:
  """The run's ``config.data`` with an evaluator's ``data`` overrides (``key``: e.g.
  'evaluators.knn'). The clip keys stay the run's; pair sampling becomes 'clip', and the
  run's colour distortion (a pretext augmentation) is off unless set here."""
  data = copy.deepcopy(run_data)
  data.unlock()
  if data.sampling in PAIR_SAMPLINGS:
    data.sampling = 'clip'
  data.update(color_jitter=0.0, grayscale_prob=0.0)
  for name, value in dict(overrides or {}).items():
    if name not in data:
      raise ConfigError(f'config.{key}.data.{name}: not a config.data key')
    if name in frozen_lib.CLIP_KEYS:
      raise ConfigError(
        f"config.{key}.data.{name}: the clip settings {frozen_lib.CLIP_KEYS} are the run's (its "
        f'encoder sees those clips); set config.data.{name} instead'
      )
    try:
      data[name] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'config.{key}.data.{name}: {e}') from None
  if data.source == 'tokens':
    raise ConfigError(
      f'config.{key}.data.source: the run reads VQ tokens; evaluators read pixels: name a pixel '
      "source (e.g. data=dict(source='builtin'), or csv / folder / tfds with its keys)"
    )
  try:
    data_lib.validate_data_config(data)
  except ValueError as e:
    raise ConfigError(str(e).replace('config.data.', f'config.{key}.data.', 1)) from None
  return data


def resolve_section(name: str, section) -> ml_collections.ConfigDict:
  """:data:`COMMON` + the kind's DEFAULTS, updated by ``section``; checks the kind, every_steps
  and unknown keys (not values: ``Evaluator.check``)."""
  key = f'evaluators.{name}'
  if not isinstance(section, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f'config.{key}: must be a section with a kind, e.g. dict(kind="knn", every_steps=100)')
  given = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
  kind = given.get('kind', '')
  if kind not in KINDS:
    raise ConfigError(f'config.{key}.kind: {kind!r} is not one of {sorted(KINDS)}')
  defaults = dict(COMMON, **KINDS[kind].DEFAULTS)
  for field in given:
    if field not in defaults:
      raise ConfigError(f'config.{key}.{field}: not a key of kind {kind!r}; its keys: {sorted(defaults)}')
  every = given.get('every_steps')
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ConfigError(f'config.{key}.every_steps: must be a positive integer, got {every!r}')
  if not isinstance(given.get('data', {}), dict):
    raise ConfigError(f'config.{key}.data: must be a section of config.data overrides')
  return ml_collections.ConfigDict(dict(defaults, **given))


def validate(config) -> None:
  """Raise ConfigError naming the key of an invalid ``config.evaluators`` value (no-op when empty)."""
  sections = config.get('evaluators')
  if not sections:
    return
  method = frozen_lib.video_encoder_method(config, 'evaluators')
  method.validate_evaluation_inputs(config, 'evaluators')
  for name, section in sections.items():
    s = resolve_section(name, section)
    key = f'evaluators.{name}'
    eval_data_config(config.data, s.data, key)
    KINDS[s.kind].check(s, key)
    try:
      features_lib.check_batch_size(config, s.extract_batch_size, f'{key}.extract_batch_size')
    except ConfigError:
      raise
    except ValueError:  # no mesh of config.mesh.shape on these devices: building the run says so
      pass


# --- the suite the training loop calls ------------------------------------------------------


def _broadcast_flags(flags: list[bool]) -> list[bool]:
  """Process 0's ``flags`` on every process (what it read from the workdir decides)."""
  if jax.process_count() == 1 or not flags:
    return flags
  from jax.experimental import multihost_utils

  return [bool(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))]


def _format(value: float) -> str:
  return f'{value:.1f}' if abs(value) >= 10 else f'{value:.3f}'


class EvaluatorSuite:
  """The run's evaluators, their floors, history and picture.

  ``suite(step, params)`` (every process, after each training step) returns the
  scalars to write at ``step`` when an evaluator is due, else None.
  """

  def __init__(self, config, workdir: str, mesh, total_steps: int):
    # `config` is valid: the entry point validated it, `config.evaluators` with it (`validate` below).
    self.config, self.workdir, self.total_steps = config, workdir, total_steps
    self.cache = FeatureCache()
    self.evaluators = [
      KINDS[s.kind](name, s, config, self.cache)
      for name, s in ((name, resolve_section(name, section)) for name, section in config.evaluators.items())
    ]
    self.template = frozen_lib.template(config, mesh)
    self.pixels = frozen_lib.raw_pixels(config, mesh)
    self.directory = os.path.join(workdir, SUBDIR)
    self.is_chief = jax.process_index() == 0
    names = ', '.join(f'{e.name} ({e.kind}, every {e.every_steps})' for e in self.evaluators)
    logging.info('Evaluators: %s.', names)

  def due(self, step: int) -> list[Evaluator]:
    return [e for e in self.evaluators if step % e.every_steps == 0 or step == self.total_steps]

  @property
  def baselines_path(self) -> str:
    return os.path.join(self.directory, BASELINES_FILE)

  @property
  def history_path(self) -> str:
    return os.path.join(self.directory, HISTORY_FILE)

  @property
  def plot_path(self) -> str:
    return os.path.join(self.workdir, 'images', PLOT_FILE)

  def read_baselines(self) -> dict:
    if not os.path.exists(self.baselines_path):
      return {}
    with open(self.baselines_path) as f:
      return json.load(f)

  def baselines(self, evaluators: Sequence[Evaluator], step: int) -> dict:
    """{name: {'random_init': metrics, 'raw_pixels': metrics, ...}} for ``evaluators``: read
    from baselines.json, computed (and stored) for those without (or with changed settings)."""
    stored = self.read_baselines()
    missing = _broadcast_flags(
      [e.name not in stored or stored[e.name].get('signature') != e.signature() for e in evaluators]
    )
    todo = [e for e, m in zip(evaluators, missing) if m]
    if todo:
      start = time.perf_counter()
      seed = self.config.seed + BASELINE_SEED_OFFSET
      subjects = {
        'random_init': self.template.random_init(seed, description=f'random init (seed {seed})'),
        'raw_pixels': self.pixels,
      }
      for e in todo:
        values = {b: e.evaluate(subjects[b], 0) for b in BASELINES}
        stored[e.name] = dict(values, signature=e.signature(), step=step)
      self.cache.clear()
      logging.info(
        'Evaluator floors (%s) in %.1f s: %s',
        ', '.join(e.name for e in todo),
        time.perf_counter() - start,
        {e.name: {b: stored[e.name][b] for b in BASELINES} for e in todo},
      )
      if self.is_chief:
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.baselines_path + '.tmp'
        with open(tmp, 'w') as f:
          json.dump(stored, f, indent=2)
        os.replace(tmp, self.baselines_path)
    return stored

  def __call__(self, step: int, params) -> dict[str, float] | None:
    due = self.due(step)
    if not due:
      return None
    start = time.perf_counter()
    baselines = self.baselines(due, step)
    trained = self.template.with_params(
      params, step, self.workdir, description=f"the run's encoder at step {step}"
    )
    results = {e.name: e.evaluate(trained, step) for e in due}
    self.cache.clear()
    seconds = time.perf_counter() - start
    scalars = {}
    for e in due:
      for metric, value in results[e.name].items():
        scalars[f'eval/{e.name}/{metric}'] = float(value)
        for b in BASELINES:
          if metric in baselines.get(e.name, {}).get(b, {}):
            scalars[f'eval/{e.name}/{metric}_{b}'] = float(baselines[e.name][b][metric])
    scalars['eval/wall_time_s'] = seconds
    if self.is_chief:
      self._append_history(step, results, seconds)
      plot_history(self.plot_path, read_history(self.history_path), self.read_baselines())
      logging.info('%s', self.summary(step, results, baselines, seconds))
    return scalars

  @staticmethod
  def summary(step: int, results: dict, baselines: dict, seconds: float) -> str:
    """``eval step 200 (3.1 s): knn top1 41.0 (random 30.0, pixels 25.0); ...``"""
    parts = []
    for name, metrics in results.items():
      floors = baselines.get(name, {})
      items = []
      for metric, value in metrics.items():
        item = f'{metric} {_format(value)}'
        if metric in floors.get('random_init', {}):
          item += (
            f' (random {_format(floors["random_init"][metric])}, '
            f'pixels {_format(floors["raw_pixels"][metric])})'
          )
        items.append(item)
      parts.append(f'{name} ' + ', '.join(items))
    return f'eval step {step} ({seconds:.1f} s): ' + '; '.join(parts)

  def _append_history(self, step: int, results: dict, seconds: float) -> None:
    os.makedirs(self.directory, exist_ok=True)
    metrics = {f'{name}/{m}': float(v) for name, values in results.items() for m, v in values.items()}
    with open(self.history_path, 'a') as f:
      f.write(json.dumps({'step': int(step), 'wall_time_s': round(seconds, 3), 'metrics': metrics}) + '\n')


def read_history(path: str) -> list[dict]:
  """history.jsonl's entries by step; a step evaluated again (after a resume from an
  earlier checkpoint) keeps its last entry, merged over the earlier ones."""
  if not os.path.exists(path):
    return []
  by_step: dict[int, dict] = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
      step = int(entry['step'])
      merged = by_step.setdefault(step, {'step': step, 'metrics': {}})
      merged['metrics'].update(entry.get('metrics', {}))
      merged['wall_time_s'] = entry.get('wall_time_s')
  return [by_step[s] for s in sorted(by_step)]


BASELINE_STYLE = {'random_init': ('random init', 'tab:red'), 'raw_pixels': ('raw pixels', 'tab:gray')}


def plot_history(path: str, history: list[dict], baselines: dict) -> str | None:
  """One panel per metric ('<evaluator>/<metric>'), value vs step, with the floors as
  dashed horizontal lines; written to ``path`` (PNG). None when there is no history."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator

  metrics = []
  for entry in history:
    metrics += [m for m in entry['metrics'] if m not in metrics]
  if not metrics:
    return None
  cols = min(3, len(metrics))
  rows = -(-len(metrics) // cols)
  fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
  FigureCanvasAgg(fig)
  for i, metric in enumerate(metrics):
    ax = fig.add_subplot(rows, cols, i + 1)
    points = [(e['step'], e['metrics'][metric]) for e in history if metric in e['metrics']]
    ax.plot(*zip(*points), marker='o', color='tab:blue', label='pre-training')
    name, value = metric.split('/', 1)
    for b, (label, colour) in BASELINE_STYLE.items():
      floor = baselines.get(name, {}).get(b, {}).get(value)
      if floor is not None:
        ax.axhline(floor, linestyle='--', color=colour, label=f'{label} {_format(floor)}')
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel('step')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=90)
  os.replace(tmp, path)
  return path


def build(config, workdir: str, mesh, total_steps: int) -> EvaluatorSuite | None:
  """The run's evaluators, or None when ``config.evaluators`` is empty (or absent)."""
  if not config.get('evaluators'):
    return None
  return EvaluatorSuite(config, workdir, mesh, total_steps)
