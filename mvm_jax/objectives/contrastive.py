"""Two-view objectives on global features: `infonce`, `simsiam`, `vicreg`.

The batch holds V = 2 views per video, adjacent: rows 2i and 2i+1 are the
two views of video i ([B, V] flattened to [B·V]). Every function here is
plain array math on the GLOBAL batch, so under jit on a batch-sharded array
XLA gathers what it needs: negatives and batch statistics span all devices
and hosts without collectives written by hand.

What the model must put in `outputs` (projector and pooling in
`models/heads.py`, built from `config.contrastive` by `methods/contrastive_heads.py`):
  infonce  'projection' [2N, E]: Projector(Pooling(latent)), ViC-MAE: mean
           of the visible patch tokens ([CLS] excluded); VIMPAC: [CLS].
  simsiam  'projection' [2N, E] (z = Projector([CLS]), BatchNorm on its last
           layer as in SimSiam) and 'prediction' [2N, E] (p = predictor(z),
           a 2-layer bottleneck Projector).
  vicreg   'projection' [2N, E] (the expander: Projector([CLS])).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax.config_schema import fail
from mvm_jax.objectives import registry

NORMALIZE_EPS = 1e-12  # as torch.nn.functional.normalize
# The objectives comparing the two views of a video through the projector (they read `config.contrastive`).
CONTRASTIVE_OBJECTIVES = ('infonce', 'simsiam', 'vicreg')
# contrastive.bn_stats: the BatchNorm statistics of the projector (`heads.Projector.num_views`).
BN_STATS = ('joint', 'per_view')


def contrastive_objectives(config) -> list[str]:
  """The objectives of `config.objectives` that need pooled features through a projector."""
  return [name for name in CONTRASTIVE_OBJECTIVES if name in config.objectives]


def default_contrastive_config() -> ml_collections.ConfigDict:
  """`config.contrastive`: ViC-MAE defaults; VIMPAC sets temperature 0.2,
  scale_by_temperature and sum_directions True, pooling 'cls', projector
  out 256 without last bias.

  start_epoch           contrastive objectives weigh 0 before this epoch, their
                        configured weight after (ViC-MAE paper: λ = 0.025 from epoch 200;
                        0 = from the start, as the released code).
  temperature           τ of infonce.
  scale_by_temperature  multiply the infonce loss by τ (VIMPAC).
  sum_directions        infonce = L_a + L_b (VIMPAC) instead of their mean.
  pooling               'mean' | 'max' | 'gem' | 'cls': features fed to the projector.
  gem_p, gem_learnable  GeM exponent and whether it is trained.
  projector             heads.Projector widths (ViC-MAE: D→4096→4096→128).
  bn_stats              BatchNorm statistics of the projector (and SimSiam predictor):
                        'joint' over both views together (VIMPAC's SyncBN sees both clips;
                        the default) or 'per_view', each view on its own (ViC-MAE's official
                        code calls its projector once per view; the ViC-MAE presets).
  predictor             SimSiam's predictor (hidden width, layers; out = projector.out).
  vicreg                weights λ (invariance), μ (variance), ν (covariance), γ, eps,
                        and l2_normalize (ViC-MAE Eq. 5 normalises before VICReg).
  """
  return ml_collections.ConfigDict(
    dict(
      start_epoch=0.0,
      temperature=0.1,
      scale_by_temperature=False,
      sum_directions=False,
      pooling='mean',
      gem_p=3.0,
      gem_learnable=True,
      projector=dict(hidden=4096, out=128, num_layers=3, use_bias_last=True, bn_last=False),
      bn_stats='joint',
      predictor=dict(hidden=512, num_layers=2),
      vicreg=dict(invariance=25.0, variance=25.0, covariance=1.0, gamma=1.0, eps=1e-4, l2_normalize=False),
    )
  )


def validate_contrastive_config(config) -> None:
  """ConfigError naming the key for an invalid `config.contrastive`, or a clip sampling that gives
  the two-view objectives of `config.objectives` no second view."""
  from mvm_jax.models import heads

  c = config.contrastive
  if c.pooling not in heads.POOLINGS:
    fail('contrastive.pooling', f'{c.pooling!r}; valid: {list(heads.POOLINGS)}')
  if c.temperature <= 0:
    fail('contrastive.temperature', f'{c.temperature} must be > 0')
  if c.bn_stats not in BN_STATS:
    fail('contrastive.bn_stats', f'{c.bn_stats!r}; valid: {list(BN_STATS)}')
  two_view = contrastive_objectives(config)
  if two_view and config.data.sampling not in ('clip_pair', 'frame_pair'):
    fail(
      'data.sampling',
      f'objectives {two_view} compare two views of each video: use "frame_pair" (ViC-MAE) or '
      f'"clip_pair" (VIMPAC), not {config.data.sampling!r}',
    )
  if two_view and config.batch_size < 2:
    fail('batch_size', 'contrastive objectives need at least 2 videos per batch (negatives)')


def l2_normalize(x):
  """[..., E] → unit vectors along the last axis (float32)."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


