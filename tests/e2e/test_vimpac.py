"""VIMPAC from scratch on the built-in clips, as the README describes it: train
the VQ-VAE tiny, extract its tokens once, pre-train VIMPAC tiny on them (slow:
about four minutes on 2 cores)."""

import glob
import io
import os

import numpy as np
import pytest

from configs import vimpac, vqvae
from mvm_jax.data import tokens
from mvm_jax.tools import extract_tokens
from mvm_jax.train import loop
from tests.conftest import tiny_preset

pytestmark = pytest.mark.slow


def test_vqvae_tokens_then_vimpac_beats_unigram_and_chance(tmp_path):
  vq_dir = str(tmp_path / 'vqvae')
  vq = loop.train_and_evaluate(tiny_preset(vqvae, 100), vq_dir)
  first, last = vq['history'][0], vq['history'][-1]
  assert last['vq/recon_mse'] < 0.5 * first['vq/recon_mse'], (first, last)
  assert last['vq/perplexity'] > 32  # of 256 codes: the codebook is in use, not collapsed

  config = tiny_preset(vimpac, 300)
  config.tokenizer.workdir = vq_dir
  data_dir = str(tmp_path / 'tokens')
  out = io.StringIO()
  progress = extract_tokens.extract(
    config, name='builtin_tokens', data_dir=data_dir, splits=['train'], out=out
  )
  assert progress.done == 8 and progress.skipped == 0, out.getvalue()
  info = tokens.read_token_info('builtin_tokens', data_dir)
  assert info['vocab_size'] == 256 and list(info['token_shape']) == [8, 8]

  config.data.update(source='tokens', tfds_name='builtin_tokens', tfds_data_dir=data_dir)
  result = loop.train_and_evaluate(config, str(tmp_path / 'vimpac'))
  history = result['history']
  late = history[-3:]
  mask_accuracy = np.mean([h['token_ce/mask_accuracy'] for h in late])
  unigram = np.mean([h['token_ce/unigram_baseline'] for h in late])
  assert mask_accuracy > 2 * unigram, (mask_accuracy, unigram)
  chance = 1.0 / (2 * config.batch_size - 1)
  contrastive = np.mean([h['contrastive/accuracy'] for h in late])
  assert contrastive > 1.5 * chance, contrastive
  assert history[-1]['loss/token_ce'] < history[0]['loss/token_ce'] - 0.5
  assert glob.glob(os.path.join(str(tmp_path / 'vimpac'), 'images', 'tokens_step*.png'))
