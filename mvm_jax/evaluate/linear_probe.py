"""Linear probing: a linear classifier on frozen, cached encoder features.

The MAE recipe (He et al., 2022, appendix A.2): BatchNorm without affine
parameters before the linear layer (here: standardisation with the train
set's mean and variance, which is what that BatchNorm computes at test
time), SGD with momentum or LARS, no weight decay, cosine schedule with
linear warm-up, lr = base_lr × batch / 256, no mixup / cutmix / drop path.
Views of a test record (multi-view testing) are averaged in softmax space.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mvm_jax.config_schema import ConfigError
from mvm_jax.evaluate import features as features_lib
from mvm_jax.evaluate import frozen as frozen_lib
from mvm_jax.evaluate import report

NAME = 'linear_probe'
OPTIMIZERS = ('sgd', 'lars')
BN_EPS = 1e-6


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = BN_EPS) -> list[np.ndarray]:
  """BatchNorm without affine, with train statistics: [N, D] → (x - mean) / sqrt(var + eps)
  for ``train`` and each of ``others``."""
  mean = train.mean(axis=0, dtype=np.float64)
  scale = 1.0 / np.sqrt(train.var(axis=0, dtype=np.float64) + eps)
  return [((x - mean) * scale).astype(np.float32) for x in (train, *others)]


def make_optimizer(name: str, learning_rate, momentum: float) -> optax.GradientTransformation:
  """SGD with momentum, or LARS (trust ratio on the kernel only, as MoCo v3 / MAE); no weight decay."""
  if name == 'sgd':
    return optax.sgd(learning_rate, momentum=momentum)
  if name == 'lars':
    return optax.lars(
      learning_rate,
      weight_decay=0.0,
      momentum=momentum,
      trust_ratio_mask=lambda params: {'kernel': True, 'bias': False},
    )
  raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {name!r}')


def logits(params: dict, x) -> jax.Array:
  """[N, D] → [N, C]."""
  return x @ params['kernel'] + params['bias']


def train_linear(
  x: np.ndarray,
  y: np.ndarray,
  num_classes: int,
  *,
  optimizer: str = 'sgd',
  base_lr: float = 0.1,
  momentum: float = 0.9,
  batch_size: int = 256,
  epochs: int = 90,
  warmup_epochs: int = 10,
  seed: int = 0,
) -> tuple[dict, np.ndarray]:
  """Softmax cross-entropy training of a linear layer on (standardised) features.

  Shuffled mini-batches of b = min(batch_size, N) (the last partial one of an
  epoch is dropped), lr = base_lr × b / 256, cosine decay to 0 after
  ``warmup_epochs`` of linear warm-up. Weights ~ N(0, 0.01²) (clipped at 2σ), bias 0.
  The whole run is one jitted scan over epochs and steps (compiled once per
  feature shape and optimizer setting).

  Args:
    x: float32 [N, D]; y: int [N] in [0, num_classes).

  Returns:
    (params {'kernel': [D, C], 'bias': [C]} as numpy, mean loss per epoch [epochs]).
  """
  n, d = x.shape
  b = min(batch_size, n)
  steps_per_epoch = n // b
  rng = np.random.default_rng(seed)
  kernel = np.clip(rng.standard_normal((d, num_classes)), -2.0, 2.0)  # ~ truncated normal
  params = {'kernel': (0.01 * kernel).astype(np.float32), 'bias': np.zeros((num_classes,), np.float32)}
  # Each epoch: a fresh permutation, cut into steps (the last partial batch dropped).
  order = np.stack([rng.permutation(n)[: steps_per_epoch * b] for _ in range(epochs)])
  params, losses = _train(
    params,
    jnp.asarray(x, jnp.float32),
    jnp.asarray(y, jnp.int32),
    jnp.asarray(order.reshape(epochs, steps_per_epoch, b), jnp.int32),
    jnp.float32(base_lr * b / 256),
    optimizer=optimizer,
    momentum=momentum,
    warmup_epochs=warmup_epochs,
  )
  return jax.device_get(params), np.asarray(losses)


@functools.partial(jax.jit, static_argnames=('optimizer', 'momentum', 'warmup_epochs'))
def _train(params, x, y, order, peak_lr, *, optimizer, momentum, warmup_epochs):
  """One compiled scan over epochs and their steps; ``order`` [epochs, steps, b]
  indexes the samples of each step → (params, mean loss per epoch)."""
  epochs, steps_per_epoch, _ = order.shape
  shape = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, steps_per_epoch * warmup_epochs, steps_per_epoch * epochs
  )
  tx = make_optimizer(optimizer, lambda count: peak_lr * shape(count), momentum)

  def loss_fn(params, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, xb), yb).mean()

  def step(carry, idx):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def epoch(carry, steps):
    carry, losses = jax.lax.scan(step, carry, steps)
    return carry, losses.mean()

  (params, _), losses = jax.lax.scan(epoch, (params, tx.init(params)), order)
  return params, losses


def validate(config) -> None:
  """Raise ConfigError naming the key of an invalid ``config.probe`` value."""
  p = config.probe
  features_lib.validate_section(p, 'probe')
  if p.optimizer not in OPTIMIZERS:
    raise ConfigError(f'config.probe.optimizer: {p.optimizer!r} is not one of {OPTIMIZERS}')
  for key in ('base_lr', 'batch_size', 'epochs'):
    if not p[key] > 0:
      raise ConfigError(f'config.probe.{key}: must be positive, got {p[key]!r}')
  if not 0 <= p.warmup_epochs < p.epochs:
    raise ConfigError(
      f'config.probe.warmup_epochs: {p.warmup_epochs} is outside [0, probe.epochs={p.epochs})'
    )
  if not 0 <= p.momentum < 1:
    raise ConfigError(f'config.probe.momentum: {p.momentum} is outside [0, 1)')


def run(config, workdir: str) -> dict:
  """Extract (or reuse) features, train the probe, write results.json and the confusion PNG.

  Returns the results (as in results.json, plus 'summary': the one-line summary).
  """
  validate(config)
  features_lib.resolve_splits(config, 'probe')
  p = config.probe
  features_lib.check_batch_size(config, p.extract_batch_size, 'probe.extract_batch_size')
  frozen = frozen_lib.load(config)
  train, test = features_lib.train_and_test(frozen, workdir, p)
  x_train, x_test = standardize(train.features, test.features)
  num_classes = train.num_classes
  params, losses = train_linear(
    x_train,
    train.labels,
    num_classes,
    optimizer=p.optimizer,
    base_lr=p.base_lr,
    momentum=p.momentum,
    batch_size=p.batch_size,
    epochs=p.epochs,
    warmup_epochs=p.warmup_epochs,
    seed=config.seed,
  )
  for e in sorted({0, len(losses) // 4, len(losses) // 2, 3 * len(losses) // 4, len(losses) - 1}):
    logging.info('linear probe epoch %d/%d: loss %.4f', e + 1, len(losses), losses[e])
  train_scores = np.asarray(logits(params, x_train))
  test_probs = np.asarray(jax.nn.softmax(logits(params, x_test)))
  scores, labels = report.aggregate_views(test_probs, test.labels, test.index)
  metrics = report.classification_metrics(scores, labels, num_classes)
  results = {
    'top1': metrics['top1'],
    'top5': metrics['top5'],
    'top5_k': metrics['top5_k'],
    'train_top1': report.topk_accuracy(train_scores, train.labels, 1),
    'final_loss': float(losses[-1]),
    'num_train': len(train),
    'num_test': metrics['num_test'],
    'num_classes': num_classes,
    'init_from': frozen.init_from,
    'step': frozen.step,
    'class_names': list(train.class_names),
    'confusion': metrics['confusion'],
    'confusion_png': f'confusion_{NAME}.png',
    'config': {
      'probe': p.to_dict(),
      'model': frozen.config.model.to_dict(),
      'data': frozen.config.data.to_dict(),
    },
  }
  results['summary'] = f'{NAME}: top1 {results["top1"]:.1f} top5 {results["top5"]:.1f} ({frozen.describe()})'
  title = f'linear probe: top-1 {results["top1"]:.1f}%\n{frozen.describe()}'
  return report.publish(workdir, NAME, results, train.class_names, title)
