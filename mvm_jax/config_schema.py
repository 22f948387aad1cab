"""The config schema shared by every method, and validation of its sections with clear errors.

`base_config()` holds every key with its default; a method's config file
(`configs/<method>.py`) starts from it and sets a preset. The result is
locked, so a misspelt `--config.x.y=` override fails at the command line.
`validate_without_evaluators(config)` rejects inconsistent values of every
section but `config.evaluators`, whose checks need the evaluation stack:
`mvm_jax.config.validate` runs both (the one to call before a run).
"""

from __future__ import annotations

import ml_collections

from mvm_jax import masking
from mvm_jax.masking import hard_patches
from mvm_jax import objectives
from mvm_jax.data.settings import default_data_config
from mvm_jax.objectives.contrastive import default_contrastive_config
from mvm_jax.objectives.loss_prediction import default_hpm_config
from mvm_jax import sharding


def sibling_config(config_file: str, name: str):
  """Import `<dir of config_file>/<name>.py` (config files load each other this way,
  so they work from any working directory)."""
  import importlib.util
  import os

  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'mvm_jax_configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Pre-training workdir (or imported PyTorch weights) to start from; '' = random init.
  c.init_from = ''

  c.model = ml_collections.ConfigDict(
    dict(
      name='mae',
      patch_size=16,  # spatial p of the t×p×p patch
      t_patch_size=2,  # temporal t
      encoder=dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0),
      decoder=dict(width=512, depth=4, num_heads=16, mlp_ratio=4.0),
      pred_t_dim=8,  # frames the decoder predicts (one time slice per token when = T/t)
      pos_embed='learned',  # 'learned' separable (mae_st) or fixed 'sincos'
      norm_pix_loss=True,
      norm_pix_eps=1e-6,  # norm-pix target: (x - mean) / sqrt(var + eps); mae_st: 1e-6
      dense_encoder=False,  # True: encoder sees mask tokens (MAE-ST Table 1 "w/ [M]")
      decoder_cls='learned',  # decoder [CLS]: its own token (mae_st) or 'encoder' (embedded encoder [CLS], image MAE)
      drop_path_rate=0.0,
      dtype='float32',  # compute dtype; 'bfloat16' on accelerators
      # 'einsum' (two einsums, float32 softmax; the fastest on CPU), or jax.nn.dot_product_attention's
      # 'xla' or 'cudnn' (fused; NVIDIA GPU, bf16/fp16)
      attention='einsum',
      remat='none',  # per-block rematerialisation: 'none', 'full' or 'dots_saveable'
      # 'matmul' (patchify + one matmul; MAE embeds only its kept patches) or 'conv' (3-D convolution)
      patch_embed='matmul',
      scan_blocks=False,  # nn.scan over the encoder blocks (stacked params; no drop path, no export)
    )
  )
  c.masking = ml_collections.ConfigDict(dict(kind='random', ratio=0.9))
  c.objectives = ml_collections.ConfigDict({'pixel_mse': 1.0})
  c.hpm = default_hpm_config()  # used with objectives.loss_prediction
  c.contrastive = default_contrastive_config()  # used with objectives.infonce / simsiam / vicreg
  c.data = default_data_config()

  c.batch_size = 512  # global, across all hosts and devices
  c.num_epochs = 800  # in effective samples (videos × repeated_sampling)
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


def _fail(key: str, message: str):
  raise ConfigError(f'config.{key}: {message}')


MODELS = ('mae', 'vimpac', 'vqvae')
# The objectives each model's outputs can feed.
MODEL_OBJECTIVES = {
  'mae': ('pixel_mse', 'loss_prediction', 'infonce', 'simsiam', 'vicreg'),
  'vimpac': ('token_ce', 'infonce', 'vicreg'),
  'vqvae': ('vq_recon',),
}


