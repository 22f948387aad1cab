"""MAE-ST: spacetime masked autoencoder with pixel MSE (Feichtenhofer et al., 2022).

Presets (`--config configs/mae_st.py:<preset>`):
  tiny         CPU demo on the built-in clips: a few minutes on 2 cores; k-NN, ridge
               probe and feature statistics on the labelled window splits every 100
               steps against random-init and raw-pixel floors (`tiny_evaluators`).
  small_data   pre-training on the 600 train clips of `tools.make_eval_set --out runs/eval_set`
               (8×64² at stride 2, ViT 128-d×4, no norm-pix, 500 steps) with evaluators on its digit and
               motion labels every 250 steps; see README "Does pre-training help?".
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

Every pixel-MAE config (hpm, vic_mae, mae_hpm_infonce) and every evaluator config starts from
these presets, so they are built in the package: `mvm_jax.presets.mae_st`.
"""

from mvm_jax import presets


def get_config(preset: str = 'tiny'):
  c = presets.mae_st(preset)
  if preset == 'small_data':
    # MAE alone on 600 clips: raw-pixel targets and 500 steps read the digit best (norm-pix at 500 or
    # 1500 steps: below random init); the presets built on this one keep norm-pix. README "Does
    # pre-training help?".
    c.model.norm_pix_loss = False
    c.total_steps, c.warmup_steps = 500, 100
  return c
