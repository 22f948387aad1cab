"""Data-loader benchmark: clips/s by worker count × repeated sampling, and vs the train step.

  python -m mvm_jax.tools.bench_data --config configs/mae_st.py:tiny [--json] [--batches N]
      [--workers 0,1,2] [--repeats 1,2,4] [--train_steps 5]

A script, not a test: everything it prints is measured in this one run. For
every (``data.num_workers``, ``data.repeated_sampling``) pair it builds the
config's training loader (one host: ``global_batch_size = batch_size``),
pulls ``--warmup`` batches untimed (worker start-up, first decodes), then
times ``--batches`` batches: clips/s = samples delivered per second, each
sample a decoded, cropped, normalized clip. Repeated sampling decodes a video
once for k clips, so clips/s should grow with k; the table gives each
rate's ratio to the smallest k of the same worker count.

Then it times the config's train step on synthetic clips
(:func:`mvm_jax.tools.bench.time_train_step`, median after warm-up) and
divides: loader clips/s ÷ train clips/s >= 1 means the loader keeps up. The
two run one after the other, so on a CPU-only machine, where the step and
the workers would share cores during training, the ratio is an upper bound.
Every other setting (cache, decode size, prefetch) is the config's.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from mvm_jax import console
from mvm_jax.data import make_loader


def time_loader(data_config, *, global_batch_size: int, batches: int, warmup: int, seed: int = 0) -> dict:
  """Clips/s of ``make_loader(data_config, split='train')`` after ``warmup`` untimed batches.

  Returns:
    {'clips_per_s': float, 'videos_per_s': float (clips/s ÷ k), 'seconds': float
     (the timed batches), 'batch_size': int, 'skipped': int (unreadable videos)}.
  """
  ds, info = make_loader(  # one host: the whole batch, whatever the process count
    data_config, split='train', global_batch_size=global_batch_size, seed=seed, shard_index=0, shard_count=1
  )
  it = iter(ds)
  try:
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - start
  finally:
    it.close()
  clips = batches * info.batch_size
  return {
    'clips_per_s': clips / seconds,
    'videos_per_s': clips / info.repeated_sampling / seconds,
    'seconds': seconds,
    'batch_size': info.batch_size,
    'skipped': info.skipped.count,
  }


def bench_data(
  config,
  *,
  workers=(0, 1, 2),
  repeats=(1, 2, 4),
  batches: int = 20,
  warmup: int = 2,
  train_steps: int = 5,
  train_warmup: int = 2,
) -> dict:
  """Loader clips/s for every (workers, repeats) pair and, with ``train_steps > 0``, vs the train step.

  Returns:
    {'loader': [{'num_workers', 'repeated_sampling', 'clips_per_s', 'videos_per_s', 'seconds',
                 'vs_base_repeat': clips/s ÷ that of repeats' smallest k with the same workers,
                 'vs_train': clips/s ÷ train clips/s, or None}, ...]  (workers-major order),
     'base_repeat': min(repeats),
     'train': {'step_ms', 'clips_per_s'} or None,
     'config_loader': {'num_workers', 'repeated_sampling', 'clips_per_s', 'vs_train',
                       'keeps_up': bool or None}  (the config's own pair),
     'setup': {...}  what was measured}.
  """
  if not workers or not repeats or batches < 1 or warmup < 0:
    raise ValueError('need at least one worker count and one repeat, batches >= 1 and warmup >= 0')
  base = min(repeats)
  own = (config.data.num_workers, config.data.repeated_sampling)
  pairs = [(w, k) for w in workers for k in repeats]
  if own not in pairs:
    pairs.append(own)
  rates = {}
  for w, k in pairs:
    dc = config.data.copy_and_resolve_references()
    dc.num_workers, dc.repeated_sampling = w, k
    rates[w, k] = time_loader(dc, global_batch_size=config.batch_size, batches=batches, warmup=warmup)

  train = None
  if train_steps > 0:
    from mvm_jax.tools import bench  # jax and the model: only when needed

    step_s = bench.time_train_step(config, train_steps, max(1, train_warmup))['step_s']
    train = {'step_ms': step_s * 1e3, 'clips_per_s': config.batch_size / step_s}

  def vs_train(rate):
    return rate['clips_per_s'] / train['clips_per_s'] if train else None

  loader = []
  for w in workers:
    for k in repeats:
      r = rates[w, k]
      loader.append(
        {
          'num_workers': w,
          'repeated_sampling': k,
          **{key: r[key] for key in ('clips_per_s', 'videos_per_s', 'seconds')},
          'vs_base_repeat': r['clips_per_s'] / rates[w, base]['clips_per_s'],
          'vs_train': vs_train(r),
        }
      )
  ratio = vs_train(rates[own])
  d = config.data
  return {
    'loader': loader,
    'base_repeat': base,
    'train': train,
    'config_loader': {
      'num_workers': own[0],
      'repeated_sampling': own[1],
      'clips_per_s': rates[own]['clips_per_s'],
      'vs_train': ratio,
      'keeps_up': None if ratio is None else ratio >= 1.0,
    },
    'setup': {
      'source': d.source,
      'clip': [d.num_frames, d.crop_size, d.crop_size],
      'batch_size': config.batch_size,
      'decode_short_side': d.decode_short_side,
      'cache_decoded_videos': d.cache_decoded_videos,
      'prefetch': d.prefetch,
      'batches': batches,
      'warmup_batches': warmup,
      'train_steps': train_steps,
      'cpu_cores': len(os.sched_getaffinity(0)),
      'skipped_videos': sum(r['skipped'] for r in rates.values()),
    },
  }


def format_table(result: dict) -> str:
  s = result['setup']
  t, h, w = s['clip']
  repeats = sorted({row['repeated_sampling'] for row in result['loader']})
  base = result['base_repeat']
  short_side = {-1: f'{2 * h} (auto)', 0: 'native'}.get(s['decode_short_side'], s['decode_short_side'])
  lines = [
    (
      f'{s["source"]} source; clip {t}×{h}×{w}, batch {s["batch_size"]}, decode short side '
      f'{short_side}, cache {s["cache_decoded_videos"]} videos/worker, prefetch {s["prefetch"]}; '
      f'{s["batches"]} timed batches after {s["warmup_batches"]}; {s["cpu_cores"]} CPU cores'
    ),
    f'loader clips/s (× vs k={base}' + (', ÷ train clips/s)' if result['train'] else ')'),
    'workers ' + ''.join(f'{"k=" + str(k):>26}' for k in repeats),
  ]
  by_workers = {}
  for row in result['loader']:
    by_workers.setdefault(row['num_workers'], {})[row['repeated_sampling']] = row
  for w, row in by_workers.items():
    cells = []
    for k in repeats:
      r = row[k]
      cell = f'{r["clips_per_s"]:.1f} ({r["vs_base_repeat"]:.2f}×'
      cell += f', {r["vs_train"]:.2f})' if r['vs_train'] is not None else ')'
      cells.append(f'{cell:>26}')
    lines.append(f'{w:>7} ' + ''.join(cells))
  own = result['config_loader']
  if result['train']:
    tr = result['train']
    verdict = 'keeps up' if own['keeps_up'] else 'does NOT keep up'
    lines += [
      f'train step (median of {s["train_steps"]}): {tr["step_ms"]:.1f} ms = {tr["clips_per_s"]:.1f} clips/s',
      (
        f'config loader (workers {own["num_workers"]}, k={own["repeated_sampling"]}): '
        f'{own["clips_per_s"]:.1f} clips/s = {own["vs_train"]:.2f} × train: {verdict}'
      ),
    ]
  if s['skipped_videos']:
    lines.append(f'{s["skipped_videos"]} unreadable videos were skipped')
  return '\n'.join(lines)


def _ints(values) -> tuple[int, ...]:
  return tuple(int(v) for v in values)


def main(argv):
  del argv
  f = flags.FLAGS
  result = bench_data(
    f.config,
    workers=_ints(f.workers),
    repeats=_ints(f.repeats),
    batches=f.batches,
    warmup=f.warmup,
    train_steps=f.train_steps,
    train_warmup=f.train_warmup,
  )
  print(json.dumps(result) if f.json else format_table(result))


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('batches', 20, 'Timed batches per loader setting.')
  flags.DEFINE_integer('warmup', 2, 'Untimed batches first (worker start-up, first decodes).')
  flags.DEFINE_list('workers', ['0', '1', '2'], 'data.num_workers values to time.')
  flags.DEFINE_list('repeats', ['1', '2', '4'], 'data.repeated_sampling values to time.')
  flags.DEFINE_integer('train_steps', 5, 'Timed train steps (median); 0: skip the train comparison.')
  flags.DEFINE_integer('train_warmup', 2, 'Untimed train steps after compilation (at least 1).')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=console.parse_flags)
