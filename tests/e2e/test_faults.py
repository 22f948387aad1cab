"""Faults lose nothing but the steps since the last checkpoint: each test starts the real entry point
in a subprocess, breaks something, and checks what the run says and what a rerun continues from.

- kill -9 at a random step, and while an asynchronous checkpoint is being written: the rerun resumes
  from the last complete checkpoint and ends with the losses of an uninterrupted run;
- a truncated latest checkpoint: named with the reason, set aside, the previous one resumed;
  nothing readable at all: an error, nothing changed;
- a checkpoint directory that turns read-only: a one-line error naming step, directory and cause;
  the complete checkpoints still read back;
- a data worker process killed: the run stops at once with an error naming the cause;
- data workers' shared memory: nothing left at exit.
"""

import glob
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from mvm_jax import runs
from tests.conftest import MICRO_FLAGS, REPO

TIMEOUT_S = 300
TOTAL = 8
BASE = [
  '--config',
  'configs/mae_st.py:tiny',
  *MICRO_FLAGS,
  '--config.warmup_steps=1',
  '--config.log_every_steps=1',
  '--config.checkpoint_every_steps=2',
  '--config.keep_checkpoints=3',
  '--config.async_checkpointing=True',
]


def main_args(workdir, total=TOTAL, *extra) -> list:
  return [*BASE, f'--config.total_steps={total}', '--workdir', str(workdir), *extra]


