"""MAE-ST: spacetime masked autoencoder with pixel MSE (Feichtenhofer et al., 2022).

Presets (`--config configs/mae_st.py:<preset>`):
  tiny         CPU demo on the built-in clips: a few minutes on 2 cores; k-NN, ridge
               probe and feature statistics on the labelled window splits every 100
               steps against random-init and raw-pixel floors (`tiny_evaluators`).
  bench_small  16×112×112, ViT 384-d×12, decoder 256-d×4, mask 0.9, batch 8: the benchmark shape.
  vit_b, vit_l, vit_h
               Paper Table 5a: 16×224×224 (stride 4), patch 2×16×16, decoder 512-d×4,
               mask 0.9, batch 512, AdamW (0.9, 0.95), lr 1.6e-3 at batch 512, wd 0.05,
               cosine, 120 warm-up of 800 epochs, clip 0.02, repeated sampling 4.

The lr rule: lr = optim.base_lr × batch / 256, where batch counts clips
(`optim.lr_batch_unit='clips'`, the default: base_lr 8e-4 gives the paper's
"1.6e-3 at batch 512"). mae_st's code counts videos per step instead (each video
gives repeat_aug clips): `--config.optim.lr_batch_unit=videos` reproduces it (with
its `blr` as base_lr). The patch projection is initialised as mae_st's Conv3d:
xavier-uniform on the flattened [D, C·t·p·p] kernel.
"""

import ml_collections

from mvm_jax.config import base_config

ENCODERS = {
  'vit_b': dict(width=768, depth=12, num_heads=12),
  'vit_l': dict(width=1024, depth=24, num_heads=16),
  'vit_h': dict(width=1280, depth=32, num_heads=16),
}


def tiny_evaluators(every_steps: int = 100) -> ml_collections.ConfigDict:
  """`config.evaluators` on the built-in clips' labelled window splits (20 train, 20 test
  records, 8 classes), read in-process: one decode per run, then about a second per
  evaluation on 2 CPU cores (mvm_jax/evaluate/evaluators.py)."""
  common = dict(
    every_steps=every_steps,
    data=dict(source='builtin', num_workers=0, hflip=False),
    train_split='train_windows',
    test_split='test_windows',
    extract_batch_size=8,
  )
  return ml_collections.ConfigDict(
    dict(
      knn=dict(kind='knn', k=20, **common),
      linear_probe=dict(kind='linear_probe', **common),
      feature_stats=dict(kind='feature_stats', **common),
    )
  )


def get_config(preset: str = 'tiny'):
  c = base_config()
  if preset in ENCODERS:
    c.model.encoder.update(ENCODERS[preset])
    c.model.dtype = 'bfloat16'
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
  elif preset == 'bench_small':
    c.data.num_frames, c.data.crop_size = 16, 112
    c.model.encoder.update(width=384, depth=12, num_heads=6)
    c.model.decoder.update(width=256, depth=4, num_heads=8)
    c.batch_size = 8
    c.total_steps, c.warmup_steps = 100, 10
  elif preset == 'tiny':
    c.data.update(num_frames=8, sampling_rate=4, crop_size=64, num_workers=2, cache_decoded_videos=8)
    c.model.update(patch_size=8, pred_t_dim=4)
    c.model.encoder.update(width=128, depth=4, num_heads=4)
    c.model.decoder.update(width=64, depth=2, num_heads=4)
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 300, 30
    c.optim.base_lr = 1e-3 * 256 / 16  # lr 1e-3 at batch 16
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.image_every_steps = 150
    c.evaluators = tiny_evaluators()
  else:
    raise ValueError(
      f'configs/mae_st.py: unknown preset {preset!r}; known: tiny, bench_small, {", ".join(ENCODERS)}'
    )
  return c
