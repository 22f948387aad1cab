"""VIMPAC factorized backbone: Table 10 sizes, layouts against a loop reference, PAD, pos-embed resize, tied head."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mvm_jax import token_vocab
from mvm_jax.methods import vimpac as vimpac_method
from mvm_jax.models import factorized

VOCAB = 32
GRID = (2, 3, 4)  # distinct T, H, W so that a swapped axis shows


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _tiny(layout='T,H|W', depth=1, dropout=0.0, **kw):
  backbone = factorized.FactorizedEncoder(
    token_shape=GRID, width=16, depth=depth, num_heads=4, vocab_size=VOCAB, layout=layout, dropout=dropout,
    name='backbone', **kw
  )  # fmt: skip
  return factorized.VimpacModel(backbone=backbone)


def _tokens(seed, batch=2, shape=GRID):
  return np.random.default_rng(seed).integers(0, VOCAB, size=(batch,) + shape).astype(np.int32)


@functools.cache
def _compiled(layout='T,H|W', depth=1):
  """(model, random params, jitted apply(params, tokens, pad)): one compilation per layout,
  shared by the tests; no init compiled (params are host random numbers of init's shapes)."""
  model = _tiny(layout, depth)
  shapes = jax.eval_shape(lambda r: model.init({'params': r}, _tokens(0))['params'], jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), nn.meta.unbox(shapes)
  )
  return model, params, jax.jit(lambda p, t, pad: model.apply({'params': p}, t, pad))


# --- Table 10 -----------------------------------------------------------------------


def _backbone_params(config):
  backbone = vimpac_method.backbone(config)
  tokens = jax.ShapeDtypeStruct((1,) + vimpac_method.token_shape(config), jnp.int32)
  return jax.eval_shape(lambda r, t: backbone.init({'params': r}, t)['params'], jax.random.PRNGKey(0), tokens)


# VIMPAC Table 10 ('Params': backbone with the 8197-row token embedding, no
# pre-training heads; 5×16×16 tokens) and our exact counts.
TABLE10 = {'small': (29.4, 29_442_048), 'base': (119.7, 119_748_096), 'large_half': (210.1, 210_106_368)}


@pytest.mark.parametrize('preset', list(TABLE10))
def test_param_counts_match_table10(preset):
  from configs import vimpac

  config = vimpac.get_config(preset)
  v = config.vimpac
  count = _count(_backbone_params(config))
  paper, exact = TABLE10[preset]
  assert round(count / 1e6, 1) == paper
  # By hand: embedding + positions + [CLS] + ln_pre + depth × (2 attention blocks + MLP + LN).
  d, att = v.width, v.width // 2 if v.large_half else v.width
  mlp = 2 * d if v.large_half else 4 * d
  attention_block = 3 * (d * att + att) + att * d + d + 2 * d
  layer = 2 * attention_block + (d * mlp + mlp + mlp * d + d) + 2 * d
  assert count == exact == 8197 * d + (5 + 16 + 16 + 1) * d + d + 2 * d + v.depth * layer


# VIMPAC Table 13 (Small, 5×16×16): TxHxW 23.1M, T,H,W 35.8M (T,H|W 29.4M above).
# Its 'T,HxW' 27.1M is not reproduced: two attention blocks per layer make it
# 29.4M like 'T,H|W' (the reference code has no HxW pattern). Layers are alike,
# so depth 6 = depth 0 + 6 × (depth 1 - depth 0).
@pytest.mark.parametrize('layout, paper', [('TxHxW', 23.1), ('T,H,W', 35.8), ('T,HxW', 29.4)])
def test_param_counts_of_table13_layouts(layout, paper):
  from configs import vimpac

  config = vimpac.get_config('small')
  config.vimpac.layout = layout
  counts = []
  for depth in (0, 1):
    config.vimpac.depth = depth
    counts.append(_count(_backbone_params(config)))
  assert round((counts[0] + 6 * (counts[1] - counts[0])) / 1e6, 1) == paper


# --- a straightforward loop reference, float64 numpy --------------------------------


def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-12) * p['scale'] + p['bias']


