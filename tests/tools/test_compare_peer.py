"""tools.compare_peer: one sitting alternating our bench and the peer's, ratio of medians."""

import subprocess
import sys
import textwrap

import pytest

from mvm_jax.tools import compare_peer

# Each fake benchmark appends (side, LD_PRELOAD) to the log and reports the next clips/s of its side.
FAKE = textwrap.dedent("""
  import json, os, sys
  side, log, values = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3].split(',')]
  with open(log, 'a+') as f:
    f.seek(0)
    n = sum(1 for line in f if line.startswith(side))
    f.write(f"{side} {os.environ.get('LD_PRELOAD', '-')}\\n")
  result = {'clips_per_s': values[n], 'mfu': 0.5 + n / 100 if side == 'ours' else None}
  if side == 'ours':
    print('a line of log first')
    print(json.dumps(result))
  else:
    json.dump(result, open(sys.argv[sys.argv.index('--json') + 1], 'w'))
""")


def test_a_sitting_alternates_ours_and_the_peer_per_malloc_and_reports_the_ratio_of_medians(tmp_path):
  script, log = tmp_path / 'fake.py', tmp_path / 'runs.log'
  script.write_text(FAKE)
  ours = [sys.executable, str(script), 'ours', str(log), '6,7,5,9,8,10']
  peer_values = '5,6,4,8,8,8'
  peer = lambda path: [sys.executable, str(script), 'peer', str(log), peer_values, '--json', path]  # noqa: E731
  lines = []
  runs = compare_peer.sitting(
    ours, peer, ['glibc', 'tcmalloc'], rounds=3, env={'LD_PRELOAD': 'stale.so'}, tcmalloc='libfake.so',
    log=lines.append,
  )  # fmt: skip

  assert log.read_text().splitlines() == ['ours -', 'peer -'] * 3 + ['ours libfake.so', 'peer libfake.so'] * 3
  assert [(r['malloc'], r['who'], r['round']) for r in runs][:3] == [
    ('glibc', 'mvm_jax', 0), ('glibc', 'mae_st', 0), ('glibc', 'mvm_jax', 1)
  ]  # fmt: skip
  assert len(lines) == 12 and lines[-1].startswith('[12/12] tcmalloc')
  summary = compare_peer.summarize(runs)
  assert summary['glibc']['mvm_jax'] == [6, 7, 5] and summary['glibc']['mae_st'] == [5, 6, 4]
  assert summary['glibc']['ratio'] == pytest.approx(6 / 5)
  assert summary['tcmalloc']['ratio'] == pytest.approx(9 / 8)
  assert summary['tcmalloc']['mfu_median'] == pytest.approx(0.54)
  table = compare_peer.format_table(summary)
  assert '| glibc | 6.00 7.00 5.00 (6.00) | 5.00 6.00 4.00 (5.00) | 1.200 | 0.51 |' in table, table


def test_a_failed_run_names_its_command_and_shows_its_stderr(tmp_path):
  failing = [sys.executable, '-c', 'import sys; sys.exit("no module named torch")']
  with pytest.raises(RuntimeError, match=r'(?s)-c .*exited 1.*no module named torch'):
    compare_peer.sitting(failing, lambda path: failing, ['glibc'], rounds=1, env={}, log=print)
  with pytest.raises(ValueError, match='tcmalloc is not installed'):
    compare_peer.malloc_env({}, 'tcmalloc', None)
  with pytest.raises(ValueError, match="--mallocs: 'jemalloc'"):
    compare_peer.malloc_env({}, 'jemalloc', None)


def test_our_command_is_one_tools_bench_accepts():
  """Every flag compare_peer passes to tools.bench is one bench defines."""
  helpfull = subprocess.run(  # absl prints the flags and exits 1
    [sys.executable, '-m', 'mvm_jax.tools.bench', '--helpfull'], capture_output=True, text=True
  ).stdout
  assert 'Train-step benchmark' in helpfull, helpfull
  command = compare_peer.ours_command('configs/mae_st.py:bench_small', steps=10)
  assert command[1:3] == ['-m', 'mvm_jax.tools.bench']
  for arg in command[3:]:
    name = arg[2:].split('=')[0]
    assert f'--[no]{name}' in helpfull or f'--{name}' in helpfull, name
