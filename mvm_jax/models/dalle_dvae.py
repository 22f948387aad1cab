"""Flax port of the DALL-E dVAE encoder (OpenAI `DALL-E` package, `dall_e/encoder.py`), and its loader.

VIMPAC's tokens are the argmax codes of this encoder on frames scaled to
[0, 1] and mapped by `map_pixels` (0.1 + 0.8·x). Shapes: x [B, (T,) H, W, 3]
in [0, 1] → logits [B, (T,) H/8, W/8, vocab] and codes int32 [B, (T,) H/8, W/8]
(8 = 2**(group_count − 1) max-pools; H and W must be multiples of 8).

Architecture (defaults = the published encoder: group_count 4, n_hid 256,
n_blk_per_group 2, input_channels 3, vocab_size 8192):
  input    7×7 conv → n_hid
  group_g  n_blk_per_group EncoderBlocks of width 2**(g−1)·n_hid, then a 2×2
           max-pool (not after the last group)
  output   relu → 1×1 conv → vocab_size
  EncoderBlock(n_out): id_path (1×1 conv if the width changes, else identity)
           + post_gain · res_path, res_path = relu→3×3→relu→3×3→relu→3×3→relu→1×1
           with n_out/4 hidden channels, post_gain = 1 / n_layers²,
           n_layers = group_count · n_blk_per_group.
All convolutions are 'same'-padded with bias. The PyTorch `Conv2d` runs in
float16 on CUDA (`use_float16`, all but the output conv); this port computes
in float32 (`dtype`), like the PyTorch module on CPU.

Parameters mirror the PyTorch names: torch key 'blocks.<a>.<b>...<w|b>' ↔
Flax path (<a>, <b>, ..., 'kernel'|'bias'); kernels [O, I, k, k] ↔ [k, k, I, O].
The published `encoder.pkl` is a whole pickled `dall_e.encoder.Encoder`:
`load_dalle_encoder` unpickles it (this needs the `DALL-E` package, `pip
install 'mvm_jax[torch]'`, and runs pickle code: load only files you trust)
or reads a state_dict file, and returns Flax params.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from mvm_jax.models import vit

Dtype = Any
LOGIT_LAPLACE_EPS = 0.1  # dall_e.utils.logit_laplace_eps
FORMAT = 'dalle_encoder'
TORCH_LEAF = {'kernel': 'w', 'bias': 'b'}

# Variance 1/(n_in·k²) as dall_e's N(0, ·); uniform, which compiles much faster than normal on CPU.
dalle_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def map_pixels(x):
  """[0, 1] → [eps, 1 − eps] with eps = 0.1: (1 − 2·eps)·x + eps (dall_e.utils.map_pixels)."""
  return (1.0 - 2.0 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def _conv(features: int, kernel: int, name: str, dtype: Dtype, precision) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    padding=((pad, pad), (pad, pad)),
    dtype=dtype,
    precision=precision,
    kernel_init=vit.partitioned(dalle_init, (None, None, None, None)),
    bias_init=vit.partitioned(nn.initializers.zeros, (None,)),
    name=name,
  )


class ResPath(nn.Module):
  """relu → 3×3 → relu → 3×3 → relu → 3×3 → relu → 1×1: [N, h, w, C] → [N, h, w, n_out]."""

  n_out: int
  dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    n_hid = self.n_out // 4
    for i, (features, kernel) in enumerate([(n_hid, 3), (n_hid, 3), (n_hid, 3), (self.n_out, 1)]):
      x = _conv(features, kernel, f'conv_{i + 1}', self.dtype, self.precision)(nn.relu(x))
    return x


class EncoderBlock(nn.Module):
  """id_path(x) + post_gain · res_path(x): [N, h, w, C] → [N, h, w, n_out]."""

  n_out: int
  n_layers: int
  dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    if self.n_out % 4:
      raise ValueError(f'EncoderBlock: n_out={self.n_out} must be a multiple of 4')
    identity = x
    if x.shape[-1] != self.n_out:
      identity = _conv(self.n_out, 1, 'id_path', self.dtype, self.precision)(x)
    post_gain = 1.0 / self.n_layers**2
    return identity + post_gain * ResPath(self.n_out, self.dtype, self.precision, name='res_path')(x)


class Group(nn.Module):
  """n_blk EncoderBlocks of width n_out, then a 2×2 max-pool if `pool`."""

  n_out: int
  n_blk: int
  n_layers: int
  pool: bool
  dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    for i in range(self.n_blk):
      x = EncoderBlock(self.n_out, self.n_layers, self.dtype, self.precision, name=f'block_{i + 1}')(x)
    if self.pool:
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
    return x


class Output(nn.Module):
  """relu → 1×1 conv → vocab logits."""

  vocab_size: int
  dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    return _conv(self.vocab_size, 1, 'conv', self.dtype, self.precision)(nn.relu(x))


class DalleEncoder(nn.Module):
  """DALL-E dVAE encoder: x [B, (T,) H, W, C] in [0, 1] → {'logits' [..., H/8, W/8, V], 'codes' int32}.

  `map_pixels=False` takes inputs already mapped to [0.1, 0.9]. `precision`
  is passed to every convolution (e.g. 'highest' on TPU/GPU to reproduce
  PyTorch float32 codes most closely). `encode(x)` returns the codes only.
  """

  n_hid: int = 256
  n_blk_per_group: int = 2
  group_count: int = 4
  input_channels: int = 3
  vocab_size: int = 8192
  map_pixels: bool = True
  dtype: Dtype = jnp.float32
  precision: Any = None

  @property
  def downsample(self) -> int:
    return 2 ** (self.group_count - 1)

  @nn.compact
  def __call__(self, x) -> dict:
    c, f = self.input_channels, self.downsample
    if x.ndim not in (4, 5) or x.shape[-1] != c:
      raise ValueError(f'DalleEncoder: expected [B, H, W, {c}] or [B, T, H, W, {c}], got {x.shape}')
    if x.shape[-3] % f or x.shape[-2] % f:
      raise ValueError(f'DalleEncoder: frame size {x.shape[-3:-1]} must be a multiple of {f}')
    lead = x.shape[:-3]
    h = x.reshape((-1,) + x.shape[-3:]).astype(jnp.float32)
    if self.map_pixels:
      h = map_pixels(h)
    h = _conv(self.n_hid, 7, 'input', self.dtype, self.precision)(h.astype(self.dtype))
    n_layers = self.group_count * self.n_blk_per_group
    for g in range(self.group_count):
      h = Group(
        2**g * self.n_hid,
        self.n_blk_per_group,
        n_layers,
        pool=g < self.group_count - 1,
        dtype=self.dtype,
        precision=self.precision,
        name=f'group_{g + 1}',
      )(h)
    logits = Output(self.vocab_size, self.dtype, self.precision, name='output')(h).astype(jnp.float32)
    logits = logits.reshape(lead + logits.shape[1:])
    return {'logits': logits, 'codes': jnp.argmax(logits, axis=-1).astype(jnp.int32)}

  def encode(self, x):
    """x [B, (T,) H, W, C] in [0, 1] → codes int32 [B, (T,) H/8, W/8]."""
    return self(x)['codes']


# ---------------------------------------------------------------------------
# PyTorch checkpoint → Flax params.


def torch_key(path: tuple[str, ...]) -> str:
  """Flax param path → PyTorch state_dict key, e.g. ('group_1', 'block_1', 'res_path', 'conv_1', 'kernel')
  → 'blocks.group_1.block_1.res_path.conv_1.w'."""
  return '.'.join(('blocks',) + tuple(path[:-1]) + (TORCH_LEAF[path[-1]],))


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax shape → PyTorch shape ([k, k, I, O] → [O, I, k, k]; biases unchanged)."""
  if path[-1] == 'kernel':
    k1, k2, n_in, n_out = shape
    return (n_out, n_in, k1, k2)
  return tuple(shape)


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # torch.Tensor
    value = value.detach().cpu()
    if str(value.dtype) in ('torch.bfloat16', 'torch.float16'):
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def read_dalle_state_dict(source) -> dict[str, np.ndarray]:
  """A DALL-E encoder as {torch key: numpy array}.

  Args:
    source: a state_dict (mapping of tensors/arrays), or the path of the
      published `encoder.pkl` (a pickled `dall_e.encoder.Encoder`: after
      `torch.load(weights_only=True)` refuses it, it is read with
      `weights_only=False`, which runs pickled code: trusted files only), of
      a `.pth` file holding a state_dict (optionally wrapped as {'model'|
      'model_state'|'state_dict': sd}), or of a `.safetensors` file.

  Raises:
    ImportError: PyTorch (or, for a pickled module, the DALL-E package) is not installed.
    TypeError: the file holds neither a torch module nor a state_dict.
  """
  from mvm_jax.export import torch_io

  if isinstance(source, Mapping):
    loaded = source
  elif torch_io.is_safetensors(str(source)):
    loaded = torch_io.load_state_dict(str(source))
  else:
    torch = torch_io.require('torch')
    if not os.path.exists(source):
      raise FileNotFoundError(f'DALL-E encoder checkpoint not found: {source}')
    try:
      try:  # a state_dict file loads without running pickled code
        loaded = torch.load(str(source), map_location='cpu', weights_only=True)
      except pickle.UnpicklingError:  # a pickled module (the published encoder.pkl)
        loaded = torch.load(str(source), map_location='cpu', weights_only=False)
    except ModuleNotFoundError as e:
      raise ImportError(
        f'{source} is a pickled PyTorch module and unpickling it needs module {e.name!r} ({e}): the '
        f'published encoder.pkl needs the DALL-E package (dall_e, with attrs): {torch_io.INSTALL_HINT}. '
        'Or save its state_dict() once where it loads and read that file.'
      ) from None
    if isinstance(loaded, torch.nn.Module):
      loaded = loaded.state_dict()
    for key in torch_io.WRAPPER_KEYS:
      if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
        loaded = loaded[key]
        break
  if not isinstance(loaded, Mapping):
    raise TypeError(
      f'{source}: expected a dall_e Encoder module or a state_dict, got {type(loaded).__name__}'
    )
  state_dict = {str(k): v for k, v in loaded.items() if hasattr(v, 'shape')}
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.') :]: v for k, v in state_dict.items()}
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def encoder_for_state_dict(state_dict: Mapping[str, Any], **overrides) -> DalleEncoder:
  """The `DalleEncoder` whose shape the state_dict holds (n_hid, blocks, groups, channels, vocab).

  Sizes that cannot be read (keys absent) keep the published defaults; the
  loader then reports the missing keys. `overrides` set module fields
  (e.g. dtype, precision).
  """
  kwargs = {}
  if 'blocks.input.w' in state_dict:
    kwargs['n_hid'], kwargs['input_channels'] = (int(s) for s in np.shape(state_dict['blocks.input.w'])[:2])
  if 'blocks.output.conv.w' in state_dict:
    kwargs['vocab_size'] = int(np.shape(state_dict['blocks.output.conv.w'])[0])
  groups = {int(m.group(1)) for k in state_dict if (m := re.match(r'blocks\.group_(\d+)\.', k))}
  if groups:
    kwargs['group_count'] = max(groups)
  blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r'blocks\.group_1\.block_(\d+)\.', k))}
  if blocks:
    kwargs['n_blk_per_group'] = max(blocks)
  kwargs.update(overrides)
  return DalleEncoder(**kwargs)


