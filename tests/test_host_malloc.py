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
