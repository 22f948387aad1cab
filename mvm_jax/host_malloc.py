"""Which malloc serves host memory, and the advice for CPU runs.

XLA:CPU allocates a step's temporaries afresh at every execution (`bench_small`: ~0.9 GB a step).
glibc's malloc serves an allocation over 32 MB with its own mmap and unmaps it on free, so each step
faults every page of those buffers in again, zero-filled by the kernel: on 2 cores ~230k page
faults and ~0.4 s of kernel CPU per 1 s step. tcmalloc keeps freed pages for the next step:
`LD_PRELOAD=libtcmalloc_minimal.so.4` (Debian/Ubuntu: `apt install libtcmalloc-minimal4`) made
`bench_small` 1.29× faster here, its resident memory flat at 2.6 GB over 150 steps (README
"Performance"). Tuning glibc instead (`mallopt`: no mmap, no trim) removed the faults too but let the
heap grow by fragmentation (1.8 → 3.8 GB from 10 to 60 steps), so we do not.
"""

from __future__ import annotations

import os

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
    'host malloc is glibc: XLA:CPU re-faults its step temporaries every step; '
    'LD_PRELOAD=libtcmalloc_minimal.so.4 (apt install libtcmalloc-minimal4) ran bench_small 1.29x faster '
    '(README "Performance")'
  )


def describe() -> str:
  """One phrase for the logs and the benchmark: this process's malloc (and LD_PRELOAD if set)."""
  name = allocator()
  preload = os.environ.get('LD_PRELOAD', '')
  return f'{name} (LD_PRELOAD={os.path.basename(preload)})' if preload else name
