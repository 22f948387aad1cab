"""The one-process reference of a two-process run (tests/e2e/test_multihost_cli.py).

  python tests/helpers/multihost_reference.py MODULE ARGS...

Runs ``python -m MODULE ARGS...`` in this one process, except that every
training loader reads what two processes would read together: per step,
shard 0's host batch then shard 1's (``shard_count=2``), the global batch of a
two-process run. With two local devices (XLA_FLAGS) and ``mesh.shape=(-1,1,1)``
the run then sees the same batches on the same data-parallel layout, so its
losses, pictures and results should equal the two-process run's.
Evaluation loaders (``train=False``) are left alone: their results do not
depend on how records are split over processes.
"""

import pathlib
import runpy
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from mvm_jax.data import loader as loader_lib  # noqa: E402


class TwoShards:
  """Two shard loaders read as one: batches {key: [2 * b, ...]}, shard 0's rows first."""

  def __init__(self, loaders):
    self.loaders = loaders

  def __iter__(self):
    return TwoShardIterator([iter(loader) for loader in self.loaders])


class TwoShardIterator:
  def __init__(self, iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    a, b = (next(it) for it in self.iterators)
    return {k: np.concatenate([a[k], b[k]]) for k in a}

  def get_state(self) -> dict:
    return {'shards': [it.get_state() for it in self.iterators]}

  def set_state(self, state: dict) -> None:
    for it, s in zip(self.iterators, state['shards']):
      it.set_state(s)

  def close(self) -> None:
    for it in self.iterators:
      it.close()


def main():
  real = loader_lib.make_loader

  def make_loader(
    data_config, *, split, global_batch_size, seed, train=True, shard_index=None, shard_count=None, **kw
  ):
    args = dict(split=split, global_batch_size=global_batch_size, seed=seed, train=train, **kw)
    if not train:  # None: the process's shard (0 of 1 here)
      return real(data_config, shard_index=shard_index, shard_count=shard_count, **args)
    shards = [real(data_config, shard_index=i, shard_count=2, **args) for i in range(2)]
    return TwoShards([loader for loader, _ in shards]), shards[0][1]

  loader_lib.make_loader = make_loader
  module = sys.argv[1]
  sys.argv = [module] + sys.argv[2:]
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
