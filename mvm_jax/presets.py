"""Preset building blocks the config files share, so that no config file imports another.

`configs/<name>.py` is the design card of a method or an evaluation: its docstring describes its
presets, its `get_config(preset)` builds them. What several of them start from lives here:

  mae_st(preset)    MAE-ST's presets (configs/mae_st.py): the clip, model and loop that every
                    pixel-MAE config and every evaluator config start from (`method=`: for
                    another pixel MAE, e.g. configs/mae_motion.py).
  hpm(preset)       MAE-ST's preset with HPM (configs/hpm.py); configs/mae_hpm_infonce.py adds InfoNCE.
  small_data(c)     the clip, model and loop settings of every method's `small_data` preset.
  EVAL_SET, eval_set_source, eval_set_evaluators
                    where `tools.make_eval_set` writes its labelled clips, reading their train split,
                    the evaluators on both label families.
  tiny_evaluators   the evaluators of the `tiny` presets, on the built-in clips' window splits.
"""

import ml_collections

from mvm_jax import methods

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


# Where `python -m mvm_jax.tools.make_eval_set --out runs/eval_set` writes the labelled clips
# the `small_data` presets pre-train on (train split) and evaluate on (train / test splits).
EVAL_SET = 'runs/eval_set'


def eval_set_evaluators(every_steps: int, eval_set: str = EVAL_SET) -> ml_collections.ConfigDict:
  """`config.evaluators` on both label families of a `tools.make_eval_set` set: k-NN, the
  ridge probe and the attentive probe on the digit (appearance, 10 classes) and on its motion
  (8 classes), and the feature statistics of the appearance labels; 600 train / 240 test
  clips, no flips."""

  def family(kind: str) -> dict:
    data = dict(
      source='csv',
      path=f'{eval_set}/{kind}/{{split}}.csv',
      class_names_file=f'{eval_set}/{kind}/class_names.txt',
      num_workers=0,
      hflip=False,
    )
    return dict(
      every_steps=every_steps, data=data, train_split='train', test_split='test', extract_batch_size=40
    )

  return ml_collections.ConfigDict(
    dict(
      knn_appearance=dict(kind='knn', k=20, **family('appearance')),
      probe_appearance=dict(kind='linear_probe', **family('appearance')),
      stats_appearance=dict(kind='feature_stats', **family('appearance')),
      attentive_appearance=dict(kind='attentive_probe', **family('appearance')),
      knn_motion=dict(kind='knn', k=20, **family('motion')),
      probe_motion=dict(kind='linear_probe', **family('motion')),
      attentive_motion=dict(kind='attentive_probe', **family('motion')),
    )
  )


def eval_set_source(data, eval_set: str = EVAL_SET):
  """`config.data` reads the train split of a `tools.make_eval_set` set (its labels unused),
  all 600 videos decoded once per worker."""
  data.update(
    source='csv', path=f'{eval_set}/appearance/{{split}}.csv', num_workers=2, cache_decoded_videos=600
  )


def small_data(c, eval_set: str = EVAL_SET):
  """The `small_data` clip, model and loop settings shared by every method's preset: the
  train split of a `tools.make_eval_set` set (600 clips of 32 frames), 8 frames at stride 2
  (a 16-frame span, so two clips of one video can differ), 64² crops, patch 2×8×8 (256 tokens),
  ViT 128-d×4 with a 64-d×2 decoder, batch 16, lr 1e-3, evaluators every 250 steps."""
  eval_set_source(c.data, eval_set)
  c.data.update(num_frames=8, sampling_rate=2, crop_size=64)
  c.model.update(patch_size=8, pred_t_dim=4)
  c.model.encoder.update(width=128, depth=4, num_heads=4)
  c.model.decoder.update(width=64, depth=2, num_heads=4)
  c.batch_size = 16
  c.optim.base_lr = 1e-3 * 256 / 16  # lr 1e-3 at batch 16
  c.log_every_steps = 25
  c.checkpoint_every_steps = 250
  c.image_every_steps = 500
  c.evaluators = eval_set_evaluators(250, eval_set)
  return c


def mae_st(preset: str = 'tiny', method: str = 'mae') -> ml_collections.ConfigDict:
  """configs/mae_st.py's presets: tiny, small_data, bench_small, vit_b, vit_l, vit_h; `method`: a
  pixel MAE of the same model keys that trains them instead (its sections at their defaults)."""
  c = methods.base_config(method)
  if preset in ENCODERS:
    c.model.encoder.update(ENCODERS[preset])
    c.model.dtype = 'bfloat16'
    # mae_st's Kinetics loader (pre-training and fine-tuning): so exported weights fine-tune there as
    # they were trained. The CPU presets keep ImageNet's (data's default; the README's results).
    c.data.update(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    # config.mesh stays base_config's (-1, 1, 1), pure data parallel: sized for v5p-128 (8 clips a chip;
    # ViT-L 15%, ViT-H 20% of HBM), fits from v5p-32 up; on v5e-256 use (32, 8, 1). Measured with
    # tools.aot_compile: launch/README.md "Sizing with ahead-of-time compilation".
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
  elif preset == 'small_data':
    small_data(c)
    c.total_steps, c.warmup_steps = 1500, 100
  else:
    raise ValueError(
      f'configs/mae_st.py: unknown preset {preset!r}; known: tiny, small_data, bench_small, {", ".join(ENCODERS)}'
    )
  return c


def hpm(preset: str = 'tiny') -> ml_collections.ConfigDict:
  """configs/hpm.py's presets: MAE-ST's with the loss-prediction objective and HPM's teacher."""
  if preset not in ('tiny', 'small_data', 'vit_b'):
    raise ValueError(f'configs/hpm.py: unknown preset {preset!r}; known: tiny, small_data, vit_b')
  c = mae_st(preset)
  methods.set_objectives(c, {'pixel_mse': 1.0, 'loss_prediction': 1.0})
  # The teacher's momentum ramp in (effective) epochs: tiny's 8 clips at batch 16 make an epoch one
  # step, small_data's 600 at batch 16 37 steps (ramps of 200 and 1480 steps).
  if preset == 'tiny':
    c.hpm.update(ema_momentum=0.99, ema_momentum_final=0.999, ema_momentum_epochs=200)
  elif preset == 'small_data':
    c.hpm.update(ema_momentum=0.99, ema_momentum_final=0.999, ema_momentum_epochs=40)
    c.total_steps, c.warmup_steps = 1000, 80  # the teacher's full-clip pass costs a second forward
  else:
    c.model.norm_pix_loss = False
    c.optim.clip_grad_norm = 5.0
  return c