def _check_pairs(x):
  if x.ndim != 2 or x.shape[0] % 2:
    raise ValueError(f'expected [2N, E] with the two views of each video adjacent, got shape {x.shape}')


def partner(x):
  """[2N, ...] → each row's other view: rows 2i and 2i+1 swapped."""
  return x.reshape(x.shape[0] // 2, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)


def split_views(x):
  """[2N, ...] → (view a [N, ...], view b [N, ...]) = (rows 0, 2, 4, ...; rows 1, 3, 5, ...)."""
  pairs = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
  return pairs[:, 0], pairs[:, 1]


def infonce_loss(projection, temperature: float, *, sum_directions: bool = False, scale_by_temperature=False):
  """Symmetric NT-Xent (SimCLR) on adjacent view pairs.

  Each of the 2N anchors scores its partner view against all 2N - 2 other
  samples of both views (itself excluded) with cosine similarity / τ;
  loss = mean over anchors of cross-entropy = (L_a + L_b) / 2.

  Args:
    projection: [2N, E] projector outputs, views adjacent.
    temperature: τ.
    sum_directions: return L_a + L_b (VIMPAC) instead of their mean.
    scale_by_temperature: multiply by τ (VIMPAC).

  Returns:
    (loss scalar, metrics: contrastive/accuracy (partner ranked first),
     contrastive/pos_sim, contrastive/neg_sim (mean cosine similarities)).
  """
  _check_pairs(projection)
  z = l2_normalize(projection)
  n = z.shape[0]
  sim = z @ z.T  # [2N, 2N]
  self_pair = jnp.eye(n, dtype=bool)
  logits = jnp.where(self_pair, -jnp.inf, sim / temperature)
  pos_sim = jnp.sum(z * partner(z), axis=-1)  # [2N]
  per_anchor = jax.nn.logsumexp(logits, axis=-1) - pos_sim / temperature
  loss = jnp.mean(per_anchor)
  if sum_directions:
    loss = 2.0 * loss
  if scale_by_temperature:
    loss = temperature * loss
  partner_index = jnp.arange(n) ^ 1
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == partner_index)
  negatives = jnp.sum(jnp.where(self_pair, 0.0, sim)) - jnp.sum(pos_sim)
  metrics = {
    'contrastive/accuracy': accuracy.astype(jnp.float32),
    'contrastive/pos_sim': jnp.mean(pos_sim),
    'contrastive/neg_sim': negatives / (n * (n - 2)) if n > 2 else jnp.zeros(()),
  }
  return loss, metrics


