"""Which malloc a process runs with, read from its memory maps, and the CPU advice that follows."""

import os
import subprocess
import sys

import pytest

from mvm_jax import host_malloc

TCMALLOC = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'


def test_allocator_is_read_from_the_memory_maps(tmp_path):
  maps = tmp_path / 'maps'
  maps.write_text('7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n')
  assert host_malloc.allocator(str(maps)) == 'glibc'
  maps.write_text(maps.read_text() + '7f02-7f03 r-xp 0 08:01 2 /usr/lib/libtcmalloc_minimal.so.4\n')
  assert host_malloc.allocator(str(maps)) == 'tcmalloc'
  assert host_malloc.allocator(str(tmp_path / 'absent')) == 'unknown'


def test_the_tip_is_for_cpu_runs_on_glibc_only():
  assert 'LD_PRELOAD=libtcmalloc_minimal.so.4' in host_malloc.cpu_hint('cpu', 'glibc')
  assert host_malloc.cpu_hint('cpu', 'tcmalloc') is None
  assert host_malloc.cpu_hint('gpu', 'glibc') is None


def _allocator_in_subprocess(env):
  code = 'from mvm_jax import host_malloc; print(host_malloc.describe())'
  return subprocess.run(
    [sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True
  ).stdout.strip()


def test_this_process_and_a_preloaded_tcmalloc():
  env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
  assert _allocator_in_subprocess(env) == 'glibc'
  if not os.path.exists(TCMALLOC):
    pytest.skip('libtcmalloc-minimal4 not installed')
  described = _allocator_in_subprocess(dict(env, LD_PRELOAD=TCMALLOC))
  assert described == 'tcmalloc (LD_PRELOAD=libtcmalloc_minimal.so.4)'


def test_rerun_command_preloads_tcmalloc_only_where_it_changes_something():
  argv, env = ['python', '-m', 'mvm_jax.main', '--workdir', 'w'], {'PATH': '/bin'}
  lib = 'libtcmalloc_minimal.so.4'

  def run(env=env, platform='linux', library=lib, current='glibc'):
    return host_malloc.rerun_command(argv, env, platform=platform, library=library, current=current)

  assert run() == (argv, {'PATH': '/bin', 'LD_PRELOAD': lib})
  assert run(env=dict(env, MVM_JAX_HOST_MALLOC='glibc')) is None  # asked to keep glibc
  assert run(env=dict(env, LD_PRELOAD='libfoo.so')) is None  # a preload of the user's (or a failed one)
  assert run(platform='darwin') is None and run(library=None) is None and run(current='jemalloc') is None


def test_an_entry_point_reruns_itself_under_tcmalloc_once():
  """`rerun_with_tcmalloc` as a job's __main__ calls it: the same command line again, now under
  tcmalloc (one line on stderr says so); with MVM_JAX_HOST_MALLOC=glibc, glibc."""
  if host_malloc.tcmalloc_library() is None:
    pytest.skip('libtcmalloc-minimal4 not installed')
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', host_malloc.CHOICE_ENV)}
  code = 'from mvm_jax import host_malloc; host_malloc.rerun_with_tcmalloc(); print(host_malloc.allocator())'
  run = lambda env: subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
  rerun = run(env)
  assert rerun.returncode == 0 and rerun.stdout == 'tcmalloc\n', rerun.stderr
  assert rerun.stderr.count('re-running with LD_PRELOAD=libtcmalloc') == 1
  kept = run(dict(env, MVM_JAX_HOST_MALLOC='glibc'))
  assert kept.stdout == 'glibc\n' and kept.stderr == ''
