"""VQ-VAE tokenizer for VIMPAC: frame-wise, 8× downsampling, straight-through + commitment, EMA codebook.

VIMPAC's paper tokenizes with the DALL-E dVAE (`configs/vimpac.py` with
`--config.tokenizer.kind=dalle --config.tokenizer.dalle_encoder=encoder.pkl`).
Where those weights are not at hand, train this tokenizer on the same videos,
then point VIMPAC at the run: `--config.tokenizer.kind=vqvae
--config.tokenizer.workdir=<this run's workdir>` (tokens on the fly), or
extract the tokens once with `python -m mvm_jax.tools.extract_tokens`.

Presets (`--config configs/vqvae.py:<preset>`):
  tiny  CPU demo on the built-in clips: 64² frames → 8×8 codes of 256, a few minutes.
  small_data  tiny's tokenizer on the frames of `tools.make_eval_set --out runs/eval_set`
        (train split), 400 steps: the tokenizer step of `vimpac.py:small_data`.
  base  8192 codes of 256-d (DALL-E's vocabulary size), 128² frames → 16×16 codes;
        our recipe (not from the paper): AdamW 3e-4, batch 256 clips × 2 frames.

Metrics: vq/recon_mse, vq/perplexity (codes in use, effectively), vq/usage.
Pictures: original frames above their reconstructions.
"""

from mvm_jax import presets
from mvm_jax.config import base_config


def get_config(preset: str = 'tiny'):
  c = base_config('vqvae')  # sections: tokenizer (kind 'vqvae'); objectives: vq_recon; no masks
  # Frames are tokenized one by one: a clip of 2 frames far apart is 2 training images.
  c.data.update(num_frames=2, sampling_rate=8, hflip=True, scale=(0.35, 1.0))
  c.optim.update(base_lr=3e-4 * 256 / 256, b1=0.9, b2=0.99, weight_decay=0.0, clip_grad_norm=1.0)
  c.num_epochs, c.warmup_epochs = 100, 1

  if preset == 'base':
    c.tokenizer.update(codebook_size=8192, code_dim=256, widths=(128, 256, 256), num_res_blocks=2)
    c.data.crop_size = 128
    c.batch_size = 256
    c.model.dtype = 'bfloat16'
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
  elif preset == 'tiny':
    c.tokenizer.update(codebook_size=256, code_dim=32, widths=(16, 32, 64), num_res_blocks=1)
    c.data.update(crop_size=64, num_workers=2, cache_decoded_videos=8)
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 300, 20
    c.optim.base_lr = 2e-3 * 256 / 16  # lr 2e-3 at batch 16
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.image_every_steps = 150
  elif preset == 'small_data':  # the tokenizer of vimpac.py:small_data: tiny's, on the eval set's frames
    c.tokenizer.update(codebook_size=256, code_dim=32, widths=(16, 32, 64), num_res_blocks=1)
    presets.eval_set_source(c.data)
    c.data.update(crop_size=64, num_frames=2, sampling_rate=15)
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 400, 20
    c.optim.base_lr = 2e-3 * 256 / 16
    c.log_every_steps = 25
    c.checkpoint_every_steps = 200
    c.image_every_steps = 200
  else:
    raise ValueError(f'configs/vqvae.py: unknown preset {preset!r}; known: tiny, small_data, base')
  return c
