"""mvm_jax.evaluate.linear_probe: a probe on separable features, and the linear probe and k-NN end to end on
the built-in clips (a run read back with runs.latest_params, the feature cache)."""

import json
import os

import numpy as np
import pytest

from mvm_jax.evaluate import features as features_lib
from mvm_jax.evaluate import knn, linear_probe
from tests.conftest import micro_config, run_module


@pytest.mark.parametrize('optimizer', ['sgd', 'lars'])
def test_linear_probe_separates_separable_features(optimizer):
  rng = np.random.default_rng(1)
  centres = 3.0 * rng.standard_normal((5, 16))
  y_train, y_test = rng.integers(0, 5, 80), rng.integers(0, 5, 40)
  x_train = (
    centres[y_train] + 0.5 * rng.standard_normal((80, 16)) + 10.0
  )  # offset: standardisation removes it
  x_test = centres[y_test] + 0.5 * rng.standard_normal((40, 16)) + 10.0
  x_train, x_test = linear_probe.standardize(x_train, x_test)
  np.testing.assert_allclose(x_train.mean(0), 0.0, atol=1e-5)
  params, losses = linear_probe.train_linear(
    x_train,
    y_train,
    5,
    optimizer=optimizer,
    base_lr=0.1 * 256 / 16 if optimizer == 'sgd' else 6.4 * 256 / 16,
    batch_size=16,
    epochs=30,
    warmup_epochs=3,
  )
  assert losses[-1] < losses[0]
  predictions = np.argmax(np.asarray(linear_probe.logits(params, x_test)), axis=1)
  np.testing.assert_array_equal(predictions, y_test)


# --- end to end on the built-in clips ----------------------------------------


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  from mvm_jax.train import loop

  workdir = str(tmp_path_factory.mktemp('pretrain'))
  c = micro_config()
  c.total_steps = 2
  loop.train_and_evaluate(c, workdir)
  return workdir


def test_latest_params_restores_the_params_only(pretrained, monkeypatch):
  import jax
  import orbax.checkpoint as ocp

  from mvm_jax import runs

  with ocp.CheckpointManager(
    os.path.join(pretrained, 'checkpoints'), item_names=('state', 'data')
  ) as manager:
    full = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  assert {'params', 'opt_state'} <= set(full)
  restored = []
  restore = ocp.CheckpointManager.restore

  def spy(self, *args, **kwargs):
    out = restore(self, *args, **kwargs)
    restored.append(set(out['state']))
    return out

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', spy)
  step, params = runs.latest_params(pretrained)
  assert step == 2 and restored == [{'params'}]  # the optimizer state is not read
  leaves = jax.tree.leaves(params)
  assert leaves and all(type(x) is np.ndarray for x in leaves)  # host arrays, nothing on a device
  assert jax.tree.structure(params) == jax.tree.structure(full['params'])
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(full['params']))


def _eval_config(
  evaluator: str, init_from: str, *, train_views: int = 1, eval_views: int = 1, mesh=(1, 1, 1)
):
  """configs/<evaluator>.py:tiny on the micro model, with in-process data."""
  from configs import knn as knn_config
  from configs import linear_probe as probe_config

  c = (probe_config if evaluator == 'linear_probe' else knn_config).get_config('tiny')
  micro = micro_config()
  if not init_from:  # the model shape comes from this config
    c.model = micro.model
    c.data.update({k: micro.data[k] for k in ('num_frames', 'crop_size', 'sampling_rate')})
  c.data.update(num_workers=0, eval_temporal_views=eval_views)
  c.mesh.shape = mesh
  c.init_from = init_from
  section = c.probe if evaluator == 'linear_probe' else c.knn
  section.update(train_views=train_views, extract_batch_size=8)
  if evaluator == 'linear_probe':
    c.probe.epochs = 20
  return c


def _no_extraction(*args, **kwargs):
  pytest.fail('features were extracted again')


@pytest.mark.parametrize('init', ['pretrained', 'random'])
def test_probe_and_knn_end_to_end(pretrained, tmp_path, monkeypatch, init):
  if init == 'pretrained':  # 2 passes over train (centre + augmented), 8 fake devices
    init_from, options = pretrained, dict(train_views=2, mesh=(-1, 1, 1))
  else:  # 2 temporal eval views per clip, averaged per clip
    init_from, options = '', dict(eval_views=2)
  probe_config = _eval_config('linear_probe', init_from, **options)
  probe = linear_probe.run(probe_config, str(tmp_path))
  cache = tmp_path / 'features_train_windows.npz'
  mtime = os.path.getmtime(cache)
  # A second run (k-NN, same workdir, same pool and views) reuses the cached features.
  monkeypatch.setattr(features_lib, 'extract', _no_extraction)
  neighbours = knn.run(_eval_config('knn', init_from, **options), str(tmp_path))
  assert os.path.getmtime(cache) == mtime

  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert set(results) == {'linear_probe', 'knn'}
  for name, r in (('linear_probe', probe), ('knn', neighbours)):
    assert 0.0 <= results[name]['top1'] <= 100.0
    assert results[name]['top1'] <= results[name]['top5'] <= 100.0
    # The tiny presets' splits: 20 test windows, 20 train windows (x 2 passes or 2 eval views).
    assert results[name]['num_test'] == 20 and results[name]['num_classes'] == 8
    assert results[name]['num_train'] == 40
    assert np.asarray(results[name]['confusion']).sum() == 20
    assert os.path.getsize(tmp_path / f'confusion_{name}.png') > 1000
    assert r['summary'].startswith(f'{name}: top1 ')
  assert set(results['knn']['k']) == {'10', '20', '100', '200'}
  assert all(v['k_used'] == min(int(k), 40) for k, v in results['knn']['k'].items())
  if init == 'pretrained':
    assert results['linear_probe']['config']['model']['encoder']['width'] == 32  # the run's model
    assert probe['step'] == 2 and 'step 2' in probe['summary']
    # Cached features made with other settings are not reused.
    with np.load(cache) as f:
      meta = json.loads(str(f['meta']))
    assert features_lib.load_cached(str(cache), meta) is not None
    assert features_lib.load_cached(str(cache), dict(meta, pool='cls')) is None
    assert features_lib.load_cached(str(cache), dict(meta, step=3)) is None
  else:
    assert probe['step'] == 0 and probe['init_from'] == '' and 'random init' in probe['summary']
    with np.load(tmp_path / 'features_test_windows.npz') as f:
      np.testing.assert_array_equal(f['index'], np.repeat(np.arange(20), 2))  # 2 views per clip


def test_cli_rejects_a_bad_key_before_compiling(tmp_path):
  result = run_module(
    'mvm_jax.linear_probe',
    '--config',
    'configs/linear_probe.py:tiny',
    '--workdir',
    str(tmp_path),
    '--config.probe.pool=max',
    timeout=120,
  )
  assert result.returncode != 0 and 'config.probe.pool' in result.stderr
  assert not os.path.exists(tmp_path / 'features_train_windows.npz')
