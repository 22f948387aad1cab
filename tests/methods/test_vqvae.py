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
