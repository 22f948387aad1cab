"""`token_ce` (VIMPAC masked-token cross-entropy) against NumPy, on a 4×2 mesh of fake CPU devices."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import vimpac
from mvm_jax import objectives, token_vocab

# Less LLVM optimization: a fraction of the CPU compile time, same results.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}

V = 6  # tiny vocabulary; PAD id = V + 1 is out of range, as with the real ids
PAD_ID = token_vocab.special_token_ids(V).pad_id
SHAPE = (8, 2, 2, 3)  # B, T, H, W


def _case(seed=0, pad_frac=0.2, mask_frac=0.4):
  """Random logits [B, T, H, W, V], targets with PAD, mask (never on PAD), pad."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(*SHAPE, V)).astype(np.float32) * 2
  targets = rng.integers(0, V, size=SHAPE).astype(np.int32)
  pad = rng.random(SHAPE) < pad_frac
  targets[pad] = PAD_ID
  mask = (rng.random(SHAPE) < mask_frac) & ~pad
  return {'logits': logits, 'target_tokens': targets, 'token_mask': mask, 'pad': pad}


def _np_reference(logits, targets, mask, pad):
  """Per-position loop: (mean CE, accuracy, unigram baseline, masked fraction)."""
  ces, hits, scored = [], [], []
  for idx in np.ndindex(*targets.shape):
    if not mask[idx] or pad[idx]:
      continue
    z = logits[idx].astype(np.float64)
    t = targets[idx]
    ces.append(np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[t])
    hits.append(np.argmax(z) == t)
    scored.append(t)
  mode_count = np.bincount(scored, minlength=V).max()
  return np.mean(ces), np.mean(hits), mode_count / len(scored), np.sum(mask & ~pad) / np.sum(~pad)


def _fn():
  return objectives.OBJECTIVES['token_ce'](vimpac.get_config('tiny'))


def test_token_ce_matches_numpy():
  case = _case()
  loss, metrics = _fn()(case, {})
  ce, acc, unigram, frac = _np_reference(
    case['logits'], case['target_tokens'], case['token_mask'], case['pad']
  )
  np.testing.assert_allclose(loss, ce, rtol=1e-5)
  np.testing.assert_allclose(metrics['token_ce/mask_accuracy'], acc, rtol=1e-6)
  np.testing.assert_allclose(metrics['token_ce/unigram_baseline'], unigram, rtol=1e-6)
  np.testing.assert_allclose(metrics['token_ce/masked_fraction'], frac, rtol=1e-6)
  assert 0 < frac < 1 and 0 < unigram < 1


def test_token_ce_ignores_unmasked_and_pad_positions():
  case = _case(seed=1)
  loss, metrics = _fn()(case, {})
  # Changing logits / targets at unscored positions changes nothing.
  other = dict(case)
  unscored = ~case['token_mask']
  other['logits'] = np.where(unscored[..., None], 100.0 * np.ones_like(case['logits']), case['logits'])
  other['target_tokens'] = np.where(unscored & ~case['pad'], 0, case['target_tokens'])
  loss2, metrics2 = _fn()(other, {})
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  np.testing.assert_allclose(metrics2['token_ce/mask_accuracy'], metrics['token_ce/mask_accuracy'])
  # A PAD position flagged as masked is still not scored (with `pad`, or by its out-of-range id).
  bad = dict(case, token_mask=case['token_mask'] | case['pad'])
  np.testing.assert_allclose(_fn()(bad, {})[0], loss, rtol=1e-6)
  no_pad = {k: v for k, v in bad.items() if k != 'pad'}
  np.testing.assert_allclose(_fn()(no_pad, {})[0], loss, rtol=1e-6)
  # Nothing masked: zero loss, no NaN.
  empty = dict(case, token_mask=np.zeros(SHAPE, bool))
  loss0, metrics0 = _fn()(empty, {})
  assert float(loss0) == 0.0 and all(np.isfinite(v) for v in metrics0.values())


def test_token_ce_normalises_by_global_count():
  """One masked token in sample 0, many in sample 1: the mean is over tokens, not samples."""
  logits = np.zeros((2, 1, 2, 2, V), np.float32)
  logits[0, 0, 0, 0, 0] = 3.0  # sample 0's only target scores high
  targets = np.zeros((2, 1, 2, 2), np.int32)
  mask = np.zeros((2, 1, 2, 2), bool)
  mask[0, 0, 0, 0] = True
  mask[1] = True
  loss, metrics = _fn()({'logits': logits, 'target_tokens': targets, 'token_mask': mask}, {})
  ce0 = np.log(np.exp(3.0) + V - 1) - 3.0
  np.testing.assert_allclose(loss, (ce0 + 4 * np.log(V)) / 5, rtol=1e-6)
  np.testing.assert_allclose(metrics['token_ce/masked_fraction'], 5 / 8)
  assert float(metrics['token_ce/unigram_baseline']) == 1.0  # every target is code 0


def test_token_ce_at_positions():
  """logits [B, P, V] scored at flat `positions`: as the full map restricted to them."""
  case = _case(seed=2)
  b, n = SHAPE[0], int(np.prod(SHAPE[1:]))
  positions = np.stack([np.random.default_rng(i).permutation(n)[:5] for i in range(b)]).astype(np.int32)
  flat_logits = case['logits'].reshape(b, n, V)
  sub = np.take_along_axis(flat_logits, positions[..., None], axis=1)
  loss, metrics = _fn()(dict(case, logits=sub, positions=positions), {})
  keep = np.zeros((b, n), bool)
  np.put_along_axis(keep, positions, True, axis=1)
  restricted = dict(case, token_mask=case['token_mask'] & keep.reshape(SHAPE))
  loss_ref, metrics_ref = _fn()(restricted, {})
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  np.testing.assert_allclose(metrics['token_ce/mask_accuracy'], metrics_ref['token_ce/mask_accuracy'])
  # masked_fraction describes the whole mask, not the scored subset.
  np.testing.assert_allclose(
    metrics['token_ce/masked_fraction'], _fn()(case, {})[1]['token_ce/masked_fraction']
  )


def test_token_ce_global_batch_on_mesh_equals_one_device():
  """4×2 mesh, batch sharded over both axes: loss, metrics and gradient as on 1 device."""
  case = _case(seed=3)
  fn = _fn()

  def loss_and_grad(logits, targets, mask, pad):
    def f(logits):
      return fn({'logits': logits, 'target_tokens': targets, 'token_mask': mask, 'pad': pad}, {})

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(logits)
    return loss, metrics, grad

  args = (case['logits'], case['target_tokens'], case['token_mask'], case['pad'])
  one = jax.jit(loss_and_grad, compiler_options=FAST_COMPILE)(*jax.device_put(args, jax.devices()[0]))
  mesh = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  sharded_args = jax.device_put(args, batch)
  assert len(sharded_args[0].addressable_shards) == 8
  sharded = jax.jit(loss_and_grad, in_shardings=batch, compiler_options=FAST_COMPILE)(*sharded_args)
  np.testing.assert_allclose(sharded[0], one[0], rtol=1e-6)
  for key in one[1]:
    np.testing.assert_allclose(sharded[1][key], one[1][key], rtol=1e-6, err_msg=key)
  np.testing.assert_allclose(sharded[2], one[2], rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(one[0], _np_reference(*args)[0], rtol=1e-5)
