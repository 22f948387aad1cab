"""One sitting against the official PyTorch MAE-ST step: our bench and the peer's, alternated.

  MAE_ST_DIR=$HOME/peer/mae_st python -m mvm_jax.tools.compare_peer \\
    --peer_script ../shared/peer/mae_st_bench.py --peer_python $HOME/peer/venv/bin/python [--rounds 3]

On a shared, noisy machine a speed ratio means something only within one sitting, and one run of
each can swing it by ±30 %. So this runs `tools.bench` and the peer's script in turn (ours, peer,
ours, peer, ...) `--rounds` times per malloc (glibc as installed, then tcmalloc preloaded where it is
installed), each run a fresh process, and prints every run's clips/s, the medians and the ratio of
the medians. The peer's code is never imported here: its script runs in its own interpreter
(`--peer_python`, a venv with PyTorch, set up as `../shared/peer/README.md` says).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

from absl import app, flags

from mvm_jax import console, host_malloc
from mvm_jax.progress import Progress, format_duration

MALLOCS = ('glibc', 'tcmalloc')


def ours_command(config: str, steps: int, python: str = sys.executable) -> list[str]:
  """`tools.bench` on `config` (e.g. 'configs/mae_st.py:bench_small'), sparse step only, one JSON line."""
  return [python, '-m', 'mvm_jax.tools.bench', f'--config={config}', f'--steps={steps}', '--json',
          '--dense=false', '--phases=false']  # fmt: skip


def peer_command(script: str, python: str, config: str, steps: int) -> Callable[[str], list[str]]:
  """The peer's benchmark writing its JSON to the path it is given."""
  return lambda json_path: [python, script, '--config', config, '--steps', str(steps), '--json', json_path]


def malloc_env(env: dict, malloc: str, tcmalloc: str | None) -> dict:
  """`env` with the malloc chosen: 'glibc' drops any LD_PRELOAD, 'tcmalloc' preloads `tcmalloc`."""
  env = {k: v for k, v in env.items() if k != 'LD_PRELOAD'}
  if malloc == 'tcmalloc':
    if not tcmalloc:
      raise ValueError('tcmalloc is not installed (apt install libtcmalloc-minimal4)')
    env['LD_PRELOAD'] = tcmalloc
  elif malloc != 'glibc':
    raise ValueError(f'--mallocs: {malloc!r} is neither of {MALLOCS}')
  return env


