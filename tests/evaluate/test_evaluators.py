"""Evaluators during pre-training: ridge probe, feature statistics, raw-pixel features,
config validation, decoded-clip replay, history and plot; end to end with a resume."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mvm_jax import config as config_lib
from mvm_jax.data import loader as loader_lib
from mvm_jax.evaluate import evaluators as ev
from mvm_jax.evaluate import features as features_lib
from mvm_jax.evaluate import frozen as frozen_lib
from tests.conftest import micro_config

# --- metrics on synthetic features -----------------------------------------------------------


def _blobs(rng, n, centres, noise=0.5, offset=10.0):
  y = rng.integers(0, centres.shape[0], n)
  return centres[y] + noise * rng.standard_normal((n, centres.shape[1])) + offset, y


def test_ridge_probe_separates_separable_features_and_is_at_chance_on_shuffled_labels():
  rng = np.random.default_rng(0)
  centres = 3.0 * rng.standard_normal((5, 16))
  x_train, y_train = _blobs(rng, 400, centres)
  x_test, y_test = _blobs(rng, 1000, centres)
  scores, l2 = ev.ridge_probe(x_train, y_train, x_test, 5)
  assert scores.shape == (1000, 5) and l2 in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
  np.testing.assert_array_equal(np.argmax(scores, 1), y_test)
  # Labels that say nothing about the features: chance (20 %) on the test set.
  shuffled = rng.permutation(y_train)
  scores, _ = ev.ridge_probe(x_train, shuffled, x_test, 5, groups=np.arange(400) // 4)
  accuracy = 100.0 * np.mean(np.argmax(scores, 1) == y_test)
  assert 12.0 < accuracy < 28.0, accuracy


@pytest.mark.parametrize('n', [50, 8])  # primal (N >= D) and dual (N < D) forms
def test_ridge_solver_matches_the_normal_equations(n):
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((n, 12)), rng.standard_normal((n, 3))
  w, b = ev.ridge_solver(x, y)(0.7)
  xc, yc = x - x.mean(0), y - y.mean(0)
  expected = np.linalg.solve(xc.T @ xc + 0.7 * np.eye(12), xc.T @ yc)
  np.testing.assert_allclose(w, expected, atol=1e-8)
  np.testing.assert_allclose(b, y.mean(0) - x.mean(0) @ expected, atol=1e-8)


def _centred_orthonormal(rng, n, k):
  """[n, k] orthonormal columns orthogonal to the all-ones vector."""
  a = rng.standard_normal((n, k))
  q, _ = np.linalg.qr(a - a.mean(0))
  return q


@pytest.mark.parametrize('k', [1, 3, 7])
def test_effective_rank_counts_equal_singular_values(k):
  rng = np.random.default_rng(k)
  u = _centred_orthonormal(rng, 60, k)
  v, _ = np.linalg.qr(rng.standard_normal((20, k)))
  x = 5.0 * u @ v.T + 3.0  # k singular values of 5 after centring
  assert ev.effective_rank(x) == pytest.approx(k, rel=1e-6)
  # Unequal singular values: between 1 and k.
  uneven = u @ np.diag(np.geomspace(10.0, 0.1, k)) @ v.T
  assert 1.0 <= ev.effective_rank(uneven) <= k
  if k > 1:
    assert ev.effective_rank(uneven) < k - 0.5


def test_effective_rank_of_rank_one_and_constant_features():
  rng = np.random.default_rng(2)
  x = np.outer(rng.standard_normal(40), rng.standard_normal(30))
  assert ev.effective_rank(x) == pytest.approx(1.0, abs=1e-4)
  assert ev.effective_rank(np.ones((10, 4))) == 0.0


def test_between_class_share_is_one_for_class_means_and_about_zero_for_noise():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, 4000)
  means = rng.standard_normal((4, 16)) * rng.uniform(0.1, 10.0, 16)  # any per-dimension scale
  constant = np.ones((4000, 1))  # a constant dimension is left out
  x = np.concatenate([means[labels], constant], 1)
  assert ev.between_class_share(x, labels) == pytest.approx(1.0, abs=1e-9)
  noise = rng.standard_normal((4000, 16)) * rng.uniform(0.1, 10.0, 16)
  share = ev.between_class_share(noise, labels)
  assert 0.0 <= share < 0.01  # expected (C - 1) / (N - 1) = 0.00075
  # Half signal, half noise per dimension (standardized): about one half.
  mixed = means[labels] / means.std(0) + rng.standard_normal((4000, 16)) * means[labels].std(0) / means.std(0)
  assert 0.3 < ev.between_class_share(mixed, labels) < 0.7


def _pixel_reference(video, patch):
  """Per clip, loop over the spacetime patches, flatten each (frame, row, column, channel)."""
  t, p, q = patch
  b, tt, h, w, _ = video.shape
  out = []
  for i in range(b):
    vectors = [
      video[i, a : a + t, r : r + p, s : s + q].reshape(-1)
      for a in range(0, tt, t)
      for r in range(0, h, p)
      for s in range(0, w, q)
    ]
    out.append(np.mean(vectors, axis=0))
  return np.stack(out)


def test_raw_pixel_features_match_a_numpy_reference():
  rng = np.random.default_rng(4)
  video = rng.standard_normal((3, 4, 16, 8, 3)).astype(np.float32)
  patch = (2, 4, 4)
  expected = _pixel_reference(video, patch)
  assert expected.shape == (3, 2 * 4 * 4 * 3)
  encoder = frozen_lib.PixelFeatureEncoder(patch)
  pooled = np.asarray(encoder.apply({'params': {}}, jnp.asarray(video), pool='mean'))
  np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
  # The run's raw-pixel baseline uses the model's t×p×p patch.
  c = micro_config()
  pixels = frozen_lib.raw_pixels(c, mesh=None)
  assert pixels.encoder.patch == (2, 8, 8) and pixels.params == {} and 'raw pixels' in pixels.describe()


# --- config ----------------------------------------------------------------------------------


def _with(evaluators: dict, base=None):
  c = base or micro_config()
  c.evaluators = ml_collections.ConfigDict(evaluators)
  return c


_KNN = dict(kind='knn', every_steps=2, train_split='train_windows', test_split='test_windows')


@pytest.mark.parametrize(
  'section, key',
  [
    (dict(_KNN, kind='knnn'), 'config.evaluators.e.kind'),
    (dict(_KNN, every_steps=0), 'config.evaluators.e.every_steps'),
    (dict(_KNN, every_steps=2.5), 'config.evaluators.e.every_steps'),
    (dict(_KNN, lr=0.1), 'config.evaluators.e.lr'),
    (dict(_KNN, k=0), 'config.evaluators.e.k'),
    (dict(_KNN, pool='max'), 'config.evaluators.e.pool'),
    (dict(_KNN, extract_batch_size=0), 'config.evaluators.e.extract_batch_size'),
    (dict(_KNN, data=dict(crop_size=32)), 'config.evaluators.e.data.crop_size'),
    (dict(_KNN, data=dict(sorce='csv')), 'config.evaluators.e.data.sorce'),
    (dict(_KNN, data=dict(source='csv')), 'config.evaluators.e.data.path'),
    (dict(_KNN, data=dict(source='tokens', tfds_name='t')), 'config.evaluators.e.data.source'),
    (dict(_KNN, kind='linear_probe', l2_grid=()), 'config.evaluators.e.l2_grid'),
    (dict(_KNN, kind='linear_probe', holdout_fraction=1.0), 'config.evaluators.e.holdout_fraction'),
    (dict(_KNN, kind='feature_stats', split='val'), 'config.evaluators.e.split'),
    (dict(_KNN, kind='attentive_probe', num_heads=0), 'config.evaluators.e.num_heads'),
    (dict(_KNN, kind='attentive_probe', token_dtype='int8'), 'config.evaluators.e.token_dtype'),
    (dict(_KNN, kind='attentive_probe', warmup_epochs=50), 'config.evaluators.e.warmup_epochs'),
  ],
)
def test_invalid_sections_fail_validation_naming_the_key(section, key):
  with pytest.raises(config_lib.ConfigError, match=key.replace('.', r'\.')):
    config_lib.validate(_with({'e': section}))


def test_valid_sections_and_defaults():
  config_lib.validate(micro_config())  # none: nothing to check
  config_lib.validate(_with({'a': _KNN, 'b': dict(_KNN, kind='linear_probe', l2_grid=(0.1,))}))
  from configs import mae_st

  tiny = mae_st.get_config('tiny')
  assert set(tiny.evaluators) == {'knn', 'linear_probe', 'feature_stats'}
  config_lib.validate(tiny)
  s = ev.resolve_section('k', _KNN)
  assert (s.k, s.temperature, s.pool, s.train_views, s.data.to_dict()) == (20, 0.07, 'mean', 1, {})
  # A config section's data overrides the run's source; the clip keys and the rest stay the run's.
  run = micro_config()
  run.data.sampling = 'frame_pair'
  data = ev.eval_data_config(run.data, {'source': 'csv', 'path': 'l/{split}.csv'}, 'evaluators.k')
  assert (data.source, data.path, data.sampling, data.crop_size) == ('csv', 'l/{split}.csv', 'clip', 32)
  with pytest.raises(config_lib.ConfigError, match=r'config\.evaluators'):
    vq = micro_config()
    vq.model.name = 'vqvae'
    ev.validate(_with({'e': _KNN}, vq))


def test_a_run_without_a_video_encoder_is_refused_naming_the_key():
  """The evaluators of a pre-training config, and the encoder of an evaluated run (init_from)."""
  vq = micro_config()
  vq.model.name = 'vqvae'
  with pytest.raises(
    config_lib.ConfigError, match=r"^config\.evaluators: a 'vqvae' run has no video encoder"
  ):
    ev.validate(_with({'e': _KNN}, vq))
  with pytest.raises(config_lib.ConfigError, match=r"^config\.init_from: a 'vqvae' run has no video encoder"):
    frozen_lib.template(vq, mesh=None)
  assert frozen_lib.video_encoder_method(micro_config()).name == 'mae'


# --- replayed passes, history, plot ----------------------------------------------------------


class _FakeLoader:
  def __init__(self, batches):
    self.batches, self.closed = batches, 0

  def __iter__(self):
    loader = self

    class It:
      def __init__(self):
        self.i = 0

      def __next__(self):
        if self.i == len(loader.batches):
          raise StopIteration
        self.i += 1
        return loader.batches[self.i - 1]

      def close(self):
        loader.closed += 1

    return It()


def test_decoded_clips_are_replayed_when_they_fit(monkeypatch):
  batches = [{'video': np.full((2, 4), i, np.float32), 'label': np.arange(2)} for i in range(3)]
  made = []

  def make_loader(data, **kwargs):
    made.append(kwargs['split'])
    return _FakeLoader(batches), 'info'

  monkeypatch.setattr(loader_lib, 'make_loader', make_loader)
  clips = ev.DecodedClips()
  data = micro_config().data
  args = dict(split='s', global_batch_size=2, seed=0, train=False)

  def read(loader_fn, n=None):
    loader, info = loader_fn(data, **args)
    it = iter(loader)
    out = [next(it, None) for _ in range(n or len(batches) + 1)]
    it.close()
    return out, info

  first, info = read(clips.loader(1.0))
  again, info_again = read(clips.loader(1.0))
  assert made == ['s'] and info_again == info == 'info'  # decoded once
  assert all(a is None and b is None or np.array_equal(a['video'], b['video']) for a, b in zip(first, again))
  assert again[-1] is None  # the pass had ended: so does the replay
  # Another split, or a pass too big for the budget, is decoded every time.
  args['split'] = 't'
  read(clips.loader(1e-6))
  read(clips.loader(1e-6))
  assert made == ['s', 't', 't']
  # A pass cut short (an endless train loader) replays only what it read, then refuses.
  args.update(split='u', train=True)
  read(clips.loader(1.0), n=2)
  loader, _ = clips.loader(1.0)(data, **args)
  it = iter(loader)
  next(it), next(it)
  with pytest.raises(RuntimeError, match='more batches'):
    next(it)


def test_history_keeps_the_last_entry_of_a_step_and_skips_a_cut_line(tmp_path):
  path = tmp_path / 'history.jsonl'
  lines = [
    {'step': 2, 'metrics': {'knn/top1': 10.0, 'feature_stats/effective_rank': 3.0}},
    {'step': 4, 'metrics': {'knn/top1': 20.0}},
    {'step': 4, 'metrics': {'knn/top1': 25.0}},  # evaluated again after a resume
  ]
  path.write_text(''.join(json.dumps(x) + '\n' for x in lines) + '{"step": 6, "metr')
  history = ev.read_history(str(path))
  assert [h['step'] for h in history] == [2, 4]
  assert history[1]['metrics'] == {'knn/top1': 25.0}
  baselines = {'knn': {'random_init': {'top1': 12.5}, 'raw_pixels': {'top1': 15.0}}}
  png = ev.plot_history(str(tmp_path / 'images' / 'evaluators.png'), history, baselines)
  assert os.path.getsize(png) > 5000
  assert ev.plot_history(str(tmp_path / 'empty.png'), [], baselines) is None
  line = ev.EvaluatorSuite.summary(4, {'knn': {'top1': 25.0}}, baselines, 1.25)
  assert line == 'eval step 4 (1.2 s): knn top1 25.0 (random 12.5, pixels 15.0)'


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretraining_runs_evaluators_writes_outputs_and_resumes_without_new_baselines(tmp_path, monkeypatch):
  from mvm_jax import presets, runs
  from mvm_jax.train import loop

  c = micro_config()
  c.total_steps = 4
  c.evaluators = presets.tiny_evaluators(every_steps=3)  # at step 3 and at the last step, 4
  suites, extracted = [], []
  build, extract = ev.build, features_lib.extract
  monkeypatch.setattr(ev, 'build', lambda *a, **k: suites.append(build(*a, **k)) or suites[-1])
  monkeypatch.setattr(
    features_lib,
    'extract',
    lambda frozen, split, **k: extracted.append((frozen.describe(), split)) or extract(frozen, split, **k),
  )
  workdir = str(tmp_path)
  first = loop.train_and_evaluate(c, workdir, stop_after_steps=3)
  assert first['step'] == 3
  # One extraction per encoder and split, shared by the three evaluators; the clips decoded once.
  assert len(extracted) == 6 and len(set(extracted)) == 6
  assert sorted({d.split(' ')[0] for d, _ in extracted}) == ['random', 'raw', 'the']
  assert suites[0].cache.clips.decoded_passes == 2
  baselines_path = os.path.join(workdir, 'evaluators', 'baselines.json')
  with open(baselines_path) as f:
    baselines = json.load(f)
  assert set(baselines) == {'knn', 'linear_probe', 'feature_stats'}
  for name, metrics in (('knn', {'top1'}), ('feature_stats', {'effective_rank', 'between_class_share'})):
    assert set(baselines[name]['random_init']) == metrics == set(baselines[name]['raw_pixels'])
    assert baselines[name]['step'] == 3
  assert 0.0 <= baselines['knn']['raw_pixels']['top1'] <= 100.0
  assert 0.0 < baselines['feature_stats']['raw_pixels']['effective_rank'] <= 19.0  # 20 centred rows
  mtime = os.path.getmtime(baselines_path)

  # Resume: the floors are read back, not computed again.
  def no_baselines(*args, **kwargs):
    pytest.fail('the random-init baseline was computed again')

  monkeypatch.setattr(frozen_lib.EncoderTemplate, 'random_init', no_baselines)
  extracted.clear()
  second = loop.train_and_evaluate(c, workdir)
  assert second['step'] == 4 and len(extracted) == 2
  assert os.path.getmtime(baselines_path) == mtime

  history = ev.read_history(os.path.join(workdir, 'evaluators', 'history.jsonl'))
  assert [h['step'] for h in history] == [3, 4]
  assert set(history[-1]['metrics']) == {
    'knn/top1',
    'linear_probe/top1',
    'feature_stats/effective_rank',
    'feature_stats/between_class_share',
  }
  assert os.path.getsize(os.path.join(workdir, 'images', 'evaluators.png')) > 5000
  curves = runs.scalar_curves(workdir)
  for tag in ('eval/knn/top1', 'eval/knn/top1_random_init', 'eval/knn/top1_raw_pixels', 'eval/wall_time_s'):
    assert curves[tag][0] == [3, 4], tag
  assert curves['eval/knn/top1_random_init'][1] == [baselines['knn']['random_init']['top1']] * 2
  assert curves['eval/linear_probe/top1'][1] == [h['metrics']['linear_probe/top1'] for h in history]


@pytest.mark.slow
def test_the_attentive_probe_evaluator_trains_on_the_tokens_of_each_encoder(tmp_path, monkeypatch):
  """The run's, the random-init and the raw-pixel encoders' patch tokens [N, L, D] go to the
  attentive probe's fit_and_score; its top-1 is what the evaluator reports."""
  from mvm_jax.evaluate import attentive_probe
  from mvm_jax.train import loop

  c = micro_config()
  c.total_steps = 2
  common = dict(_KNN, data=dict(source='builtin', num_workers=0, hflip=False), extract_batch_size=8)
  c.evaluators = ml_collections.ConfigDict(
    {'att': dict(common, kind='attentive_probe', epochs=3, warmup_epochs=1)}
  )
  seen = []
  fit = attentive_probe.fit_and_score

  def recording(train, test, section, seed=0):
    result = fit(train, test, section, seed)
    seen.append((train.features.shape, test.features.shape, train.features.dtype, result['top1']))
    return result

  monkeypatch.setattr(attentive_probe, 'fit_and_score', recording)
  loop.train_and_evaluate(c, str(tmp_path))
  # 4×32² clips, patch 2×8×8: L = 2·4·4 = 32 tokens; width 32 (ViT), 2·8·8·3 = 384 (pixels).
  shapes = sorted((train, test) for train, test, _, _ in seen)
  assert shapes == sorted([((20, 32, 32), (20, 32, 32))] * 2 + [((20, 32, 384), (20, 32, 384))])
  assert {dtype for _, _, dtype, _ in seen} == {np.dtype('float16')}
  with open(tmp_path / 'evaluators' / 'baselines.json') as f:
    baselines = json.load(f)['att']
  history = ev.read_history(str(tmp_path / 'evaluators' / 'history.jsonl'))
  reported = sorted([history[-1]['metrics']['att/top1'], *(baselines[b]['top1'] for b in ev.BASELINES)])
  assert reported == sorted(top1 for *_, top1 in seen)


