"""Attentive probe: the pooling head, a task only attention solves, end to end on the built-in clips."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.config import ConfigError
from mvm_jax.evaluate import attentive_probe, linear_probe
from mvm_jax.evaluate import features as features_lib
from tests.conftest import micro_config, run_module


@pytest.fixture(scope='module')
def pooler_and_params():
  pooler = attentive_probe.AttentivePooler(num_classes=5, num_queries=2, num_heads=4, mlp_ratio=2.0)
  params = pooler.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 16)))['params']
  # Larger weights than the init's 0.02: attention far from uniform, so the checks below bite.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return pooler, jax.tree.unflatten(treedef, leaves)


def test_pooler_shapes_and_attention_sums_to_one(pooler_and_params):
  pooler, params = pooler_and_params
  tokens = jax.random.normal(jax.random.PRNGKey(2), (3, 12, 16)).astype(jnp.float16)
  logits, attention = pooler.apply({'params': params}, tokens, return_attention=True)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert attention.shape == (3, 4, 2, 12)  # [B, heads, queries, L]
  np.testing.assert_allclose(np.asarray(attention).sum(-1), 1.0, rtol=1e-5)
  assert float(attention.max()) > 2.0 / 12  # not uniform
  # The hyper-parameters come back from the parameter shapes (scores() relies on it).
  assert attentive_probe.pooler_from_params(params) == pooler
  np.testing.assert_allclose(
    attentive_probe.scores(params, np.asarray(tokens), chunk_size=2), logits, atol=1e-5
  )


def test_pooler_is_invariant_to_token_order(pooler_and_params):
  pooler, params = pooler_and_params
  tokens = jax.random.normal(jax.random.PRNGKey(3), (4, 12, 16))
  shuffled = tokens[:, np.random.default_rng(0).permutation(12)]
  a, b = (pooler.apply({'params': params}, t) for t in (tokens, shuffled))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert not np.allclose(a, pooler.apply({'params': params}, tokens[::-1]))  # the batch order matters


def _needle_tokens(n: int, rng, centres, length: int = 32):
  """[n, L, D]: L - 1 distractor tokens (class centres of random classes, + noise) and one
  marked token (dimension 0 = 3) with the clip's class centre, at a random position."""
  num_classes, d = centres.shape
  labels = rng.integers(0, num_classes, n)
  tokens = centres[rng.integers(0, num_classes, (n, length))] + 0.3 * rng.standard_normal((n, length, d))
  position = rng.integers(0, length, n)
  tokens[np.arange(n), position] = centres[labels] + 0.3 * rng.standard_normal((n, d))
  tokens[np.arange(n), position, 0] = 3.0
  return tokens.astype(np.float32), labels


def test_attention_finds_the_one_informative_token_that_mean_pooling_drowns():
  centres = np.random.default_rng(0).standard_normal((4, 16))
  centres[:, 0] = 0.0
  centres *= 3.0 / np.linalg.norm(centres, axis=1, keepdims=True)
  x_train, y_train = _needle_tokens(512, np.random.default_rng(1), centres)
  x_test, y_test = _needle_tokens(256, np.random.default_rng(2), centres)

  # Mean pooling + linear probe: the class token is 1 of 32, as loud as each distractor.
  m_train, m_test = linear_probe.standardize(x_train.mean(1), x_test.mean(1))
  params, _ = linear_probe.train_linear(m_train, y_train, 4, base_lr=0.4, batch_size=64, epochs=40)
  mean_acc = np.mean(np.argmax(np.asarray(linear_probe.logits(params, m_test)), 1) == y_test)

  params, losses = attentive_probe.train_attentive(
    x_train, y_train, num_classes=4, num_heads=2, base_lr=0.012, batch_size=64, epochs=30, warmup_epochs=3
  )
  attentive_acc = np.mean(np.argmax(attentive_probe.scores(params, x_test), 1) == y_test)
  assert losses[-1] < 0.3 * losses[0]
  assert mean_acc < 0.45  # chance: 0.25
  assert attentive_acc > 0.95
  assert attentive_acc - mean_acc > 0.5


# --- end to end on the built-in clips ----------------------------------------