def run_for_json(command: list[str], env: dict, json_path: str | None = None) -> dict:
  """Run `command`; its result is the JSON file `json_path` or else its stdout's last line.
  A failed run raises naming the command, with the end of its stderr."""
  done = subprocess.run(command, env=env, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(
      f'{" ".join(command)} exited {done.returncode}; its stderr ends:\n{done.stderr[-2000:]}'
    )
  if json_path:
    with open(json_path) as f:
      return json.load(f)
  lines = done.stdout.strip().splitlines()
  if not lines:
    raise RuntimeError(f'{" ".join(command)} printed nothing (expected one JSON line)')
  return json.loads(lines[-1])


def sitting(
  ours: list[str],
  peer: Callable[[str], list[str]],
  mallocs: Sequence[str],
  rounds: int,
  env: dict | None = None,
  tcmalloc: str | None = None,
  log: Callable[[str], None] = print,
) -> list[dict]:
  """Every run of one sitting, in the order run: per malloc, `rounds` × (ours, then the peer).
  Each record: malloc, who ('mvm_jax' / 'mae_st'), round, clips_per_s, mfu (ours), seconds and
  the 1-minute load average before the run."""
  env = dict(os.environ if env is None else env)
  runs, progress = [], Progress('sitting', len(mallocs) * rounds * 2, unit='runs', log=None)
  with tempfile.TemporaryDirectory() as tmp:
    for malloc in mallocs:
      run_env = malloc_env(env, malloc, tcmalloc)
      for r in range(rounds):
        for who in ('mvm_jax', 'mae_st'):
          load, t0 = os.getloadavg()[0], progress.wall
          if who == 'mvm_jax':
            result = run_for_json(ours, run_env)
          else:
            path = os.path.join(tmp, f'peer_{malloc}_{r}.json')
            result = run_for_json(peer(path), run_env, path)
          runs.append({
            'malloc': malloc, 'who': who, 'round': r, 'clips_per_s': result['clips_per_s'],
            'mfu': result.get('mfu'), 'seconds': progress.wall - t0, 'load_before': load,
          })  # fmt: skip
          progress.update()
          eta = format_duration(progress.eta)
          log(f'[{progress.done}/{progress.total}] {malloc:8s} {who:7s} {result["clips_per_s"]:.2f} clips/s '
              f'({runs[-1]["seconds"]:.0f} s, load {load:.1f}; ETA {eta})')  # fmt: skip
  return runs


def summarize(runs: list[dict]) -> dict:
  """Per malloc: each side's clips/s in run order, their medians, our median MFU, and
  ratio = median(ours) / median(peer)."""
  out = {}
  for malloc in dict.fromkeys(r['malloc'] for r in runs):
    side = lambda who: [r for r in runs if r['malloc'] == malloc and r['who'] == who]  # noqa: E731
    ours, peer = [r['clips_per_s'] for r in side('mvm_jax')], [r['clips_per_s'] for r in side('mae_st')]
    mfus = [r['mfu'] for r in side('mvm_jax') if r['mfu'] is not None]
    out[malloc] = {
      'mvm_jax': ours, 'mae_st': peer,
      'mvm_jax_median': statistics.median(ours), 'mae_st_median': statistics.median(peer),
      'mfu_median': statistics.median(mfus) if mfus else None,
      'ratio': statistics.median(ours) / statistics.median(peer),
    }  # fmt: skip
  return out


def format_table(summary: dict) -> str:
  """A Markdown table, one row per malloc."""
  lines = ['| malloc | mvm_jax clips/s (median) | mae_st clips/s (median) | ratio of medians | MFU |',
           '|---|---|---|---|---|']  # fmt: skip
  for malloc, s in summary.items():
    runs = lambda xs: ' '.join(f'{x:.2f}' for x in xs)  # noqa: E731
    mfu = '—' if s['mfu_median'] is None else f'{s["mfu_median"]:.2f}'
    lines.append(f'| {malloc} | {runs(s["mvm_jax"])} ({s["mvm_jax_median"]:.2f}) | {runs(s["mae_st"])} '
                 f'({s["mae_st_median"]:.2f}) | {s["ratio"]:.3f} | {mfu} |')  # fmt: skip
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  if not os.path.isfile(f.peer_script):
    raise app.UsageError(f'--peer_script: no file {f.peer_script!r} (the shared mae_st_bench.py)')
  mallocs = [m for m in f.mallocs.split(',') if m]
  unknown = [m for m in mallocs if m not in MALLOCS]
  if unknown:  # before any run, not when the sitting reaches it
    raise app.UsageError(f'--mallocs: {unknown} not among {MALLOCS}')
  tcmalloc = host_malloc.tcmalloc_library()
  if 'tcmalloc' in mallocs and not tcmalloc:
    print('tcmalloc is not installed (apt install libtcmalloc-minimal4): glibc only', file=sys.stderr)
    mallocs.remove('tcmalloc')
  if not mallocs:
    raise app.UsageError(f'--mallocs: nothing to run from {f.mallocs!r} (glibc, tcmalloc)')
  try:
    runs = sitting(
      ours_command(f.config, f.steps),
      peer_command(f.peer_script, f.peer_python, f.peer_config, f.steps),
      mallocs,
      f.rounds,
      tcmalloc=tcmalloc,
      log=lambda line: print(line, file=sys.stderr, flush=True),
    )
  except RuntimeError as e:  # a run failed: its command and stderr, without our traceback
    sys.exit(f'compare_peer: {e}')
  summary = summarize(runs)
  print(json.dumps({'runs': runs, 'summary': summary}) if f.json else format_table(summary))


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  flags.DEFINE_string('config', 'configs/mae_st.py:bench_small', 'Our config and preset (tools.bench).')
  flags.DEFINE_string('peer_script', None, "The peer's benchmark script (../shared/peer/mae_st_bench.py).")
  flags.DEFINE_string('peer_python', sys.executable, "Python of the peer's venv (with PyTorch).")
  flags.DEFINE_string('peer_config', 'bench-small', "The peer script's name for the same shape.")
  flags.DEFINE_integer('rounds', 3, 'Alternations (ours, then the peer) per malloc.')
  flags.DEFINE_integer('steps', 10, 'Timed steps per run, both sides (each reports the median).')
  flags.DEFINE_string('mallocs', ','.join(MALLOCS), 'Comma-separated: glibc (as installed), tcmalloc.')
  flags.DEFINE_bool('json', False, 'Print every run and the summary as one JSON object.')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['peer_script'])
  app.run(main, flags_parser=console.parse_flags)
