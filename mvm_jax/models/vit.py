"""Spacetime ViT pieces: patch embedding, positional embeddings, pre-LN blocks, encoder.

Shapes use B = batch, T×H×W×C = clip (channels last), t×p×p = patch size,
G = (T/t, H/p, W/p) = token grid, N = prod(G) tokens ordered (t, h, w), D = width.

Parameters carry logical axis names ('embed', 'mlp', 'heads', ...), the
blocks' activations 'act_batch', 'act_length', 'act_embed', so that
`mvm_jax.sharding` can shard them over a mesh by `config.mesh.rules`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvm_jax import sharding

LN_EPS = 1e-6  # mae_st's LayerNorm epsilon.
Dtype = Any

# model.attention -> how `attend` computes it: 'einsum' (two einsums and a float32 softmax, written
# here), or jax.nn.dot_product_attention's 'xla' or 'cudnn' (fused, GPU) implementation.
ATTENTION = {'einsum': 'einsum', 'xla': 'xla', 'cudnn': 'cudnn'}
# model.remat -> the jax.checkpoint policy of each block (None: no rematerialisation).
REMAT_POLICIES = {
  'none': None,
  'full': jax.checkpoint_policies.nothing_saveable,
  'dots_saveable': jax.checkpoint_policies.dots_saveable,
}

dense_init = nn.initializers.xavier_uniform()
# mae_st initialises the Conv3d patch projection with xavier-uniform on its [D, C·t·p·p]
# view: fan-in C·t·p², fan-out D. On the 5-D kernel [t, p, p, C, D] Flax's default would
# multiply the fan-out by the receptive field t·p² too (weights 5-13x too small).
patch_embed_init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2, 3), out_axis=4)
embed_init = nn.initializers.truncated_normal(stddev=0.02)


def partitioned(init, names: Sequence[Optional[str]]):
  return nn.with_logical_partitioning(init, tuple(names))


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=LN_EPS,
    dtype=dtype,
    scale_init=partitioned(nn.initializers.ones, ('embed',)),
    bias_init=partitioned(nn.initializers.zeros, ('embed',)),
    name=name,
  )


def dense(
  features: int,
  names: Sequence[Optional[str]],
  name: str,
  dtype: Dtype,
  bias_name: Optional[str] = None,
  kernel_init=dense_init,
) -> nn.Dense:
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=partitioned(kernel_init, names),
    bias_init=partitioned(nn.initializers.zeros, (bias_name or names[-1],)),
    name=name,
  )


def token_grid(video_shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
  """(T, H, W) clip size and (t, p, p) patch → (T/t, H/p, W/p) token grid."""
  return tuple(int(s) // int(q) for s, q in zip(video_shape, patch))


def patchify(video: jax.Array, patch: Sequence[int]) -> jax.Array:
  """[B, T, H, W, C] → [B, N, t·p·p·C], vectors ordered (u, p, q, c) like mae_st."""
  t, p, q = patch
  return einops.rearrange(video, 'b (T u) (H p) (W q) c -> b (T H W) (u p q c)', u=t, p=p, q=q)


def unpatchify(patches: jax.Array, grid: Sequence[int], patch: Sequence[int], channels: int = 3) -> jax.Array:
  """Inverse of `patchify`: [B, N, t·p·p·C] → [B, T, H, W, C]."""
  (gt, gh, gw), (t, p, q) = grid, patch
  return einops.rearrange(
    patches, 'b (T H W) (u p q c) -> b (T u) (H p) (W q) c', T=gt, H=gh, W=gw, u=t, p=p, q=q, c=channels
  )


def sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
  """Fixed sin-cos embedding of integer positions: [L] → [L, dim]."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.outer(positions, omega)
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_spatial(h: int, w: int, dim: int) -> np.ndarray:
  """2-D sin-cos (half the channels for rows, half for columns): → [h·w, dim]."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.concatenate(
    [sincos_1d(rows.reshape(-1), dim // 2), sincos_1d(cols.reshape(-1), dim // 2)], axis=1
  )


class SeparablePosEmbed(nn.Module):
  """Spatial (H'W') + temporal (T') + class position embeddings, as in mae_st.

  kind='learned' (trunc-normal 0.02) or 'sincos' (fixed, not trained). With
  sin-cos and a single temporal token (frame-level models) the temporal term is
  left out: at t = 0 it is the constant [0…0, 1…1], which would shift every token.
  Returns (tokens [N, D] in (t, h, w) order, class [1, D]).
  """

  grid: tuple[int, int, int]
  dim: int
  kind: str = 'learned'
  prefix: str = 'pos_embed'

  @nn.compact
  def __call__(self):
    gt, gh, gw = self.grid
    names = (None, None, 'embed')
    if self.kind == 'learned':
      spatial = self.param(f'{self.prefix}_spatial', partitioned(embed_init, names), (1, gh * gw, self.dim))
      temporal = self.param(f'{self.prefix}_temporal', partitioned(embed_init, names), (1, gt, self.dim))
      cls = self.param(f'{self.prefix}_class', partitioned(embed_init, names), (1, 1, self.dim))
    elif self.kind == 'sincos':
      spatial = jnp.asarray(sincos_spatial(gh, gw, self.dim))[None]
      temporal = jnp.asarray(sincos_1d(np.arange(gt), self.dim))[None]
      if gt == 1:
        temporal = jnp.zeros_like(temporal)
      cls = jnp.zeros((1, 1, self.dim), jnp.float32)
    else:
      raise ValueError(f'model.pos_embed must be "learned" or "sincos", got {self.kind!r}')
    tokens = (spatial[:, None, :, :] + temporal[:, :, None, :]).reshape(gt * gh * gw, self.dim)
    return tokens, cls[0]


class _PatchMatmul(nn.Module):
  """The patch convolution's parameters ('kernel' [t, p, p, C, D], 'bias' [D], same init) applied
  as patchify + one matmul: [B, T, H, W, C] → [B, N, D]; with `ids_keep` [B, K] only the kept
  patches are projected: → [B, K, D]."""

  patch: tuple[int, int, int]
  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video, ids_keep=None):
    shape = (*self.patch, video.shape[-1], self.dim)
    kernel = self.param('kernel', partitioned(patch_embed_init, (None, None, None, None, 'embed')), shape)
    bias = self.param('bias', partitioned(nn.initializers.zeros, ('embed',)), (self.dim,))
    x, kernel, bias = nn.dtypes.promote_dtype(video, kernel, bias, dtype=self.dtype)
    patches = patchify(x, self.patch)
    if ids_keep is not None:
      patches = jnp.take_along_axis(patches, ids_keep[..., None], axis=1)
    return patches @ kernel.reshape(-1, self.dim) + bias


class PatchEmbed(nn.Module):
  """t×p×p non-overlapping 3-D convolution: [B, T, H, W, C] → [B, N, D].

  impl 'conv' (XLA convolution) or 'matmul' (patchify + one matmul: the same parameters and
  sums in another order; equal to float rounding). With 'matmul' and `ids_keep` [B, K], only the
  kept patches are projected (→ [B, K, D]): a tenth of the work at MAE's mask ratio 0.9, forward
  and backward (the 3-D convolution was a fifth of bench_small's step on an H100)."""

  patch: tuple[int, int, int]
  dim: int
  dtype: Dtype = jnp.float32
  impl: str = 'conv'

  @nn.compact
  def __call__(self, video, ids_keep=None):
    if self.impl == 'matmul':
      return _PatchMatmul(self.patch, self.dim, self.dtype, name='proj')(video, ids_keep)
    if ids_keep is not None:
      raise ValueError('PatchEmbed: ids_keep needs impl "matmul"')
    if self.impl != 'conv':
      raise ValueError(f'model.patch_embed must be "conv" or "matmul", got {self.impl!r}')
    x = nn.Conv(
      self.dim,
      kernel_size=self.patch,
      strides=self.patch,
      padding='VALID',
      dtype=self.dtype,
      kernel_init=partitioned(patch_embed_init, (None, None, None, None, 'embed')),
      bias_init=partitioned(nn.initializers.zeros, ('embed',)),
      name='proj',
    )(video)
    return einops.rearrange(x, 'b t h w d -> b (t h w) d')


def drop(rng, x, rate: float, shape):
  """Inverted dropout of `x` with a keep mask of `shape` (broadcast to x). The mask
  is drawn flat and reshaped: threefry draws of 3+ dimensions cost seconds of
  XLA CPU compile time."""
  keep = 1.0 - rate
  draw = jax.random.bernoulli(rng, keep, (int(np.prod(shape)),)).reshape(shape)
  return jnp.where(draw, x / keep, 0.0).astype(x.dtype)


class DropPath(nn.Module):
  """Stochastic depth per sample; identity when deterministic or rate 0."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return drop(self.make_rng('dropout'), x, self.rate, (x.shape[0],) + (1,) * (x.ndim - 1))


def einsum_attention(q, k, v, key_mask, scale: float):
  """softmax(q·kᵀ·scale) v on q, k, v: [B, L, heads, head_dim] -> the same shape, logits and softmax
  in float32 whatever the inputs' dtype; key_mask: optional [B, L] bool (False = not attended to).

  The same sums as jax.nn.dot_product_attention's 'xla' implementation, without its grouped-query
  vmap, whose layout made the backward pass 2.3× slower on XLA CPU (decoder shape of bench_small).
  The softmax's division is applied to the [B, L, heads, head_dim] output rather than to the
  [B, heads, L, L] weights (one pass less over the largest tensor; 1.2× on the decoder attention
  of bench_small, forward and backward, XLA CPU); the max subtracted is a constant for the gradient,
  as in jax.nn.softmax."""
  logits = jnp.einsum(
    'bqhd,bkhd->bhqk', q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32
  )
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  total = jnp.einsum('bhqk->bqh', weights)[..., None]  # [B, L, heads, 1]
  out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return (out / total).astype(v.dtype)


def attend(q, k, v, key_mask, scale: float, implementation: str, pad_to_even: bool | None = None):
  """Attention on q, k, v: [B, L, heads, head_dim] -> the same shape; key_mask: optional [B, L]
  bool (False = key not attended to). implementation 'einsum' (`einsum_attention`), or 'xla' /
  'cudnn' (`jax.nn.dot_product_attention`).

  jax's cuDNN path refuses an odd sequence length in training (it always passes a bias, even an
  empty one, and cuDNN needs an even length with a bias); our lengths are often odd ([CLS] + an
  even token count). So with cuDNN (or `pad_to_even=True`) an odd L gets one padding key that no
  query attends to (key_value_seq_lengths, or the key mask), and the padded query's output is
  dropped: the result is the unpadded attention's."""
  if implementation == 'einsum':
    return einsum_attention(q, k, v, key_mask, scale)
  batch, length = q.shape[:2]
  if pad_to_even is None:
    pad_to_even = implementation == 'cudnn'
  seq_lengths = None
  if pad_to_even and length % 2:
    pad = lambda y: jnp.pad(y, ((0, 0), (0, 1), (0, 0), (0, 0)))  # noqa: E731
    q, k, v = pad(q), pad(k), pad(v)
    if key_mask is None:
      seq_lengths = jnp.full((batch,), length, jnp.int32)
    else:
      key_mask = jnp.pad(key_mask, ((0, 0), (0, 1)), constant_values=False)
  mask = None if key_mask is None else key_mask[:, None, None, :]
  out = jax.nn.dot_product_attention(
    q, k, v, mask=mask, scale=scale, key_value_seq_lengths=seq_lengths, implementation=implementation
  )
  return out[:, :length]


class Attention(nn.Module):
  """Multi-head self-attention with separate q, k, v projections (with bias)."""

  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'  # a key of ATTENTION

  @nn.compact
  def __call__(self, x, key_mask=None):
    """x: [B, L, D]; key_mask: optional [B, L] bool, False = token not attended to."""
    d = x.shape[-1]
    head_dim = d // self.num_heads
    split = lambda y: einops.rearrange(y, 'b l (h k) -> b l h k', h=self.num_heads)
    q, k, v = (split(dense(d, ('embed', 'heads'), n, self.dtype)(x)) for n in ('q', 'k', 'v'))
    out = attend(q, k, v, key_mask, head_dim**-0.5, ATTENTION[self.attention])
    out = einops.rearrange(out, 'b l h k -> b l (h k)')
    return dense(d, ('heads', 'embed'), 'proj', self.dtype, bias_name='embed')(out)


def gelu(x):
  """Exact (erf) GELU, x·Φ(x) = x/2·(1 + erf(x/√2)): PyTorch's nn.GELU formula. jax.nn.gelu's exact
  form goes through erfc, which XLA CPU splits into several passes (2.5× slower forward, same values
  to 5e-7)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2**-0.5, x.dtype)))


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = dense(self.hidden, ('embed', 'mlp'), 'fc1', self.dtype)(x)
    x = gelu(x)
    return dense(d, ('mlp', 'embed'), 'fc2', self.dtype, bias_name='embed')(x)


class Block(nn.Module):
  """Pre-LN transformer block: x + DropPath(Attn(LN x)); x + DropPath(MLP(LN x))."""

  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'

  @nn.compact
  def __call__(self, x, deterministic: bool = True, key_mask=None):
    x = sharding.constrain(x, ('act_batch', 'act_length', 'act_embed'))  # [B, N, D]
    drop = DropPath(self.drop_path)
    attn = Attention(self.num_heads, self.dtype, self.attention, name='attn')
    x = x + drop(attn(layer_norm('norm1', self.dtype)(x), key_mask), deterministic)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    x = x + drop(Mlp(hidden, self.dtype, name='mlp')(layer_norm('norm2', self.dtype)(x)), deterministic)
    return x


def block_class(remat: str = 'none'):
  """`Block`, or `Block` rematerialised in the backward pass with the jax.checkpoint policy
  `REMAT_POLICIES[remat]` (parameter names unchanged)."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f'model.remat must be one of {list(REMAT_POLICIES)}, got {remat!r}')
  if remat == 'none':
    return Block
  # static_argnums counts `self`: `deterministic` is argument 2.
  return nn.remat(Block, policy=REMAT_POLICIES[remat], static_argnums=(2,))


class _ScanBlock(nn.Module):
  """One `Block` as an `nn.scan` body: (x, key_mask) -> (x, None). No stochastic depth (the
  unrolled encoder's per-layer rates are not scanned; `Encoder` refuses scan with them)."""

  num_heads: int
  mlp_ratio: float
  dtype: Dtype
  attention: str
  remat: str
  deterministic: bool

  @nn.compact
  def __call__(self, x, key_mask):
    block = block_class(self.remat)(
      self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.attention, name='block'
    )
    return block(x, self.deterministic, key_mask), None


class Encoder(nn.Module):
  """ViT encoder over spacetime patches with a [CLS] token.

  Sparse use (MAE): `ids_keep` [B, n] selects visible tokens, only those are
  encoded. Dense use ("w/ [M]" in MAE-ST Table 1): `mask` [B, N] (1 = hidden)
  replaces hidden tokens by a learned mask token and all N are encoded.
  Neither: every token is encoded (fine-tuning, feature extraction).
  `token_keep` [B, N] bool (with neither): tokens marked False are not
  attended to (static-shape token dropping, for masking while fine-tuning).
  Returns [B, 1 + n, D] with [CLS] first, after the final LayerNorm; with
  `pool='mean'`, [B, D]: the mean of the (kept) patch tokens, then the final
  LayerNorm, as mae_st's fine-tuning model does.
  """

  patch: tuple[int, int, int]
  grid: tuple[int, int, int]
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  pos_embed: str = 'learned'
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'  # model.attention: a key of ATTENTION
  remat: str = 'none'  # model.remat: a key of REMAT_POLICIES
  # model.scan_blocks: one nn.scan over the blocks (faster compiles of deep models); the block
  # parameters are then stacked under 'blocks' [depth, ...] instead of 'block0'..'block{depth-1}'
  # (export to PyTorch and layer-wise lr decay read the unrolled names).
  scan_blocks: bool = False
  patch_embed: str = 'matmul'  # model.patch_embed: PatchEmbed.impl

  @nn.compact
  def __call__(
    self, video, *, ids_keep=None, mask=None, token_keep=None, pool=None, deterministic: bool = True
  ):
    embed = PatchEmbed(self.patch, self.width, self.dtype, self.patch_embed, name='patch_embed')
    pos, pos_cls = SeparablePosEmbed(self.grid, self.width, self.pos_embed, name='pos')()
    if ids_keep is not None and mask is None and self.patch_embed == 'matmul':
      # Embed only the kept patches: the same tokens as embedding all and keeping ids_keep.
      x = embed(video.astype(self.dtype), ids_keep) + pos[ids_keep].astype(self.dtype)
    else:
      x = embed(video.astype(self.dtype))
      x = x + pos[None].astype(x.dtype)
      if mask is not None:
        mask_token = self.param(
          'mask_token', partitioned(embed_init, (None, None, 'embed')), (1, 1, self.width)
        )
        x = jnp.where(mask[..., None] > 0, mask_token.astype(x.dtype), x)
      if ids_keep is not None:
        x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
    cls = self.param('cls_token', partitioned(embed_init, (None, None, 'embed')), (1, 1, self.width))
    cls = jnp.broadcast_to((cls + pos_cls).astype(x.dtype), (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    key_mask = None
    if token_keep is not None:
      key_mask = jnp.concatenate([jnp.ones_like(token_keep[:, :1], bool), token_keep.astype(bool)], axis=1)
    if self.scan_blocks:
      x = _scan_blocks(self, x, deterministic, key_mask)
    else:
      rates = np.linspace(0.0, self.drop_path_rate, self.depth)
      block = block_class(self.remat)
      for i in range(self.depth):
        x = block(
          self.num_heads, self.mlp_ratio, float(rates[i]), self.dtype, self.attention, name=f'block{i}'
        )(x, deterministic, key_mask)
    norm = layer_norm('norm', self.dtype)
    if pool is None:
      return norm(x)
    if pool != 'mean':
      raise ValueError(f'pool must be None or "mean", got {pool!r}')
    weights = (
      jnp.ones(x.shape[:2], x.dtype).at[:, 0].set(0) if key_mask is None else key_mask.at[:, 0].set(False)
    )
    weights = weights.astype(x.dtype)[..., None]
    return norm((x * weights).sum(axis=1) / weights.sum(axis=1))


def _scan_blocks(module: Encoder, x, deterministic: bool, key_mask):
  if module.drop_path_rate > 0 and not deterministic:
    raise ValueError('model.scan_blocks does not support drop_path_rate > 0 (unroll the blocks)')
  scanned = nn.scan(
    _ScanBlock,
    variable_axes={'params': 0},
    split_rngs={'params': True, 'dropout': True},
    in_axes=nn.broadcast,
    length=module.depth,
    metadata_params={nn.PARTITION_NAME: 'layers'},
  )
  body = scanned(
    module.num_heads,
    module.mlp_ratio,
    module.dtype,
    module.attention,
    module.remat,
    deterministic,
    name='blocks',
  )
  return body(x, key_mask)[0]
