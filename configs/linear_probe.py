"""Linear probing of a frozen pre-trained encoder (MAE recipe, He et al. 2022, A.2).

  python -m mvm_jax.linear_probe --config configs/linear_probe.py:tiny \
    --config.init_from=runs/mae_st_tiny --workdir runs/mae_st_tiny/linear_probe

`init_from` is a pre-training workdir: `config.model` and the clip keys of
`config.data` (num_frames, crop_size, sampling_rate, mean, std) are taken from
its config.json, the encoder from its latest checkpoint. The random-init
baseline: `init_from='random:RUN'` probes a randomly initialised encoder with
the model and clip keys of the run in RUN (compare like with like);
`init_from=''` one of this preset's model and clip keys.
The rest of `config.data` (source, workers), `config.mesh` and `config.seed`
come from this file.

Presets (`--config configs/linear_probe.py:<preset>`):
  tiny      the built-in clips on a CPU in minutes; model shape of mae_st:tiny;
            trained on the 20 records of split 'train_windows', tested on the 20 of
            'test_windows' (29-frame windows, disjoint in time; labels: clip x
            forward/reversed, see mvm_jax/data/sources.py); 4 passes over the train
            windows (centre crop + 3 augmented, without horizontal flips).
  kinetics  real use: MAE's linear-probe recipe (LARS, base lr 0.1, batch 16384,
            90 epochs, 10 warm-up, no weight decay) on the centre crop of each
            train video, tested on the 'val' split. Name your data, e.g.
            `--config.data.source=csv --config.data.path='k400/{split}.csv'`
            (or folder / tfds, see mvm_jax/data/pipeline.py); multi-view
            testing: `--config.data.eval_temporal_views=7 --config.data.eval_spatial_views=3`.

Keys of `config.probe`:
  pool                'mean' of the patch tokens (then the encoder's final LayerNorm;
                      MAE default) or 'cls' (the [CLS] token).
  train_views         passes over the train split: 1 = centre crop only; n > 1 adds
                      n - 1 passes with the training augmentation (random crops).
  extract_batch_size  clips per feature-extraction step (global).
  train_split, test_split
                      splits of config.data.source to train on and to test on; '' = the
                      source's: builtin 'train_windows' / 'test_windows'; csv (a
                      '{split}' path), folder, tfds: 'train' / 'test' ('val' when
                      there is no 'test'; mvm_jax/evaluate/features.py default_split).
  optimizer           'lars' or 'sgd' (with momentum); no weight decay.
  base_lr             lr = base_lr × batch / 256 (batch clipped to the train-set size).
  momentum, batch_size, epochs, warmup_epochs
"""

import ml_collections

from mvm_jax import presets


def _pretrain_config(preset: str):
  return presets.mae_st(preset)  # configs/mae_st.py's preset


def get_config(preset: str = 'tiny'):
  if preset == 'tiny':
    c = _pretrain_config('tiny')
    c.data.hflip = False  # a mirrored clip moves the other way: flips blur forward vs reversed
    probe = dict(
      pool='mean',
      train_views=4,  # 20 train windows (2 or 4 per class): add 3 augmented passes
      extract_batch_size=8,
      train_split='',  # the source's: builtin 'train_windows' / 'test_windows', else 'train' / 'test'
      test_split='',
      optimizer='sgd',
      base_lr=0.8,  # lr 0.1 at batch 32
      momentum=0.9,
      batch_size=32,
      epochs=100,
      warmup_epochs=10,
    )
  elif preset == 'kinetics':
    c = _pretrain_config('vit_l')
    c.data.update(num_workers=8)
    probe = dict(
      pool='mean',
      train_views=1,
      extract_batch_size=64,
      train_split='train',
      test_split='val',
      optimizer='lars',
      base_lr=0.1,
      momentum=0.9,
      batch_size=16384,
      epochs=90,
      warmup_epochs=10,
    )
  else:
    raise ValueError(f'configs/linear_probe.py: unknown preset {preset!r}; known: tiny, kinetics')
  c.probe = ml_collections.ConfigDict(probe)
  return c
