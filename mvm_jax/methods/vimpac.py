"""VIMPAC: VimpacPretrainer on VQ tokens, read from the batch (`data.source='tokens'`, see
`mvm_jax.tools.extract_tokens`) or made in the step from pixels by the frozen tokenizer
(`config.tokenizer`); block masks from `masking.blocks`.

Its config: `vimpac` (the backbone), `masking` (block masks over the token map) and `tokenizer`
(below; its keys: `methods.vqvae.default_tokenizer_config`), `contrastive` with infonce / vicreg
(`objectives.contrastive`). Of the shared `model` keys it reads `model.dtype`. The models it builds
from them (`backbone`, `vimpac_model`, `pretrainer`, `token_classifier`) are those of
`models.factorized`.
"""

from __future__ import annotations

import os
import types
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax import token_vocab
from mvm_jax.config_schema import ConfigError, fail
from mvm_jax.masking import blocks
from mvm_jax.methods import contrastive_heads, vqvae
from mvm_jax.methods.base import (
  CONTRASTIVE,
  EncoderInput,
  Method,
  ModelSetup,
  Section,
  first_samples,
  pixel_inputs,
  register,
  replicated_jit,
)
from mvm_jax.models import factorized
from mvm_jax.objectives import contrastive
from mvm_jax import sharding
from mvm_jax.train import flops
from mvm_jax.train.step import ModelInputs


def default_vimpac_config() -> ml_collections.ConfigDict:
  """`config.vimpac`: the factorized-attention backbone (paper Table 10 'Small' widths).

  vocab_size     VQ codes; the PAD and [MASK] ids follow them (`token_vocab`).
  downsample     pixels per token side: tokens = (num_frames, crop/downsample, crop/downsample).
  width, depth, num_heads
  mlp_dim        0: 4·width (2·width with large_half).
  attention_dim  q/k/v width of an attention block; 0: width (width/2 with large_half).
  large_half     Large-Half: half attention head dim and half MLP.
  layout         'T,H|W' | 'T,HxW' | 'T,H,W' | 'TxHxW' (`models.factorized.LAYOUTS`).
  dropout
  """
  return ml_collections.ConfigDict(
    dict(
      vocab_size=token_vocab.VOCAB_SIZE,
      downsample=8,
      width=512,
      depth=6,
      num_heads=8,
      mlp_dim=0,
      attention_dim=0,
      large_half=False,
      layout='T,H|W',
      dropout=0.1,
    )
  )


