"""methods.vqvae: the `tokenizer` section (its keys, checks and the VQ-VAE they describe), shared with VIMPAC."""

import ml_collections
import pytest

from mvm_jax.config_schema import ConfigError
from mvm_jax.methods import vimpac, vqvae
from mvm_jax.models import tokenizer


def test_config_builds_tokenizers():
  vimpac_section = vimpac.default_tokenizer_config()
  assert dict(vqvae.default_tokenizer_config(), kind='dalle') == dict(vimpac_section)  # the kind differs
  config = ml_collections.ConfigDict({'tokenizer': vimpac_section})
  assert config.tokenizer.kind == 'dalle' and config.tokenizer.beta == 0.25 and config.tokenizer.ema
  config.tokenizer.update(kind='vqvae', codebook_size=64, widths=(8, 8, 8), ema=False)
  model = vqvae.vqvae(config)
  assert isinstance(model, tokenizer.VQVAE) and model.codebook_size == 64 and not model.ema
  config.tokenizer.kind = 'vqgan'
  with pytest.raises(ConfigError, match='config.tokenizer.kind'):
    vqvae.vqvae(config)


def test_token_extraction_reads_the_methods_sections():
  """What `tools.extract_tokens` asks of a config: VIMPAC's vocabulary and the tokenizer's resize."""
  from mvm_jax import methods

  for name in ('vqvae', 'vimpac', 'mae'):
    config = methods.base_config(name)
    method = methods.get(config)
    assert method.token_vocab_size(config) == (config.vimpac.vocab_size if name == 'vimpac' else None)
    assert method.extract_resize_short_side(config) == 0
    if 'tokenizer' in config:
      config.tokenizer.extract_resize_short_side = 160
      assert method.extract_resize_short_side(config) == 160
