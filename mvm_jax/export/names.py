"""PyTorch state_dict names and tensor layouts of our Flax MAE-ST / ViT params.

Formats (the PyTorch model each one loads into):
  mae_st      facebookresearch/mae_st `MaskedAutoencoderViT(sep_pos_embed=True,
              cls_embed=True)`: Conv3d patch embedding, separate q/k/v, separable
              position embeddings, encoder + decoder.
  mae_st_vit  facebookresearch/mae_st `VisionTransformer(sep_pos_embed=True,
              cls_embed=True)`: the encoder of `mae_st`, plus `head` when the
              params have a classifier (and `fc_norm` if they have one).
  timm        timm `VisionTransformer` (class token, `pos_embed` covering the class
              token, fused qkv, Conv2d patch embedding): image encoders only, i.e.
              model.t_patch_size = 1 and one temporal token (data.num_frames = 1).
  mae         facebookresearch/mae `MaskedAutoencoderViT` (image MAE): the timm
              encoder layout plus a decoder with fused qkv and one
              `decoder_pos_embed`.

A `Rule` ties one PyTorch key to the Flax leaves it is made of and a layout
(how the arrays are transposed, fused or folded). `rules(shapes, fmt)` builds
the table for a params tree; `to_torch`/`to_flax` apply one rule each way.
Flax paths are tuples of names, e.g. ('encoder', 'block0', 'attn', 'q', 'kernel').
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from mvm_jax.models import vit

Path = tuple[str, ...]

FORMATS = ('mae_st', 'mae_st_vit', 'timm', 'mae')
FUSED_FORMATS = ('timm', 'mae')  # fused qkv, one joint pos_embed, Conv2d patch embedding
PRETRAIN_FORMATS = ('mae_st', 'mae')  # encoder + decoder

# Layouts. Shapes: D = width, C = channels, t×p×p = patch, S = H'·W', T' = temporal tokens.
COPY = 'copy'  # same array and shape
LINEAR = 'linear'  # Dense kernel [in, out] <-> Linear weight [out, in]
CONV3D = 'conv3d'  # Conv kernel [t, p, p, C, D] <-> Conv3d weight [D, C, t, p, p]
CONV2D = 'conv2d'  # Conv kernel [1, p, p, C, D] <-> Conv2d weight [D, C, p, p]
QKV_WEIGHT = 'qkv_weight'  # q, k, v kernels [D, D] each <-> fused weight [3D, D] (rows q, k, v)
QKV_BIAS = 'qkv_bias'  # q, k, v biases [D] each <-> fused bias [3D]
JOINT_POS = 'joint_pos'  # (class [1,1,D], spatial [1,S,D], temporal [1,T',D]) <-> [1, 1+S, D]
CONST = 'const'  # no Flax leaf: a fixed tensor written on export, ignored on import


@dataclasses.dataclass(frozen=True)
class Rule:
  """One PyTorch tensor `torch_key` made of the Flax leaves `flax` by `layout`.

  `value` holds the tensor of a CONST rule; `note` says why a rule is not an
  exact one-to-one copy (printed by the command-line tools).
  """

  torch_key: str
  flax: tuple[Path, ...]
  layout: str
  value: np.ndarray | None = None
  note: str = ''


@dataclasses.dataclass
class Table:
  """The rules of one params tree, and the Flax leaves deliberately left out."""

  rules: list[Rule]
  dropped: dict[Path, str]  # Flax path -> why it has no PyTorch counterpart

  @property
  def notes(self) -> list[str]:
    notes = [f'{r.torch_key}: {r.note}' for r in self.rules if r.note]
    for why in dict.fromkeys(self.dropped.values()):
      paths = [p for p, w in self.dropped.items() if w == why]
      tops = ', '.join(dict.fromkeys('/'.join(p[:2] if p[0] == 'encoder' else p[:1]) for p in paths))
      notes.append(f'not exported: {len(paths)} Flax param(s), {why}: {tops}')
    return notes


def torch_shape(rule: Rule, shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
  """Shape of the PyTorch tensor of `rule` given its Flax leaves' shapes."""
  layout = rule.layout
  if layout == CONST:
    return tuple(rule.value.shape)
  if layout == COPY:
    return tuple(shapes[0])
  if layout == LINEAR:
    return tuple(shapes[0][::-1])
  if layout == CONV3D:
    t, p, q, c, d = shapes[0]
    return (d, c, t, p, q)
  if layout == CONV2D:
    t, p, q, c, d = shapes[0]
    if t != 1:
      raise ValueError(
        f'{rule.torch_key}: the timm/mae layouts have a 2-D patch embedding; this model has a temporal '
        f'patch size of {t} (need model.t_patch_size=1)'
      )
    return (d, c, p, q)
  if layout == QKV_WEIGHT:
    d_in, d_out = shapes[0]
    return (3 * d_out, d_in)
  if layout == QKV_BIAS:
    return (3 * shapes[0][0],)
  if layout == JOINT_POS:
    (_, _, d), (_, s, _) = shapes[0], shapes[1]
    return (1, 1 + s, d)
  raise ValueError(f'unknown layout {layout!r}')


