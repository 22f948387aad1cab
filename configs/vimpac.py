"""VIMPAC: masked VQ-token prediction with block masking + [CLS] InfoNCE (Tan et al., 2021).

Presets (`--config configs/vimpac.py:<preset>`):
  tiny        CPU demo on the built-in clips: 4 frames of 64² → 4×8×8 tokens, 2 layers × 64.
  small       Table 10 'Small' (analysis model): 6 layers × 512, 8 heads, MLP 2048 (29.4M).
  base        Table 10 'Base': 12 × 768, 12 heads, MLP 3072 (119.7M).
  small_data  the `tools.make_eval_set` clips (8 frames of 64² → 8×8×8 tokens of a VQ-VAE trained
              by configs/vqvae.py:small_data into runs/eval_set_vqvae), 128-d×4, 1000 steps.
  large_half  Table 10 'Large-Half' (final model): 24 × 1024, 16 heads of dim 32, MLP 2048 (210.1M).
Paper recipe (Table 11, pre-training): 5 frames at 128² (2 FPS; the short side resized to 128 and
its centre 128², no flip: the official pre-training reads only its `…_hflip0_128center128`
tokens) → 5×16×16 DALL-E tokens, K = 5 blocks (≈14.5% masked), AdamW (0.9, 0.98),
eps 1e-8, wd 0.05, linear warm-up then linear decay, grad clip 1.0, dropout 0.1,
batch 1024; lr 3e-4 (large_half, 5% warm-up, 100 epochs) or 1e-3 (analysis,
10% warm-up, 10 epochs). For 5×32×32 tokens (256², the last 10 epochs) use
K = 6 and resize position embeddings (factorized.interpolate_pos_embed).

VIMPAC's sections, their keys, defaults and checks (mvm_jax/methods/vimpac.py):
  vimpac.*                    the backbone (width, depth, heads, layout, ...)
  masking.kind                'block' (default) or 'iid' (Table 15 ablation)
  masking.num_blocks          K
  masking.match_block_ratio   iid: mask with the block masker's expected ratio for K
                              (masking.ratio holds that value for K = 5; False: use masking.ratio)
  masking.iid_exact_count     iid: exactly round(ratio·n) tokens instead of Bernoulli(ratio)
  masking.bert_corruption     BERT 80/10/10 replacement instead of all-[MASK] (Appendix F.3)
  tokenizer.*                 the frozen tokenizer (mvm_jax/methods/vqvae.py), used on the fly
                              unless data.source='tokens' reads codes from mvm_jax.tools.extract_tokens
  contrastive.*               the [CLS] InfoNCE's projector and temperature (mvm_jax/objectives/contrastive.py)
"""

from mvm_jax import presets
from mvm_jax.config import base_config
from mvm_jax.masking import blocks

BACKBONES = {
  'small': dict(width=512, depth=6, num_heads=8, large_half=False),
  'base': dict(width=768, depth=12, num_heads=12, large_half=False),
  'large_half': dict(width=1024, depth=24, num_heads=16, large_half=True),
}


def get_config(preset: str = 'tiny'):
  # The paper's backbone (Table 10 'Small' widths), 5×16×16 block masks (K = 5), DALL-E tokenizer,
  # objectives token_ce + infonce, each weight 1.
  c = base_config('vimpac')
  c.model.dtype = 'float32'
  # Resize + centre crop, no flip (a full-area square crop is the centre crop).
  c.data.update(
    num_frames=5,
    sampling_rate=1,  # consecutive frames at target_fps
    crop_size=128,
    sampling='clip_pair',
    hflip=False,
    scale=(1.0, 1.0),
    aspect_ratio=(1.0, 1.0),
    target_fps=2.0,
  )
  c.contrastive.update(temperature=0.2, scale_by_temperature=True, sum_directions=True, pooling='cls')
  c.contrastive.projector.update(hidden=4096, out=256, num_layers=3, use_bias_last=False, bn_last=False)
  c.optim.update(b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.05, clip_grad_norm=1.0, min_lr=0.0)
  c.optim.schedule = 'linear'  # linear warm-up, then linear decay to min_lr
  c.batch_size = 1024
  c.data.repeated_sampling = 1

  if preset in BACKBONES:
    c.vimpac.update(BACKBONES[preset])
    c.model.dtype = 'bfloat16'
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    if preset == 'large_half':
      c.optim.base_lr = 3e-4 * 256 / 1024  # lr 3e-4 at batch 1024
      c.num_epochs, c.warmup_epochs = 100, 5
    else:
      c.optim.base_lr = 1e-3 * 256 / 1024  # lr 1e-3 at batch 1024 (analysis runs)
      c.num_epochs, c.warmup_epochs = 10, 1
  elif preset == 'tiny':
    c.data.update(
      num_frames=4, crop_size=64, sampling_rate=2, num_workers=2, cache_decoded_videos=8, target_fps=0.0
    )
    c.vimpac.update(width=64, depth=2, num_heads=4, dropout=0.1, vocab_size=256)
    # Tokens from configs/vqvae.py:tiny (256 codes): --config.tokenizer.workdir=<its workdir>,
    # or extracted once: --config.data.source=tokens --config.data.tfds_name=... --config.data.tfds_data_dir=...
    c.tokenizer.kind = 'vqvae'
    c.masking.num_blocks = 4  # 13.7% masked on 4×8×8, the closest to 15%
    c.masking.ratio = round(blocks.expected_block_mask_ratio((4, 8, 8), 4), 4)
    c.contrastive.projector.update(hidden=256, out=64)
    c.batch_size = 8  # one epoch of the 8 built-in records: no video twice in a batch (InfoNCE negatives)
    c.total_steps, c.warmup_steps = 300, 30
    c.optim.base_lr = 1e-3 * 256 / 8  # lr 1e-3 at batch 8
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.image_every_steps = 150
  elif preset == 'small_data':
    # Tokens on the fly from configs/vqvae.py:small_data trained first into runs/eval_set_vqvae;
    # the clip and model sizes of mae_st:small_data (8 frames at stride 2 of 64² → 8×8×8 tokens).
    presets.eval_set_source(c.data)
    c.data.update(num_frames=8, crop_size=64, sampling_rate=2, target_fps=0.0)
    c.vimpac.update(width=128, depth=4, num_heads=4, dropout=0.1, vocab_size=256)
    c.tokenizer.update(kind='vqvae', workdir='runs/eval_set_vqvae')
    c.masking.num_blocks = 4
    c.masking.ratio = round(blocks.expected_block_mask_ratio((8, 8, 8), 4), 4)
    c.contrastive.projector.update(hidden=256, out=64)
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 1000, 60
    c.optim.base_lr = 1e-3 * 256 / 16
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.image_every_steps = 500
    c.evaluators = presets.eval_set_evaluators(250)
  else:
    raise ValueError(
      f'configs/vimpac.py: unknown preset {preset!r}; known: tiny, small_data, {", ".join(BACKBONES)}'
    )
  return c
