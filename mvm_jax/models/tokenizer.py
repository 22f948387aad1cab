"""Our VQ-VAE, a tokenizer for VIMPAC (the other one, the DALL-E dVAE encoder, is `dalle_dvae`).

Frames are tokenized independently. Shapes: input [B, T, H, W, 3] (clips) or
[B, H, W, 3] (frames); S = len(widths) stride-2 stages give f = 2**S
downsampling (8× by default), so codes are [..., H/f, W/f] and recon is
[..., H, W, 3]. K = codebook_size, D = code_dim, M = number of code vectors
in the batch (B·T·H/f·W/f).

Pixel space: the VQ-VAE learns to reconstruct whatever it is given, so feed
it the space the tokens will later be extracted from: the data pipeline's
normalized space (mean/std) or [0, 1]. `recon` is in that same space and
`vq_recon` measures the MSE there. (The DALL-E encoder, `dalle_dvae`, wants
[0, 1] and maps it to [0.1, 0.9] itself.)

Codebook (`VectorQuantizer`):
  ema=True   the codebook is not a parameter: it lives in the 'vq_stats'
             collection with its EMA statistics ('cluster_size' [K],
             'embed_sum' [K, D], 'embedding' [K, D], 'count' []) and is
             updated by `ema_update` (decay, Laplace smoothing eps, dead-code
             restarts) whenever the model is applied with
             `mutable=['vq_stats']`. Loss = β·commitment.
  ema=False  the codebook is the parameter 'codebook' [K, D], trained by the
             codebook loss ||sg(z) − e||²; loss = codebook + β·commitment.
The straight-through estimator passes the decoder's gradient to the encoder.
Everything is computed in float32 whatever `dtype` the convolutions use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvm_jax.models import vit

Dtype = Any
VQ_STATS = 'vq_stats'
RESTART_RNG = 'vq'  # optional rng stream for dead-code restarts (else derived from the update count)

conv_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
codebook_init = nn.initializers.variance_scaling(1.0, 'fan_out', 'uniform')  # [K, D]: U(±sqrt(3/D))


def conv(features: int, kernel: int, name: str, dtype: Dtype, stride: int = 1) -> nn.Conv:
  """k×k convolution, channels last; stride 2 with k = 4 halves H and W exactly."""
  pad = (kernel - stride) // 2 if stride > 1 else (kernel - 1) // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dtype=dtype,
    kernel_init=vit.partitioned(conv_init, (None, None, None, None)),
    bias_init=vit.partitioned(nn.initializers.zeros, (None,)),
    name=name,
  )


class ResBlock(nn.Module):
  """x + conv1×1(relu(conv3×3(relu(x)))), hidden width `width // 2`: [N, h, w, C] → same."""

  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = conv(max(self.width // 2, 1), 3, 'conv_1', self.dtype)(nn.relu(x))
    return x + conv(self.width, 1, 'conv_2', self.dtype)(nn.relu(h))


class VQEncoder(nn.Module):
  """[N, H, W, 3] → [N, H/f, W/f, D]: per stage a 4×4 stride-2 conv and residual blocks."""

  widths: tuple[int, ...]
  num_res_blocks: int
  code_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.widths):
      x = conv(width, 4, f'down_{i}', self.dtype, stride=2)(x)
      for j in range(self.num_res_blocks):
        x = ResBlock(width, self.dtype, name=f'stage_{i}_res_{j}')(x)
    return conv(self.code_dim, 1, 'proj', self.dtype)(nn.relu(x))


class VQDecoder(nn.Module):
  """[N, h, w, D] → [N, h·f, w·f, 3]: mirror of `VQEncoder` with 4×4 stride-2 transposed convs."""

  widths: tuple[int, ...]
  num_res_blocks: int
  out_channels: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    x = conv(self.widths[-1], 3, 'conv_in', self.dtype)(z)
    for i in reversed(range(len(self.widths))):
      for j in range(self.num_res_blocks):
        x = ResBlock(self.widths[i], self.dtype, name=f'stage_{i}_res_{j}')(x)
      x = nn.ConvTranspose(
        self.widths[max(i - 1, 0)],
        (4, 4),
        strides=(2, 2),
        padding='SAME',
        dtype=self.dtype,
        kernel_init=vit.partitioned(conv_init, (None, None, None, None)),
        bias_init=vit.partitioned(nn.initializers.zeros, (None,)),
        name=f'up_{i}',
      )(nn.relu(x))
    return conv(self.out_channels, 3, 'conv_out', self.dtype)(nn.relu(x))


def nearest_codes(z, codebook):
  """Index of the nearest code (squared L2): z [M, D], codebook [K, D] → int32 [M].

  Builds the [M, K] float32 distance matrix (e.g. M = 256 frames of 16×16 codes
  and K = 8192: 2 GiB); tokenize large batches in chunks of frames.
  """
  distances = (
    jnp.sum(z * z, axis=1, keepdims=True)
    - 2.0 * jnp.dot(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
    + jnp.sum(codebook * codebook, axis=1)[None, :]
  )
  return jnp.argmin(distances, axis=1).astype(jnp.int32)


def code_counts(codes, codebook_size: int):
  """How often each code occurs: int32 [M] → float32 [K]."""
  return jax.ops.segment_sum(jnp.ones(codes.shape, jnp.float32), codes, num_segments=codebook_size)


def ema_update(
  stats: dict,
  z,
  codes,
  decay: float,
  eps: float,
  dead_code_threshold: float,
  rng,
) -> dict:
  """One EMA codebook update with Laplace smoothing and dead-code restarts; pure and jittable.

  With counts n_k and sums s_k of the vectors z assigned to code k:
    cluster_size_k ← decay·cluster_size_k + (1 − decay)·n_k
    embed_sum_k    ← decay·embed_sum_k    + (1 − decay)·s_k
    N = Σ cluster_size;  smoothed_k = (cluster_size_k + eps) / (N + K·eps) · N
    embedding_k    = embed_sum_k / smoothed_k
  Then every code with cluster_size_k < dead_code_threshold is restarted: its
  embedding and embed_sum become a random row of z and its cluster_size 1
  (so its EMA ratio is that row). The same convention initialises the
  statistics (cluster_size 1, embed_sum = embedding): a code that is never
  chosen keeps its vector until it is restarted.

  Args:
    stats: {'cluster_size' [K], 'embed_sum' [K, D], 'embedding' [K, D], 'count' []}.
    z: encoder outputs [M, D] (gradients are stopped).
    codes: their nearest codes, int32 [M].
    decay, eps, dead_code_threshold: as above (threshold <= 0: no restarts).
    rng: PRNG key choosing the rows of z used for restarts.

  Returns:
    The new stats, same structure.
  """
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  num_codes = stats['cluster_size'].shape[0]
  counts = code_counts(codes, num_codes)
  sums = jax.ops.segment_sum(z, codes, num_segments=num_codes)
  cluster_size = decay * stats['cluster_size'] + (1.0 - decay) * counts
  embed_sum = decay * stats['embed_sum'] + (1.0 - decay) * sums
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (total + num_codes * eps) * total
  embedding = embed_sum / smoothed[:, None]
  if dead_code_threshold > 0:
    dead = cluster_size < dead_code_threshold
    rows = jax.random.randint(rng, (num_codes,), 0, z.shape[0])
    fresh = z[rows]
    embedding = jnp.where(dead[:, None], fresh, embedding)
    embed_sum = jnp.where(dead[:, None], fresh, embed_sum)
    cluster_size = jnp.where(dead, 1.0, cluster_size)
  return {
    'cluster_size': cluster_size,
    'embed_sum': embed_sum,
    'embedding': embedding,
    'count': stats['count'] + 1,
  }


class VectorQuantizer(nn.Module):
  """Nearest-code quantization with straight-through gradients; EMA or learned codebook.

  `__call__(z)`: z [..., D] → dict with 'quantized' [..., D] (straight-through:
  forward = code vectors, gradient = identity to z), 'codes' int32 [...],
  'vq_loss' [], 'commitment_loss' [], 'codebook_loss' [] (0 with EMA),
  'perplexity' [] (exp of the entropy of the batch's code histogram) and
  'usage' [] (fraction of the K codes used in the batch).

  With ema=True the EMA update (`ema_update`) runs when 'vq_stats' is
  mutable (not at init); it quantizes with the codebook from before the
  update. Restarts draw from the 'vq' rng stream if one is given, else from
  a key folded with the update count.
  """

  codebook_size: int
  code_dim: int
  beta: float = 0.25
  ema: bool = True
  ema_decay: float = 0.99
  ema_eps: float = 1e-5
  dead_code_threshold: float = 1.0

  def setup(self):
    shape = (self.codebook_size, self.code_dim)
    if self.ema:
      self.embedding = self.variable(
        VQ_STATS, 'embedding', lambda: codebook_init(self.make_rng('params'), shape)
      )
      self.cluster_size = self.variable(
        VQ_STATS, 'cluster_size', jnp.ones, (self.codebook_size,), jnp.float32
      )
      self.embed_sum = self.variable(VQ_STATS, 'embed_sum', lambda: self.embedding.value)
      self.count = self.variable(VQ_STATS, 'count', jnp.zeros, (), jnp.int32)
    else:
      self.codebook = self.param('codebook', vit.partitioned(codebook_init, (None, None)), shape)

  def get_codebook(self):
    """The code vectors, float32 [K, D]."""
    return jnp.asarray(self.embedding.value if self.ema else self.codebook, jnp.float32)

  def lookup(self, codes):
    """int [...] → code vectors float32 [..., D]."""
    return jnp.take(self.get_codebook(), codes, axis=0)

  def encode(self, z):
    """z [..., D] → nearest codes int32 [...]."""
    flat = z.reshape(-1, self.code_dim).astype(jnp.float32)
    return nearest_codes(flat, self.get_codebook()).reshape(z.shape[:-1])

  def __call__(self, z):
    lead = z.shape[:-1]
    flat = z.reshape(-1, self.code_dim).astype(jnp.float32)
    codebook = self.get_codebook()
    codes = nearest_codes(jax.lax.stop_gradient(flat), jax.lax.stop_gradient(codebook))
    quantized = jnp.take(codebook, codes, axis=0)
    commitment = jnp.mean(jnp.square(flat - jax.lax.stop_gradient(quantized)))
    if self.ema:
      codebook_loss = jnp.zeros((), jnp.float32)
    else:
      codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(flat) - quantized))
    straight_through = flat + jax.lax.stop_gradient(quantized - flat)

    probs = code_counts(codes, self.codebook_size) / codes.shape[0]
    entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-10)))

    if self.ema and self.is_mutable_collection(VQ_STATS) and not self.is_initializing():
      stats = {
        'cluster_size': self.cluster_size.value,
        'embed_sum': self.embed_sum.value,
        'embedding': self.embedding.value,
        'count': self.count.value,
      }
      if self.has_rng(RESTART_RNG):
        rng = self.make_rng(RESTART_RNG)
      else:
        rng = jax.random.fold_in(jax.random.PRNGKey(0), self.count.value)
      new = ema_update(stats, flat, codes, self.ema_decay, self.ema_eps, self.dead_code_threshold, rng)
      self.cluster_size.value = new['cluster_size']
      self.embed_sum.value = new['embed_sum']
      self.embedding.value = new['embedding']
      self.count.value = new['count']

    return {
      'quantized': straight_through.reshape(lead + (self.code_dim,)),
      'codes': codes.reshape(lead),
      'vq_loss': codebook_loss + self.beta * commitment,
      'commitment_loss': commitment,
      'codebook_loss': codebook_loss,
      'perplexity': jnp.exp(entropy),
      'usage': jnp.mean((probs > 0).astype(jnp.float32)),
    }


def _frames(x, channels: int = 3):
  """[B, T, H, W, C] or [B, H, W, C] → ([N, H, W, C], leading shape)."""
  if x.ndim not in (4, 5) or x.shape[-1] != channels:
    raise ValueError(
      f'expected frames [B, H, W, {channels}] or clips [B, T, H, W, {channels}], got {x.shape}'
    )
  return x.reshape((-1,) + x.shape[-3:]), x.shape[:-3]


class VQVAE(nn.Module):
  """Frame-wise VQ-VAE: [..., H, W, 3] → codes [..., H/f, W/f] → recon [..., H, W, 3], f = 2**len(widths).

  `__call__(x)` returns {'recon', 'codes', 'vq_loss', 'perplexity', 'usage',
  'commitment_loss', 'codebook_loss'} (see `VectorQuantizer`); apply with
  `mutable=['vq_stats']` to update an EMA codebook. `encode(x) -> codes` and
  `decode(codes) -> x` (use `model.apply(variables, x, method='encode')`).
  H and W must be multiples of f.
  """

  codebook_size: int = 8192
  code_dim: int = 256
  widths: Sequence[int] = (128, 256, 256)
  num_res_blocks: int = 2
  beta: float = 0.25
  ema: bool = True
  ema_decay: float = 0.99
  ema_eps: float = 1e-5
  dead_code_threshold: float = 1.0
  dtype: Dtype = jnp.float32

  def setup(self):
    widths = tuple(int(w) for w in self.widths)
    self.encoder = VQEncoder(widths, self.num_res_blocks, self.code_dim, self.dtype)
    self.quantizer = VectorQuantizer(
      self.codebook_size,
      self.code_dim,
      self.beta,
      self.ema,
      self.ema_decay,
      self.ema_eps,
      self.dead_code_threshold,
    )
    self.decoder = VQDecoder(widths, self.num_res_blocks, 3, self.dtype)

  @property
  def downsample(self) -> int:
    return 2 ** len(self.widths)

  def _check(self, frames):
    f = self.downsample
    if frames.shape[1] % f or frames.shape[2] % f:
      raise ValueError(f'VQVAE: frame size {frames.shape[1:3]} must be a multiple of {f} (2**len(widths))')

  def __call__(self, x, mask=None, deterministic: bool = True) -> dict:
    """x [B, (T,) H, W, 3] → outputs dict (see class docstring).

    `mask` and `deterministic` are accepted and ignored, so the pre-training
    step's `model.apply(variables, video, mask, deterministic=...)` can train it.
    """
    del mask, deterministic
    frames, lead = _frames(x)
    self._check(frames)
    out = self.quantizer(self.encoder(frames))
    recon = self.decoder(out.pop('quantized').astype(self.dtype)).astype(jnp.float32)
    out['recon'] = recon.reshape(lead + recon.shape[1:])
    out['codes'] = out['codes'].reshape(lead + out['codes'].shape[1:])
    return out

  def encode(self, x):
    """x [B, (T,) H, W, 3] → codes int32 [B, (T,) H/f, W/f]."""
    frames, lead = _frames(x)
    self._check(frames)
    codes = self.quantizer.encode(self.encoder(frames))
    return codes.reshape(lead + codes.shape[1:])

  def decode(self, codes):
    """codes int [B, (T,) h, w] → x float32 [B, (T,) h·f, w·f, 3]."""
    lead, (h, w) = codes.shape[:-2], codes.shape[-2:]
    z = self.quantizer.lookup(codes.reshape((-1, h, w)))
    recon = self.decoder(z.astype(self.dtype)).astype(jnp.float32)
    return recon.reshape(lead + recon.shape[1:])
