"""VIMPAC backbone: a post-LN transformer over VQ token maps with factorized attention.

Shapes: B = batch, (T, H, W) = token map, D = width, V = VQ vocabulary (codes
0 .. V-1; `token_vocab.special_token_ids(V)` adds PAD and [MASK] rows).

Embedding (VIMPAC Appendix A.1): x = LN(embed(token) + posT(t) + posH(h) +
posW(w)) with LN eps 1e-12; [CLS] is a separate learned vector with its own
position embedding, through the same LN.

Layouts name the attention blocks of one layer, left to right, separated by
',': each block is one or more patterns separated by '|' that run in parallel
(heads and attention width split evenly among them, outputs concatenated,
one output projection), and a pattern is the set of axes attended jointly,
joined by 'x':
  'T,H|W'  (default) attention over T; then over H and over W in parallel
  'T,HxW'  attention over T; then over each frame (TimeSformer "divided")
  'T,H,W'  three sequential axial attentions
  'TxHxW'  one full spacetime attention
Every attention block is post-LN: LN(x + Dropout(W_out [Attn_1(x), ...])); the
layer ends with LN(x + Dropout(MLP(x))), MLP = Linear → GELU (erf) → Linear.

[CLS] (as the reference, following TimeSformer): for a pattern whose rows are
the lines along its axes, the current [CLS] vector is prepended to every row;
each row's [CLS] output is computed with the row and the [CLS] outputs are
averaged over rows. [CLS] goes through the same projections, LNs and MLP.

PAD positions are masked out as attention keys (never as queries), so PAD
contents do not reach non-PAD outputs or [CLS].

Parameters carry logical axis names like `vit` ('embed', 'mlp', 'heads',
plus 'vocab' for embedding rows and logit biases, replicated by the default
`config.mesh.rules`); the blocks' activations 'act_batch' and 'act_embed'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mvm_jax import token_vocab
from mvm_jax.masking import blocks as blocks_lib
from mvm_jax.models import heads, vit
from mvm_jax import sharding

LN_EPS = 1e-12  # BERT's LayerNorm epsilon (the reference's)
INIT_STD = 0.02  # BERT initializer range
AXES = 'THW'
LAYOUTS = ('T,H|W', 'T,HxW', 'T,H,W', 'TxHxW')
POS_EMBED_NAMES = ('pos_embed_t', 'pos_embed_h', 'pos_embed_w')
Dtype = Any

normal_init = nn.initializers.normal(stddev=INIT_STD)


def parse_layout(layout: str) -> tuple[tuple[tuple[int, ...], ...], ...]:
  """'T,H|W' → (((0,),), ((1,), (2,))): blocks → parallel patterns → attended axes (0 = T, 1 = H, 2 = W)."""
  blocks = []
  for block in layout.split(','):
    patterns = []
    for pattern in block.split('|'):
      names = pattern.strip().split('x')
      if not all(n in AXES and len(n) == 1 for n in names) or len(set(names)) != len(names):
        raise ValueError(
          f'vimpac.layout={layout!r}: bad pattern {pattern!r}; a pattern is T, H or W joined by "x" '
          f'(e.g. "HxW"), patterns run in parallel with "|", blocks in sequence with ","; known: {LAYOUTS}'
        )
      patterns.append(tuple(sorted(AXES.index(n) for n in names)))
    blocks.append(tuple(patterns))
  return tuple(blocks)


def pattern_name(axes: Sequence[int]) -> str:
  return 'x'.join(AXES[a] for a in axes)


def layer_norm(name: str, dtype: Dtype, axis_name: str | None = 'embed') -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=LN_EPS,
    dtype=dtype,
    scale_init=vit.partitioned(nn.initializers.ones, (axis_name,)),
    bias_init=vit.partitioned(nn.initializers.zeros, (axis_name,)),
    name=name,
  )


def dense(features: int, names, name: str, dtype: Dtype, bias_name: str | None = None) -> nn.Dense:
  """`vit.dense` with BERT's N(0, 0.02) kernels and zero biases."""
  return vit.dense(features, names, name, dtype, bias_name=bias_name, kernel_init=normal_init)