@pytest.mark.slow
def test_a_vimpac_run_is_evaluated_through_its_tokenizer(tmp_path):
  """VIMPAC: the evaluators read pixels (a pixel source; the run's clip-pair sampling
  becomes single clips), tokenize them with the run's tokenizer and pool the backbone."""
  from mvm_jax.train import loop
  from tests.methods.test_vimpac import vimpac_micro_config, vqvae_micro_config

  loop.train_and_evaluate(vqvae_micro_config(), str(tmp_path / 'vq'))
  c = vimpac_micro_config(str(tmp_path / 'vq'))
  c.total_steps = 2
  common = dict(every_steps=2, train_split='train_windows', test_split='test_windows', extract_batch_size=8)
  c.evaluators = ml_collections.ConfigDict(
    dict(knn=dict(kind='knn', **common), cls=dict(kind='feature_stats', pool='cls', **common))
  )
  workdir = tmp_path / 'vimpac'
  loop.train_and_evaluate(c, str(workdir))
  history = ev.read_history(str(workdir / 'evaluators' / 'history.jsonl'))
  assert [h['step'] for h in history] == [2]
  assert 0.0 <= history[0]['metrics']['knn/top1'] <= 100.0
  assert 1.0 < history[0]['metrics']['cls/effective_rank'] <= 32.0  # the backbone's 32-d [CLS]
  with open(workdir / 'evaluators' / 'baselines.json') as f:
    baselines = json.load(f)
  assert set(baselines['cls']['raw_pixels']) == {'effective_rank', 'between_class_share'}
  # A run that reads tokens must name a pixel source for its evaluators.
  c.data.update(source='tokens', tfds_name='tokens')
  with pytest.raises(config_lib.ConfigError, match=r'config\.evaluators\.\w+\.data\.source'):
    ev.validate(c)


