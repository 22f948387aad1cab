"""bench_data: loader clips/s by workers × repeated sampling, ratios, JSON shape."""

import json

import pytest

from mvm_jax.tools import bench, bench_data
from tests.conftest import MICRO_FLAGS, micro_config, run_module

ROW_KEYS = {
  'num_workers',
  'repeated_sampling',
  'clips_per_s',
  'videos_per_s',
  'seconds',
  'vs_base_repeat',
  'vs_train',
}


def test_bench_data_grid_and_ratios(monkeypatch):
  config = micro_config()  # num_workers=0, repeated_sampling=2, batch 8
  # A fixed train step (0.1 s per batch of 8 = 80 clips/s): no compilation here.
  monkeypatch.setattr(bench, 'time_train_step', lambda config, steps, warmup: {'step_s': 0.1, 'flops': 1.0})
  result = bench_data.bench_data(config, workers=(0,), repeats=(1, 2), batches=2, warmup=1, train_steps=1)
  rows = result['loader']
  assert [(r['num_workers'], r['repeated_sampling']) for r in rows] == [(0, 1), (0, 2)]
  assert all(set(r) == ROW_KEYS for r in rows)
  assert result['base_repeat'] == 1 and rows[0]['vs_base_repeat'] == 1.0
  assert rows[1]['vs_base_repeat'] == pytest.approx(rows[1]['clips_per_s'] / rows[0]['clips_per_s'])
  assert rows[1]['videos_per_s'] == pytest.approx(rows[1]['clips_per_s'] / 2)
  assert result['train'] == pytest.approx({'step_ms': 100.0, 'clips_per_s': 80.0})
  for r in rows:
    assert r['clips_per_s'] > 0 and r['vs_train'] == pytest.approx(r['clips_per_s'] / 80.0)
  own = result['config_loader']
  assert (own['num_workers'], own['repeated_sampling']) == (0, 2)
  assert own['clips_per_s'] == rows[1]['clips_per_s'] and own['keeps_up'] == (own['vs_train'] >= 1)
  table = bench_data.format_table(result)
  assert 'k=1' in table and 'k=2' in table and 'train step' in table
  json.dumps(result)


@pytest.mark.slow
def test_bench_data_cli_json():
  result = run_module(
    'mvm_jax.tools.bench_data',
    '--config',
    'configs/mae_st.py:tiny',
    *MICRO_FLAGS,
    '--json',
    '--batches=2',
    '--warmup=1',
    '--workers=0',
    '--repeats=1,2',
    '--train_steps=1',
    '--train_warmup=1',
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(out) == {'loader', 'base_repeat', 'train', 'config_loader', 'setup'}
  assert [(r['num_workers'], r['repeated_sampling']) for r in out['loader']] == [(0, 1), (0, 2)]
  assert all(set(r) == ROW_KEYS and r['clips_per_s'] > 0 for r in out['loader'])
  assert out['train']['step_ms'] > 0 and out['train']['clips_per_s'] == pytest.approx(
    8e3 / out['train']['step_ms']
  )
  assert out['config_loader']['vs_train'] > 0 and isinstance(out['config_loader']['keeps_up'], bool)
  assert out['setup']['clip'] == [4, 32, 32] and out['setup']['batch_size'] == 8