def start(args, *, module='mvm_jax.main', wrapper=(), prefix=(), **kwargs) -> subprocess.Popen:
  """The entry point (or `wrapper` script) in a subprocess with 1 CPU device, after the command
  `prefix`; stdout and stderr together as text lines."""
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  cmd = [*prefix, sys.executable] + (list(wrapper) if wrapper else ['-m', module])
  return subprocess.Popen(
    cmd + list(args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
  )


def run(args, **kwargs) -> tuple[int, str]:
  proc = start(args, **kwargs)
  out, _ = proc.communicate(timeout=TIMEOUT_S)
  return proc.returncode, out


def read_until(proc, pattern: str) -> str:
  """Lines of `proc` up to the first matching `pattern` (regex); fails at the timeout or the end."""
  lines, deadline = [], time.monotonic() + TIMEOUT_S
  for line in proc.stdout:
    lines.append(line)
    if re.search(pattern, line):
      return ''.join(lines)
    assert time.monotonic() < deadline, ''.join(lines[-30:])
  pytest.fail(f'ended before {pattern!r}:\n' + ''.join(lines[-40:]))


def finish(proc) -> tuple[int, str]:
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, out


def losses(text: str) -> dict:
  """{step: loss} of the '[step] ... loss=x, ...' log lines."""
  return {int(s): float(v) for s, v in re.findall(r'\] \[(\d+)\] .*?(?:^|, | )loss=([-+.\deE]+)', text)}


def complete_steps(workdir) -> list[int]:
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def error_line(text: str, start: str) -> str:
  """The entry point's one-line 'error: <start>...' (library threads may log around it)."""
  found = re.search(re.escape(f'error: {start}') + r'[^\n]*', text)
  assert found, text[-3000:]
  return found.group(0)


def resumed_from(text: str):
  found = re.search(r'Resumed from checkpoint at step (\d+)', text)
  return int(found.group(1)) if found else None


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """{step: loss} of an uninterrupted run of TOTAL steps."""
  rc, out = run(main_args(tmp_path_factory.mktemp('reference')))
  assert rc == 0, out[-3000:]
  found = losses(out)
  assert sorted(found) == list(range(1, TOTAL + 1))
  return found


def assert_rerun_matches(workdir, reference, expected_resume) -> str:
  rc, out = run(main_args(workdir))
  assert rc == 0, out[-3000:]
  assert resumed_from(out) == expected_resume, out[-3000:]
  after = losses(out)
  assert sorted(after) == list(range((expected_resume or 0) + 1, TOTAL + 1))
  assert after == {s: reference[s] for s in after}  # the same losses (as logged, 6 digits)
  return out


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_rerun_ends_like_an_uninterrupted_run(reference, tmp_path):
  kill_at = random.Random().randint(1, TOTAL - 1)
  proc = start(main_args(tmp_path))
  before = read_until(proc, rf'\] \[{kill_at}\] ')
  proc.send_signal(signal.SIGKILL)
  rc, rest = finish(proc)
  assert rc == -signal.SIGKILL
  seen = losses(before + rest)
  assert seen == {s: reference[s] for s in seen}, f'killed at step {kill_at}'
  complete = complete_steps(tmp_path)
  assert all(s % 2 == 0 for s in complete), (kill_at, complete)
  assert_rerun_matches(tmp_path, reference, max(complete) if complete else None)


@pytest.mark.slow
def test_kill_9_while_an_async_checkpoint_is_written_then_rerun_resumes_from_the_last_complete(
  reference, tmp_path
):
  wrapper = [str(REPO / 'tests' / 'helpers' / 'fault_child.py'), 'kill_after_save', '4', 'mvm_jax.main']
  rc, out = run(main_args(tmp_path), wrapper=wrapper)
  assert rc == -signal.SIGKILL and 'FAULT: killed while writing' in out, out[-3000:]
  writing = re.search(r'FAULT: killed while writing \[(.*)\]', out).group(1)
  complete = complete_steps(tmp_path)
  # Step 4 was in flight: either still a temporary directory (not a checkpoint), or complete.
  assert complete == ([2] if '4.orbax-checkpoint-tmp' in writing else [2, 4]), (writing, complete)
  assert_rerun_matches(tmp_path, reference, max(complete))


def _truncate_largest_file(folder) -> str:
  files = [f for f in glob.glob(os.path.join(folder, '**'), recursive=True) if os.path.isfile(f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


@pytest.mark.slow
def test_unreadable_latest_checkpoint_is_named_and_the_previous_one_resumed(tmp_path):
  rc, first = run(main_args(tmp_path, 6))
  assert rc == 0 and complete_steps(tmp_path) == [2, 4, 6], first[-3000:]
  _truncate_largest_file(tmp_path / 'checkpoints' / '6' / 'state')
  rc, out = run(main_args(tmp_path, 6))
  assert rc == 0, out[-3000:]
  assert re.search(
    r'Checkpoint 6 in \S+/checkpoints cannot be read \(\w+: .+\); trying the previous one', out
  )
  assert resumed_from(out) == 4 and 'set aside as 6.unreadable' in out
  assert losses(out) == {5: losses(first)[5], 6: losses(first)[6]}  # never silently from scratch
  assert complete_steps(tmp_path) == [2, 4, 6] and os.path.isdir(tmp_path / 'checkpoints' / '6.unreadable')

  for step in (2, 4, 6):  # nothing readable: an error that lists them, and nothing moved
    _truncate_largest_file(tmp_path / 'checkpoints' / str(step) / 'state')
  rc, out = run(main_args(tmp_path, 6))
  assert rc != 0 and 'Resumed' not in out
  message = error_line(out, f'no checkpoint in {tmp_path}/checkpoints can be read (6: ')
  assert '; 4: ' in message and '; 2: ' in message and 'Nothing was changed' in message
  assert complete_steps(tmp_path) == [2, 4, 6]


def _respecting_file_modes() -> list:
  """A command prefix under which the child obeys file modes: root keeps its uid (so it still reads
  the clone and its venv, wherever they are) but loses the capabilities that override modes;
  [] when not root."""
  if os.geteuid() != 0:
    return []
  if not shutil.which('setpriv'):
    pytest.skip('running as root without setpriv: a read-only directory cannot be made')
  caps = '-dac_override,-dac_read_search'
  return ['setpriv', f'--bounding-set={caps}', f'--inh-caps={caps}', '--']


def _set_writable(folder, writable: bool):
  for root, dirs, files in os.walk(folder):
    for name in dirs + files + ['.']:
      path = os.path.join(root, name)
      mode = os.stat(path).st_mode
      write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
      os.chmod(path, (mode | write) if writable else (mode & ~write))


@pytest.mark.slow
def test_checkpoint_directory_turning_read_only_is_a_clear_error_and_keeps_the_complete_ones(tmp_path):
  workdir = tmp_path / 'run'
  proc = start(main_args(workdir, 400), prefix=_respecting_file_modes())
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.isdir(workdir / 'checkpoints' / '2'):
      if proc.poll() is not None or time.monotonic() > deadline:
        pytest.fail('no checkpoint 2:\n' + finish(proc)[1][-3000:])
      time.sleep(0.05)
    _set_writable(workdir / 'checkpoints', False)
    turned = time.monotonic()
    rc, out = finish(proc)
  finally:
    _set_writable(workdir / 'checkpoints', True)
  assert time.monotonic() - turned < 120  # no hang on orbax's threads of the failed write
  assert rc == 1, out[-3000:]
  message = error_line(out, 'could not write checkpoint ')
  # the cause as the OS words it ('Permission denied') or as TensorStore does ('PERMISSION_DENIED: ...')
  assert re.match(
    r'error: could not write checkpoint \d+ in \S+/checkpoints \(.*permission[ _]denied', message, re.I
  ), message
  assert re.search(r'the complete checkpoints \(steps: 2[,)]', message), message
  assert 'rerun the same command to resume' in message
  step, params = runs.latest_params(str(workdir))  # they still read back
  assert step == max(complete_steps(workdir)) >= 2 and params['encoder']['cls_token'].shape == (1, 1, 32)


@pytest.mark.slow
def test_killed_data_worker_stops_the_run_with_the_cause(tmp_path):
  proc = start(main_args(tmp_path, 400, '--config.data.num_workers=2'))
  read_until(proc, r'\] \[6\] ')
  children = subprocess.run(
    ['ps', '-ww', '--ppid', str(proc.pid), '-o', 'pid=,args='], capture_output=True, text=True
  )
  workers = [int(line.split()[0]) for line in children.stdout.splitlines() if 'spawn_main' in line]
  if not workers:
    proc.kill()
    pytest.fail(f'no data worker among the children:\n{children.stdout}')
  killed = time.monotonic()
  os.kill(workers[-1], signal.SIGKILL)
  rc, out = finish(proc)
  assert time.monotonic() - killed < 120  # no hang
  assert rc == 1, out[-3000:]
  message = error_line(out, 'a data worker process died (Worker process was terminated unexpectedly')
  assert 'exit code -9' in message
  assert complete_steps(tmp_path) and not glob.glob(str(tmp_path / 'checkpoints' / '*tmp*'))


@pytest.mark.slow
def test_fine_tuning_with_data_workers_leaves_no_shared_memory(tmp_path):
  args = [
    '--config',
    'configs/finetune.py:tiny',
    *[f for f in MICRO_FLAGS if 'num_workers' not in f and 'repeated_sampling' not in f],
    '--config.init_from=',
    '--config.data.num_workers=2',
    '--config.total_steps=2',
    '--config.finetune.eval_every_steps=1',
    '--config.finetune.eval_batch_size=12',
    '--workdir',
    str(tmp_path),
  ]
  rc, out = run(args, module='mvm_jax.finetune')
  assert rc == 0, out[-3000:]
  assert 'finetune: top1' in out and 'test/top1=' in out  # periodic and final multi-view tests ran
  assert 'leaked shared_memory' not in out, out[-2000:]