@pytest.mark.slow
def test_two_processes_evaluate_together_and_only_the_first_writes(tmp_path):
  """Evaluators run on every process (the extraction is split over both); both get
  the same metrics; only process 0 writes the history, floors and picture."""
  import subprocess
  import sys

  from tests.conftest import REPO
  from tests.helpers import multihost_evaluators_child, processes

  workdir = tmp_path / 'run'
  port = processes.free_port()
  env = dict(
    os.environ, XLA_FLAGS='--xla_backend_optimization_level=0', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3'
  )
  logs = [(tmp_path / f'child{i}.out', tmp_path / f'child{i}.err') for i in range(2)]
  procs = []
  for i, (out, err) in enumerate(logs):
    with open(out, 'w') as fo, open(err, 'w') as fe:
      args = [sys.executable, multihost_evaluators_child.__file__, str(i), str(port), str(workdir)]
      procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=fo, stderr=fe))

  def tails():
    return '\n'.join(f'--- child {i}:\n{err.read_text()[-3000:]}' for i, (_, err) in enumerate(logs))

  processes.wait_all(procs, tails, 600, 'children')
  results = []
  for out, _ in logs:
    lines = [line for line in out.read_text().splitlines() if line.startswith('RESULT ')]
    assert lines, tails()
    results.append(json.loads(lines[-1][len('RESULT ') :]))
  assert [r['process_index'] for r in results] == [0, 1]
  assert 'eval/knn/top1_raw_pixels' in results[0]['scalars']
  assert results[0]['scalars'] == results[1]['scalars']
  history = ev.read_history(str(workdir / 'evaluators' / 'history.jsonl'))
  assert [h['step'] for h in history] == [2]
  assert (workdir / 'evaluators' / 'history.jsonl').read_text().count('\n') == 1  # written once
  assert history[0]['metrics']['knn/top1'] == results[0]['scalars']['eval/knn/top1']
  assert (workdir / 'evaluators' / 'baselines.json').exists() and (
    workdir / 'images' / 'evaluators.png'
  ).exists()