def to_torch(rule: Rule, arrays: Sequence[np.ndarray]) -> np.ndarray:
  """Flax leaves of `rule` (in `rule.flax` order) → the PyTorch tensor (numpy)."""
  layout = rule.layout
  if layout == CONST:
    return rule.value
  a = [np.asarray(x) for x in arrays]
  if layout == COPY:
    return a[0]
  if layout == LINEAR:
    return a[0].T
  if layout == CONV3D:
    return a[0].transpose(4, 3, 0, 1, 2)
  if layout == CONV2D:
    torch_shape(rule, [a[0].shape])  # checks t == 1
    return a[0][0].transpose(3, 2, 0, 1)
  if layout == QKV_WEIGHT:
    return np.concatenate([x.T for x in a], axis=0)
  if layout == QKV_BIAS:
    return np.concatenate(a, axis=0)
  if layout == JOINT_POS:
    cls, spatial, temporal = a
    if temporal.shape[1] != 1:
      raise ValueError(
        f'{rule.torch_key}: the timm/mae layouts have one position embedding per image patch; this model '
        f'has {temporal.shape[1]} temporal tokens (need data.num_frames = model.t_patch_size = 1)'
      )
    return np.concatenate([cls, spatial + temporal], axis=1)
  raise ValueError(f'unknown layout {layout!r}')


