"""Attentive probing: a cross-attention pooling head on a frozen encoder's patch tokens.

The protocol of recent video SSL work (V-JEPA, Bardes et al. 2024; VideoMAE v2):
mean pooling underrates MAE-style features, whose information sits in a few
tokens, so the probe learns *where* to look. All L patch tokens of a clip,
after the encoder's final LayerNorm, are extracted once and cached
(``tokens_{split}.npz``, pool 'tokens' of :mod:`mvm_jax.evaluate.features`);
the head is

  learned queries [Q, D] → multi-head cross-attention (keys / values: the
  tokens) → + queries (residual) → optional MLP block (x + MLP(LN x)) →
  LayerNorm → the Q outputs concatenated → linear classifier

(V-JEPA's ``AttentiveClassifier`` with ``complete_block`` when ``mlp_ratio > 0``,
plus the final LayerNorm), trained with AdamW (weight decay on the kernels and
queries only), lr = base_lr × batch / 256, cosine decay to 0 after a linear
warm-up, softmax cross-entropy. Views of a test record (multi-view testing)
are averaged in softmax space, as the linear probe does.

:func:`fit_and_score` (train + test tokens in, metrics out, no disk) is the
core a periodic evaluator can call; :func:`run` is the CLI's: encoder,
cached tokens, results.json and the confusion PNG.
"""

from __future__ import annotations

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mvm_jax import methods
from mvm_jax.config_schema import ConfigError
from mvm_jax.evaluate import features as features_lib
from mvm_jax.evaluate import frozen as frozen_lib
from mvm_jax.evaluate import report

NAME = 'attentive_probe'
SECTION = 'attentive'
INIT_STD = 0.02
SCORE_CHUNK = 256  # clips per jitted scoring step
TokenFeatures = features_lib.TokenFeatures

_init = nn.initializers.truncated_normal(stddev=INIT_STD)


class AttentivePooler(nn.Module):
  """Learned-query cross-attention pooling, LayerNorm and a linear classifier.

  ``__call__(tokens [B, L, D])`` → logits float32 [B, num_classes]; with
  ``return_attention=True``, (logits, attention [B, num_heads, num_queries, L]),
  the softmax weights of each head and query over the L tokens (each row sums to 1).
  Tokens may be float16; the head computes in float32. D must be a multiple of
  ``num_heads``. The output does not depend on the order of the tokens (no
  position information is added: the encoder's tokens carry their own).

  Parameters (names fixed: :func:`pooler_from_params` reads the hyper-parameters
  back from their shapes): ``query`` [Q, D]; ``q`` / ``k`` / ``v`` kernels
  [D, H, D/H] and biases [H, D/H]; ``proj`` [H, D/H, D]; with ``mlp_ratio > 0``
  ``mlp_norm``, ``fc1`` [D, D·mlp_ratio], ``fc2``; ``norm``; ``head`` [Q·D, C].
  """

  num_classes: int
  num_queries: int = 1
  num_heads: int = 4
  mlp_ratio: float = 0.0  # > 0: V-JEPA's MLP block after the cross-attention

  @nn.compact
  def __call__(self, tokens, return_attention: bool = False):
    x = tokens.astype(jnp.float32)
    b, _, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f'token width {d} is not a multiple of num_heads={h}')
    head_dim = d // h
    dense = lambda name: nn.DenseGeneral((h, head_dim), kernel_init=_init, name=name)
    query = self.param('query', _init, (self.num_queries, d))
    q = dense('q')(query)  # [Q, H, D/H]
    k, v = dense('k')(x), dense('v')(x)  # [B, L, H, D/H]
    attention = jax.nn.softmax(jnp.einsum('qhc,blhc->bhql', q, k) * head_dim**-0.5, axis=-1)
    pooled = jnp.einsum('bhql,blhc->bqhc', attention, v)
    y = query[None] + nn.DenseGeneral(d, axis=(-2, -1), kernel_init=_init, name='proj')(pooled)  # [B, Q, D]
    if self.mlp_ratio > 0:
      z = nn.LayerNorm(name='mlp_norm')(y)
      z = nn.Dense(max(1, round(d * self.mlp_ratio)), kernel_init=_init, name='fc1')(z)
      z = nn.Dense(d, kernel_init=_init, name='fc2')(nn.gelu(z, approximate=False))
      y = y + z
    y = nn.LayerNorm(name='norm')(y).reshape(b, self.num_queries * d)
    logits = nn.Dense(self.num_classes, kernel_init=_init, name='head')(y)
    return (logits, attention) if return_attention else logits