class Dropout(nn.Module):
  """Inverted dropout (rng collection 'dropout'); the keep mask is drawn flat and
  reshaped: threefry draws of 3+ dimensions cost seconds of XLA CPU compile time."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return vit.drop(self.make_rng('dropout'), x, self.rate, x.shape)


class AxisAttention(nn.Module):
  """Multi-head attention along `axes` of the token map, [CLS] prepended to every row.

  __call__(cls [B, D], x [B, T, H, W, D], key_valid [B, T, H, W] bool or None)
  → (cls [B, dim], x [B, T, H, W, dim]), before the output projection.
  """

  axes: tuple[int, ...]
  num_heads: int
  dim: int  # q/k/v width of this pattern (num_heads × head dim)
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cls, x, key_valid=None, deterministic: bool = True):
    b, d = x.shape[0], x.shape[-1]
    grid = x.shape[1:4]
    rows = tuple(1 + a for a in range(3) if a not in self.axes)
    cols = tuple(1 + a for a in self.axes)
    perm = (0,) + rows + cols + (4,)
    num_rows = math.prod(x.shape[a] for a in rows)
    seq = math.prod(x.shape[a] for a in cols)
    tokens = jnp.transpose(x, perm).reshape(b, num_rows, seq, d)
    cls_rows = jnp.broadcast_to(cls[:, None, None, :].astype(tokens.dtype), (b, num_rows, 1, d))
    tokens = jnp.concatenate([cls_rows, tokens], axis=2)  # [B, R, 1 + S, D]

    head_dim = self.dim // self.num_heads
    q, k, v = (
      dense(self.dim, ('embed', 'heads'), n, self.dtype)(tokens).reshape(
        b, num_rows, 1 + seq, self.num_heads, head_dim
      )
      for n in ('query', 'key', 'value')
    )
    scores = jnp.einsum('brqhk,brshk->brhqs', q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
    if key_valid is not None:
      valid = jnp.transpose(key_valid, perm[:-1]).reshape(b, num_rows, seq)
      valid = jnp.concatenate([jnp.ones((b, num_rows, 1), bool), valid], axis=2)  # [CLS] always valid
      scores = jnp.where(valid[:, :, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = Dropout(self.dropout)(probs, deterministic).astype(v.dtype)
    out = jnp.einsum('brhqs,brshk->brqhk', probs, v).reshape(b, num_rows, 1 + seq, self.dim)

    cls_out = out[:, :, 0].mean(axis=1)
    x_out = out[:, :, 1:].reshape((b,) + tuple(x.shape[a] for a in rows + cols) + (self.dim,))
    inverse = tuple(perm.index(i) for i in range(5))
    x_out = jnp.transpose(x_out, inverse)
    assert x_out.shape[1:4] == grid
    return cls_out, x_out


class AttentionBlock(nn.Module):
  """Parallel patterns → concat → output projection → dropout → + residual → LN."""

  patterns: tuple[tuple[int, ...], ...]
  num_heads: int
  attention_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cls, x, key_valid=None, deterministic: bool = True):
    n = len(self.patterns)
    outs = [
      AxisAttention(
        axes, self.num_heads // n, self.attention_dim // n, self.dropout, self.dtype, name=pattern_name(axes)
      )(cls, x, key_valid, deterministic)
      for axes in self.patterns
    ]
    cls_att = jnp.concatenate([o[0] for o in outs], axis=-1)
    x_att = jnp.concatenate([o[1] for o in outs], axis=-1)
    proj = dense(x.shape[-1], ('heads', 'embed'), 'out', self.dtype, bias_name='embed')
    drop = Dropout(self.dropout)
    norm = layer_norm('ln', self.dtype)
    cls = norm(cls + drop(proj(cls_att), deterministic))
    x = norm(x + drop(proj(x_att), deterministic))
    return cls, x


class FactorizedLayer(nn.Module):
  """One layer: the layout's attention blocks in sequence, then LN(x + MLP(x))."""

  blocks: tuple[tuple[tuple[int, ...], ...], ...]
  num_heads: int
  attention_dim: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cls, x, key_valid=None, deterministic: bool = True):
    x = sharding.constrain(x, ('act_batch', None, None, None, 'act_embed'))  # [B, T, h, w, D]
    for j, patterns in enumerate(self.blocks):
      block = AttentionBlock(
        patterns, self.num_heads, self.attention_dim, self.dropout, self.dtype, name=f'attn{j}'
      )
      cls, x = block(cls, x, key_valid, deterministic)
    d = x.shape[-1]
    fc1 = dense(self.mlp_dim, ('embed', 'mlp'), 'fc1', self.dtype)
    fc2 = dense(d, ('mlp', 'embed'), 'fc2', self.dtype, bias_name='embed')
    drop = Dropout(self.dropout)
    norm = layer_norm('ln', self.dtype)
    mlp = lambda y: drop(fc2(vit.gelu(fc1(y))), deterministic)
    return norm(cls + mlp(cls)), norm(x + mlp(x))


