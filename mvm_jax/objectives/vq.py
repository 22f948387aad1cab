"""`vq_recon`: VQ-VAE tokenizer training loss = pixel MSE of the reconstruction + the VQ loss.

Reads from the outputs of `models.tokenizer.VQVAE`: 'recon' [B, (T,) H, W, 3],
'vq_loss' [] (commitment + codebook terms), 'perplexity' [], 'usage' [].
The target is `outputs['target']` if the model provides one, else
`batch['inputs']`, the pixels the model was given (same shape as 'recon',
same pixel space).
"""

from __future__ import annotations

import jax.numpy as jnp

from mvm_jax.objectives import registry


@registry.register('vq_recon')
def make_vq_recon(config):
  del config

  def vq_recon(outputs, batch):
    target = outputs['target'] if 'target' in outputs else batch['inputs']
    recon = outputs['recon']
    if recon.shape != target.shape:
      raise ValueError(f'vq_recon: recon {recon.shape} and target {target.shape} differ in shape')
    mse = jnp.mean(jnp.square(recon.astype(jnp.float32) - target.astype(jnp.float32)))
    metrics = {
      'vq/recon_mse': mse,
      'vq/perplexity': outputs['perplexity'],
      'vq/usage': outputs['usage'],
    }
    return mse + outputs['vq_loss'], metrics

  return vq_recon
