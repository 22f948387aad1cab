"""Image ↔ video encoder conversion keeps still clips' embeddings."""

import jax
import jax.numpy as jnp
import numpy as np

from mvm_jax.models import inflate, vit
from mvm_jax.train.state import strip_boxes


def _encoder(t_patch, num_frames, depth=1):
  return vit.Encoder(
    patch=(t_patch, 8, 8), grid=(num_frames // t_patch, 2, 2), width=16, depth=depth, num_heads=2
  )


def test_inflate_then_still_clip_equals_image():
  # depth 0: compare the token embeddings (patch embed + positions) the blocks would see
  image_enc, video_enc = _encoder(1, 1, depth=0), _encoder(2, 4, depth=0)
  frame = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 16, 16, 3))
  image_params = strip_boxes(image_enc.init(jax.random.PRNGKey(1), frame)['params'])
  video_params = inflate.inflate_to_video(jax.device_get(image_params), t_patch_size=2, temporal_tokens=2)
  assert video_params['patch_embed']['proj']['kernel'].shape[0] == 2
  np.testing.assert_array_equal(video_params['pos']['pos_embed_temporal'], 0.0)
  still = jnp.repeat(frame, 4, axis=1)
  image_out = image_enc.apply({'params': image_params}, frame)
  video_out = video_enc.apply({'params': video_params}, still)
  # each temporal slice of the still clip embeds exactly like the image
  np.testing.assert_allclose(video_out[:, 1:5], image_out[:, 1:], atol=1e-5)
  np.testing.assert_allclose(video_out[:, 5:9], image_out[:, 1:], atol=1e-5)


def test_deflate_sums_the_kernel_over_time():
  video_enc = _encoder(2, 4)
  params = strip_boxes(video_enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16, 16, 3)))['params'])
  params = jax.tree.map(np.asarray, params)
  image = inflate.deflate_to_image(params)
  kernel = params['patch_embed']['proj']['kernel']
  np.testing.assert_allclose(image['patch_embed']['proj']['kernel'][0], kernel.sum(0), rtol=1e-6)
  assert image['pos']['pos_embed_temporal'].shape == (1, 1, 16)
  frame = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 16, 16, 3))
  still = jnp.repeat(frame, 4, axis=1)
  video_tokens = vit.PatchEmbed((2, 8, 8), 16).apply({'params': params['patch_embed']}, still)
  image_tokens = vit.PatchEmbed((1, 8, 8), 16).apply({'params': image['patch_embed']}, frame)
  np.testing.assert_allclose(video_tokens[:, :4], image_tokens, rtol=1e-5, atol=1e-5)