def simsiam_loss(projection, prediction):
  """-½(cos(p1, sg(z2)) + cos(p2, sg(z1))), averaged over pairs.

  Args:
    projection: [2N, E] z (gradient stopped here).
    prediction: [2N, E] p = predictor(z).

  Returns:
    (loss scalar, metrics: simsiam/z_std, the per-dimension std over the batch
     of l2-normalised z, averaged over dimensions: ~1/sqrt(E) when healthy,
     0 at collapse).
  """
  _check_pairs(projection)
  _check_pairs(prediction)
  z = jax.lax.stop_gradient(l2_normalize(projection))
  p = l2_normalize(prediction)
  loss = -jnp.mean(jnp.sum(p * partner(z), axis=-1))
  return loss, {'simsiam/z_std': jnp.mean(jnp.std(z, axis=0))}


def _variance_term(x, gamma, eps):
  std = jnp.sqrt(jnp.var(x, axis=0, ddof=1) + eps)
  return jnp.mean(jax.nn.relu(gamma - std))


def _covariance_term(x):
  n, dim = x.shape
  centered = x - jnp.mean(x, axis=0)
  cov = centered.T @ centered / (n - 1)
  off_diagonal = cov * (1.0 - jnp.eye(dim, dtype=cov.dtype))
  return jnp.sum(jnp.square(off_diagonal)) / dim


def vicreg_loss(
  projection,
  invariance: float = 25.0,
  variance: float = 25.0,
  covariance: float = 1.0,
  gamma: float = 1.0,
  eps: float = 1e-4,
  normalize: bool = False,
):
  """VICReg (Bardes et al.; official reductions) between the two views.

  λ·mean((z_a - z_b)²) + μ·(v(z_a) + v(z_b))/2 + ν·(c(z_a) + c(z_b)), with
  v(z) = mean_d relu(γ - sqrt(Var_d(z) + eps)) (unbiased variance over the
  batch) and c(z) = Σ_{d≠d'} Cov(z)_{dd'}² / E.

  Args:
    projection: [2N, E] expander outputs, views adjacent.
    normalize: l2-normalise first (ViC-MAE Eq. 5's reading).

  Returns:
    (loss scalar, metrics: vicreg/invariance, vicreg/variance, vicreg/covariance,
     the unweighted terms).
  """
  _check_pairs(projection)
  z = l2_normalize(projection) if normalize else projection.astype(jnp.float32)
  za, zb = split_views(z)
  inv = jnp.mean(jnp.square(za - zb))
  var = (_variance_term(za, gamma, eps) + _variance_term(zb, gamma, eps)) / 2
  cov = _covariance_term(za) + _covariance_term(zb)
  loss = invariance * inv + variance * var + covariance * cov
  return loss, {'vicreg/invariance': inv, 'vicreg/variance': var, 'vicreg/covariance': cov}


@registry.register('infonce')
def make_infonce(config):
  """Needs outputs['projection'] [2N, E]; reads config.contrastive.{temperature,
  sum_directions, scale_by_temperature}."""
  c = config.contrastive
  temperature = float(c.temperature)
  if temperature <= 0:
    raise ValueError(f'config.contrastive.temperature={temperature} must be > 0')

  def infonce(outputs, batch):
    del batch
    return infonce_loss(
      outputs['projection'],
      temperature,
      sum_directions=bool(c.sum_directions),
      scale_by_temperature=bool(c.scale_by_temperature),
    )

  return infonce


@registry.register('simsiam')
def make_simsiam(config):
  """Needs outputs['projection'] and outputs['prediction'], both [2N, E]."""
  del config

  def simsiam(outputs, batch):
    del batch
    return simsiam_loss(outputs['projection'], outputs['prediction'])

  return simsiam


@registry.register('vicreg')
def make_vicreg(config):
  """Needs outputs['projection'] [2N, E]; reads config.contrastive.vicreg."""
  v = config.contrastive.vicreg
  kwargs = dict(
    invariance=float(v.invariance),
    variance=float(v.variance),
    covariance=float(v.covariance),
    gamma=float(v.gamma),
    eps=float(v.eps),
    normalize=bool(v.l2_normalize),
  )

  def vicreg(outputs, batch):
    del batch
    return vicreg_loss(outputs['projection'], **kwargs)

  return vicreg