def pooler_from_params(params: dict) -> AttentivePooler:
  """The :class:`AttentivePooler` that ``params`` (from :func:`train_attentive`) belong to."""
  num_queries, d = params['query'].shape
  mlp_ratio = params['fc1']['kernel'].shape[1] / d if 'fc1' in params else 0.0
  return AttentivePooler(
    num_classes=params['head']['kernel'].shape[1],
    num_queries=num_queries,
    num_heads=params['q']['kernel'].shape[1],
    mlp_ratio=mlp_ratio,
  )


def _decay_mask(params):
  """Weight decay on kernels and the queries; not on biases and LayerNorm scales."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in ('kernel', 'query'), params)


def train_attentive(
  train_tokens: np.ndarray,
  train_labels: np.ndarray,
  *,
  num_classes: int,
  num_queries: int = 1,
  num_heads: int = 4,
  mlp_ratio: float = 0.0,
  base_lr: float = 1e-3,
  weight_decay: float = 0.05,
  batch_size: int = 256,
  epochs: int = 20,
  warmup_epochs: int = 2,
  seed: int = 0,
) -> tuple[dict, np.ndarray]:
  """Train an :class:`AttentivePooler` on cached tokens (softmax cross-entropy).

  Shuffled mini-batches of b = min(batch_size, N) (the last partial one of an
  epoch is dropped), gathered on the host (the tokens stay in host memory) and
  fed to one jitted AdamW step; lr = base_lr × b / 256, linear warm-up for
  ``warmup_epochs`` then cosine decay to 0. Queries and kernels ~ truncated
  N(0, 0.02²), biases 0.

  Args:
    train_tokens: float16 / float32 [N, L, D]; train_labels: int [N] in [0, num_classes).

  Returns:
    (params as numpy, mean loss per epoch float32 [epochs]).
  """
  n, length, d = train_tokens.shape
  b = min(batch_size, n)
  steps_per_epoch = n // b
  module = AttentivePooler(num_classes, num_queries, num_heads, mlp_ratio)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, length, d), jnp.float32))['params']
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, base_lr * b / 256, steps_per_epoch * warmup_epochs, steps_per_epoch * epochs
  )
  tx = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=weight_decay, mask=_decay_mask)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits = module.apply({'params': p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  labels = np.asarray(train_labels, np.int32)
  losses = np.zeros(epochs, np.float32)
  for epoch in range(epochs):
    order = rng.permutation(n)[: steps_per_epoch * b].reshape(steps_per_epoch, b)
    epoch_losses = []
    for idx in np.sort(order, axis=1):  # sorted: faster host gathers, same batches
      params, opt_state, loss = step(params, opt_state, train_tokens[idx], labels[idx])
      epoch_losses.append(loss)
    losses[epoch] = float(np.mean(jax.device_get(epoch_losses)))
  return jax.device_get(params), losses


@jax.jit
def _chunk_scores(params, tokens):
  return pooler_from_params(params).apply({'params': params}, tokens)


def scores(params: dict, tokens: np.ndarray, chunk_size: int = SCORE_CHUNK) -> np.ndarray:
  """Logits float32 [N, num_classes] of ``tokens`` [N, L, D], in chunks of ``chunk_size``
  clips (the last one padded: one compiled shape)."""
  n = tokens.shape[0]
  chunk_size = max(1, min(chunk_size, n))
  parts = []
  for start in range(0, n, chunk_size):
    chunk = np.asarray(tokens[start : start + chunk_size])
    pad = chunk_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    parts.append(np.asarray(_chunk_scores(params, chunk))[: chunk_size - pad])
  return np.concatenate(parts) if parts else np.zeros((0, params['head']['kernel'].shape[1]), np.float32)


def fit_and_score(train: TokenFeatures, test: TokenFeatures, section, seed: int = 0) -> dict:
  """Train the attentive probe on ``train`` and score ``test``; touches no disk.

  Args:
    train, test: token features ([N, L, D]) of the same label space.
    section: the keys of ``config.attentive`` (num_queries, num_heads,
      mlp_ratio, base_lr, weight_decay, batch_size, epochs, warmup_epochs).
    seed: of the head's initialisation and the mini-batch order.

  Returns:
    {'top1', 'top5' (percent, per test record, views averaged), 'top5_k',
    'train_top1', 'final_loss', 'losses' [epochs], 'num_train', 'num_test'
    (records), 'num_classes', 'confusion' int [C, C], 'params'}.
  """
  num_classes = train.num_classes
  start = time.perf_counter()
  params, losses = train_attentive(
    train.features,
    train.labels,
    num_classes=num_classes,
    num_queries=section.num_queries,
    num_heads=section.num_heads,
    mlp_ratio=section.mlp_ratio,
    base_lr=section.base_lr,
    weight_decay=section.weight_decay,
    batch_size=section.batch_size,
    epochs=section.epochs,
    warmup_epochs=section.warmup_epochs,
    seed=seed,
  )
  for e in sorted({0, len(losses) // 4, len(losses) // 2, 3 * len(losses) // 4, len(losses) - 1}):
    logging.info('attentive probe epoch %d/%d: loss %.4f', e + 1, len(losses), losses[e])
  train_scores = scores(params, train.features)
  test_probs = np.asarray(jax.nn.softmax(scores(params, test.features)))
  test_scores, labels = report.aggregate_views(test_probs, test.labels, test.index)
  metrics = report.classification_metrics(test_scores, labels, num_classes)
  logging.info('attentive probe: trained and scored in %.1f s.', time.perf_counter() - start)
  return {
    'top1': metrics['top1'],
    'top5': metrics['top5'],
    'top5_k': metrics['top5_k'],
    'train_top1': report.topk_accuracy(train_scores, train.labels, 1),
    'final_loss': float(losses[-1]),
    'losses': losses,
    'num_train': len(train),
    'num_test': metrics['num_test'],
    'num_classes': num_classes,
    'confusion': metrics['confusion'],
    'params': params,
  }


# The head's and its training's keys, with the defaults of the periodic evaluator
# (mvm_jax/evaluate/evaluators.py 'attentive_probe'; configs/attentive_probe.py:tiny).
HEAD_DEFAULTS = dict(
  token_dtype='float16',
  num_queries=1,
  num_heads=4,
  mlp_ratio=0.0,
  base_lr=1.6e-2,  # lr 1e-3 at batch 16
  weight_decay=0.05,
  batch_size=16,
  epochs=50,
  warmup_epochs=5,
)


def validate_head(section, name: str) -> None:
  """Raise ConfigError naming ``config.<name>.<key>`` for an invalid key of :data:`HEAD_DEFAULTS`."""
  for key in ('num_queries', 'num_heads', 'batch_size', 'epochs'):
    if isinstance(section[key], bool) or not isinstance(section[key], int) or section[key] < 1:
      raise ConfigError(f'config.{name}.{key}: must be a positive integer, got {section[key]!r}')
  if section.token_dtype not in features_lib.TOKEN_DTYPES:
    raise ConfigError(
      f'config.{name}.token_dtype: {section.token_dtype!r} is not one of {features_lib.TOKEN_DTYPES}'
    )
  if not section.base_lr > 0:
    raise ConfigError(f'config.{name}.base_lr: must be positive, got {section.base_lr!r}')
  for key in ('weight_decay', 'mlp_ratio'):
    if not section[key] >= 0:
      raise ConfigError(f'config.{name}.{key}: must be >= 0, got {section[key]!r}')
  if not isinstance(section.warmup_epochs, int) or not 0 <= section.warmup_epochs < section.epochs:
    raise ConfigError(
      f'config.{name}.warmup_epochs: {section.warmup_epochs!r} is outside [0, {name}.epochs={section.epochs})'
    )


def validate(config) -> None:
  """Raise ConfigError naming the key of an invalid ``config.attentive`` value."""
  if SECTION not in config:
    raise ConfigError(f'config.{SECTION}: missing (see configs/attentive_probe.py)')
  a = config[SECTION]
  validate_head(a, SECTION)
  for key in ('train_views', 'extract_batch_size'):
    if not isinstance(a[key], int) or a[key] < 1:
      raise ConfigError(f'config.{SECTION}.{key}: must be a positive integer, got {a[key]!r}')
  for key in features_lib.SPLIT_KEYS:  # '' = the source's (features.default_split)
    if not isinstance(a[key], str):
      raise ConfigError(f'config.{SECTION}.{key}: must name a split of config.data.source, got {a[key]!r}')
  if not a.max_cache_gib > 0:
    raise ConfigError(f'config.{SECTION}.max_cache_gib: must be positive, got {a.max_cache_gib!r}')


def token_shape(resolved) -> tuple[int, int]:
  """(L, D): patch tokens per clip and their width, for a resolved config (MAE family or VIMPAC)."""
  method = methods.get(resolved)
  return math.prod(method.token_grid(resolved)), method.feature_width(resolved)


def check_encoder(config) -> tuple[int, int]:
  """Checks that need the evaluated encoder's shape (from ``init_from``'s config.json, before
  anything is built or compiled): num_heads divides the token width, and each split's
  token cache fits ``max_cache_gib``. Returns (L, D)."""
  from mvm_jax.data import pipeline

  resolved = frozen_lib.resolve_config(config)
  frozen_lib.video_encoder_method(resolved)
  a = config[SECTION]
  length, width = token_shape(resolved)
  if width % a.num_heads:
    raise ConfigError(
      f"config.{SECTION}.num_heads={a.num_heads} does not divide the encoder's token width {width}"
    )
  itemsize = np.dtype(a.token_dtype).itemsize
  eval_views = resolved.data.eval_temporal_views * resolved.data.eval_spatial_views
  for key, views in (('train_split', a.train_views), ('test_split', eval_views)):
    split = a[key]
    try:
      records = len(pipeline.build_video_source(resolved.data, split))
    except ValueError as e:  # sources.SourceError: an unknown split, a bad data.* value
      raise ConfigError(f'config.{SECTION}.{key}={split!r}: {e}') from None
    gib = records * views * length * width * itemsize / 2**30
    if gib > a.max_cache_gib:
      raise ConfigError(
        f'config.{SECTION}.max_cache_gib={a.max_cache_gib}: the {split!r} tokens would take '
        f'{gib:.3g} GiB ({records} records × {views} view(s) × {length} tokens × {width} × '
        f'{a.token_dtype}), held in memory; use a smaller split (e.g. a per-class subset list) '
        'or raise the limit'
      )
  return length, width


def run(config, workdir: str) -> dict:
  """Extract (or reuse) patch tokens, train the attentive probe, write results.json and the
  confusion PNG.

  Returns the results (as in results.json, plus 'summary': the one-line summary).
  """
  validate(config)
  features_lib.resolve_splits(config, SECTION)
  a = config[SECTION]
  features_lib.check_batch_size(config, a.extract_batch_size, f'{SECTION}.extract_batch_size')
  check_encoder(config)
  frozen = frozen_lib.load(config)
  extract_fn = features_lib.make_extract_fn(frozen, features_lib.TOKENS, a.token_dtype)
  train, test = (
    features_lib.load_or_extract(
      frozen,
      workdir,
      split,
      pool=features_lib.TOKENS,
      views=views,
      batch_size=a.extract_batch_size,
      extract_fn=extract_fn,
      token_dtype=a.token_dtype,
    )
    for split, views in ((a.train_split, a.train_views), (a.test_split, 1))
  )
  fit = fit_and_score(train, test, a, seed=config.seed)
  results = {k: v for k, v in fit.items() if k not in ('params', 'losses')}
  results.update(
    init_from=frozen.init_from,
    step=frozen.step,
    num_tokens=int(train.features.shape[1]),
    class_names=list(train.class_names),
    confusion_png=f'confusion_{NAME}.png',
    config={
      SECTION: a.to_dict(),
      'model': frozen.config.model.to_dict(),
      'data': frozen.config.data.to_dict(),
    },
  )
  results['summary'] = f'{NAME}: top1 {results["top1"]:.1f} top5 {results["top5"]:.1f} ({frozen.describe()})'
  title = f'attentive probe: top-1 {results["top1"]:.1f}%\n{frozen.describe()}'
  return report.publish(workdir, NAME, results, train.class_names, title)
