"""Weighted k-NN classification with a frozen pre-trained encoder (InstDisc / DINO recipe).

  python -m mvm_jax.knn --config configs/knn.py:tiny \
    --config.init_from=runs/mae_st_tiny --workdir runs/mae_st_tiny/knn

Cosine similarity of L2-normalised features, votes weighted exp(sim / τ),
τ = 0.07, k ∈ {10, 20, 100, 200} (clipped to the train-set size).
`init_from` works as in configs/linear_probe.py ('random:RUN' = the random-init baseline
with RUN's model and clip settings).
With the same --workdir as the linear probe, cached features are shared
(when pool and train_views agree).

Presets (`--config configs/knn.py:<preset>`):
  tiny      the built-in clips on a CPU in minutes; model shape of mae_st:tiny;
            memory bank from the 20 records of split 'train_windows', queries the 20
            of 'test_windows' (as configs/linear_probe.py:tiny); 4 passes over the
            train windows (centre crop + 3 augmented, without horizontal flips).
  kinetics  real use: centre crop of each train video as the memory bank, tested
            on the 'val' split; name your data as in configs/linear_probe.py.

Keys of `config.knn`:
  pool                'mean' of the patch tokens (then the encoder's final LayerNorm;
                      MAE default) or 'cls' (the [CLS] token).
  train_views         passes over the train split for the memory bank (1 = centre crop).
  extract_batch_size  clips per feature-extraction step (global).
  train_split, test_split
                      splits of config.data.source for the memory bank and the queries;
                      '' = the source's, as in configs/linear_probe.py.
  ks                  neighbour counts; report_k: the k of the summary and confusion PNG.
  temperature         τ.
"""

import ml_collections

from mvm_jax import presets


def _pretrain_config(preset: str):
  return presets.mae_st(preset)  # configs/mae_st.py's preset


def get_config(preset: str = 'tiny'):
  if preset == 'tiny':
    c = _pretrain_config('tiny')
    c.data.hflip = False  # a mirrored clip moves the other way: flips blur forward vs reversed
    # Splits '': the source's (builtin: 'train_windows' / 'test_windows').
    knn = dict(pool='mean', train_views=4, extract_batch_size=8, train_split='', test_split='')
  elif preset == 'kinetics':
    c = _pretrain_config('vit_l')
    c.data.update(num_workers=8)
    knn = dict(pool='mean', train_views=1, extract_batch_size=64, train_split='train', test_split='val')
  else:
    raise ValueError(f'configs/knn.py: unknown preset {preset!r}; known: tiny, kinetics')
  knn.update(ks=(10, 20, 100, 200), report_k=20, temperature=0.07)
  c.knn = ml_collections.ConfigDict(knn)
  return c