def target_shapes(encoder: DalleEncoder) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{Flax param path: shape} of `encoder`; nothing is computed."""
  f = encoder.downsample
  x = jnp.zeros((1, f, f, encoder.input_channels), jnp.float32)
  params = jax.eval_shape(lambda: nn.unbox(encoder.init(jax.random.PRNGKey(0), x))['params'])
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}


def convert_state_dict(state_dict: Mapping[str, Any], encoder: DalleEncoder) -> dict:
  """{torch key: array} → Flax params of `encoder` (float32 numpy arrays).

  Raises:
    export.convert.StateDictMismatch: listing every missing key, unexpected key
      and shape mismatch at once.
  """
  from mvm_jax.export.convert import StateDictMismatch

  shapes = target_shapes(encoder)
  wanted = {torch_key(path): path for path in shapes}
  missing = [k for k in wanted if k not in state_dict]
  unexpected = [k for k in state_dict if k not in wanted]
  mismatched = []
  for key, path in wanted.items():
    if key in state_dict:
      want, got = torch_shape(path, shapes[path]), tuple(np.shape(state_dict[key]))
      if want != got:
        mismatched.append((key, want, got))
  if missing or unexpected or mismatched:
    raise StateDictMismatch(FORMAT, missing, unexpected, mismatched)
  flat = {}
  for key, path in wanted.items():
    value = np.asarray(state_dict[key], np.float32)
    flat[path] = np.ascontiguousarray(value.transpose(2, 3, 1, 0) if path[-1] == 'kernel' else value)
  return flax.traverse_util.unflatten_dict(flat)


def load_dalle_encoder(source, encoder: DalleEncoder | None = None) -> dict:
  """DALL-E encoder checkpoint → Flax params for `DalleEncoder`.

  Args:
    source: path of `encoder.pkl` (pickled torch module), a state_dict file
      (.pth / .safetensors) or a state_dict mapping; see `read_dalle_state_dict`.
    encoder: the module to load into; default `encoder_for_state_dict` (the
      published file gives `DalleEncoder()`).

  Returns:
    {'input': ..., 'group_1': ..., ..., 'output': ...} float32 arrays; use as
    `encoder.apply({'params': params}, x)`.

  Raises:
    export.convert.StateDictMismatch: missing/unexpected keys or shape mismatches (all listed).
    ImportError / TypeError / FileNotFoundError: see `read_dalle_state_dict`.
  """
  state_dict = read_dalle_state_dict(source)
  return convert_state_dict(state_dict, encoder or encoder_for_state_dict(state_dict))
