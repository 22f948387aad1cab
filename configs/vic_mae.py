"""ViC-MAE: frame-level MAE + InfoNCE between two frames of a video (Hernandez et al., 2024).

Each sample is two frames of one video (distant sampling: one from each half);
each frame gets its own random mask; the mean of its visible encoder tokens
goes through a 3-layer BatchNorm projector, and a symmetric InfoNCE over the
global batch (τ = 0.1) pulls the two frames together.

Every preset follows the released code where the paper is silent:
  masking.ratio = 0.5              the released code masks half of each frame.
  model.decoder_cls = 'encoder'    the decoder's [CLS] is the embedded encoder [CLS]
                                   ('learned': a decoder token of its own, as mae_st).
  contrastive.bn_stats = 'per_view'
                                   the projector runs once per view, so its BatchNorm
                                   statistics are per view ('joint': both views together,
                                   as VIMPAC).
  With model.pos_embed='sincos' and one frame, positions are 2-D only (the constant
  temporal term of t = 0 is left out).

Presets (`--config configs/vic_mae.py:<preset>`):
  tiny          CPU demo on the built-in clips: 64² frames, patch 8, ViT 128-d×4;
                InfoNCE weight 0.5 so the contrastive term moves within 300 steps.
  small_data    frames of the `tools.make_eval_set` clips (64², patch 8, ViT 128-d×4), 1500 steps,
                evaluators on one frame per clip (motion cannot be read from one frame).
                Evaluate it with the linear (ridge) probe: on the digit labels it beats
                random init by 14 points top-1 (3 seeds; README "Does pre-training help?"),
                while its attentive probe does not.
  vit_b         released-code recipe: ViT-B/16 frames 224², mask 0.5, decoder
                512-d×8, sin-cos position embeddings, projector 4096-4096-128,
                loss 0.97·recon + 0.03·InfoNCE, AdamW (0.9, 0.95), base lr 1.5e-4,
                wd 0.05, batch 4096, 40 warm-up of 800 epochs (paper Table 7).
  vit_b_paper   as vit_b with the paper's weighting: recon + λ·InfoNCE, λ = 0.025
                switched on at epoch 200.
  mae_simsiam, mae_vicreg
                the paper's baselines (§3.2): MAE + SimSiam / VICReg on [CLS].
Ablations: `--config.contrastive.pooling=max|gem|cls`,
`--config.data.frame_pair_mode=continuous --config.data.frame_pair_gap=8`.
"""

from mvm_jax import presets
from mvm_jax.config import base_config

# Each preset's objectives (tiny: InfoNCE weight 0.5, so the contrastive term moves within 300 steps).
OBJECTIVES = {
  'tiny': {'pixel_mse': 0.5, 'infonce': 0.5},
  'small_data': {'pixel_mse': 0.5, 'infonce': 0.5},
  'vit_b': {'pixel_mse': 0.97, 'infonce': 0.03},
  'vit_b_paper': {'pixel_mse': 1.0, 'infonce': 0.025},
  'mae_simsiam': {'pixel_mse': 1.0, 'simsiam': 1.0},
  'mae_vicreg': {'pixel_mse': 1.0, 'vicreg': 0.025},
}


def _frames(c, size: int, patch: int):
  c.data.update(sampling='frame_pair', num_frames=1, sampling_rate=1, crop_size=size, scale=(0.5, 1.0))
  c.model.update(patch_size=patch, t_patch_size=1, pred_t_dim=1)


def get_config(preset: str = 'tiny'):
  if preset not in OBJECTIVES:
    raise ValueError(f'configs/vic_mae.py: unknown preset {preset!r}; known: {", ".join(OBJECTIVES)}')
  c = base_config('mae', OBJECTIVES[preset])
  c.masking.ratio = 0.5
  c.model.decoder_cls = 'encoder'
  c.contrastive.bn_stats = 'per_view'
  if preset == 'tiny':
    _frames(c, 64, 8)
    c.data.update(num_workers=2, cache_decoded_videos=8, repeated_sampling=1)
    c.model.encoder.update(width=128, depth=4, num_heads=4)
    c.model.decoder.update(width=64, depth=2, num_heads=4)
    c.contrastive.projector.update(hidden=256, out=64)
    c.batch_size = 8
    c.total_steps, c.warmup_steps = 300, 30
    c.optim.base_lr = 1e-3 * 256 / 8  # lr 1e-3 at batch 8
    c.optim.clip_grad_norm = 1.0
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.image_every_steps = 150
    return c
  if preset == 'small_data':
    presets.small_data(c)  # source, loop and evaluator settings; then frames, not clips
    _frames(c, 64, 8)
    c.data.repeated_sampling = 1
    c.contrastive.projector.update(hidden=256, out=64)
    c.optim.clip_grad_norm = 1.0
    c.total_steps, c.warmup_steps = 1500, 100
    return c
  _frames(c, 224, 16)
  c.data.update(num_workers=8, repeated_sampling=1)
  c.model.update(pos_embed='sincos', dtype='bfloat16')
  c.model.decoder.update(width=512, depth=8, num_heads=16)
  c.batch_size = 4096
  c.num_epochs, c.warmup_epochs = 800, 40
  c.optim.update(base_lr=1.5e-4, weight_decay=0.05, b2=0.95, clip_grad_norm=0.0)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  if preset == 'vit_b_paper':
    c.contrastive.start_epoch = 200
  elif preset == 'mae_simsiam':
    c.contrastive.update(pooling='cls')
    c.contrastive.projector.update(hidden=2048, out=2048, bn_last=True)
  elif preset == 'mae_vicreg':
    c.contrastive.update(pooling='cls')
    c.contrastive.projector.update(hidden=8192, out=8192)
  return c
