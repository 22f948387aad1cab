"""HPM: hard patches mining on MAE-ST (Wang et al., 2023), video variant.

An EMA teacher of the whole student predicts each patch's reconstruction
loss on the unmasked clip; α_t of the masked patches (0 → 0.5 over training)
are the ones it predicts hardest, the rest random. The student learns pixel
MSE plus the loss predictor's relative (pairwise BCE) objective.

Presets (`--config configs/hpm.py:<preset>`):
  tiny    CPU demo on the built-in clips (mae_st:tiny's model and clip); the
          teacher's momentum starts at 0.99 (not 0.999) so that it follows the
          student within a 300-step run.
  small_data
          mae_st:small_data with HPM (teacher momentum 0.99 → 0.999 over 40 epochs of the
          600 clips: 1480 steps), 1000 steps.
  vit_b   MAE-ST's ViT-B video recipe (Table 5a) with HPM: loss prediction
          weight 1, relative BCE, α 0 → 0.5 over all spacetime tokens, teacher
          momentum 0.999 → 0.9999 over 100 epochs, and HPM's official
          norm-pix off and gradient clip 5.0.

As HPM's official code: α moves once per epoch, (epoch + 1) / E of the way from
α_0 to α_T (`--config.hpm.alpha_per_step=True`: per step from α_0), and the hard
count is floor(α·M) of the M masked patches.

Ablations as overrides: `--config.hpm.selection=easy` (mask the easiest),
`--config.hpm.alpha_manner=hard_to_easy|fixed`, `--config.hpm.per_frame=True`
(each frame's hard share chosen on its own), `--config.hpm.hard_masking=False`
(random masks, loss-prediction objective only),
`--config.hpm.loss_predictor_target=absolute_mse`.

configs/mae_hpm_infonce.py starts from these presets, so they are built in the package:
`mvm_jax.presets.hpm` (MAE-ST's preset, `mvm_jax.presets.mae_st`, with the settings above).
"""

from mvm_jax import presets


def get_config(preset: str = 'tiny'):
  return presets.hpm(preset)
