"""Which malloc serves host memory, and the advice for CPU runs.

XLA:CPU allocates a step's temporaries afresh at every execution (`bench_small`: ~0.9 GB a step).
glibc's malloc serves an allocation over 32 MB with its own mmap and unmaps it on free, so each step
faults every page of those buffers in again, zero-filled by the kernel: on 2 cores ~230k page
faults and ~0.4 s of kernel CPU per 1 s step. tcmalloc keeps freed pages for the next step:
`LD_PRELOAD=libtcmalloc_minimal.so.4` (Debian/Ubuntu: `apt install libtcmalloc-minimal4`) made
`bench_small` 1.29× faster here, its resident memory flat at 2.6 GB over 150 steps (README
"Performance"). Tuning glibc instead (`mallopt`: no mmap, no trim) removed the faults too but let the
heap grow by fragmentation (1.8 → 3.8 GB from 10 to 60 steps); with one arena as well its heap stayed
flat, but the step gained about half of what tcmalloc gives.

So the entry points that run jobs (`mvm_jax.main`, fine-tuning, the probes) start by re-running
themselves with tcmalloc preloaded where it is installed (`rerun_with_tcmalloc`), as PyTorch's CPU
launcher does; `MVM_JAX_HOST_MALLOC=glibc` keeps glibc. The benchmarks do not: they measure the
allocator they are started with.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

PRELOADABLE = ('tcmalloc', 'jemalloc', 'mimalloc')


def allocator(maps_path: str = '/proc/self/maps') -> str:
  """'tcmalloc' / 'jemalloc' / 'mimalloc' when one is mapped into this process (LD_PRELOAD), else
  'glibc' on Linux ('unknown' where /proc is missing)."""
  try:
    with open(maps_path) as f:
      maps = f.read()
  except OSError:
    return 'unknown'
  for name in PRELOADABLE:
    if f'lib{name}' in maps:
      return name
  return 'glibc'


def cpu_hint(platform: str, name: str) -> str | None:
  """The advice to log for a run on `platform` with malloc `name`: preload tcmalloc on CPU with glibc."""
  if platform != 'cpu' or name != 'glibc':
    return None
  return (
    'host malloc is glibc: XLA:CPU re-faults its step temporaries every step; with tcmalloc installed '
    '(apt install libtcmalloc-minimal4) the run preloads it (LD_PRELOAD=libtcmalloc_minimal.so.4): '
    'bench_small ran 1.29x faster (README "Performance"); unless MVM_JAX_HOST_MALLOC=glibc'
  )


CHOICE_ENV = 'MVM_JAX_HOST_MALLOC'  # 'glibc': never re-run under tcmalloc


def tcmalloc_library() -> str | None:
  """The installed tcmalloc as the dynamic loader names it ('libtcmalloc_minimal.so.4' first); None."""
  for name in ('tcmalloc_minimal', 'tcmalloc'):
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def rerun_command(argv: list[str], env: dict, *, platform: str, library: str | None, current: str):
  """(argv, env) that run this process's command line `argv` again with tcmalloc `library` preloaded,
  or None where that would change nothing or is not wanted: not Linux, `MVM_JAX_HOST_MALLOC=glibc`,
  LD_PRELOAD already set (also what stops a second re-run), this process's malloc `current` not
  glibc, or no tcmalloc installed (`library` None)."""
  wanted = env.get(CHOICE_ENV, 'auto') != 'glibc' and not env.get('LD_PRELOAD')
  if not (wanted and platform.startswith('linux') and library and current == 'glibc'):
    return None
  return list(argv), dict(env, LD_PRELOAD=library)


def rerun_with_tcmalloc() -> None:
  """Replace this process by its own command line under tcmalloc (`rerun_command`); returns only where
  it does not (then the run logs `cpu_hint`). Call first thing in a job's `__main__`: the process
  image is replaced (same PID, same output streams), so whatever was done before is done again."""
  command = rerun_command(
    sys.orig_argv, dict(os.environ), platform=sys.platform, library=tcmalloc_library(), current=allocator()
  )
  if command is None:
    return
  argv, env = command
  print(
    f"mvm_jax: re-running with LD_PRELOAD={env['LD_PRELOAD']} (host malloc for XLA's step temporaries; "
    f'{CHOICE_ENV}=glibc keeps glibc)',
    file=sys.stderr,
    flush=True,
  )
  os.execve(sys.executable, argv, env)


def describe() -> str:
  """One phrase for the logs and the benchmark: this process's malloc (and LD_PRELOAD if set)."""
  name = allocator()
  preload = os.environ.get('LD_PRELOAD', '')
  return f'{name} (LD_PRELOAD={os.path.basename(preload)})' if preload else name