def to_flax(rule: Rule, tensor: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
  """PyTorch tensor (numpy) of `rule` → its Flax leaves, shaped as `shapes`.

  JOINT_POS is not invertible: the class entry goes to the class embedding,
  the rest to the spatial one, and the temporal embedding is set to zeros.
  """
  layout = rule.layout
  w = np.asarray(tensor)
  if layout == COPY:
    return [w]
  if layout == LINEAR:
    return [w.T]
  if layout == CONV3D:
    return [w.transpose(2, 3, 4, 1, 0)]
  if layout == CONV2D:
    return [w.transpose(2, 3, 1, 0)[None]]
  if layout == QKV_WEIGHT:
    return [x.T for x in np.split(w, 3, axis=0)]
  if layout == QKV_BIAS:
    return list(np.split(w, 3, axis=0))
  if layout == JOINT_POS:
    return [w[:, :1], w[:, 1:], np.zeros(shapes[2], w.dtype)]
  raise ValueError(f'layout {layout!r} has no Flax leaves')


# --- Building the table -------------------------------------------------------------------------------


def _linear(torch_name: str, path: Path) -> list[Rule]:
  return [
    Rule(f'{torch_name}.weight', (path + ('kernel',),), LINEAR),
    Rule(f'{torch_name}.bias', (path + ('bias',),), COPY),
  ]


def _norm(torch_name: str, path: Path) -> list[Rule]:
  return [
    Rule(f'{torch_name}.weight', (path + ('scale',),), COPY),
    Rule(f'{torch_name}.bias', (path + ('bias',),), COPY),
  ]


def _block(torch_name: str, path: Path, fused: bool) -> list[Rule]:
  """Pre-LN block: norm1, attn (q/k/v or fused qkv, proj), norm2, mlp (fc1, fc2)."""
  attn = path + ('attn',)
  rules = _norm(f'{torch_name}.norm1', path + ('norm1',))
  if fused:
    rules += [
      Rule(f'{torch_name}.attn.qkv.weight', tuple(attn + (n, 'kernel') for n in 'qkv'), QKV_WEIGHT),
      Rule(f'{torch_name}.attn.qkv.bias', tuple(attn + (n, 'bias') for n in 'qkv'), QKV_BIAS),
    ]
  else:
    for n in 'qkv':
      rules += _linear(f'{torch_name}.attn.{n}', attn + (n,))
  rules += _linear(f'{torch_name}.attn.proj', attn + ('proj',))
  rules += _norm(f'{torch_name}.norm2', path + ('norm2',))
  rules += _linear(f'{torch_name}.mlp.fc1', path + ('mlp', 'fc1'))
  rules += _linear(f'{torch_name}.mlp.fc2', path + ('mlp', 'fc2'))
  return rules


def _blocks(torch_prefix: str, path: Path, shapes: Mapping[Path, tuple], fused: bool) -> list[Rule]:
  depth = len(
    {p[len(path)] for p in shapes if p[: len(path)] == path and re.fullmatch(r'block\d+', p[len(path)])}
  )
  rules = []
  for i in range(depth):
    rules += _block(f'{torch_prefix}.{i}', path + (f'block{i}',), fused)
  return rules


def _sincos(grid: Sequence[int] | None, dim: int, name: str) -> dict[str, np.ndarray]:
  """The fixed sin-cos embeddings of `vit.SeparablePosEmbed(kind='sincos')` as [1, L, D] arrays."""
  if grid is None:
    raise ValueError(
      f'{name}: the model uses fixed sin-cos position embeddings (not stored in the params); '
      'the token grid from the run config is needed to write them'
    )
  gt, gh, gw = grid
  return {
    'class': np.zeros((1, 1, dim), np.float32),
    'spatial': vit.sincos_spatial(gh, gw, dim)[None],
    'temporal': vit.sincos_1d(np.arange(gt), dim)[None],
  }


SEP_ORDER = ('spatial', 'temporal', 'class')  # mae_st's order of the separable embeddings
JOINT_ORDER = ('class', 'spatial', 'temporal')  # the Flax leaves of a JOINT_POS rule


def _pos(
  torch_name: str,
  path: Path,
  shapes: Mapping[Path, tuple],
  dim: int,
  joint: bool,
  grid: Sequence[int] | None,
) -> list[Rule]:
  """Position embeddings of `vit.SeparablePosEmbed` at `path` (its param prefix = `torch_name`)."""
  leaf = {part: path + (f'{torch_name}_{part}',) for part in SEP_ORDER}
  if leaf['class'] in shapes:  # learned
    if joint:
      note = 'class + (spatial + temporal): temporal folded into spatial (one frame)'
      return [Rule(torch_name, tuple(leaf[p] for p in JOINT_ORDER), JOINT_POS, note=note)]
    return [Rule(f'{torch_name}_{p}', (leaf[p],), COPY) for p in SEP_ORDER]
  fixed = _sincos(grid, dim, torch_name)
  note = 'fixed sin-cos (not a parameter here): written on export, ignored on import'
  if joint:
    value = to_torch(Rule(torch_name, (), JOINT_POS), [fixed[p] for p in JOINT_ORDER])
    return [Rule(torch_name, (), CONST, value, note)]
  return [Rule(f'{torch_name}_{p}', (), CONST, fixed[p], note) for p in SEP_ORDER]


def _encoder(shapes: Mapping[Path, tuple], fmt: str, grid) -> list[Rule]:
  e = ('encoder',)
  fused = fmt in FUSED_FORMATS
  dim = shapes[e + ('cls_token',)][-1]
  rules = [
    Rule('patch_embed.proj.weight', (e + ('patch_embed', 'proj', 'kernel'),), CONV2D if fused else CONV3D),
    Rule('patch_embed.proj.bias', (e + ('patch_embed', 'proj', 'bias'),), COPY),
    Rule('cls_token', (e + ('cls_token',),), COPY),
  ]
  rules += _pos('pos_embed', e + ('pos',), shapes, dim, fused, grid)
  rules += _blocks('blocks', e, shapes, fused)
  return rules + _norm('norm', e + ('norm',))


def _decoder(shapes: Mapping[Path, tuple], fmt: str, grid) -> list[Rule]:
  fused = fmt in FUSED_FORMATS
  dim = shapes[('mask_token',)][-1]
  rules = _linear('decoder_embed', ('decoder_embed',)) + [Rule('mask_token', (('mask_token',),), COPY)]
  if fmt == 'mae_st':
    if ('decoder_cls_token',) in shapes:
      rules.append(Rule('decoder_cls_token', (('decoder_cls_token',),), COPY))
    else:
      note = (
        "no counterpart here (this decoder's [CLS] is decoder_embed of the encoder's [CLS] output): "
        'written as zeros on export, dropped on import'
      )
      rules.append(Rule('decoder_cls_token', (), CONST, np.zeros((1, 1, dim), np.float32), note))
  rules += _pos('decoder_pos_embed', ('decoder_pos',), shapes, dim, fused, grid)
  rules += _blocks('decoder_blocks', ('decoder',), shapes, fused)
  rules += _norm('decoder_norm', ('decoder', 'norm'))
  return rules + _linear('decoder_pred', ('decoder', 'pred'))


def _head(shapes: Mapping[Path, tuple]) -> list[Rule]:
  rules = _norm('fc_norm', ('fc_norm',)) if ('fc_norm', 'scale') in shapes else []
  return rules + (_linear('head', ('head',)) if ('head', 'kernel') in shapes else [])


def rules(shapes: Mapping[Path, Sequence[int]], fmt: str, grid: Sequence[int] | None = None) -> Table:
  """The rule table of a params tree (flat {path: shape}) in format `fmt`.

  `grid` (T', H', W') is only needed when position embeddings are fixed
  sin-cos (then they are not in the params and are written as constants).

  Raises:
    ValueError: unknown format, a decoder format without a decoder in the
      params, or Flax leaves the format has no name for.
  """
  if fmt not in FORMATS:
    raise ValueError(f'unknown format {fmt!r}; known: {list(FORMATS)}')
  if ('encoder', 'cls_token') not in shapes:
    raise ValueError('the params have no encoder (expected params["encoder"]["cls_token"])')
  has_decoder = ('mask_token',) in shapes
  if fmt in PRETRAIN_FORMATS and not has_decoder:
    raise ValueError(
      f'format {fmt!r} needs a pre-training checkpoint (encoder + decoder); these params have no decoder: '
      'use mae_st_vit or timm for an encoder or classifier'
    )
  table = _encoder(shapes, fmt, grid)
  table += _decoder(shapes, fmt, grid) if fmt in PRETRAIN_FORMATS else _head(shapes)
  used = {p for r in table for p in r.flax}
  dropped = {}
  for path in shapes:
    if path in used:
      continue
    if fmt not in PRETRAIN_FORMATS and (
      path[0] in ('decoder', 'decoder_embed', 'decoder_pos', 'decoder_cls_token', 'mask_token')
    ):
      dropped[path] = 'decoder (not part of the encoder model)'
    elif fmt not in PRETRAIN_FORMATS and path == ('encoder', 'mask_token'):
      dropped[path] = 'dense-encoder mask token (only used in pre-training)'
  unmapped = sorted('/'.join(p) for p in shapes if p not in used and p not in dropped)
  if unmapped:
    raise ValueError(f'format {fmt!r} has no name for these Flax params: {unmapped}')
  return Table(table, dropped)


def detect_format(keys) -> str:
  """Guess the format of a PyTorch state_dict from its keys."""
  keys = set(keys)
  fused = any(k.endswith('attn.qkv.weight') for k in keys)
  has_decoder = 'mask_token' in keys or any(k.startswith('decoder_') for k in keys)
  if fused:
    return 'mae' if has_decoder else 'timm'
  return 'mae_st' if has_decoder else 'mae_st_vit'
