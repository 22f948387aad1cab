"""Pixel MAE: MaskedAutoencoder on pixels (MAE-ST, HPM, ViC-MAE); masks from `masking` or HPM's teacher.

Its config: its `model` keys (`default_model_config`: ViT encoder, decoder, patches, accelerator
switches) beside the shared `name` and `dtype`, `masking` (below), `hpm` with
the loss_prediction objective (`objectives.loss_prediction`) and `contrastive` with infonce /
simsiam / vicreg (`objectives.contrastive`). The models it builds from them (`autoencoder`, `encoder`,
`video_classifier`) are those of `models.mae` and `models.vit`.
"""

from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax import config_schema
from mvm_jax import masking
from mvm_jax.config_schema import fail
from mvm_jax.masking import policy as policy_lib
from mvm_jax.methods import contrastive_heads
from mvm_jax.methods.base import (
  CONTRASTIVE,
  Method,
  ModelSetup,
  Section,
  first_samples,
  pixel_inputs,
  register,
  replicated_jit,
  video_shape,
)
from mvm_jax.models import ema
from mvm_jax.models import mae as mae_lib
from mvm_jax.models import vit
from mvm_jax.objectives import contrastive, loss_prediction
from mvm_jax import sharding
from mvm_jax.train import flops


def default_masking_config() -> ml_collections.ConfigDict:
  """`config.masking` of a pixel MAE.

  kind   'random' | 'tube' | 'frame' | 'cube' (`masking.MASKERS`) spacetime patches hidden.
  ratio  share of the patches hidden, in (0, 1); the visible count must be whole for `kind`.
  """
  return ml_collections.ConfigDict(dict(kind='random', ratio=0.9))


