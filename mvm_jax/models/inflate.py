"""Move encoder parameters between video (T frames, t×p×p patches) and image (T = 1) models.

Video → image (MAE-ST: evaluate frames as T = 1 clips): the t×p×p patch
kernel is summed over its t slices (a still clip of t identical frames then
gives the same embedding) and the temporal position embeddings are averaged.
Image → video (MAE-ST §A, "inflate"): the 1×p×p kernel is repeated over t and
divided by t (a still clip gives the image embedding) and the temporal
position embeddings start at zero (an image model's own single temporal
embedding is folded into the spatial ones).

Both take and return the `params['encoder']` tree of `vit.Encoder`.
"""

from __future__ import annotations

import numpy as np


def _with(tree: dict, path: tuple[str, ...], value) -> dict:
  """Copy of the nested dict `tree` with `path` set to `value`."""
  head, *rest = path
  out = dict(tree)
  out[head] = _with(tree[head], tuple(rest), value) if rest else value
  return out


def deflate_to_image(encoder_params: dict) -> dict:
  """Video encoder params (kernel [t, p, p, C, D], temporal pos [1, T', D]) → image (t = 1, T' = 1)."""
  kernel = np.asarray(encoder_params['patch_embed']['proj']['kernel'])
  params = _with(encoder_params, ('patch_embed', 'proj', 'kernel'), kernel.sum(axis=0, keepdims=True))
  if 'pos' in params and 'pos_embed_temporal' in params['pos']:
    temporal = np.asarray(params['pos']['pos_embed_temporal'])
    params = _with(params, ('pos', 'pos_embed_temporal'), temporal.mean(axis=1, keepdims=True))
  return params


def inflate_to_video(encoder_params: dict, t_patch_size: int, temporal_tokens: int) -> dict:
  """Image encoder params (kernel [1, p, p, C, D]) → video: kernel repeated over
  `t_patch_size` and divided by it; temporal pos embeddings [1, T', D] zeros."""
  kernel = np.asarray(encoder_params['patch_embed']['proj']['kernel'])
  if kernel.shape[0] != 1:
    raise ValueError(f'inflate_to_video expects an image kernel [1, p, p, C, D], got {kernel.shape}')
  params = _with(
    encoder_params, ('patch_embed', 'proj', 'kernel'), np.repeat(kernel, t_patch_size, axis=0) / t_patch_size
  )
  if 'pos' in params and 'pos_embed_temporal' in params['pos']:
    # An image model's single temporal embedding is folded into the spatial ones, so the
    # temporal embeddings can start at zero without changing what a still clip sees.
    temporal = np.asarray(params['pos']['pos_embed_temporal'])
    spatial = np.asarray(params['pos']['pos_embed_spatial']) + temporal.mean(axis=1, keepdims=True)
    params = _with(params, ('pos', 'pos_embed_spatial'), spatial)
    zeros = np.zeros((1, temporal_tokens, temporal.shape[-1]), np.float32)
    params = _with(params, ('pos', 'pos_embed_temporal'), zeros)
  return params
