"""Attentive probing of a frozen pre-trained encoder (V-JEPA / VideoMAE v2 protocol).

  python -m mvm_jax.attentive_probe --config configs/attentive_probe.py:tiny \
    --config.init_from=runs/mae_st_tiny --workdir runs/mae_st_tiny/attentive_probe

All L patch tokens of each clip (after the encoder's final LayerNorm; a VIMPAC
run: its backbone's token outputs) are extracted once, cached in the workdir
(tokens_{split}.npz) and pooled by a learned-query cross-attention head, then
LayerNorm + linear classifier (mvm_jax/evaluate/attentive_probe.py).
`init_from` works as in configs/linear_probe.py: a pre-training workdir (MAE
family: mae_st, hpm, vic_mae, mae_hpm_infonce runs; or VIMPAC) gives
`config.model` and the clip keys of `config.data`; 'random:RUN' = the random-init
baseline with RUN's settings, '' = with this preset's model shape.

Presets (`--config configs/attentive_probe.py:<preset>`):
  tiny      the built-in clips on a CPU in minutes; model shape of mae_st:tiny
            (256 tokens × 128-d per clip); trained on the 20 records of
            'train_windows' (centre crop + 3 augmented passes, no flips: 80 clips,
            5 MiB of float16 tokens), tested on the 20 of 'test_windows', as
            configs/linear_probe.py:tiny.
  kinetics  real use, V-JEPA's K400 probe settings for ViT-L (1 query, 16 heads,
            MLP block, AdamW lr 1e-3 at batch 256, weight decay 0.01, 20 epochs, no
            warm-up, cosine to 0). Tokens are cached, not recomputed per epoch: at
            16×224² a clip is 1568 × 1024 float16 = 3.1 MiB, so K400 'val' (~20k
            clips) takes ~61 GiB and all of 'train' (~240k) ~735 GiB, over
            max_cache_gib: name a per-class subset list as the train split, e.g.
            `--config.data.source=csv --config.data.path='k400/{split}.csv'
            --config.attentive.train_split=train_50` (50 clips per class, 20k clips,
            ~61 GiB). Host memory: the cache of both splits, plus up to ~2 copies of a
            split's tokens while it is extracted. Multi-view testing multiplies the
            test cache by its views (7 × 3 for V-JEPA's 16x8x3: too large to cache).

Keys of `config.attentive`:
  train_views         passes over the train split: 1 = centre crop only; n > 1 adds
                      n - 1 passes with the training augmentation (random crops).
  extract_batch_size  clips per token-extraction step (global).
  train_split, test_split
                      splits of config.data.source to train on and to test on; '' = the
                      source's, as in configs/linear_probe.py.
  token_dtype         'float16' (half the cache) or 'float32': how the tokens are cached.
  max_cache_gib       refuse (before building the encoder) a split whose tokens would
                      take more GiB than this: records × views × L × D × dtype bytes.
  num_queries         learned query tokens (V-JEPA: 1); their outputs are concatenated.
  num_heads           attention heads of the cross-attention (must divide D).
  mlp_ratio           > 0: V-JEPA's MLP block (hidden D × mlp_ratio) after the
                      cross-attention; 0: cross-attention only.
  base_lr             AdamW lr = base_lr × batch / 256 (batch clipped to the train-set size).
  weight_decay        AdamW weight decay on kernels and queries (not biases / norms).
  batch_size, epochs, warmup_epochs
                      mini-batch, epochs over the cached train tokens, linear warm-up
                      epochs before the cosine decay to 0.
"""

import ml_collections

from mvm_jax import presets
from mvm_jax.evaluate.attentive_probe import HEAD_DEFAULTS


def _pretrain_config(preset: str):
  return presets.mae_st(preset)  # configs/mae_st.py's preset


def get_config(preset: str = 'tiny'):
  if preset == 'tiny':
    c = _pretrain_config('tiny')
    c.data.hflip = False  # a mirrored clip moves the other way: flips blur forward vs reversed
    attentive = dict(
      HEAD_DEFAULTS,  # token_dtype float16, 1 query, 4 heads, no MLP, lr 1e-3 at batch 16, 50 epochs
      train_views=4,  # 20 train windows (2 or 4 per class): add 3 augmented passes
      extract_batch_size=8,
      train_split='',  # the source's, as in configs/linear_probe.py
      test_split='',
      max_cache_gib=1.0,
    )
  elif preset == 'kinetics':
    c = _pretrain_config('vit_l')
    c.data.update(num_workers=8)
    attentive = dict(
      HEAD_DEFAULTS,  # float16 tokens, 1 query; the rest as below
      train_views=1,
      extract_batch_size=64,
      train_split='train',
      test_split='val',
      max_cache_gib=64.0,
      num_heads=16,
      mlp_ratio=4.0,
      base_lr=1e-3,  # lr 1e-3 at batch 256
      weight_decay=0.01,
      batch_size=256,
      epochs=20,
      warmup_epochs=0,
    )
  else:
    raise ValueError(f'configs/attentive_probe.py: unknown preset {preset!r}; known: tiny, kinetics')
  c.attentive = ml_collections.ConfigDict(attentive)
  return c
