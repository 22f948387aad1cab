"""Weighted k-nearest-neighbour classification of frozen features (InstDisc / DINO).

Features are L2-normalised; a test clip's k most cosine-similar train clips
vote for their labels with weight exp(sim / τ) (τ = 0.07); the class with the
largest summed weight wins (top-5: the 5 largest). k is clipped to the
train-set size. Views of a test record are averaged over their vote scores.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mvm_jax.config_schema import ConfigError
from mvm_jax.evaluate import features as features_lib
from mvm_jax.evaluate import frozen as frozen_lib
from mvm_jax.evaluate import report

NAME = 'knn'


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  num_classes: int,
  ks: Sequence[int],
  temperature: float = 0.07,
  chunk_size: int = 256,
) -> dict[int, np.ndarray]:
  """Vote scores of the weighted k-NN classifier.

  Args:
    train_x: float [N, D] memory bank; train_y: int [N] its labels.
    test_x: float [M, D] queries.
    num_classes: C.
    ks: neighbour counts; each is clipped to N.
    temperature: τ of the weights exp(cos / τ).
    chunk_size: queries per jitted step (the [chunk, N] similarity block).

  Returns:
    {k as given: float32 [M, C]}: per class, the summed weights of its
    neighbours among the min(k, N) nearest.
  """
  n = train_x.shape[0]
  used = {k: min(int(k), n) for k in ks}
  bank = _normalize(jnp.asarray(train_x, jnp.float32))
  bank_labels = jnp.asarray(train_y, jnp.int32)
  distinct = tuple(sorted(set(used.values())))
  m = test_x.shape[0]
  chunk_size = min(chunk_size, m)
  parts = []
  for start in range(0, m, chunk_size):
    chunk = np.asarray(test_x[start : start + chunk_size], np.float32)
    pad = chunk_size - chunk.shape[0]  # one shape, one compilation
    chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), np.float32)])
    votes = _votes(chunk, bank, bank_labels, ks=distinct, num_classes=num_classes, temperature=temperature)
    parts.append({k: np.asarray(v)[: chunk_size - pad] for k, v in zip(distinct, votes)})
  return {k: np.concatenate([p[used[k]] for p in parts]) for k in ks}


@functools.partial(jax.jit, static_argnames=('ks', 'num_classes', 'temperature'))
def _votes(queries, bank, bank_labels, *, ks, num_classes, temperature):
  """queries [q, D], unit bank [N, D] → per k in ``ks`` (ascending): votes [q, C]."""
  sims = jnp.matmul(_normalize(queries), bank.T, precision=jax.lax.Precision.HIGHEST)
  top_sims, top_idx = jax.lax.top_k(sims, ks[-1])
  weights = jnp.exp(top_sims / temperature)
  labels = bank_labels[top_idx]
  rows = jnp.arange(queries.shape[0])[:, None]
  zeros = jnp.zeros((queries.shape[0], num_classes), jnp.float32)
  return tuple(zeros.at[rows, labels[:, :k]].add(weights[:, :k]) for k in ks)


def validate(config) -> None:
  """Raise ConfigError naming the key of an invalid ``config.knn`` value."""
  c = config.knn
  features_lib.validate_section(c, 'knn')
  ks = tuple(c.ks)
  if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
    raise ConfigError(f'config.knn.ks: need positive integers, got {ks!r}')
  if c.report_k not in ks:
    raise ConfigError(f'config.knn.report_k: {c.report_k} is not one of config.knn.ks={ks}')
  if not c.temperature > 0:
    raise ConfigError(f'config.knn.temperature: must be positive, got {c.temperature!r}')


def run(config, workdir: str) -> dict:
  """Extract (or reuse) features, classify the test split by k-NN for each k,
  write results.json and the confusion PNG (at ``knn.report_k``).

  Returns the results (as in results.json, plus 'summary': the one-line summary).
  """
  validate(config)
  features_lib.resolve_splits(config, 'knn')
  c = config.knn
  features_lib.check_batch_size(config, c.extract_batch_size, 'knn.extract_batch_size')
  frozen = frozen_lib.load(config)
  train, test = features_lib.train_and_test(frozen, workdir, c)
  num_classes = train.num_classes
  ks = tuple(c.ks)
  all_scores = knn_scores(train.features, train.labels, test.features, num_classes, ks, c.temperature)
  per_k, confusion = {}, None
  for k in ks:
    scores, labels = report.aggregate_views(all_scores[k], test.labels, test.index)
    metrics = report.classification_metrics(scores, labels, num_classes)
    per_k[str(k)] = {'top1': metrics['top1'], 'top5': metrics['top5'], 'k_used': min(k, len(train))}
    if k == c.report_k:
      confusion, num_test, top5_k = metrics['confusion'], metrics['num_test'], metrics['top5_k']
  main = per_k[str(c.report_k)]
  results = {
    'top1': main['top1'],
    'top5': main['top5'],
    'top5_k': top5_k,
    'report_k': c.report_k,
    'k': per_k,
    'temperature': c.temperature,
    'num_train': len(train),
    'num_test': num_test,
    'num_classes': num_classes,
    'init_from': frozen.init_from,
    'step': frozen.step,
    'class_names': list(train.class_names),
    'confusion': confusion,
    'confusion_png': f'confusion_{NAME}.png',
    'config': {
      'knn': c.to_dict(),
      'model': frozen.config.model.to_dict(),
      'data': frozen.config.data.to_dict(),
    },
  }
  by_k = ', '.join(f'k={k} {per_k[str(k)]["top1"]:.1f}' for k in ks)
  results['summary'] = (
    f'{NAME}: top1 {main["top1"]:.1f} top5 {main["top5"]:.1f} at k={c.report_k} '
    f'(top1 {by_k}; {frozen.describe()})'
  )
  title = f'{c.report_k}-NN: top-1 {main["top1"]:.1f}%\n{frozen.describe()}'
  return report.publish(workdir, NAME, results, train.class_names, title)