def _dense(x, p):
  return x @ p['kernel'] + p.get('bias', 0.0)


def _attend(p, heads, tokens, valid):
  """tokens [L, D], valid [L] bool → [L, dim] (one row, softmax over valid keys)."""
  q, k, v = (_dense(tokens, p[n]) for n in ('query', 'key', 'value'))
  split = lambda y: y.reshape(len(y), heads, -1).transpose(1, 0, 2)
  q, k, v = split(q), split(k), split(v)
  scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
  scores = np.where(valid[None, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return (probs @ v).transpose(1, 0, 2).reshape(len(tokens), -1)


def _pattern(p, heads, cls, x, valid, axes):
  """One sample: every line along `axes` with [CLS] in front, in a Python loop."""
  d_out = p['query']['kernel'].shape[1]
  out, cls_outs = np.zeros(x.shape[:3] + (d_out,)), []
  others = [a for a in range(3) if a not in axes]
  for idx in np.ndindex(*[x.shape[a] for a in others]):
    where = [slice(None)] * 3
    for a, i in zip(others, idx):
      where[a] = i
    seq = x[tuple(where)].reshape(-1, x.shape[-1])
    row_valid = np.concatenate([[True], valid[tuple(where)].reshape(-1)])
    y = _attend(p, heads, np.concatenate([cls[None], seq]), row_valid)
    cls_outs.append(y[0])
    out[tuple(where)] = y[1:].reshape(out[tuple(where)].shape)
  return np.mean(cls_outs, axis=0), out


def _reference(params, tokens, pad, layout, num_heads):
  """The backbone for one sample at a time, loops instead of reshapes."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  gelu = lambda y: 0.5 * y * (1 + erf(y / math.sqrt(2)))
  cls_all, x_all = [], []
  for tok, pd in zip(np.asarray(tokens), np.asarray(pad)):
    pos = p['pos_embed_t'][:, None, None] + p['pos_embed_h'][None, :, None] + p['pos_embed_w'][None, None, :]
    x = _ln(p['embedding'][tok] + pos, p['ln_pre'])
    cls = _ln(p['cls_token'][0] + p['pos_embed_cls'][0], p['ln_pre'])
    for i in range(len([k for k in p if k.startswith('block')])):
      layer = p[f'block{i}']
      for j, patterns in enumerate(factorized.parse_layout(layout)):
        block = layer[f'attn{j}']
        outs = [
          _pattern(block[factorized.pattern_name(a)], num_heads // len(patterns), cls, x, ~pd, a)
          for a in patterns
        ]
        cls = _ln(cls + _dense(np.concatenate([o[0] for o in outs], -1), block['out']), block['ln'])
        x = _ln(x + _dense(np.concatenate([o[1] for o in outs], -1), block['out']), block['ln'])
      mlp = lambda y, layer=layer: _dense(gelu(_dense(y, layer['fc1'])), layer['fc2'])
      cls, x = _ln(cls + mlp(cls), layer['ln']), _ln(x + mlp(x), layer['ln'])
    cls_all.append(cls)
    x_all.append(x)
  return np.stack(cls_all), np.stack(x_all)


PAD = np.zeros((2,) + GRID, bool)
PAD[0, -1] = True  # sample 0: last frame padded
PAD[1, :, 1, 2] = True  # sample 1: one position in every frame


@pytest.mark.parametrize('layout', factorized.LAYOUTS)
def test_layouts_match_loop_reference_with_pad(layout):
  _, params, apply = _compiled(layout)
  tokens = _tokens(0)
  out = apply(params, tokens, PAD)
  b, (t, h, w), v = tokens.shape[0], GRID, VOCAB
  assert out['cls'].shape == (b, 16) and out['tokens_out'].shape == (b, t, h, w, 16)
  assert out['logits'].shape == (b, t, h, w, v) and out['logits'].dtype == jnp.float32
  cls, x = _reference(params['backbone'], tokens, PAD, layout, 4)
  np.testing.assert_allclose(np.asarray(out['cls']), cls, atol=2e-4)
  np.testing.assert_allclose(np.asarray(out['tokens_out']), x, atol=2e-4)


def test_pad_contents_do_not_reach_other_outputs_and_pad_defaults_to_pad_id():
  model, params, apply = _compiled('T,H|W')
  tokens = _tokens(1)
  base = apply(params, tokens, PAD)
  changed = np.where(PAD, (tokens + 7) % VOCAB, tokens)
  other = apply(params, changed, PAD)
  keep = ~PAD
  np.testing.assert_allclose(
    np.asarray(other['tokens_out'])[keep], np.asarray(base['tokens_out'])[keep], atol=1e-5
  )
  np.testing.assert_allclose(np.asarray(other['cls']), np.asarray(base['cls']), atol=1e-5)
  # Without the PAD mask the change is visible (so the check above can fail).
  no_pad = np.zeros_like(PAD)
  assert (
    np.abs(np.asarray(apply(params, changed, no_pad)['cls'] - apply(params, tokens, no_pad)['cls'])).max()
    > 1e-3
  )
  # pad=None: PAD = tokens equal to the PAD id.
  with_ids = np.where(PAD, token_vocab.special_token_ids(VOCAB).pad_id, tokens).astype(np.int32)
  derived = jax.jit(lambda p, t: model.apply({'params': p}, t))(params, with_ids)
  np.testing.assert_allclose(
    np.asarray(derived['cls']), np.asarray(apply(params, with_ids, PAD)['cls']), atol=1e-6
  )


def test_large_half_widths_and_dropout():
  model = _tiny('T,H|W', dropout=0.1, large_half=True)
  shapes = jax.eval_shape(lambda r: model.init({'params': r}, _tokens(2))['params'], jax.random.PRNGKey(0))
  block = nn.meta.unbox(shapes)['backbone']['block0']
  assert block['attn0']['T']['query']['kernel'].shape == (16, 8)  # attention width D/2 (head dim 8 → 2)
  assert block['attn1']['H']['query']['kernel'].shape == (16, 4)  # H and W: half the heads and width each
  assert block['attn1']['out']['kernel'].shape == (8, 16)
  assert block['fc1']['kernel'].shape == (16, 32)  # MLP 2D
  drop = factorized.Dropout(0.25)
  x = jnp.ones((64, 8, 8, 4))
  y = np.asarray(jax.jit(lambda r: drop.apply({}, x, False, rngs={'dropout': r}))(jax.random.PRNGKey(0)))
  assert abs((y == 0).mean() - 0.25) < 0.02 and np.allclose(y[y != 0], 1 / 0.75)
  np.testing.assert_array_equal(np.asarray(drop.apply({}, x, True)), np.asarray(x))


def test_token_head_tied_to_embedding_and_positions_select_logits():
  model = _tiny(depth=0)  # the tie does not depend on depth; keeps the backward pass small
  ids = token_vocab.special_token_ids(VOCAB)
  tokens = np.full((2,) + GRID, ids.mask_id, np.int32)  # code rows get gradient through the head only
  targets = _tokens(3)
  positions = np.asarray([[0, 5, 23], [1, 2, 3]], np.int32)
  shapes = jax.eval_shape(lambda r: model.init({'params': r}, tokens)['params'], jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), nn.meta.unbox(shapes)
  )

  @jax.jit
  def run(params):
    def loss(params):
      out = model.apply({'params': params}, tokens)
      logp = jax.nn.log_softmax(out['logits'])
      return -jnp.take_along_axis(logp, targets[..., None], -1).mean(), out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grads, model.apply({'params': params}, tokens, positions=positions)['logits']

  out, grads, selected = run(params)
  head, emb = params['token_head'], params['backbone']['embedding']
  u = np.asarray(out['tokens_out']) @ head['dense']['kernel'] + head['dense']['bias']
  u = nn.LayerNorm(epsilon=1e-12).apply({'params': head['ln']}, nn.gelu(u, approximate=False))
  np.testing.assert_allclose(
    np.asarray(out['logits']), np.asarray(u) @ emb[:VOCAB].T + head['bias'], atol=1e-4
  )
  g = np.abs(np.asarray(grads['backbone']['embedding'])).sum(1)
  assert (g[:VOCAB] > 0).all() and g[ids.mask_id] > 0  # codes through the tied head; [MASK] as input
  assert g[VOCAB : ids.mask_id].max() == 0  # unused special rows
  flat = np.asarray(out['logits']).reshape(2, -1, VOCAB)
  np.testing.assert_allclose(
    np.asarray(selected), np.take_along_axis(flat, positions[..., None], 1), atol=1e-5
  )


def test_interpolate_pos_embed():
  t_, h_, w_ = (np.arange(n * 2, dtype=np.float32).reshape(n, 2) for n in (5, 16, 16))
  params = {
    'backbone': {'pos_embed_t': t_, 'pos_embed_h': h_, 'pos_embed_w': w_, 'embedding': np.ones((3, 2))}
  }
  same = factorized.interpolate_pos_embed(params, (5, 16, 16))
  for k in ('pos_embed_t', 'pos_embed_h', 'pos_embed_w', 'embedding'):
    np.testing.assert_array_equal(np.asarray(same['backbone'][k]), params['backbone'][k])
  big = factorized.interpolate_pos_embed(params, (10, 32, 32))['backbone']
  assert big['pos_embed_t'].shape == (10, 2) and big['pos_embed_h'].shape == (32, 2)
  np.testing.assert_array_equal(np.asarray(big['embedding']), params['backbone']['embedding'])
  # torch F.interpolate(linear, align_corners=False), 2x: [a, .75a+.25b, .25a+.75b, .75b+.25c, ...]
  two = np.asarray([[0.0], [4.0], [8.0]], np.float32)
  np.testing.assert_allclose(np.asarray(factorized.resize_linear(two, 6))[:, 0], [0, 1, 3, 5, 7, 8])
  np.testing.assert_allclose(np.asarray(factorized.resize_linear(two, 2))[:, 0], [1, 7])  # shrink: 1.5 → 0, 2
  # A model at the new shape takes the resized tree.
  model = _tiny()
  small = jax.eval_shape(lambda r: model.init({'params': r}, _tokens(0))['params'], jax.random.PRNGKey(0))
  small = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.meta.unbox(small))
  resized = factorized.interpolate_pos_embed(small, (4, 6, 8))
  target = _tiny().backbone.clone(token_shape=(4, 6, 8))
  target = jax.eval_shape(
    lambda r: factorized.VimpacModel(backbone=target).init({'params': r}, _tokens(0, shape=(4, 6, 8)))[
      'params'
    ],
    jax.random.PRNGKey(0),
  )
  assert jax.tree.map(np.shape, resized) == jax.tree.map(np.shape, nn.meta.unbox(target))


def test_config_presets_and_model_stats():
  from configs import vimpac
  from mvm_jax.tools import model_stats

  for preset in ('tiny', 'small', 'base', 'large_half'):
    c = vimpac.get_config(preset)
    assert c.model.name == 'vimpac' and vimpac_method.vimpac_model(c).projector is not None
  c = vimpac.get_config('small')
  assert vimpac_method.token_shape(c) == (5, 16, 16) and c.masking.num_blocks == 5
  assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay, c.optim.clip_grad_norm) == (
    0.9,
    0.98,
    1e-8,
    0.05,
    1.0,
  )
  c = vimpac.get_config('tiny')
  c.vimpac.update(width=16, depth=0, num_heads=2)  # depth does not change what is counted; compiles fast
  c.contrastive.projector.update(hidden=32, out=8)
  stats = model_stats.model_stats(c)
  p = stats['params']
  model = vimpac_method.vimpac_model(c)
  params = jax.eval_shape(
    lambda r: model.init({'params': r}, _tokens(0, 1, (4, 8, 8)))['params'], jax.random.PRNGKey(0)
  )
  assert p['backbone'] == _count(params['backbone'])
  assert (
    p['heads']
    == _count(params['token_head']) + _count(params['projector'])
    == p['token_head'] + p['cls_head']
  )
  assert 0 < stats['gflops_per_clip']['backbone'] < stats['gflops_per_clip']['pretrain']
