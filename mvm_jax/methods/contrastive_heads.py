"""The heads of the two-view objectives (infonce, simsiam, vicreg) from `config.contrastive`
(`objectives.contrastive.default_contrastive_config`): MAE (ViC-MAE) and VIMPAC build them.

Each function takes the `config.contrastive` section and returns a `models.heads` module. Registers
no method.
"""

from __future__ import annotations

import jax.numpy as jnp

from mvm_jax.models import heads


def _num_views(contrastive_config) -> int:
  """`contrastive.bn_stats`: 'per_view' normalises each of the 2 views on its own."""
  return 2 if contrastive_config.bn_stats == 'per_view' else 1


def projector(contrastive_config, dtype=jnp.float32) -> heads.Projector:
  """Projector from `config.contrastive.projector` and `contrastive.bn_stats`."""
  p = contrastive_config.projector
  return heads.Projector(
    hidden=p.hidden,
    out=p.out,
    num_layers=p.num_layers,
    use_bias_last=p.use_bias_last,
    bn_last=p.bn_last,
    num_views=_num_views(contrastive_config),
    dtype=dtype,
  )


def predictor(contrastive_config, dtype=jnp.float32) -> heads.Projector:
  """SimSiam predictor from `config.contrastive.predictor` (out = projector.out)."""
  p = contrastive_config.predictor
  return heads.Projector(
    hidden=p.hidden,
    out=contrastive_config.projector.out,
    num_layers=p.num_layers,
    num_views=_num_views(contrastive_config),
    dtype=dtype,
  )


def pooling(contrastive_config) -> heads.Pooling:
  """Pooling from `config.contrastive.{pooling, gem_p, gem_learnable}`."""
  c = contrastive_config
  return heads.Pooling(kind=c.pooling, gem_p=c.gem_p, gem_learnable=c.gem_learnable)
