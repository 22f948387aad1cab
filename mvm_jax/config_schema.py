"""The config keys every method shares, and their validation with clear errors.

`base_config()` holds the shared keys with their defaults (seed, model name and dtype, objectives,
data, optim, mesh, the loop's intervals, evaluators). A method adds its own model keys and sections:
`methods.base_config(name, objectives)` is a method's config at its defaults, the shared keys plus
the model keys of that method (`Method.model_defaults`) and the sections it and its objectives
read (`methods.Method.sections`, `objective_sections`); a config file (`configs/<method>.py`) starts from it and sets a preset. The result is locked, so a misspelt
`--config.x.y=` override fails at the command line, as does an override of a section the run
does not carry.

`validate_shared(config)` rejects inconsistent values of the shared keys (the method's
model keys and sections are the method's to check: `Method.validate`). `methods.validate` runs
both, `mvm_jax.config.validate` adds the checks of `config.evaluators` (the one to call before a
run).
"""

from __future__ import annotations

import ml_collections

from mvm_jax import sharding
from mvm_jax.data.settings import default_data_config


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  """The keys every method's config has, at their defaults (no method's own sections: see
  `methods.base_config`)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Pre-training workdir (or imported PyTorch weights) to start from; '' = random init.
  c.init_from = ''

  # The model: `name` picks the method (`mvm_jax.methods`), `dtype` the compute dtype ('bfloat16' on
  # accelerators); the method adds its own model keys (`Method.model_defaults`).
  c.model = ml_collections.ConfigDict(dict(name='mae', dtype='float32'))
  # {objective: weight}, summed (mvm_jax/objectives); the method says which it can train.
  c.objectives = ml_collections.ConfigDict({'pixel_mse': 1.0})
  c.data = default_data_config()

  c.batch_size = 512  # global, across all hosts and devices
  c.num_epochs = 800  # effective epochs of num_records samples (a pass over k-repeated videos is k epochs)
  c.warmup_epochs = 120
  c.total_steps = -1  # > 0 overrides num_epochs
  c.warmup_steps = -1  # > 0 overrides warmup_epochs

  c.optim = ml_collections.ConfigDict(
    dict(
      base_lr=8e-4,  # lr = base_lr × batch / 256 (1.6e-3 at batch 512 clips)
      # What `batch` counts in the lr rule: 'clips' (batch_size; the MAE-ST paper's "1.6e-3 at
      # batch 512") or 'videos' (batch_size / data.repeated_sampling, as mae_st's code scales
      # its blr by the videos per step, each giving repeat_aug clips).
      lr_batch_unit='clips',
      min_lr=0.0,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.05,
      decay_pos_embed=True,  # mae_st decays everything but 1-D params; False also exempts pos embeds and special tokens
      clip_grad_norm=0.02,  # <= 0 disables
      grad_accum_steps=1,  # micro-batches per optimizer step (same effective batch)
      schedule='cosine',  # lr after linear warm-up: 'cosine' or 'linear' decay to min_lr (VIMPAC)
    )
  )

  c.mesh = ml_collections.ConfigDict(
    dict(
      axes=('data', 'fsdp', 'tensor'),
      shape=(-1, 1, 1),  # -1 = all remaining devices
      # Sharding rules: logical axis name -> the tuple of mesh axes its array dimension is split
      # over (() or None = replicated); defaults and meaning: sharding.DEFAULT_RULES. Each
      # mesh axis must be in `axes`; every logical name a model uses needs a rule. Override e.g.
      # --config.mesh.rules.mlp='()' (replicate the MLP hidden; =None does the same) or
      # --config.mesh.rules.embed="('fsdp','tensor')"; a single axis may be given bare: =tensor.
      rules={name: tuple(axes) for name, axes in sharding.DEFAULT_RULES},
    )
  )

  c.log_every_steps = 20
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.image_every_steps = 5000  # reconstruction PNGs (also written at the end)
  c.num_image_samples = 2
  c.peak_tflops_per_device = -1.0  # for MFU; <= 0: known accelerators by name, measured matmul peak on CPU
  # Periodic evaluators of the encoder during pre-training, by name; empty = none. Each:
  # dict(kind='knn' | 'linear_probe' | 'feature_stats', every_steps=K, data=dict(<config.data
  # overrides: source keys, num_workers, ...; not the clip keys>), train_split, test_split,
  # train_views, pool, extract_batch_size, <the kind's keys>), e.g. from the command line
  # --config.evaluators='{"knn": {"kind": "knn", "every_steps": 100, "train_split": "train_windows",
  # "test_split": "test_windows"}}'. Keys, metrics and outputs: mvm_jax/evaluate/evaluators.py.
  c.evaluators = ml_collections.ConfigDict()
  return c


def fail(key: str, message: str):
  """Raise ConfigError for `config.<key>`."""
  raise ConfigError(f'config.{key}: {message}')


def validate_shared(config, *, pretraining: bool = True) -> None:
  """Raise ConfigError naming the key for an inconsistent value of the keys every method shares.

  `pretraining=False` (evaluations of a frozen or fine-tuned encoder): the pre-training sampling is
  not checked.
  """
  m = config.model
  if m.dtype not in ('float32', 'bfloat16', 'float16'):
    fail('model.dtype', f'{m.dtype!r} is not float32, bfloat16 or float16')
  if pretraining and config.data.sampling == 'frame_pair' and config.data.num_frames != 1:
    fail(
      'data.num_frames',
      f'frame_pair sampling gives one frame per view; set it to 1, not {config.data.num_frames}',
    )
  if config.batch_size <= 0:
    fail('batch_size', 'must be positive')
  if config.batch_size % config.optim.grad_accum_steps:
    fail(
      'optim.grad_accum_steps',
      f'{config.optim.grad_accum_steps} does not divide batch_size={config.batch_size}',
    )
  if config.optim.lr_batch_unit not in ('clips', 'videos'):
    fail('optim.lr_batch_unit', f'{config.optim.lr_batch_unit!r} is not "clips" or "videos"')
  if config.optim.schedule not in ('cosine', 'linear'):
    fail('optim.schedule', f'{config.optim.schedule!r} is not "cosine" or "linear"')
  if len(config.mesh.axes) != len(config.mesh.shape):
    fail('mesh.shape', f'{tuple(config.mesh.shape)} does not match mesh.axes={tuple(config.mesh.axes)}')
  if list(config.mesh.shape).count(-1) > 1:
    fail('mesh.shape', 'at most one axis may be -1')
  if 'data' not in config.mesh.axes:
    fail('mesh.axes', "must contain 'data'")
  try:
    sharding.resolve_rules(config.mesh.rules, tuple(config.mesh.axes))
  except sharding.RuleError as e:
    fail('mesh.rules' if e.name is None else f'mesh.rules.{e.name}', e.reason)
  for key in ('log_every_steps', 'checkpoint_every_steps', 'image_every_steps', 'keep_checkpoints'):
    if config[key] <= 0:
      fail(key, 'must be positive')
