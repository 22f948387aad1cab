"""What a new user meets on their own labelled CSV clips: splits that follow the source, the
random-init baseline with a run's settings, short videos, labels.json, the logged lr."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from mvm_jax.config import ConfigError
from mvm_jax.data import (
  default_data_config,
  loader_base,
  make_loader,
  pipeline,
  sampling,
  sources,
  transforms,
  validate_data_config,
)
from mvm_jax.evaluate import features, frozen
from mvm_jax.tools import make_eval_set
from tests.conftest import MICRO_FLAGS, micro_config, run_module

FRAMES = 16  # per video: shorter than the tiny preset's clip span (8 frames 4 apart: 29)


@pytest.fixture(scope='module')
def eval_set(tmp_path_factory):
  """A small labelled CSV clip set (16 train, 8 test clips of 16 frames), plus motion/labels.json."""
  out = tmp_path_factory.mktemp('eval_set')
  make_eval_set.build(str(out), num_train=16, num_test=8, num_frames=FRAMES, log=lambda _: None)
  names = (out / 'motion' / 'class_names.txt').read_text().split()
  (out / 'motion' / 'labels.json').write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
  return out


def _probe_config(**data):
  from configs import linear_probe

  c = linear_probe.get_config('tiny')
  c.data.update(data)
  return c


# --- 1. splits follow the source ----------------------------------------------------------------


def test_empty_split_keys_take_the_sources_splits(eval_set, tmp_path):
  c = _probe_config()
  assert (c.probe.train_split, c.probe.test_split) == ('', '')
  features.resolve_splits(c, 'probe')
  assert (c.probe.train_split, c.probe.test_split) == ('train_windows', 'test_windows')  # builtin

  c = _probe_config(source='csv', path=str(eval_set / 'motion' / '{split}.csv'))
  features.resolve_splits(c, 'probe')
  assert (c.probe.train_split, c.probe.test_split) == ('train', 'test')

  for split in ('train', 'val'):  # a list set with 'val' and no 'test'
    shutil.copy(eval_set / 'motion' / f'{"test" if split == "val" else split}.csv', tmp_path / f'{split}.csv')
  c = _probe_config(source='csv', path=str(tmp_path / '{split}.csv'), root=str(eval_set / 'motion'))
  features.resolve_splits(c, 'probe')
  assert (c.probe.train_split, c.probe.test_split) == ('train', 'val')


def test_a_split_the_source_lacks_is_a_one_line_error_naming_the_key(eval_set, tmp_path):
  c = _probe_config(source='csv', path=str(eval_set / 'motion' / '{split}.csv'))
  c.probe.test_split = 'test_windows'  # the old preset value
  with pytest.raises(ConfigError) as e:
    features.resolve_splits(c, 'probe')
  assert str(e.value).startswith("config.probe.test_split='test_windows': config.data.path: list file")

  args = ['--config', 'configs/knn.py:tiny', '--config.data.source=csv', '--config.knn.test_split=val']
  args += [f'--config.data.path={eval_set}/motion/{{split}}.csv', '--workdir', str(tmp_path / 'knn')]
  result = run_module('mvm_jax.knn', *args, timeout=300)
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert "config.knn.test_split='val': config.data.path: list file (split 'val') not found" in result.stderr
  assert not os.path.exists(tmp_path / 'knn' / 'features_train.npz')


# --- 2. random init with a run's settings -------------------------------------------------------


def test_random_init_like_a_run_takes_its_model_and_clip_settings(tmp_path):
  run = micro_config()
  run.data.sampling_rate = 3
  (tmp_path / 'config.json').write_text(run.to_json_best_effort())
  c = _probe_config()  # the preset: a different model and clip span
  c.init_from = f'random:{tmp_path}'
  resolved = frozen.resolve_config(c)
  assert resolved.init_from == f'random:{tmp_path}'
  assert resolved.data.sampling_rate == 3 and resolved.data.num_frames == 4
  assert resolved.model.encoder.width == 32
  encoder = frozen.load(c, jax.devices()[:1])  # no checkpoint needed: random weights
  assert encoder.step == 0 and encoder.init_from == f'random:{tmp_path}'
  assert encoder.describe() == f'random init (seed 0) with the settings of {tmp_path}'
  assert encoder.params['cls_token'].shape[-1] == 32
  c.init_from = 'random:'
  with pytest.raises(ConfigError, match='random:RUN'):
    frozen.resolve_config(c)


# --- 3. short videos ----------------------------------------------------------------------------


def test_short_ranges_loop_or_pad():
  loop = transforms.temporal_indices(10, 26, 8, 4)  # 16 frames, span 29
  assert loop.tolist() == [10 + (4 * i) % 16 for i in range(8)]  # eval: from the first frame, looping
  assert transforms.temporal_indices(10, 26, 8, 4, short='pad').tolist() == [10, 14, 18, 22, 25, 25, 25, 25]
  pair = transforms.clip_pair_indices(0, 16, 8, 4, np.random.default_rng(0), short='pad')
  assert pair.tolist() == [[0, 4, 8, 12, 15, 15, 15, 15]] * 2
  fits = transforms.temporal_indices(0, 40, 8, 4, short='pad')  # long enough: unchanged
  assert fits.tolist() == transforms.temporal_indices(0, 40, 8, 4).tolist()


def _csv_data(eval_set, **kw):
  dc = default_data_config()
  dc.update(source='csv', path=str(eval_set / 'motion' / '{split}.csv'), num_frames=8, sampling_rate=4)
  dc.update(crop_size=32, num_workers=0, repeated_sampling=1, **kw)
  return dc


@pytest.mark.parametrize('mode', ['loop', 'pad'])
def test_short_videos_are_counted_and_logged_once(eval_set, mode, caplog):
  loader_base.reset_short_video_warning()
  caplog.set_level(logging.DEBUG)
  infos = []
  for _ in range(2):  # two loaders of one run: one message
    loader, info = make_loader(
      _csv_data(eval_set, short_videos=mode), split='test', global_batch_size=4, seed=0, train=False
    )
    batches = list(loader)
    infos.append(info)
  assert sum(b['video'].shape[0] for b in batches) == 8  # every video still gives its clip
  assert infos[0].short.count == 8 and infos[0].short.mode == mode
  warnings = [r for r in caplog.records if 'shorter than the clip span' in r.getMessage()]
  assert len(warnings) == 1 and f"short_videos='{mode}'" in warnings[0].getMessage()
  assert len([r for r in caplog.records if r.getMessage().startswith('Short video (16 frames')]) == 16
  if mode == 'pad':  # positions 16, 20, 24, 28 are past the end: the last frame, repeated
    clip = batches[0]['video'][0]
    for t in (5, 6, 7):
      np.testing.assert_array_equal(clip[t], clip[4])


def test_skipped_short_videos_stop_with_an_error_naming_the_cause(eval_set):
  loader, info = make_loader(
    _csv_data(eval_set, short_videos='skip'), split='train', global_batch_size=4, seed=0
  )
  with pytest.raises(
    RuntimeError, match=r"left out as shorter than the clip span \(data.short_videos='skip'"
  ):
    next(iter(loader))
  assert info.short.count == 16
  sampler = pipeline.make_sampler(_csv_data(eval_set, short_videos='skip'), train=False)
  record = pipeline.build_video_source(_csv_data(eval_set), 'test')[0]
  with pytest.raises(sampling.ShortVideoError, match='16 frames, shorter than the clip span of 29'):
    sampler.sample(record)
  with pytest.raises(ValueError, match='config.data.short_videos'):
    validate_data_config(_csv_data(eval_set, short_videos='wrap'))


# --- 4. labels.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'content',
  [
    ['zero', 'one', 'two'],
    {'0': 'zero', '1': 'one', '2': 'two'},
    {'zero': 0, 'two': 2, 'one': 1},
  ],
)
def test_class_names_from_labels_json(tmp_path, content):
  path = tmp_path / 'labels.json'
  path.write_text(json.dumps(content))
  names = sources.read_class_names(str(path))
  assert names.names == ('zero', 'one', 'two') and names.label_of_id == {0: 0, 1: 1, 2: 2}


@pytest.mark.parametrize(
  'text, message',
  [('{"0": "a", "1": "a"}', "'a' appears twice"), ('[1, 2]', 'non-empty strings'), ('[', 'JSON')],
)
def test_bad_labels_json_names_the_key(tmp_path, text, message):
  path = tmp_path / 'labels.json'
  path.write_text(text)
  with pytest.raises(sources.SourceError, match=message) as e:
    sources.read_class_names(str(path))
  assert str(e.value).startswith('config.data.class_names_file:')


def test_csv_source_names_its_classes_from_labels_json(eval_set):
  source = sources.list_source(
    str(eval_set / 'motion' / '{split}.csv'),
    'train',
    class_names_file=str(eval_set / 'motion' / 'labels.json'),
  )
  assert source.class_names == tuple((eval_set / 'motion' / 'class_names.txt').read_text().split())
  assert source.class_names[0] != 'class_0'


# --- 6. the logged lr ---------------------------------------------------------------------------


def test_logged_lr_is_the_logged_steps_not_the_window_mean():
  from configs import finetune
  from mvm_jax.train import loop, optimizer

  c = finetune.get_config('tiny')  # peak lr 1e-3
  schedule = optimizer.make_schedule(c, total_steps=20, warmup_steps=10)
  # The step's metrics hold schedule(state.step) before the update: step s used schedule(s - 1).
  window = [{'loss': float(s), 'lr': float(schedule(s - 1))} for s in range(11, 21)]
  logged = loop.mean_metrics(window)
  assert logged['loss'] == pytest.approx(15.5)  # other metrics: the mean over the window
  assert logged['lr'] == pytest.approx(float(schedule(19)))  # step 20's
  first = loop.mean_metrics([{'lr': float(schedule(s - 1))} for s in range(1, 11)])
  assert first['lr'] == pytest.approx(9e-4) and np.mean([schedule(s) for s in range(10)]) == pytest.approx(
    4.5e-4
  )


# --- end to end: a CSV of labelled clips → pre-trained vs random-init k-NN ----------------------


@pytest.mark.slow
def test_csv_clips_to_pretrained_vs_random_knn(eval_set, tmp_path):
  data = [
    '--config.data.source=csv',
    f'--config.data.path={eval_set}/motion/{{split}}.csv',
    f'--config.data.class_names_file={eval_set}/motion/labels.json',
    '--config.data.hflip=False',
  ]
  run = tmp_path / 'run'
  micro = [f for f in MICRO_FLAGS if 'sampling_rate' not in f] + ['--config.data.sampling_rate=3']
  args = [
    '--config',
    'configs/mae_st.py:tiny',
    *micro,
    *data,
    '--config.total_steps=2',
    '--workdir',
    str(run),
  ]
  result = run_module('mvm_jax.main', *args, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  results = {}
  for name, init in (('pretrained', str(run)), ('random', f'random:{run}')):
    knn = [
      '--config',
      'configs/knn.py:tiny',
      *data,
      f'--config.init_from={init}',
      '--config.knn.train_views=1',
    ]
    result = run_module('mvm_jax.knn', *knn, '--workdir', str(tmp_path / name), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results[name] = json.loads((tmp_path / name / 'results.json').read_text())['knn']
  for r in results.values():
    assert (r['num_train'], r['num_test']) == (16, 8)
    assert r['class_names'][0] == 'right_slow' and r['config']['data']['sampling_rate'] == 3  # the run's
    assert r['config']['knn']['train_split'] == 'train' and r['config']['knn']['test_split'] == 'test'
  assert results['random']['init_from'] == f'random:{run}' and results['random']['step'] == 0
  assert results['pretrained']['step'] == 2