def validate_vimpac_config(config) -> None:
  v, d = config.vimpac, config.data
  if v.layout not in factorized.LAYOUTS:
    fail('vimpac.layout', f'{v.layout!r}; valid: {list(factorized.LAYOUTS)}')
  if d.crop_size % v.downsample:
    fail('vimpac.downsample', f'{v.downsample} does not divide data.crop_size={d.crop_size}')
  attention = v.attention_dim or (v.width // 2 if v.large_half else v.width)
  if attention % v.num_heads:
    fail('vimpac.num_heads', f'{v.num_heads} does not divide the attention width {attention}')


# The paper's token map: 5 frames of 128² at 8× downsampling.
PAPER_TOKEN_SHAPE = (5, 16, 16)


def default_masking_config() -> ml_collections.ConfigDict:
  """`config.masking` of VIMPAC (read by `token_masker`).

  kind               'block' (the paper) | 'iid' (Table 15 ablation).
  num_blocks         K blocks a sample (5: about 14.5% of 5×16×16 tokens).
  ratio              iid: the share masked; holds the block masker's expected ratio for K
                     on the paper's 5×16×16 tokens (a preset with another map sets its own).
  match_block_ratio  iid: mask with the block masker's expected ratio for K (False: `ratio`).
  iid_exact_count    iid: exactly round(ratio·n) tokens instead of Bernoulli(ratio).
  bert_corruption    BERT 80/10/10 replacement instead of all-[MASK] (Appendix F.3).
  """
  return ml_collections.ConfigDict(
    dict(
      kind='block',
      num_blocks=5,
      ratio=round(blocks.expected_block_mask_ratio(PAPER_TOKEN_SHAPE, 5), 4),
      match_block_ratio=True,
      iid_exact_count=False,
      bert_corruption=False,
    )
  )


def validate_masking_config(config) -> None:
  m = config.masking
  if m.kind not in blocks.MASKERS:
    fail('masking.kind', f'VIMPAC masks tokens with {list(blocks.MASKERS)}, not {m.kind!r}')
  try:
    token_masker(config)
  except ValueError as e:
    fail('masking.num_blocks', str(e))


def validate_tokenizer_config(config) -> None:
  """Tokens made in the step (data.source other than 'tokens') need a tokenizer with weights."""
  if config.data.source == 'tokens':
    return
  t = config.tokenizer
  vqvae.check_tokenizer_config(t)
  if t.kind == 'vqvae' and not t.workdir:
    fail(
      'tokenizer.workdir',
      'tokenizer.kind="vqvae" needs the workdir of a trained VQ-VAE '
      '(python -m mvm_jax.main --config configs/vqvae.py:tiny --workdir DIR), '
      'or extract tokens and set data.source="tokens"',
    )
  if t.kind == 'dalle' and not t.dalle_encoder:
    fail('tokenizer.dalle_encoder', 'tokenizer.kind="dalle" needs the path of the DALL-E encoder.pkl')


def default_tokenizer_config() -> ml_collections.ConfigDict:
  """`config.tokenizer` of VIMPAC (keys: `methods.vqvae.default_tokenizer_config`): the paper's DALL-E dVAE."""
  return vqvae.default_tokenizer_config(kind='dalle')


VIMPAC = Section('vimpac', default_vimpac_config, validate_vimpac_config)
MASKING = Section('masking', default_masking_config, validate_masking_config)
# The frozen tokenizer (paper: DALL-E dVAE, argmax codes, pixels 0.1 + 0.8·x), used on the fly
# unless data.source='tokens' reads codes extracted by mvm_jax.tools.extract_tokens.
TOKENIZER = Section('tokenizer', default_tokenizer_config, validate_tokenizer_config)


def token_shape(config) -> tuple[int, int, int]:
  """(T, H, W) tokens of a clip: (data.num_frames, data.crop_size / d, data.crop_size / d),
  d = vimpac.downsample (8 for the DALL-E dVAE)."""
  d = config.vimpac.downsample
  if config.data.crop_size % d:
    raise ValueError(f'config.vimpac.downsample={d} does not divide data.crop_size={config.data.crop_size}')
  return (config.data.num_frames, config.data.crop_size // d, config.data.crop_size // d)


def token_masker(config, shape=None, num_blocks=None):
  """`masker(rng, batch, pad=None) -> [B, T, H, W] bool` over `shape` (default `token_shape(config)`)
  from `config.masking` (`masking.blocks.make_token_masker`): kind ('block' | 'iid'), num_blocks
  (`num_blocks` overrides it), ratio (iid, unless match_block_ratio: the block masker's expected
  ratio for num_blocks) and iid_exact_count."""
  m = config.masking
  match = m.get('match_block_ratio', True)
  return blocks.make_token_masker(
    m.kind,
    token_shape(config) if shape is None else shape,
    num_blocks=m.get('num_blocks', 5) if num_blocks is None else num_blocks,
    ratio=None if match else m.ratio,
    exact_count=m.get('iid_exact_count', False),
  )


def backbone(config) -> factorized.FactorizedEncoder:
  """The factorized-attention backbone of `config.vimpac` on `token_shape(config)` (`model.dtype`)."""
  v = config.vimpac
  return factorized.FactorizedEncoder(
    token_shape=token_shape(config),
    width=v.width,
    depth=v.depth,
    num_heads=v.num_heads,
    vocab_size=v.vocab_size,
    mlp_dim=v.mlp_dim,
    attention_dim=v.attention_dim,
    large_half=v.large_half,
    layout=v.layout,
    dropout=v.dropout,
    dtype=jnp.dtype(config.model.dtype),
    name='backbone',
  )


def vimpac_model(config, projector: bool | None = None) -> factorized.VimpacModel:
  """VimpacModel from `config.vimpac` (backbone), `config.model.dtype` and, when a
  contrastive objective is configured (or `projector=True`), the projector from
  `config.contrastive.projector`."""
  dtype = jnp.dtype(config.model.dtype)
  if projector is None:
    projector = bool(contrastive.contrastive_objectives(config))
  head = contrastive_heads.projector(config.contrastive, dtype) if projector else None
  return factorized.VimpacModel(backbone=backbone(config), projector=head, dtype=dtype)


def pretrainer(config) -> factorized.VimpacPretrainer:
  """`vimpac_model(config)` wrapped for the pre-training step (`masking.bert_corruption`)."""
  return factorized.VimpacPretrainer(
    vimpac_model(config), bert_corruption=bool(config.masking.bert_corruption)
  )


def token_classifier(config, num_classes: int, dropout: float = 0.0) -> factorized.TokenClassifier:
  """TokenClassifier on `backbone(config)` (fine-tuning a VIMPAC run)."""
  return factorized.TokenClassifier(backbone(config), num_classes, dropout, jnp.dtype(config.model.dtype))


@register
class VimpacMethod(Method):
  name = 'vimpac'
  objectives = ('token_ce', 'infonce', 'vicreg')
  default_objectives = types.MappingProxyType({'token_ce': 1.0, 'infonce': 1.0})
  sections = (VIMPAC, MASKING, TOKENIZER)
  objective_sections = types.MappingProxyType({'infonce': CONTRASTIVE, 'vicreg': CONTRASTIVE})
  config_file = 'configs/vimpac.py'
  has_video_encoder = True
  run_sections = ('vimpac', 'tokenizer', 'masking')

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    del total_steps, steps_per_epoch
    model = pretrainer(config)
    shape = token_shape(config)
    inputs, frozen, source = token_input(config)
    masker = token_masker(config)
    pad_id = token_vocab.special_token_ids(config.vimpac.vocab_size).pad_id

    def policy(rng, step, tokens, teacher):
      del step, teacher
      mask = masker(rng, tokens.shape[0], tokens == pad_id)
      return mask, {}

    def init_variables(rng):
      tokens = jnp.zeros((2,) + shape, jnp.int32)
      return model.init({'params': rng, 'dropout': rng}, tokens, jnp.zeros(tokens.shape, bool))

    return ModelSetup(
      model=model,
      inputs=inputs,
      masker=masker,
      policy=policy,
      init_variables=init_variables,
      frozen=frozen,
      grid=shape,
      description=f'VIMPAC on {"x".join(map(str, shape))} {source}',
    )

  def token_patch(self, config) -> tuple[int, int, int]:
    """One frame × the tokenizer's downsampling."""
    return (1, config.vimpac.downsample, config.vimpac.downsample)

  def frozen_encoder(self, config) -> factorized.FactorizedEncoder:
    """The backbone: tokens [B, T, H, W] → ([CLS] [B, D], tokens [B, T, H, W, D])."""
    return backbone(config)

  def classifier(self, config, num_classes: int, *, drop_path_rate=None, dropout: float = 0.0):
    """The backbone's [CLS] under a linear head, on tokens; the backbone has no drop path."""
    del drop_path_rate
    return token_classifier(config, num_classes, dropout)

  def token_grid(self, config) -> tuple[int, int, int]:
    return token_shape(config)

  def feature_width(self, config) -> int:
    return config.vimpac.width

  def encoder_depth(self, config) -> int:
    return config.vimpac.depth

  def encoder_input(self, config) -> EncoderInput:
    """Tokens [1, T, H', W'] from the run's frozen tokenizer (`config.tokenizer`, its weights read
    here), to `params['backbone']`."""
    from mvm_jax import frozen_tokenizer

    example = jnp.zeros((1, *token_shape(config)), jnp.int32)
    return EncoderInput('backbone', example, frozen_tokenizer.load_frozen_tokenizer(config))

  def validate_evaluation_inputs(self, config, key: str) -> None:
    """The evaluators' pixels become tokens through the run's tokenizer: its weights must be named."""
    t = config.get('tokenizer')
    if t is None or (t.kind == 'vqvae' and not t.workdir) or (t.kind == 'dalle' and not t.dalle_encoder):
      raise ConfigError(
        f"config.tokenizer.workdir: {key} turn pixels into tokens with the run's tokenizer; "
        'set tokenizer.workdir (kind vqvae) or tokenizer.dalle_encoder (kind dalle)'
      )

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """For the first samples (first view), the code map, the masked input and the predicted codes
    with right/wrong marks (and the frames when the step tokenizes pixels), with a fixed block mask."""
    from mvm_jax import visualize

    c, inputs = exp.config, exp.inputs
    n = min(c.num_image_samples, batch[inputs.key].shape[0])
    x = first_samples(exp, batch[inputs.key], n, batch_ndim=inputs.sample_ndim)
    rng = jax.random.PRNGKey(c.seed + 1)
    pad_id = exp.model.model.backbone.special_tokens.pad_id

    def forward(params, model_state, frozen, x):
      tokens = x if inputs.preprocess is None else inputs.preprocess(frozen, x)
      mask = exp.masker(rng, tokens.shape[0], tokens == pad_id)
      outputs = exp.model.apply({'params': params, **model_state}, tokens, mask)
      return tokens, outputs['token_mask'], jnp.argmax(outputs['logits'], -1)

    s = state
    with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
      tokens, mask, predicted = jax.device_get(
        replicated_jit(exp, forward)(s.params, s.model_state, s.frozen, x)
      )
    if jax.process_index() != 0:
      return None
    frames = None
    if inputs.preprocess is not None:
      frames = visualize.denormalize(jax.device_get(x), c.data.mean, c.data.std)
    return visualize.write_token_predictions(
      os.path.join(workdir, 'images'), step, tokens, mask, predicted, c.vimpac.vocab_size, frames
    )

  def token_vocab_size(self, config) -> int | None:
    """`vimpac.vocab_size`: the VQ codes its backbone embeds."""
    return config.vimpac.get('vocab_size')

  def extract_resize_short_side(self, config) -> int:
    """`tokenizer.extract_resize_short_side` (0, the presets: the centre of the full short side)."""
    return vqvae.extract_resize_short_side(config)

  def model_stats(self, config, num_classes: int) -> dict:
    """{'params': {backbone, token_head, cls_head, heads, total}, 'gflops_per_clip': {backbone,
    pretrain}} on the config's token map (no fine-tuning head: `num_classes` is unused). `backbone`
    counts the token embedding (as the paper's Table 10), `heads` = token head + [CLS] head."""
    del num_classes
    model = vimpac_model(config, projector=True)
    tokens = jax.ShapeDtypeStruct((1,) + token_shape(config), jnp.int32)
    variables = jax.eval_shape(lambda rng, t: model.init({'params': rng}, t), jax.random.PRNGKey(0), tokens)
    params = variables['params']
    counts = {
      'backbone': flops.param_count(params['backbone']),
      'token_head': flops.param_count(params['token_head']),
    }
    counts['cls_head'] = flops.param_count(params['projector'])
    counts['heads'] = counts['token_head'] + counts['cls_head']
    counts['total'] = counts['backbone'] + counts['heads']
    encoder = model.backbone.clone(parent=None, name=None)
    encoder_fn = lambda v, t: encoder.apply({'params': v['params']['backbone']}, t)
    gflops = {}
    for name, fn in (('backbone', encoder_fn), ('pretrain', lambda v, t: model.apply(v, t))):
      gflops[name] = flops.jit_flops(fn, variables, tokens) / 1e9
    return {'params': counts, 'gflops_per_clip': gflops}

  def model_stats_table(self, stats: dict, config) -> str:
    p, g, v = stats['params'], stats['gflops_per_clip'], config.vimpac
    t, h, w = token_shape(config)
    lines = [
      (
        f'tokens {t}×{h}×{w} (vocab {v.vocab_size}), layout {v.layout}, {v.depth}×{v.width}'
        f'{" large-half" if v.large_half else ""}, mask block K={config.masking.get("num_blocks", "-")}'
      ),
      f'{"parameters":<28}{"count":>14}',
      f'{"  backbone (w/ token emb.)":<28}{p["backbone"] / 1e6:>13.1f}M',
      f'{"  token head":<28}{p["token_head"] / 1e6:>13.1f}M',
      f'{"  [CLS] head":<28}{p["cls_head"] / 1e6:>13.1f}M',
      f'{"  total":<28}{p["total"] / 1e6:>13.1f}M',
      f'{"forward GFLOPs per clip":<28}{"XLA (2/MAC)":>14}{"1/MAC":>16}',
    ]
    for name, key in (('  backbone', 'backbone'), ('  pre-training (+ heads)', 'pretrain')):
      lines.append(f'{name:<28}{g[key]:>14.1f}{g[key] / 2:>16.1f}')
    return '\n'.join(lines)


def token_input(config) -> tuple[ModelInputs, Any, str]:
  """Where VIMPAC's tokens come from: (inputs, frozen variables, description).

  `data.source='tokens'`: the batch's 'tokens' (checked against the token
  dataset's vocabulary and map size). Else the frozen tokenizer of
  `config.tokenizer` tokenizes the batch's pixels in the step.
  """
  v = config.vimpac
  shape = token_shape(config)
  if config.data.source == 'tokens':
    from mvm_jax.data import tokens

    info = tokens.token_info(config.data)
    if int(info['vocab_size']) != v.vocab_size:
      raise ConfigError(
        f'config.vimpac.vocab_size={v.vocab_size}, but the token dataset {config.data.tfds_name!r} '
        f'has {info["vocab_size"]} codes'
      )
    if tuple(info['token_shape']) != shape[1:]:
      raise ConfigError(
        f'config.data.crop_size / vimpac.downsample give {shape[1:]} tokens a frame, but the token '
        f'dataset {config.data.tfds_name!r} has {tuple(info["token_shape"])}'
      )
    return ModelInputs('tokens', 4, None), {}, f'tokens from {config.data.tfds_name}'
  from mvm_jax import frozen_tokenizer

  tok = frozen_tokenizer.load_frozen_tokenizer(config)
  if tok.vocab_size != v.vocab_size:
    raise ConfigError(
      f'config.vimpac.vocab_size={v.vocab_size}, but the tokenizer has {tok.vocab_size} codes'
    )
  if tok.downsample != v.downsample:
    raise ConfigError(
      f'config.vimpac.downsample={v.downsample}, but the tokenizer downsamples {tok.downsample}x'
    )
  preprocess = lambda frozen, video: jax.lax.stop_gradient(tok.tokenize(frozen, video))
  return pixel_inputs(config, preprocess), tok.variables, f'tokens made on the fly by {tok.description}'
