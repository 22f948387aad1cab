"""Fine-tuning a pre-trained MAE-ST encoder end to end (MAE-ST Table 5b), with multi-view testing.

  python -m mvm_jax.finetune --config configs/finetune.py:tiny --config.init_from=<pre-training workdir> --workdir DIR

`init_from` = a pre-training workdir: the model (and clip shape) come from
that run's config.json, the encoder weights from its latest checkpoint;
'random:RUN' fine-tunes from a random initialisation with RUN's model and clip
settings (the baseline), '' from one of this preset's.

Presets:
  tiny           built-in clips on a CPU, a few minutes: the built-in window splits
                 ('train_windows' / 'test_windows', as the probe and k-NN); no horizontal
                 flips, as the labels are forward / reversed.
  small_data     the digit (appearance) labels of a `tools.make_eval_set` set (runs/eval_set):
                 600 train / 240 test clips, 750 steps at batch 16 (20 epochs; minutes on a
                 CPU), no augmentation beyond crops; --config.data.path / class_names_file to
                 its motion/ lists for motion.
                 Compare --config.init_from=RUN with --config.init_from=random:RUN.
  vit_b, vit_l, vit_h
                 Table 5b: AdamW (0.9, 0.999), wd 0.05, lr 1.6e-2 / 4.8e-3 / 1.6e-3 at batch
                 768 / 256 / 256, cosine, 5 warm-up epochs, 150 / 100 / 75 epochs, repeated
                 sampling 2 / 2 / 1, RandAug (9, 0.5), mixup 0.8, cutmix 1.0,
                 label smoothing 0.1, drop path 0.1 / 0.2 / 0.2, dropout 0.3 / 0.3 / 0.5,
                 layer decay 0.65 / 0.75 / 0.8; 7 temporal × 3 spatial test views.
"""

import ml_collections

from mvm_jax import presets

TABLE_5B = {
  #        lr      batch  epochs repeat drop_path dropout layer_decay
  'vit_b': (1.6e-2, 768, 150, 2, 0.1, 0.3, 0.65),
  'vit_l': (4.8e-3, 256, 100, 2, 0.2, 0.3, 0.75),
  'vit_h': (1.6e-3, 256, 75, 1, 0.2, 0.5, 0.8),
}


def finetune_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      drop_path=0.1,
      dropout=0.3,
      layer_decay=0.65,
      label_smoothing=0.1,
      mixup_alpha=0.8,
      cutmix_alpha=1.0,
      mixup_switch_prob=0.5,
      mixup_prob=1.0,
      mask_ratio=0.0,  # > 0: drop this share of tokens at the start, cosine-decayed to 0 (Table 11: 0.5)
      eval_every_steps=1000,
      eval_batch_size=16,  # clips (views) per evaluation batch
      # Splits of config.data.source to fine-tune on / to test on; '' = the source's: builtin
      # 'train_windows' / 'test_windows', else 'train' / 'test' ('val' without a 'test').
      train_split='',
      test_split='',
    )
  )


def get_config(preset: str = 'tiny'):
  pretrain_preset = 'tiny' if preset == 'tiny' else preset
  c = presets.mae_st(pretrain_preset)  # configs/mae_st.py's preset
  c.finetune = finetune_section()
  c.optim.update(b2=0.999, clip_grad_norm=0.0, decay_pos_embed=False)
  if preset in TABLE_5B:
    lr, batch, epochs, repeat, drop_path, dropout, layer_decay = TABLE_5B[preset]
    c.batch_size, c.num_epochs, c.warmup_epochs = batch, epochs, 5
    c.optim.base_lr = lr * 256 / batch
    c.data.repeated_sampling = repeat
    c.data.update(randaugment_ops=2, randaugment_magnitude=9.0, randaugment_magnitude_std=0.5)
    c.data.update(eval_temporal_views=7, eval_spatial_views=3)
    c.finetune.update(drop_path=drop_path, dropout=dropout, layer_decay=layer_decay, eval_every_steps=5000)
  elif preset == 'tiny':
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 100, 10
    c.optim.base_lr = 1e-3 * 256 / 16
    c.finetune.update(drop_path=0.0, dropout=0.0, layer_decay=0.75, mixup_prob=0.5, eval_every_steps=50)
    c.data.update(randaugment_ops=2, eval_temporal_views=2, eval_spatial_views=3)
    c.data.hflip = False  # a mirrored clip moves the other way: flips blur forward vs reversed
    c.checkpoint_every_steps = 50
  elif preset == 'small_data':
    c.evaluators = ml_collections.ConfigDict()  # the pre-training run's, not fine-tuning's
    c.data.update(class_names_file=f'{presets.EVAL_SET}/appearance/class_names.txt', hflip=False)
    c.data.update(randaugment_ops=0, eval_temporal_views=2, eval_spatial_views=1)
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 750, 75
    c.optim.base_lr = 1e-3 * 256 / 16
    # No mixup, CutMix, label smoothing, RandAugment or drop path: with them, 750 steps on 600
    # clips leave the training loss at ln 10 from either start (measured; README "Does
    # pre-training help?"); without them the pre-trained start fits and random init does not.
    c.finetune.update(
      drop_path=0.0, dropout=0.0, layer_decay=0.75, mixup_prob=0.0, label_smoothing=0.0, eval_every_steps=250
    )
    c.checkpoint_every_steps = 250
  else:
    raise ValueError(
      f'configs/finetune.py: unknown preset {preset!r}; known: tiny, small_data, {", ".join(TABLE_5B)}'
    )
  return c
