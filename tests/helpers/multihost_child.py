"""One process of the two-process test in tests/e2e/test_multihost.py.

  python tests/helpers/multihost_child.py PROCESS_ID PORT [--num_batches N] [--train_steps S]

Joins a 2-process JAX cluster on 127.0.0.1:PORT (CPU, one device per process;
CPU collectives are gloo, JAX's default), reads this process's shard of the
builtin source with the micro test config, forms global batches with
``jax.make_array_from_process_local_data`` on a ('data',) mesh, gathers them
back, then trains ``S`` steps of the real train step on the same batches.
Prints one line ``RESULT {json}`` to stdout::

  {'process_index': int, 'process_count': int, 'num_devices': int,
   'local_index': [[int] * b] * N,     host batches' record indices
   'global_index': [[int] * B] * N,    gathered global batches
   'global_label': [[int] * B] * N,
   'global_video_sha': [[str] * B] * N,  sha1 of each sample's float32 bytes
   'losses': [float] * S,
   'seconds': {phase: float}}          time since start, for slow runs
"""

import argparse
import hashlib
import json
import pathlib
import sys
import time

START = time.perf_counter()
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

GLOBAL_BATCH = 8


def child_config():
  """The micro test config (conftest) on all devices of all processes, k = 2."""
  from tests.conftest import micro_config

  c = micro_config()
  c.data.repeated_sampling = 2
  c.batch_size = GLOBAL_BATCH
  c.mesh.shape = (-1, 1, 1)
  return c


def sample_hashes(video: np.ndarray) -> list[str]:
  """sha1 of each sample of a float32 [B, T, S, S, 3] array."""
  video = np.ascontiguousarray(video, np.float32)
  return [hashlib.sha1(v.tobytes()).hexdigest() for v in video]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('process_id', type=int)
  parser.add_argument('port', type=int)
  parser.add_argument('--num_batches', type=int, default=4)
  parser.add_argument('--train_steps', type=int, default=2)
  args = parser.parse_args()

  jax.distributed.initialize(
    coordinator_address=f'127.0.0.1:{args.port}', num_processes=2, process_id=args.process_id
  )
  initialized = time.perf_counter() - START
  from mvm_jax.data import make_loader
  from mvm_jax.train import loop

  config = child_config()
  # This process's shard: make_loader's default.
  loader, info = make_loader(config.data, split='train', global_batch_size=GLOBAL_BATCH, seed=config.seed)
  it = iter(loader)
  host_batches = [next(it) for _ in range(args.num_batches)]
  it.close()

  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P('data'))
  result = {
    'process_index': jax.process_index(),
    'process_count': jax.process_count(),
    'num_devices': jax.device_count(),
    'host_batch_size': info.batch_size,
    'local_index': [],
    'global_index': [],
    'global_label': [],
    'global_video_sha': [],
    'losses': [],
    'seconds': {'initialized': initialized, 'loaded': time.perf_counter() - START},
  }
  for host_batch in host_batches:
    batch = loop.global_batch(host_batch, sharding)
    assert batch['video'].shape[0] == GLOBAL_BATCH, batch['video'].shape
    gathered = multihost_utils.process_allgather(batch, tiled=True)
    result['local_index'].append(host_batch['index'].tolist())
    result['global_index'].append(gathered['index'].tolist())
    result['global_label'].append(gathered['label'].tolist())
    result['global_video_sha'].append(sample_hashes(gathered['video']))

  if args.train_steps:
    exp, state = loop.build_experiment(config, samples_per_epoch=info.samples_per_epoch)
    for host_batch in host_batches[: args.train_steps]:
      state, metrics = exp.train_step(state, loop.global_batch(host_batch, exp.batch_sharding))
      result['losses'].append(float(jax.device_get(metrics['loss'])))
    result['seconds']['trained'] = time.perf_counter() - START

  print('RESULT ' + json.dumps(result), flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main()
