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
          mae_st:small_data with HPM (teacher momentum 0.99 → 0.999 over 10 epochs), 1000 steps.
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
"""

from mvm_jax.config import sibling_config

mae_st = sibling_config(__file__, 'mae_st')


def get_config(preset: str = 'tiny'):
  if preset == 'tiny':
    c = mae_st.get_config('tiny')
    c.hpm.update(ema_momentum=0.99, ema_momentum_final=0.999, ema_momentum_epochs=100)
  elif preset == 'small_data':
    c = mae_st.get_config('small_data')
    c.hpm.update(ema_momentum=0.99, ema_momentum_final=0.999, ema_momentum_epochs=10)
    c.total_steps, c.warmup_steps = 1000, 80  # the teacher's full-clip pass costs a second forward
  elif preset == 'vit_b':
    c = mae_st.get_config('vit_b')
    c.model.norm_pix_loss = False
    c.optim.clip_grad_norm = 5.0
  else:
    raise ValueError(f'configs/hpm.py: unknown preset {preset!r}; known: tiny, small_data, vit_b')
  c.objectives = {'pixel_mse': 1.0, 'loss_prediction': 1.0}
  return c