class FactorizedEncoder(nn.Module):
  """VIMPAC backbone: tokens [B, T, H, W] int → ([CLS] [B, D], tokens [B, T, H, W, D]).

  Attention inner width `attention_dim` (0: D) and MLP hidden `mlp_dim` (0: 4D);
  Large-Half (`large_half=True`) defaults them to D/2 (head dim halved) and 2D.
  `pad` [B, T, H, W] bool (True = PAD) defaults to tokens == PAD id.
  """

  token_shape: tuple[int, int, int]
  width: int
  depth: int
  num_heads: int
  vocab_size: int = token_vocab.VOCAB_SIZE
  mlp_dim: int = 0
  attention_dim: int = 0
  large_half: bool = False
  layout: str = 'T,H|W'
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @property
  def special_tokens(self) -> token_vocab.SpecialTokens:
    return token_vocab.special_token_ids(self.vocab_size)

  @property
  def resolved_attention_dim(self) -> int:
    return self.attention_dim or (self.width // 2 if self.large_half else self.width)

  @property
  def resolved_mlp_dim(self) -> int:
    return self.mlp_dim or (2 * self.width if self.large_half else 4 * self.width)

  def setup(self):
    blocks = parse_layout(self.layout)
    att = self.resolved_attention_dim
    for patterns in blocks:
      n = len(patterns)
      if self.num_heads % n or att % self.num_heads:
        raise ValueError(
          f'vimpac: num_heads={self.num_heads} must divide the attention width {att} and be divisible '
          f'by the {n} parallel patterns of layout {self.layout!r}'
        )
    d = self.width
    t, h, w = self.token_shape
    pos_init = nn.initializers.normal(stddev=INIT_STD / math.sqrt(3))  # the reference's hw_separation
    names = (None, 'embed')
    self.embedding = self.param(
      'embedding', vit.partitioned(normal_init, ('vocab', 'embed')), (self.special_tokens.num_embeddings, d)
    )
    self.cls_token = self.param('cls_token', vit.partitioned(normal_init, names), (1, d))
    self.pos_embed_cls = self.param('pos_embed_cls', vit.partitioned(normal_init, names), (1, d))
    self.pos_embed_t = self.param('pos_embed_t', vit.partitioned(pos_init, names), (t, d))
    self.pos_embed_h = self.param('pos_embed_h', vit.partitioned(pos_init, names), (h, d))
    self.pos_embed_w = self.param('pos_embed_w', vit.partitioned(pos_init, names), (w, d))
    self.ln_pre = layer_norm('ln_pre', self.dtype)
    self.drop = Dropout(self.dropout)
    self.layers = [
      FactorizedLayer(
        blocks, self.num_heads, att, self.resolved_mlp_dim, self.dropout, self.dtype, name=f'block{i}'
      )
      for i in range(self.depth)
    ]

  def __call__(self, tokens, pad=None, deterministic: bool = True):
    if tuple(tokens.shape[1:]) != tuple(self.token_shape):
      raise ValueError(
        f'tokens have shape {tuple(tokens.shape)}, the model expects [B, {", ".join(map(str, self.token_shape))}]; '
        'resize position embeddings with interpolate_pos_embed'
      )
    if pad is None:
      pad = tokens == self.special_tokens.pad_id
    key_valid = ~pad.astype(bool)
    pos = (
      self.pos_embed_t[:, None, None, :]
      + self.pos_embed_h[None, :, None, :]
      + self.pos_embed_w[None, None, :, :]
    )
    # Gather from a replicated table (FSDP shards its columns): batch-sharded lookups.
    table = sharding.constrain(self.embedding, (None, None))
    x = jnp.take(table, tokens, axis=0) + pos[None]
    cls = jnp.broadcast_to(self.cls_token + self.pos_embed_cls, (tokens.shape[0], self.width))
    x = self.drop(self.ln_pre(x.astype(self.dtype)), deterministic)
    cls = self.drop(self.ln_pre(cls.astype(self.dtype)), deterministic)
    for layer in self.layers:
      cls, x = layer(cls, x, key_valid, deterministic)
    return cls, x

  def token_embedding(self):
    """[V, D]: the embedding rows of the V codes (the tied output weights)."""
    return self.embedding[: self.vocab_size]


class TokenHead(nn.Module):
  """BERT LM head: u = LN(GELU(Dense(h))), logits = u · E^T + b over the V codes.

  __call__(h [..., D], embedding [V, D]) → logits [..., V] float32; E is the
  backbone's (tied) table, b this head's own bias. (The reference scores all
  V + 5 rows; special tokens are never targets, so only codes are scored.)
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, embedding):
    d = h.shape[-1]
    u = dense(d, ('embed', 'mlp'), 'dense', self.dtype)(h)
    u = layer_norm('ln', self.dtype, 'mlp')(vit.gelu(u))
    bias = self.param('bias', vit.partitioned(nn.initializers.zeros, ('vocab',)), (embedding.shape[0],))
    logits = jnp.einsum(
      '...d,vd->...v', u.astype(self.dtype), embedding.astype(self.dtype), preferred_element_type=jnp.float32
    )
    return logits + bias


class VimpacModel(nn.Module):
  """Backbone + token head + optional [CLS] projector.

  __call__(tokens [B, T, H, W] int32 (already corrupted), pad [B, T, H, W] bool
  or None (None: tokens == PAD id), deterministic, positions [B, P] int32 or
  None) returns a dict:
    logits      [B, T, H, W, V] float32 (or [B, P, V] at the flat (t, h, w)
                indices `positions`, to score only a static subset)
    cls         [B, D]           backbone [CLS] output
    tokens_out  [B, T, H, W, D]  backbone token outputs
    projection  [B, E] float32   `projector(cls)` (with a projector); its
                BatchNorm uses batch statistics when `deterministic=False`
                (apply with mutable=['batch_stats'])
  """

  backbone: FactorizedEncoder
  projector: heads.Projector | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, pad=None, deterministic: bool = True, positions=None):
    cls, x = self.backbone(tokens, pad, deterministic)
    out = {'cls': cls, 'tokens_out': x}
    feats = x
    if positions is not None:
      flat = x.reshape(x.shape[0], -1, x.shape[-1])
      feats = jnp.take_along_axis(flat, positions[..., None].astype(jnp.int32), axis=1)
    out['logits'] = TokenHead(self.dtype, name='token_head')(feats, self.backbone.token_embedding())
    if self.projector is not None:
      out['projection'] = self.projector(cls, train=not deterministic)
    return out


class VimpacPretrainer(nn.Module):
  """`model` (a VimpacModel, sharing its parameter names) as the pre-training step calls it.

  __call__(tokens [B, T, H, W] int32 (uncorrupted; PAD where there is no
  frame), mask [B, T, H, W] bool (True = masked; from `masking.blocks`),
  deterministic) corrupts the masked tokens ([MASK], or BERT 80/10/10 with
  the 'dropout' rng) and returns the model's outputs plus what `token_ce`
  scores against: 'target_tokens' (the tokens), 'token_mask', 'pad'.
  """

  model: VimpacModel
  bert_corruption: bool = False

  def setup(self):
    nn.share_scope(self, self.model)

  def __call__(self, tokens, mask, deterministic: bool = True):
    special = self.model.backbone.special_tokens
    pad = tokens == special.pad_id
    mask = mask.astype(bool) & ~pad
    rng = self.make_rng('dropout') if self.bert_corruption else jax.random.PRNGKey(0)
    corrupted = blocks_lib.corrupt_tokens(
      rng, tokens, mask, special.mask_id, special.vocab_size, self.bert_corruption
    )
    out = self.model(corrupted, pad, deterministic)
    return dict(out, target_tokens=tokens, token_mask=mask, pad=pad)

  def features(self, tokens):
    """Uncorrupted tokens → ([CLS] [B, D], token outputs [B, T, H, W, D]) for evaluation."""
    return self.model.backbone(tokens, None, True)


class TokenClassifier(nn.Module):
  """Fine-tuning view of a VIMPAC backbone: tokens [B, T, H, W] → [CLS] → dropout →
  linear head (zero-init) → logits [B, num_classes] float32. Shares
  `params['backbone']` with the pre-trained `VimpacModel`."""

  backbone: FactorizedEncoder
  num_classes: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True):
    cls, _ = self.backbone(tokens, None, deterministic)
    cls = nn.Dropout(self.dropout)(cls, deterministic=deterministic)
    head = vit.dense(
      self.num_classes, ('embed', None), 'head', self.dtype, bias_name=None, kernel_init=nn.initializers.zeros
    )
    return head(cls).astype(jnp.float32)


# --- position embedding resizing --------------------------------------------


def resize_linear(table, length: int):
  """[L, D] → [length, D], linear along L with half-pixel centres: torch
  F.interpolate(mode='linear', align_corners=False), as the reference resizes
  position embeddings (no antialiasing when shrinking). NumPy in, NumPy out
  (host-side checkpoint surgery); jax arrays use jnp (also under jit)."""
  xp = np if isinstance(table, np.ndarray) else jnp
  old = table.shape[0]
  if old == length:
    return table
  src = np.maximum((np.arange(length) + 0.5) * (old / length) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int32), old - 1)
  hi = np.minimum(lo + 1, old - 1)
  frac = (src - lo).astype(np.float32)[:, None]
  resized = (1.0 - frac) * table[lo].astype(xp.float32) + frac * table[hi].astype(xp.float32)
  return resized.astype(table.dtype)


def interpolate_pos_embed(params, new_shape) -> dict:
  """Resize every pos_embed_t / _h / _w in a (nested, unboxed) params tree to
  new_shape = (T, H, W); other leaves are returned as they are. E.g. a
  checkpoint trained on 5×16×16 tokens → a model on 5×32×32."""
  new_shape = tuple(int(s) for s in new_shape)
  flat = traverse_util.flatten_dict(params)
  for path, value in flat.items():
    if path[-1] in POS_EMBED_NAMES:
      flat[path] = resize_linear(value, new_shape[POS_EMBED_NAMES.index(path[-1])])
  return traverse_util.unflatten_dict(flat)