def _config(**attentive):
  """configs/attentive_probe.py:tiny on the micro model (random init), in-process data, few epochs."""
  from configs import attentive_probe as attentive_config

  c = attentive_config.get_config('tiny')
  micro = micro_config()
  c.model = micro.model
  c.data.update({k: micro.data[k] for k in ('num_frames', 'crop_size', 'sampling_rate')})
  c.data.num_workers = 0
  c.mesh.shape = (1, 1, 1)
  c.init_from = ''
  c.attentive.update(dict(dict(train_views=2, epochs=8, warmup_epochs=1, num_heads=2), **attentive))
  return c


def _no_extraction(*args, **kwargs):
  pytest.fail('tokens were extracted again')


@pytest.mark.slow
def test_end_to_end_random_init_then_cache_reused(tmp_path, monkeypatch):
  results = attentive_probe.run(_config(), str(tmp_path))
  cache = tmp_path / 'tokens_train_windows.npz'
  with np.load(cache) as f:
    # Micro model: 4 frames of 32² in 2×8×8 patches = 2·4·4 tokens of width 32, float16.
    assert f['features'].shape == (40, 32, 32) and f['features'].dtype == np.float16
    np.testing.assert_array_equal(f['view'], np.repeat([0, 1], 20))
    meta = json.loads(str(f['meta']))
  assert meta['pool'] == 'tokens' and meta['token_dtype'] == 'float16'
  assert not os.path.exists(tmp_path / 'features_train_windows.npz')  # the linear probe's cache name
  with open(tmp_path / 'results.json') as f:
    saved = json.load(f)['attentive_probe']
  assert saved['num_train'] == 40 and saved['num_test'] == 20 and saved['num_classes'] == 8
  assert saved['num_tokens'] == 32 and saved['step'] == 0 and saved['init_from'] == ''
  assert 0.0 <= saved['top1'] <= saved['top5'] <= 100.0
  assert np.asarray(saved['confusion']).sum() == 20
  assert saved['config']['attentive']['epochs'] == 8
  assert os.path.getsize(tmp_path / 'confusion_attentive_probe.png') > 1000
  assert results['summary'].startswith('attentive_probe: top1 ') and 'random init' in results['summary']

  # A rerun reuses both caches (and gives the same result: same seed, same tokens).
  mtime = os.path.getmtime(cache)
  monkeypatch.setattr(features_lib, 'extract', _no_extraction)
  again = attentive_probe.run(_config(), str(tmp_path))
  assert os.path.getmtime(cache) == mtime
  assert again['top1'] == results['top1'] and again['final_loss'] == pytest.approx(results['final_loss'])
  # Other token settings are other caches.
  assert features_lib.load_cached(str(cache), meta) is not None
  assert features_lib.load_cached(str(cache), dict(meta, token_dtype='float32')) is None


@pytest.mark.parametrize(
  'key, value, message',
  [
    ('token_dtype', 'int8', 'config.attentive.token_dtype'),
    ('num_queries', 0, 'config.attentive.num_queries'),
    ('warmup_epochs', 8, 'config.attentive.warmup_epochs'),
    ('num_heads', 3, 'config.attentive.num_heads=3 does not divide'),  # width 32
    ('max_cache_gib', 1e-5, 'config.attentive.max_cache_gib'),  # 40 × 32 × 32 × 2 bytes = 80 KiB
    ('test_split', 'val', "config.attentive.test_split='val': builtin source: unknown split"),
  ],
)
def test_bad_values_fail_before_anything_is_built(tmp_path, monkeypatch, key, value, message):
  from mvm_jax.evaluate import frozen

  monkeypatch.setattr(frozen, 'load', lambda *a, **k: pytest.fail('the encoder was built'))
  with pytest.raises(ConfigError, match=message.replace('.', r'\.')):
    attentive_probe.run(_config(**{key: value}), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_cli_rejects_a_bad_key_before_compiling(tmp_path):
  result = run_module(
    'mvm_jax.attentive_probe',
    '--config',
    'configs/attentive_probe.py:tiny',
    '--workdir',
    str(tmp_path),
    '--config.init_from=',
    '--config.attentive.num_heads=0',
    timeout=120,
  )
  assert result.returncode != 0 and 'config.attentive.num_heads' in result.stderr
  assert not os.path.exists(tmp_path / 'tokens_train_windows.npz')