def validate_masking_config(config) -> None:
  m, d = config.masking, config.data
  if not 0.0 < m.ratio < 1.0:
    fail('masking.ratio', f'{m.ratio} is outside (0, 1)')
  if m.kind not in masking.MASKERS:
    fail('masking.kind', f'unknown masker {m.kind!r}; known: {sorted(masking.MASKERS)}')
  p, t = config.model.patch_size, config.model.t_patch_size
  try:
    masking.num_visible(m.kind, (d.num_frames // t, d.crop_size // p, d.crop_size // p), m.ratio)
  except ValueError as e:
    fail('masking.ratio', str(e))


def default_model_config() -> ml_collections.ConfigDict:
  """The pixel MAE's `config.model` keys (beside the shared `name` and `dtype`): a ViT encoder and
  decoder on t×p×p spacetime patches, and the accelerator switches."""
  return ml_collections.ConfigDict(
    dict(
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
      # 'einsum' (two einsums, float32 softmax; the fastest on CPU), or jax.nn.dot_product_attention's
      # 'xla' or 'cudnn' (fused; NVIDIA GPU, bf16/fp16)
      attention='einsum',
      remat='none',  # per-block rematerialisation: 'none', 'full' or 'dots_saveable'
      # 'matmul' (patchify + one matmul; MAE embeds only its kept patches) or 'conv' (3-D convolution)
      patch_embed='matmul',
      scan_blocks=False,  # nn.scan over the encoder blocks (stacked params; no drop path, no export)
    )
  )


def validate_accelerator_switches(config, *, pretraining: bool) -> None:
  """model.attention / remat / patch_embed / scan_blocks: known values, and what each needs."""
  m = config.model
  if m.attention not in ('einsum', 'xla', 'cudnn'):
    fail('model.attention', f'{m.attention!r} is not "einsum", "xla" or "cudnn"')
  if m.attention == 'cudnn':
    if jax.default_backend() != 'gpu':
      fail('model.attention', f'"cudnn" needs an NVIDIA GPU; this process runs on {jax.default_backend()}')
    if m.dtype not in ('bfloat16', 'float16'):
      fail('model.attention', f'"cudnn" fused attention needs model.dtype bfloat16 or float16, not {m.dtype}')
  if m.patch_embed not in ('conv', 'matmul'):
    fail('model.patch_embed', f'{m.patch_embed!r} is not "conv" or "matmul"')
  if m.remat not in ('none', 'full', 'dots_saveable'):
    fail('model.remat', f'{m.remat!r} is not "none", "full" or "dots_saveable"')
  if m.scan_blocks:
    if m.drop_path_rate > 0 and pretraining:
      fail('model.scan_blocks', f'needs model.drop_path_rate=0 (got {m.drop_path_rate}); unroll the blocks')
    if not pretraining:
      fail('model.scan_blocks', 'pre-training only: evaluations and export read the unrolled block names')


MASKING = Section('masking', default_masking_config, validate_masking_config)
HPM = Section('hpm', loss_prediction.default_hpm_config, loss_prediction.validate_hpm_config)


def patch_grid(config) -> tuple[int, int, int]:
  """(T/t, H/p, W/p): the grid of the config's clip (`video_shape`) in patches, the encoder's tokens."""
  m = config.model
  return vit.token_grid(video_shape(config), (m.t_patch_size, m.patch_size, m.patch_size))


def encoder(config, drop_path_rate: float | None = None) -> vit.Encoder:
  """The ViT encoder of `config.model` on the config's clip; drop_path_rate None: `model.drop_path_rate`."""
  m = config.model
  return vit.Encoder(
    patch=(m.t_patch_size, m.patch_size, m.patch_size),
    grid=patch_grid(config),
    width=m.encoder.width,
    depth=m.encoder.depth,
    num_heads=m.encoder.num_heads,
    mlp_ratio=m.encoder.mlp_ratio,
    drop_path_rate=m.drop_path_rate if drop_path_rate is None else drop_path_rate,
    pos_embed=m.pos_embed,
    dtype=jnp.dtype(m.dtype),
    attention=m.attention,
    remat=m.remat,
    scan_blocks=bool(m.scan_blocks),
    patch_embed=m.patch_embed,
    name='encoder',
  )


def autoencoder(
  config, cls: type[mae_lib.MaskedAutoencoder] = mae_lib.MaskedAutoencoder, **fields
) -> mae_lib.MaskedAutoencoder:
  """MaskedAutoencoder with the heads `config.objectives` need: a loss predictor
  for 'loss_prediction', pooling + projector (from `config.contrastive`) for
  'infonce' / 'simsiam' / 'vicreg', and SimSiam's predictor for 'simsiam'.

  `cls`: a subclass to build instead (one with targets of its own, say), given its `fields` besides."""
  m = config.model
  dtype = jnp.dtype(m.dtype)
  two_view = bool(contrastive.contrastive_objectives(config))
  return cls(
    encoder=encoder(config),
    decoder_width=m.decoder.width,
    decoder_depth=m.decoder.depth,
    decoder_heads=m.decoder.num_heads,
    decoder_mlp_ratio=m.decoder.mlp_ratio,
    pred_t_dim=m.pred_t_dim,
    num_frames=config.data.num_frames,
    dense_encoder=m.dense_encoder,
    decoder_cls=m.decoder_cls,
    pos_embed=m.pos_embed,
    dtype=dtype,
    predict_loss='loss_prediction' in config.objectives,
    pooling=contrastive_heads.pooling(config.contrastive) if two_view else None,
    projector=contrastive_heads.projector(config.contrastive, dtype) if two_view else None,
    predictor=contrastive_heads.predictor(config.contrastive, dtype)
    if 'simsiam' in config.objectives
    else None,
    **fields,
  )


def video_classifier(
  config, num_classes: int, drop_path_rate: float | None = None, dropout: float = 0.0
) -> mae_lib.VideoClassifier:
  """The fine-tuning view: `encoder(config, drop_path_rate)` under a linear head of `num_classes`."""
  return mae_lib.VideoClassifier(
    encoder=encoder(config, drop_path_rate),
    num_classes=num_classes,
    dropout=dropout,
    dtype=jnp.dtype(config.model.dtype),
  )


@register
class MaeMethod(Method):
  name = 'mae'
  objectives = ('pixel_mse', 'loss_prediction', 'infonce', 'simsiam', 'vicreg')
  default_objectives = types.MappingProxyType({'pixel_mse': 1.0})
  sections = (MASKING,)
  objective_sections = types.MappingProxyType(
    {'loss_prediction': HPM, 'infonce': CONTRASTIVE, 'simsiam': CONTRASTIVE, 'vicreg': CONTRASTIVE}
  )
  config_file = 'configs/mae_st.py'
  target = 'pixels'  # what `model(config)` reconstructs (the log's description)
  has_video_encoder = True

  def model_defaults(self) -> ml_collections.ConfigDict:
    return default_model_config()

  def validate_model(self, config, *, pretraining: bool) -> None:
    """Patches that tile the clip, whole heads, the decoder's predicted frames, the known switches."""
    validate_accelerator_switches(config, pretraining=pretraining)
    m, d = config.model, config.data
    if d.crop_size % m.patch_size:
      fail('model.patch_size', f'{m.patch_size} does not divide data.crop_size={d.crop_size}')
    if d.num_frames % m.t_patch_size:
      fail('model.t_patch_size', f'{m.t_patch_size} does not divide data.num_frames={d.num_frames}')
    grid_t = d.num_frames // m.t_patch_size
    if m.pred_t_dim % grid_t or not grid_t <= m.pred_t_dim <= d.num_frames:
      fail(
        'model.pred_t_dim',
        f'{m.pred_t_dim} must be a multiple of the temporal token count '
        f'{grid_t} and at most data.num_frames={d.num_frames}',
      )
    for part in ('encoder', 'decoder'):
      if m[part].width % m[part].num_heads:
        fail(f'model.{part}.num_heads', f'{m[part].num_heads} does not divide width {m[part].width}')
    if m.decoder_cls not in ('learned', 'encoder'):
      fail('model.decoder_cls', f'{m.decoder_cls!r} is not "learned" or "encoder"')
    if m.norm_pix_eps <= 0:
      fail('model.norm_pix_eps', f'{m.norm_pix_eps} must be > 0')
    if m.pos_embed not in ('learned', 'sincos'):
      fail('model.pos_embed', f'{m.pos_embed!r} is not "learned" or "sincos"')

  def model(self, config) -> mae_lib.MaskedAutoencoder:
    """The MaskedAutoencoder this config trains (a subclass may change its target: `targets`)."""
    return autoencoder(config)

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    model = self.model(config)
    grid = model.encoder.grid
    masker = masking.make_masker(config.masking.kind, grid, config.masking.ratio)
    shape = (2,) + video_shape(config) + (3,)

    def init_variables(rng):
      return model.init({'params': rng, 'dropout': rng}, jnp.zeros(shape, jnp.float32), masker(rng, shape[0]))

    return ModelSetup(
      model=model,
      inputs=pixel_inputs(config),
      masker=masker,
      policy=mask_policy(config, model, masker, total_steps, steps_per_epoch),
      init_variables=init_variables,
      frozen={},
      grid=grid,
      description=f'MAE reconstructing {self.target}',
    )

  def teacher_momentum(self, config, steps_per_epoch: int):
    """HPM's EMA teacher, kept when the loss predictor picks the masks."""
    if not uses_teacher(config):
      return None
    h = config.hpm

    def momentum(step):
      return ema.momentum_schedule(
        step, steps_per_epoch, h.ema_momentum, h.ema_momentum_final, h.ema_momentum_epochs
      )

    return momentum

  def frozen_encoder(self, config) -> vit.Encoder:
    return encoder(config, drop_path_rate=0.0)

  def classifier(self, config, num_classes: int, *, drop_path_rate=None, dropout: float = 0.0):
    return video_classifier(config, num_classes, drop_path_rate, dropout)

  def token_grid(self, config) -> tuple[int, int, int]:
    return patch_grid(config)

  def feature_width(self, config) -> int:
    return config.model.encoder.width

  def encoder_depth(self, config) -> int:
    return config.model.encoder.depth

  def token_patch(self, config) -> tuple[int, int, int]:
    m = config.model
    return (m.t_patch_size, m.patch_size, m.patch_size)

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """Reconstructions of the first samples of `batch` (first view of pairs) with
    a fixed random mask, or for HPM the teacher's mask at this step, beside
    the teacher's predicted-loss heat map."""
    from mvm_jax import visualize

    c = exp.config
    n = min(c.num_image_samples, batch['video'].shape[0])
    video = first_samples(exp, batch['video'], n, batch_ndim=5)  # [n, T, H, W, C]
    rng = jax.random.PRNGKey(c.seed + 1)
    model, s = exp.model, state

    def forward(params, model_state, teacher, video):
      predicted, hard = None, None
      if uses_teacher(c):
        masks = teacher_masks(c, model, exp.total_steps, exp.steps_per_epoch)
        mask, hard, _, predicted = masks(rng, step, video, teacher)
      else:
        mask = exp.masker(rng, video.shape[0])
      outputs = model.apply({'params': params, **model_state}, video, mask)
      return {k: outputs[k] for k in ('pred', 'target', 'mask')}, predicted, hard

    with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
      outputs, predicted, hard = jax.device_get(
        replicated_jit(exp, forward)(s.params, s.model_state, s.teacher, video)
      )
    if jax.process_index() != 0:
      return None
    return visualize.write_reconstructions(
      os.path.join(workdir, 'images'),
      step,
      outputs,
      model.encoder.grid,
      model.target_patch,
      c.model.norm_pix_loss,
      c.data.mean,
      c.data.std,
      n,
      predicted_loss=predicted,
      hard=hard,
      norm_pix_eps=c.model.norm_pix_eps,
    )

  def model_stats(self, config, num_classes: int) -> dict:
    """{'params': {encoder, decoder, finetune_encoder}, 'gflops_per_clip': {mae_sparse, mae_dense,
    finetune_encoder}}: `model(config)` with the sparse and the dense encoder, and the fine-tuning
    classifier with `num_classes`. The config is validated first (`Method.validate`)."""
    config_schema.validate_shared(config)
    self.validate(config)
    sparse, params = _autoencoder_flops(self, config, dense=False)
    dense, _ = _autoencoder_flops(self, config, dense=True)
    clf = self.classifier(config, num_classes)
    video = _abstract_clip(config)
    clf_params = jax.eval_shape(
      lambda rng, v: clf.init({'params': rng}, v)['params'], jax.random.PRNGKey(0), video
    )
    finetune = flops.jit_flops(lambda p, v: clf.apply({'params': p}, v), clf_params, video)
    encoder = flops.param_count(params['encoder'])
    return {
      'params': {
        'encoder': encoder,
        'decoder': flops.param_count(params) - encoder,
        'finetune_encoder': flops.param_count(clf_params),
      },
      'gflops_per_clip': {
        'mae_sparse': sparse / 1e9,
        'mae_dense': dense / 1e9,
        'finetune_encoder': finetune / 1e9,
      },
    }

  def model_stats_table(self, stats: dict, config) -> str:
    p, g = stats['params'], stats['gflops_per_clip']
    d = config.data
    lines = [
      f'clip {d.num_frames}×{d.crop_size}×{d.crop_size}, patch {config.model.t_patch_size}×'
      f'{config.model.patch_size}×{config.model.patch_size}, mask {config.masking.kind} {config.masking.ratio}',
      f'{"parameters":<28}{"count":>14}',
      f'{"  encoder (pre-training)":<28}{p["encoder"] / 1e6:>13.1f}M',
      f'{"  decoder":<28}{p["decoder"] / 1e6:>13.1f}M',
      f'{"  fine-tune encoder + head":<28}{p["finetune_encoder"] / 1e6:>13.1f}M',
      f'{"forward GFLOPs per clip":<28}{"XLA (2/MAC)":>14}{"paper (1/MAC)":>16}',
    ]
    for name, key in (
      ('  MAE, sparse encoder', 'mae_sparse'),
      ('  MAE, dense (w/ [M])', 'mae_dense'),
      ('  fine-tune encoder', 'finetune_encoder'),
    ):
      lines.append(f'{name:<28}{g[key]:>14.1f}{g[key] / 2:>16.1f}')
    lines.append(f'{"  dense / sparse":<28}{g["mae_dense"] / g["mae_sparse"]:>14.2f}×')
    return '\n'.join(lines)


# --- masks: `masking` or HPM's teacher (`config.hpm`) ------------------------------------------------


def uses_teacher(config) -> bool:
  """HPM's EMA teacher is kept when the loss predictor picks the masks (`hpm.hard_masking`)."""
  return 'loss_prediction' in config.objectives and bool(config.hpm.hard_masking)


def teacher_masks(config, model: mae_lib.MaskedAutoencoder, total_steps: int, steps_per_epoch: int = 1):
  """HPM's teacher masks (`masking.policy.teacher_masks`) on `model`'s patch grid, with
  `masking.ratio` hidden and α_t as `config.hpm` sets it (per epoch, or per step with
  `hpm.alpha_per_step`)."""
  h = config.hpm
  return policy_lib.teacher_masks(
    model,
    model.encoder.grid,
    config.masking.ratio,
    total_steps,
    None if h.alpha_per_step else steps_per_epoch,
    alpha_0=h.alpha_0,
    alpha_T=h.alpha_T,
    alpha_manner=h.alpha_manner,
    selection=h.selection,
    per_frame=h.per_frame,
  )


def mask_policy(
  config, model: mae_lib.MaskedAutoencoder, masker, total_steps: int, steps_per_epoch: int = 1
) -> policy_lib.MaskPolicy:
  """Each step's masks: HPM's teacher when it picks them (`uses_teacher`), else `masker` (from
  `masking.make_masker`, `config.masking`)."""
  if uses_teacher(config):
    return policy_lib.hard_patch_policy(teacher_masks(config, model, total_steps, steps_per_epoch))
  return policy_lib.random_policy(masker)


# --- counting (`MaeMethod.model_stats`) -------------------------------------------------------------


def _abstract_clip(config) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1,) + video_shape(config) + (3,), jnp.float32)


def _autoencoder_flops(method: MaeMethod, config, dense: bool) -> tuple[float, dict]:
  """(forward FLOPs of `method.model` on one clip, its abstract params), with `model.dense_encoder`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.dense_encoder = dense
  model = method.model(config)
  masker = masking.make_masker(config.masking.kind, model.encoder.grid, config.masking.ratio)
  video = _abstract_clip(config)

  def init(rng, v):
    return model.init({'params': rng}, v, masker(rng, 1))['params']

  params = jax.eval_shape(init, jax.random.PRNGKey(0), video)
  forward = lambda p, v, rng: model.apply({'params': p}, v, masker(rng, 1))
  return flops.jit_flops(forward, params, video, jax.random.PRNGKey(0)), params