def validate_without_evaluators(config, *, pretraining: bool = True) -> None:
  """Raise ConfigError naming the key for any inconsistent value, `config.evaluators` aside.

  `pretraining=False` (evaluations of a frozen or fine-tuned encoder) skips
  the keys only pre-training reads: objectives, HPM, contrastive heads.
  """
  m = config.model
  if m.name not in MODELS:
    _fail('model.name', f'unknown model {m.name!r}; known: {list(MODELS)}')
  if m.dtype not in ('float32', 'bfloat16', 'float16'):
    _fail('model.dtype', f'{m.dtype!r} is not float32, bfloat16 or float16')
  _validate_accelerator_switches(m, pretraining)
  {'mae': _validate_mae, 'vimpac': _validate_vimpac, 'vqvae': _validate_vqvae}[m.name](config)
  if pretraining:
    _validate_objectives(config)
  if config.batch_size <= 0:
    _fail('batch_size', 'must be positive')
  if config.batch_size % config.optim.grad_accum_steps:
    _fail(
      'optim.grad_accum_steps',
      f'{config.optim.grad_accum_steps} does not divide batch_size={config.batch_size}',
    )
  if config.optim.lr_batch_unit not in ('clips', 'videos'):
    _fail('optim.lr_batch_unit', f'{config.optim.lr_batch_unit!r} is not "clips" or "videos"')
  if config.optim.schedule not in ('cosine', 'linear'):
    _fail('optim.schedule', f'{config.optim.schedule!r} is not "cosine" or "linear"')
  if len(config.mesh.axes) != len(config.mesh.shape):
    _fail('mesh.shape', f'{tuple(config.mesh.shape)} does not match mesh.axes={tuple(config.mesh.axes)}')
  if list(config.mesh.shape).count(-1) > 1:
    _fail('mesh.shape', 'at most one axis may be -1')
  if 'data' not in config.mesh.axes:
    _fail('mesh.axes', "must contain 'data'")
  try:
    sharding.resolve_rules(config.mesh.rules, tuple(config.mesh.axes))
  except sharding.RuleError as e:
    _fail('mesh.rules' if e.name is None else f'mesh.rules.{e.name}', e.reason)
  for key in ('log_every_steps', 'checkpoint_every_steps', 'image_every_steps', 'keep_checkpoints'):
    if config[key] <= 0:
      _fail(key, 'must be positive')


def _validate_objectives(config) -> None:
  m = config.model
  if not config.objectives:
    _fail('objectives', 'at least one objective is needed')
  for name, weight in config.objectives.items():
    if name not in objectives.OBJECTIVES:
      _fail(f'objectives.{name}', f'unknown objective; known: {sorted(objectives.OBJECTIVES)}')
    if not isinstance(weight, (int, float)):
      _fail(f'objectives.{name}', f'weight must be a number, got {weight!r}')
    built_in = any(name in names for names in MODEL_OBJECTIVES.values())  # registered elsewhere: unchecked
    if built_in and name not in MODEL_OBJECTIVES[m.name]:
      _fail(
        f'objectives.{name}',
        f'model.name={m.name!r} cannot train it; its objectives: {list(MODEL_OBJECTIVES[m.name])}',
      )
  _validate_hpm(config)
  _validate_contrastive(config)


def _validate_hpm(config) -> None:
  h = config.hpm
  if h.hard_masking and 'loss_prediction' in config.objectives and config.masking.kind != 'random':
    _fail('masking.kind', f'HPM hard-patch masking replaces random masking; got {config.masking.kind!r}')
  if h.selection not in hard_patches.SELECTIONS:
    _fail('hpm.selection', f'{h.selection!r}; valid: {list(hard_patches.SELECTIONS)}')
  if h.alpha_manner not in hard_patches.ALPHA_MANNERS:
    _fail('hpm.alpha_manner', f'{h.alpha_manner!r}; valid: {list(hard_patches.ALPHA_MANNERS)}')
  for key in ('alpha_0', 'alpha_T', 'ema_momentum', 'ema_momentum_final'):
    if not 0.0 <= h[key] <= 1.0:
      _fail(f'hpm.{key}', f'{h[key]} is outside [0, 1]')
  if h.loss_predictor_target not in objectives.loss_prediction.TARGETS:
    _fail(
      'hpm.loss_predictor_target',
      f'{h.loss_predictor_target!r}; valid: {list(objectives.loss_prediction.TARGETS)}',
    )


