"""Spacetime masked autoencoder (MAE-ST) and the encoder-only classifier view.

Both hold the same `encoder` sub-module, so a pre-training checkpoint's
`params['encoder']` loads into the classifier without renaming.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mvm_jax.masking import Mask
from mvm_jax.models import heads, vit


def target_frame_indices(num_frames: int, pred_t_dim: int) -> np.ndarray:
  """Frames the decoder predicts: floor(linspace(0, T-1, pred_t_dim)) as in mae_st."""
  return np.floor(np.linspace(0, num_frames - 1, pred_t_dim)).astype(np.int32)


class DecoderStack(nn.Module):
  """Blocks → LayerNorm → linear prediction: [B, L, Dd] → [B, L, out_dim]."""

  depth: int
  num_heads: int
  out_dim: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = 'einsum'  # as the encoder's (model.attention)
  remat: str = 'none'  # as the encoder's (model.remat)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    block = vit.block_class(self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.attention, name=f'block{i}')(
        x, deterministic
      )
    x = vit.layer_norm('norm', self.dtype)(x)
    return vit.dense(self.out_dim, ('embed', None), 'pred', self.dtype, bias_name=None)(x)


def all_visible(batch: int, num_tokens: int) -> Mask:
  """A Mask that hides nothing (ids in order): the encoder sees every token."""
  ids = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (batch, num_tokens))
  return Mask(ids_keep=ids, ids_restore=ids, mask=jnp.zeros((batch, num_tokens), jnp.float32))


class MaskedAutoencoder(nn.Module):
  """MAE-ST: encode visible tokens, decode all, predict `pred_t_dim` frames' pixels;
  optionally HPM's loss predictor and a contrastive head on pooled features.

  __call__(video [B, T, H, W, C], mask: Mask) returns a dict:
    pred       [B, N, P]   predicted patches, P = (pred_t_dim/T')·p·p·C, order (u, p, q, c)
    target     [B, N, P]   raw pixel patches of the predicted frames (objectives normalise)
    mask       [B, N]      1 = hidden
    latent     [B, 1+n, D] encoder output ([CLS] first; n = visible count, or N if dense)
    pred_loss  [B, N]      HPM loss predictor (`predict_loss`): a second decoder of the
                           reconstructor's shape sharing decoder_embed, mask_token and the
                           decoder position embeddings; its outputs averaged per patch
    pooled     [B, D]      `pooling` of the visible tokens (with `projector`)
    projection [B, E]      `projector(pooled)`; BatchNorm uses batch statistics when
                           `deterministic=False` (apply with mutable=['batch_stats'])
    prediction [B, E]      SimSiam `predictor(projection)` (with `predictor`)
  """

  encoder: vit.Encoder
  decoder_width: int
  decoder_depth: int
  decoder_heads: int
  pred_t_dim: int
  num_frames: int
  decoder_mlp_ratio: float = 4.0
  dense_encoder: bool = False
  decoder_cls: str = 'learned'
  pos_embed: str = 'learned'
  dtype: Any = jnp.float32
  channels: int = 3
  predict_loss: bool = False
  pooling: heads.Pooling | None = None
  projector: heads.Projector | None = None
  predictor: heads.Projector | None = None

  @property
  def target_patch(self) -> tuple[int, int, int]:
    gt = self.encoder.grid[0]
    return (self.pred_t_dim // gt, self.encoder.patch[1], self.encoder.patch[2])

  def setup(self):
    self.decoder_embed = vit.dense(
      self.decoder_width, ('embed', None), 'decoder_embed', self.dtype, bias_name=None
    )
    self.mask_token = self.param(
      'mask_token', vit.partitioned(vit.embed_init, (None, None, None)), (1, 1, self.decoder_width)
    )
    if self.decoder_cls == 'learned':
      self.decoder_cls_token = self.param(
        'decoder_cls_token', vit.partitioned(vit.embed_init, (None, None, None)), (1, 1, self.decoder_width)
      )
    self.decoder_pos = vit.SeparablePosEmbed(
      self.encoder.grid, self.decoder_width, self.pos_embed, prefix='decoder_pos_embed'
    )
    out_dim = int(np.prod(self.target_patch)) * self.channels
    switches = dict(attention=self.encoder.attention, remat=self.encoder.remat)
    self.decoder = DecoderStack(
      self.decoder_depth, self.decoder_heads, out_dim, self.decoder_mlp_ratio, self.dtype, **switches
    )
    if self.predict_loss:
      self.loss_predictor = DecoderStack(
        self.decoder_depth, self.decoder_heads, out_dim, self.decoder_mlp_ratio, self.dtype, **switches
      )

  def encode(self, video, mask: Mask, deterministic: bool = True):
    """→ latent [B, 1+n, D] (sparse) or [B, 1+N, D] (dense)."""
    if self.dense_encoder:
      return self.encoder(video, mask=mask.mask, deterministic=deterministic)
    return self.encoder(video, ids_keep=mask.ids_keep, deterministic=deterministic)

  def decoder_tokens(self, latent, mask: Mask):
    """Latent → decoder input [B, 1+N, Dd]: embed, fill hidden slots with the
    mask token, restore (t, h, w) order, add decoder position embeddings. The
    decoder's [CLS] is its own learned token (`decoder_cls='learned'`, mae_st)
    or the embedded encoder [CLS] output (`'encoder'`, image MAE)."""
    x = self.decoder_embed(latent)
    cls, tokens = x[:, :1], x[:, 1:]
    if self.decoder_cls == 'learned':
      cls = jnp.broadcast_to(self.decoder_cls_token.astype(x.dtype), cls.shape)
    if not self.dense_encoder:
      b, n_vis, d = tokens.shape
      n_hidden = mask.ids_restore.shape[-1] - n_vis
      fill = jnp.broadcast_to(self.mask_token.astype(x.dtype), (b, n_hidden, d))
      tokens = jnp.concatenate([tokens, fill], axis=1)
      tokens = jnp.take_along_axis(tokens, mask.ids_restore[..., None], axis=1)
    pos, pos_cls = self.decoder_pos()
    tokens = tokens + pos[None].astype(x.dtype)
    cls = cls + pos_cls[None].astype(x.dtype)
    return jnp.concatenate([cls, tokens], axis=1)

  def targets(self, video):
    """[B, T, H, W, C] → [B, N, P] pixel patches of the `pred_t_dim` predicted frames."""
    frames = video[:, target_frame_indices(self.num_frames, self.pred_t_dim)]
    return vit.patchify(frames, self.target_patch)

  def _predicted_loss(self, decoder_input, deterministic: bool):
    """Decoder input [B, 1+N, Dd] → loss predictor's one scalar per patch [B, N]."""
    out = self.loss_predictor(decoder_input, deterministic)[:, 1:]
    return jnp.mean(out.astype(jnp.float32), axis=-1)

  def predict_losses(self, video):
    """HPM teacher view: per-patch predicted losses of the UNMASKED clip,
    [B, T, H, W, C] → [B, N] (the encoder sees every token)."""
    mask = all_visible(video.shape[0], math.prod(self.encoder.grid))
    latent = self.encode(video, mask, deterministic=True)
    return self._predicted_loss(self.decoder_tokens(latent, mask), deterministic=True)

  def __call__(self, video, mask: Mask, deterministic: bool = True):
    latent = self.encode(video, mask, deterministic)
    decoder_input = self.decoder_tokens(latent, mask)
    pred = self.decoder(decoder_input, deterministic)[:, 1:]
    outputs = {
      'pred': pred.astype(jnp.float32),
      'target': self.targets(video).astype(jnp.float32),
      'mask': mask.mask,
      'latent': latent,
    }
    if self.predict_loss:
      outputs['pred_loss'] = self._predicted_loss(decoder_input, deterministic)
    if self.projector is not None:
      visible = 1.0 - mask.mask if self.dense_encoder else None
      outputs['pooled'] = self.pooling(latent, visible)
      outputs['projection'] = self.projector(outputs['pooled'], train=not deterministic)
      if self.predictor is not None:
        outputs['prediction'] = self.predictor(outputs['projection'], train=not deterministic)
    return outputs


class VideoClassifier(nn.Module):
  """Encoder-only view for fine-tuning, as mae_st's VisionTransformer: mean of
  patch tokens → the encoder's final LayerNorm → dropout → linear head (zero-init).

  video [B, T, H, W, C] (optionally `token_keep` [B, N] bool to drop tokens
  while fine-tuning) → logits [B, num_classes]. Shares `params['encoder']`
  with `MaskedAutoencoder`.
  """

  encoder: vit.Encoder
  num_classes: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video, deterministic: bool = True, token_keep=None):
    pooled = self.encoder(video, token_keep=token_keep, pool='mean', deterministic=deterministic)
    pooled = nn.Dropout(self.dropout)(pooled, deterministic=deterministic)
    head = vit.dense(
      self.num_classes, ('embed', None), 'head', self.dtype, bias_name=None, kernel_init=nn.initializers.zeros
    )
    return head(pooled).astype(jnp.float32)
