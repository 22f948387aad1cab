"""Heads on the encoder's output: token pooling and the projector MLP.

HPM's loss predictor needs no module here: it is a second `mae.DecoderStack`
with out_dim = prod(target_patch)·C whose outputs are averaged over the last
axis, giving one scalar per patch ([B, L, P] → [B, L]).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mvm_jax.models import vit

POOLINGS = ('mean', 'max', 'gem', 'cls')
BN_MOMENTUM = 0.9  # torch BatchNorm1d momentum 0.1
BN_EPS = 1e-5


class Projector(nn.Module):
  """[B, D] → [B, out]: (Linear → BatchNorm → ReLU) × (num_layers - 1) → Linear.

  ViC-MAE: hidden 4096, out 128, 3 layers; VIMPAC: out 256 without last bias;
  SimSiam's projector adds BatchNorm after the last Linear (`bn_last`), its
  predictor is Projector(hidden=512, out=E, num_layers=2).

  BatchNorm normalises over the batch axis of the array it is given: under
  jit on a batch-sharded global array the statistics are global (as
  SyncBatchNorm). Call with `train=True` and `mutable=['batch_stats']` to
  use and update batch statistics; `train=False` uses the running averages.

  `num_views` > 1: x is [B·V, D] with the V views of a sample adjacent, and the
  layers run once per view (shared weights), so every BatchNorm normalises each
  view with its own statistics and updates its running averages once per view,
  as ViC-MAE's official code, which calls its projector on each view. 1 (VIMPAC):
  one pass, statistics over both views together.
  """

  hidden: int = 4096
  out: int = 128
  num_layers: int = 3
  use_bias_last: bool = True
  bn_last: bool = False
  num_views: int = 1
  dtype: Any = jnp.float32

  def _batch_norm(self, name: str, axis_name: str | None, train: bool):
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPS,
      dtype=self.dtype,
      scale_init=vit.partitioned(nn.initializers.ones, (axis_name,)),
      bias_init=vit.partitioned(nn.initializers.zeros, (axis_name,)),
      name=name,
    )

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.num_layers < 1:
      raise ValueError(f'Projector.num_layers={self.num_layers} must be >= 1')
    last = self.num_layers - 1
    # Every kernel has an axis named 'embed' (over fsdp by default): a 4096×4096 hidden kernel
    # must not be replicated over fsdp.
    hidden = [
      (
        vit.dense(self.hidden, ('embed', 'mlp'), f'fc{i}', self.dtype),
        self._batch_norm(f'bn{i}', 'mlp', train),
      )
      for i in range(last)
    ]
    out = nn.Dense(
      self.out,
      use_bias=self.use_bias_last,
      dtype=self.dtype,
      kernel_init=vit.partitioned(
        vit.dense_init, ('embed', None) if last == 0 else ('mlp', 'embed')
      ),  # as an MLP's fc2
      bias_init=vit.partitioned(nn.initializers.zeros, (None,)),
      name=f'fc{last}',
    )
    out_bn = self._batch_norm(f'bn{last}', None, train) if self.bn_last else None

    def layers(y):
      for fc, bn in hidden:
        y = nn.relu(bn(fc(y)))
      y = out(y)
      return y if out_bn is None else out_bn(y)

    if self.num_views == 1:
      return layers(x).astype(jnp.float32)
    views = x.reshape(-1, self.num_views, x.shape[-1])
    y = jnp.stack([layers(views[:, v]) for v in range(self.num_views)], axis=1)
    return y.reshape(x.shape[0], -1).astype(jnp.float32)


class Pooling(nn.Module):
  """Global feature from the encoder output: latent [B, 1+n, D] → [B, D].

  'mean' (ViC-MAE default), 'max' and 'gem' pool the patch tokens
  latent[:, 1:] ([CLS] excluded); 'cls' returns latent[:, 0]. With a sparse
  encoder every patch token is visible; with a dense one pass `token_mask`
  [B, n] (1 = pool this token, e.g. 1 - mask) to pool the visible ones only.
  GeM: (mean(max(x, eps)^p))^(1/p), p learnable (init `gem_p`) or fixed.
  """

  kind: str = 'mean'
  gem_p: float = 3.0
  gem_learnable: bool = True
  gem_eps: float = 1e-6

  @nn.compact
  def __call__(self, latent, token_mask=None):
    if self.kind not in POOLINGS:
      raise ValueError(f'pooling {self.kind!r}; valid: {POOLINGS}')
    if self.kind == 'cls':
      return latent[:, 0]
    tokens = latent[:, 1:].astype(jnp.float32)
    if token_mask is None:
      weights = jnp.ones(tokens.shape[:2], jnp.float32)
    else:
      weights = token_mask.astype(jnp.float32)
    weights = weights[..., None]  # [B, n, 1]
    count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)  # [B, 1]
    if self.kind == 'mean':
      return jnp.sum(tokens * weights, axis=1) / count
    if self.kind == 'max':
      return jnp.max(jnp.where(weights > 0, tokens, -jnp.inf), axis=1)
    if self.gem_learnable:
      p = self.param('gem_p', nn.initializers.constant(self.gem_p), (1,), jnp.float32)
    else:
      p = jnp.full((1,), self.gem_p, jnp.float32)
    powered = jnp.power(jnp.maximum(tokens, self.gem_eps), p)
    return jnp.power(jnp.sum(powered * weights, axis=1) / count, 1.0 / p)