def _validate_contrastive(config) -> None:
  from mvm_jax.models import heads

  c = config.contrastive
  if c.pooling not in heads.POOLINGS:
    _fail('contrastive.pooling', f'{c.pooling!r}; valid: {list(heads.POOLINGS)}')
  if c.temperature <= 0:
    _fail('contrastive.temperature', f'{c.temperature} must be > 0')
  if c.bn_stats not in heads.BN_STATS:
    _fail('contrastive.bn_stats', f'{c.bn_stats!r}; valid: {list(heads.BN_STATS)}')
  two_view = heads.contrastive_objectives(config)
  if two_view and config.data.sampling not in ('clip_pair', 'frame_pair'):
    _fail(
      'data.sampling',
      f'objectives {two_view} compare two views of each video: use "frame_pair" (ViC-MAE) or '
      f'"clip_pair" (VIMPAC), not {config.data.sampling!r}',
    )
  if config.data.sampling == 'frame_pair' and config.data.num_frames != 1:
    _fail(
      'data.num_frames',
      f'frame_pair sampling gives one frame per view; set it to 1, not {config.data.num_frames}',
    )
  if two_view and config.batch_size < 2:
    _fail('batch_size', 'contrastive objectives need at least 2 videos per batch (negatives)')


def _validate_accelerator_switches(m, pretraining: bool) -> None:
  """model.attention / remat / scan_blocks (absent in configs saved before them: defaults)."""
  import jax

  attention = m.get('attention', 'einsum')
  if attention not in ('einsum', 'xla', 'cudnn'):
    _fail('model.attention', f'{attention!r} is not "einsum", "xla" or "cudnn"')
  if attention == 'cudnn':
    if jax.default_backend() != 'gpu':
      _fail('model.attention', f'"cudnn" needs an NVIDIA GPU; this process runs on {jax.default_backend()}')
    if m.dtype not in ('bfloat16', 'float16'):
      _fail(
        'model.attention', f'"cudnn" fused attention needs model.dtype bfloat16 or float16, not {m.dtype}'
      )
  if m.get('patch_embed', 'matmul') not in ('conv', 'matmul'):
    _fail('model.patch_embed', f'{m.patch_embed!r} is not "conv" or "matmul"')
  remat = m.get('remat', 'none')
  if remat not in ('none', 'full', 'dots_saveable'):
    _fail('model.remat', f'{remat!r} is not "none", "full" or "dots_saveable"')
  if m.get('scan_blocks', False):
    if m.name != 'mae':
      _fail('model.scan_blocks', f'scans the ViT encoder of model.name="mae", not {m.name!r}')
    if m.drop_path_rate > 0 and pretraining:
      _fail('model.scan_blocks', f'needs model.drop_path_rate=0 (got {m.drop_path_rate}); unroll the blocks')
    if not pretraining:
      _fail('model.scan_blocks', 'pre-training only: evaluations and export read the unrolled block names')


