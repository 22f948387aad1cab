"""mvm_jax.models.dalle_dvae: the DALL-E dVAE encoder port (shapes, loader errors, PyTorch outputs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.export.convert import StateDictMismatch
from mvm_jax.models import dalle_dvae


def test_map_pixels():
  np.testing.assert_allclose(dalle_dvae.map_pixels(jnp.array([0.0, 0.5, 1.0])), [0.1, 0.5, 0.9])


def numpy_state_dict(encoder, seed=0):
  """A random state_dict (torch names and layouts) for `encoder`."""
  r = np.random.default_rng(seed)
  sd = {}
  for path, shape in dalle_dvae.target_shapes(encoder).items():
    shape = dalle_dvae.torch_shape(path, shape)
    scale = 1 / np.sqrt(np.prod(shape[1:])) if len(shape) == 4 else 0.1
    sd[dalle_dvae.torch_key(path)] = (r.normal(size=shape) * scale).astype(np.float32)
  return sd


def test_dalle_encoder_shapes_and_loader_errors():
  encoder = dalle_dvae.DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16)
  sd = numpy_state_dict(encoder)
  assert 'blocks.group_2.block_1.id_path.w' in sd and 'blocks.group_1.block_1.id_path.w' not in sd
  params = dalle_dvae.load_dalle_encoder(sd)
  assert dalle_dvae.encoder_for_state_dict(sd) == encoder
  out = jax.eval_shape(encoder.apply, {'params': params}, jnp.full((2, 3, 16, 8, 3), 0.5))
  assert out['logits'].shape == (2, 3, 2, 1, 16) and out['codes'].shape == (2, 3, 2, 1)
  assert out['codes'].dtype == jnp.int32
  with pytest.raises(ValueError, match='multiple of 8'):
    jax.eval_shape(encoder.apply, {'params': params}, jnp.zeros((1, 12, 16, 3)))

  bad = dict(sd)
  del bad['blocks.input.b']
  bad['blocks.extra.w'] = np.zeros(3)
  bad['blocks.output.conv.w'] = np.zeros((16, 64, 3, 3), np.float32)
  with pytest.raises(StateDictMismatch) as e:
    dalle_dvae.load_dalle_encoder(bad, encoder)
  msg = str(e.value)
  assert 'missing keys (1): blocks.input.b' in msg and 'unexpected keys (1): blocks.extra.w' in msg
  assert 'blocks.output.conv.w: expected (16, 64, 1, 1), got (16, 64, 3, 3)' in msg


def test_dalle_loader_matches_pytorch(tmp_path):
  torch = pytest.importorskip('torch')
  dall_e_encoder = pytest.importorskip('dall_e.encoder')
  from dall_e.utils import map_pixels as torch_map_pixels

  torch.manual_seed(0)
  # Smallest sizes the package allows (n_hid >= 64, vocab >= 512); random biases too.
  reference = dall_e_encoder.Encoder(
    n_hid=64, n_blk_per_group=1, vocab_size=512, requires_grad=False, use_mixed_precision=False
  )
  with torch.no_grad():
    for p in reference.parameters():
      if p.ndim == 1:
        p.uniform_(-0.1, 0.1)
  pickled = tmp_path / 'encoder.pkl'
  torch.save(reference, pickled)  # a whole pickled module, like the published file
  torch.save(reference.state_dict(), tmp_path / 'encoder_state.pth')

  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = reference(torch_map_pixels(torch.from_numpy(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1).numpy()

  params = dalle_dvae.load_dalle_encoder(str(pickled))
  encoder = dalle_dvae.encoder_for_state_dict(dalle_dvae.read_dalle_state_dict(str(pickled)))
  assert (encoder.n_hid, encoder.vocab_size, encoder.n_blk_per_group, encoder.group_count) == (64, 512, 1, 4)
  out = jax.jit(encoder.apply)({'params': params}, jnp.asarray(x))
  assert out['logits'].shape == (2, 4, 4, 512)
  np.testing.assert_allclose(out['logits'], want, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(out['codes'], want.argmax(-1))

  from_state = dalle_dvae.load_dalle_encoder(str(tmp_path / 'encoder_state.pth'))
  jax.tree.map(np.testing.assert_array_equal, from_state, params)
