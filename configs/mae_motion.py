"""MAE with a motion target: MAE-ST reconstructing frame differences (mvm_jax/methods/mae_motion.py).

The worked example of README "Adding a method": configs/mae_st.py's presets, the model reconstructing
x[t + g] − x[t] at each predicted frame t instead of x[t] (g = `motion.frame_gap`, default 1).

Presets (`--config configs/mae_motion.py:<preset>`):
  tiny        as mae_st.py:tiny (the built-in clips, a CPU demo).
  small_data  as mae_st.py:small_data (600 clips of `tools.make_eval_set`, evaluators on the digit
              and motion labels every 250 steps): compare its probes with MAE-ST's.
"""

from mvm_jax import presets

PRESETS = ('tiny', 'small_data')


def get_config(preset: str = 'tiny'):
  if preset not in PRESETS:
    raise ValueError(f'configs/mae_motion.py: unknown preset {preset!r}; known: {", ".join(PRESETS)}')
  return presets.mae_st(preset, method='mae_motion')
