"""Run an entry point with a fault injected (tests/e2e/test_faults.py).

  python tests/helpers/fault_child.py kill_after_save STEP MODULE ARGS...

``kill_after_save STEP``: the process kills itself with SIGKILL right after
the checkpoint save of step STEP has been started; with asynchronous
checkpointing its files are then still being written. Otherwise this is
``python -m MODULE ARGS...``.
"""

import os
import pathlib
import runpy
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from mvm_jax.train import checkpointing  # noqa: E402


def main():
  fault, step, module = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  if fault != 'kill_after_save':
    raise SystemExit(f'unknown fault {fault!r}')
  save = checkpointing.Checkpointer.save

  def save_then_die(self, at, *args, **kwargs):
    saved = save(self, at, *args, **kwargs)
    if saved and at == step:
      writing = [p.name for p in pathlib.Path(self.directory).iterdir() if 'tmp' in p.name]
      print(f'FAULT: killed while writing {writing}', flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    return saved

  checkpointing.Checkpointer.save = save_then_die
  sys.argv = [module] + sys.argv[4:]
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
