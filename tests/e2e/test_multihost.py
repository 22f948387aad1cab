"""Multi-host data loading and training: two local JAX processes on CPU.

Each process (tests/helpers/multihost_child.py) joins the cluster with
``jax.distributed.initialize`` (one CPU device each; gloo collectives, JAX's
default), reads its shard of the builtin source, forms global batches with
``jax.make_array_from_process_local_data`` and trains two steps of the real
train step. Here we check the shards against single-process loaders.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mvm_jax.data import make_loader
from tests.conftest import REPO
from tests.helpers import multihost_child, processes

NUM_BATCHES = 4  # 2 epochs: a shard has 4 records, k = 2, 4 samples per host batch
TRAIN_STEPS = 2
TIMEOUT_S = 300  # the CPU is shared; alone, the two processes take about 40 s


def run_two_processes(tmp_path) -> list[dict]:
  """Starts both children, waits for both; kills both on a timeout or a failure."""
  port = processes.free_port()
  # One CPU device per process; lower LLVM optimization: compiles faster.
  env = dict(
    os.environ, XLA_FLAGS='--xla_backend_optimization_level=0', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3'
  )
  procs, logs = [], []
  for i in range(2):
    out, err = tmp_path / f'child{i}.out', tmp_path / f'child{i}.err'
    logs.append((out, err))
    with open(out, 'w') as fo, open(err, 'w') as fe:
      args = [str(i), str(port), '--num_batches', str(NUM_BATCHES), '--train_steps', str(TRAIN_STEPS)]
      procs.append(
        subprocess.Popen(
          [sys.executable, multihost_child.__file__, *args], cwd=REPO, env=env, stdout=fo, stderr=fe
        )
      )

  def tails() -> str:
    return '\n'.join(f'--- child {i} stderr:\n{err.read_text()[-3000:]}' for i, (_, err) in enumerate(logs))

  processes.wait_all(procs, tails, TIMEOUT_S, 'children')
  results = []
  for out, _ in logs:
    lines = [line for line in out.read_text().splitlines() if line.startswith('RESULT ')]
    assert lines, f'no RESULT line\n{tails()}'
    results.append(json.loads(lines[-1][len('RESULT ') :]))
  return results


def reference_batches() -> list[list[dict]]:
  """Host batches of shards 0 and 1, each read by a single-process loader."""
  config = multihost_child.child_config()
  shards = []
  for shard in range(2):
    ds, _ = make_loader(
      config.data,
      split='train',
      global_batch_size=multihost_child.GLOBAL_BATCH,
      seed=config.seed,
      shard_index=shard,
      shard_count=2,
    )
    it = iter(ds)
    shards.append([next(it) for _ in range(NUM_BATCHES)])
    it.close()
  return shards


@pytest.mark.slow
def test_two_processes_shard_the_data_and_train_together(tmp_path):
  results = run_two_processes(tmp_path)
  assert [r['process_index'] for r in results] == [0, 1]
  assert all(r['process_count'] == 2 and r['num_devices'] == 2 and r['host_batch_size'] == 4 for r in results)

  # Each process reads a disjoint half of the records, every epoch.
  for epoch in range(NUM_BATCHES // 2):
    halves = [{i for b in r['local_index'][2 * epoch : 2 * epoch + 2] for i in b} for r in results]
    assert [len(h) for h in halves] == [4, 4]
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(range(8))

  # The global batch is shard 0's host batch then shard 1's, as single-process
  # loaders with shard_count=2 produce them, bit for bit; both processes agree.
  shard0, shard1 = reference_batches()
  for r in results:
    for step, (a, b) in enumerate(zip(shard0, shard1)):
      assert r['local_index'][step] == [a, b][r['process_index']]['index'].tolist()
      assert r['global_index'][step] == np.concatenate([a['index'], b['index']]).tolist()
      assert r['global_label'][step] == np.concatenate([a['label'], b['label']]).tolist()
      expected_sha = multihost_child.sample_hashes(np.concatenate([a['video'], b['video']]))
      assert r['global_video_sha'][step] == expected_sha, f'process {r["process_index"]}, batch {step}'

  # Two steps of the real train step, data-parallel over both processes.
  losses = [r['losses'] for r in results]
  assert len(losses[0]) == TRAIN_STEPS and losses[0] == losses[1], losses
  assert np.all(np.isfinite(losses[0]))