def _validate_mae(config) -> None:
  m, d = config.model, config.data
  if d.crop_size % m.patch_size:
    _fail('model.patch_size', f'{m.patch_size} does not divide data.crop_size={d.crop_size}')
  if d.num_frames % m.t_patch_size:
    _fail('model.t_patch_size', f'{m.t_patch_size} does not divide data.num_frames={d.num_frames}')
  grid_t = d.num_frames // m.t_patch_size
  if m.pred_t_dim % grid_t or not grid_t <= m.pred_t_dim <= d.num_frames:
    _fail(
      'model.pred_t_dim',
      f'{m.pred_t_dim} must be a multiple of the temporal token count '
      f'{grid_t} and at most data.num_frames={d.num_frames}',
    )
  for part in ('encoder', 'decoder'):
    if m[part].width % m[part].num_heads:
      _fail(f'model.{part}.num_heads', f'{m[part].num_heads} does not divide width {m[part].width}')
  if m.decoder_cls not in ('learned', 'encoder'):
    _fail('model.decoder_cls', f'{m.decoder_cls!r} is not "learned" or "encoder"')
  if m.norm_pix_eps <= 0:
    _fail('model.norm_pix_eps', f'{m.norm_pix_eps} must be > 0')
  if m.pos_embed not in ('learned', 'sincos'):
    _fail('model.pos_embed', f'{m.pos_embed!r} is not "learned" or "sincos"')
  if not 0.0 < config.masking.ratio < 1.0:
    _fail('masking.ratio', f'{config.masking.ratio} is outside (0, 1)')
  if config.masking.kind not in masking.MASKERS:
    _fail('masking.kind', f'unknown masker {config.masking.kind!r}; known: {sorted(masking.MASKERS)}')
  grid = (d.num_frames // m.t_patch_size, d.crop_size // m.patch_size, d.crop_size // m.patch_size)
  try:
    masking.num_visible(config.masking.kind, grid, config.masking.ratio)
  except ValueError as e:
    _fail('masking.ratio', str(e))


def _validate_vimpac(config) -> None:
  from mvm_jax.masking import blocks
  from mvm_jax.models import factorized

  v, d = config.get('vimpac'), config.data
  if v is None:
    _fail('vimpac', "model.name='vimpac' needs the vimpac section (start from configs/vimpac.py)")
  if v.layout not in factorized.LAYOUTS:
    _fail('vimpac.layout', f'{v.layout!r}; valid: {list(factorized.LAYOUTS)}')
  if d.crop_size % v.downsample:
    _fail('vimpac.downsample', f'{v.downsample} does not divide data.crop_size={d.crop_size}')
  attention = v.attention_dim or (v.width // 2 if v.large_half else v.width)
  if attention % v.num_heads:
    _fail('vimpac.num_heads', f'{v.num_heads} does not divide the attention width {attention}')
  if config.masking.kind not in blocks.MASKERS:
    _fail('masking.kind', f'VIMPAC masks tokens with {list(blocks.MASKERS)}, not {config.masking.kind!r}')
  token_shape = factorized.token_shape_from_config(config)
  try:
    blocks.make_token_masker(
      config.masking.kind,
      token_shape,
      num_blocks=config.masking.num_blocks,
      ratio=None if config.masking.match_block_ratio else config.masking.ratio,
    )
  except ValueError as e:
    _fail('masking.num_blocks', str(e))
  if d.source != 'tokens':
    _validate_tokenizer_source(config)


def _validate_tokenizer_source(config) -> None:
  """Tokens made in the step need a tokenizer with weights."""
  t = _tokenizer_section(
    config, 'pixels need a tokenizer section (or data.source="tokens" with extracted tokens)'
  )
  if t.kind == 'vqvae' and not t.workdir:
    _fail(
      'tokenizer.workdir',
      'tokenizer.kind="vqvae" needs the workdir of a trained VQ-VAE '
      '(python -m mvm_jax.main --config configs/vqvae.py:tiny --workdir DIR), '
      'or extract tokens and set data.source="tokens"',
    )
  if t.kind == 'dalle' and not t.dalle_encoder:
    _fail('tokenizer.dalle_encoder', 'tokenizer.kind="dalle" needs the path of the DALL-E encoder.pkl')


def _tokenizer_section(config, missing: str):
  """`config.tokenizer`, checked by `tokenizer.validate_tokenizer_config`; `missing`: the error without one."""
  from mvm_jax.models import tokenizer

  t = config.get('tokenizer')
  if t is None:
    _fail('tokenizer', missing)
  try:
    tokenizer.validate_tokenizer_config(t)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return t


def _validate_vqvae(config) -> None:
  t = _tokenizer_section(
    config, "model.name='vqvae' needs the tokenizer section (start from configs/vqvae.py)"
  )
  f = 2 ** len(t.widths)
  if config.data.crop_size % f:
    _fail(
      'tokenizer.widths',
      f'{len(t.widths)} stages downsample {f}x, which does not divide data.crop_size={config.data.crop_size}',
    )
