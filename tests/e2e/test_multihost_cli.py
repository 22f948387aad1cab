"""Two processes on 127.0.0.1, started as launch/README.md documents (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID and --distributed), run the real entry points: pre-training
with pictures and checkpoints and a resume, fine-tuning with periodic multi-view evaluation,
and k-NN feature extraction. Each result equals the one-process run on the same global batches
(tests/helpers/multihost_reference.py), within float tolerance.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MICRO_FLAGS, REPO
from tests.helpers import processes

TIMEOUT_S = 420  # per launch; the CPU is shared
MICRO = [f for f in MICRO_FLAGS if not f.startswith('--config.mesh.shape')] + ['--config.mesh.shape=(-1,1,1)']
PRETRAIN = [
  '--config',
  'configs/mae_st.py:tiny',
  *MICRO,
  '--config.total_steps=4',
  '--config.warmup_steps=1',
  '--config.log_every_steps=1',
  '--config.checkpoint_every_steps=2',
  '--config.image_every_steps=2',
  '--config.num_image_samples=2',
  '--config.async_checkpointing=False',
]


def _env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS='')
  for key in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(key, None)
  env.update(extra)
  return env


def _wait(procs, logs, what: str) -> list[str]:
  """Wait for all of `procs`; kill the rest when one fails or time runs out. → their stderr texts."""

  def tails() -> str:
    return '\n'.join(f'--- {what} process {i}:\n{log.read_text()[-4000:]}' for i, log in enumerate(logs))

  processes.wait_all(procs, tails, TIMEOUT_S, what)
  return [log.read_text() for log in logs]


def run_two_processes(module: str, args: list, logdir) -> list[str]:
  """`python -m module args --distributed` twice, as launch/README.md says; → both logs."""
  port = processes.free_port()
  procs, logs = [], []
  for i in range(2):
    env = _env(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i))
    logs.append(logdir / f'{module}.{i}.{port}.log')
    with open(logs[-1], 'w') as log:
      cmd = [sys.executable, '-m', module, *args, '--distributed']
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return _wait(procs, logs, module)


def run_reference(module: str, args: list, logdir) -> str:
  """The same command in one process on 2 local devices, reading both shards (multihost_reference.py)."""
  logs = [logdir / f'{module}.reference.log']
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=2')
  with open(logs[0], 'w') as log:
    cmd = [sys.executable, str(REPO / 'tests' / 'helpers' / 'multihost_reference.py'), module, *args]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)]
  return _wait(procs, logs, f'{module} (reference)')[0]


def scalars(log: str, key: str) -> dict:
  """{step: value} of `key` in the metric writer's '[step] a=1, b=2' log lines."""
  out = {}
  for step, values in re.findall(r'\] \[(\d+)\] (.*)', log):
    found = re.search(rf'(?:^|, ){re.escape(key)}=([-+.\w]+)', values)
    if found:
      out[int(step)] = float(found.group(1))
  return out


def assert_close(a: dict, b: dict, rtol=1e-4, atol=1e-6):
  assert a.keys() == b.keys(), (a, b)
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=rtol, atol=atol)


def pictures(workdir) -> dict:
  folder = workdir / 'images'
  return {name: np.asarray(Image.open(folder / name), np.int16) for name in sorted(os.listdir(folder))}


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """Two-process and one-process pre-training (4 steps, checkpoints and pictures every 2)."""
  root = tmp_path_factory.mktemp('multihost_cli')
  two = run_two_processes('mvm_jax.main', PRETRAIN + ['--workdir', str(root / 'two')], root)
  one = run_reference('mvm_jax.main', PRETRAIN + ['--workdir', str(root / 'one')], root)
  return root, two, one


@pytest.mark.slow
def test_pretraining_with_pictures_and_checkpoints_matches_one_process(pretrained):
  root, two, one = pretrained
  assert 'process 0 of 2' in two[0] and 'process 1 of 2' in two[1]
  losses = scalars(two[0], 'loss')
  assert sorted(losses) == [1, 2, 3, 4]
  assert scalars(two[1], 'loss') == losses  # both processes see the same replicated metrics
  assert_close(losses, scalars(one, 'loss'))
  assert sorted(os.listdir(root / 'two' / 'checkpoints')) == ['2', '4']
  two_pictures, one_pictures = pictures(root / 'two'), pictures(root / 'one')
  assert sorted(two_pictures) == sorted(one_pictures) and len(two_pictures) == 4  # steps 2, 4 × 2 samples
  for name, picture in two_pictures.items():
    assert np.abs(picture - one_pictures[name]).max() <= 2, name  # uint8 levels


@pytest.mark.slow
def test_two_process_resume_continues_with_the_same_losses(pretrained):
  root, two, _ = pretrained
  workdir = root / 'resumed'
  shutil.copytree(root / 'two', workdir)
  shutil.rmtree(workdir / 'checkpoints' / '4')  # as if stopped after the step-2 checkpoint
  resumed = run_two_processes('mvm_jax.main', PRETRAIN + ['--workdir', str(workdir)], root)
  assert (
    'Resumed from checkpoint at step 2' in resumed[0] and 'Resumed from checkpoint at step 2' in resumed[1]
  )
  full = scalars(two[0], 'loss')
  assert_close(scalars(resumed[0], 'loss'), {3: full[3], 4: full[4]}, rtol=1e-6)


@pytest.mark.slow
def test_two_process_finetuning_with_periodic_multiview_evaluation_matches_one_process(pretrained, tmp_path):
  root, _, _ = pretrained
  args = [
    '--config',
    'configs/finetune.py:tiny',
    f'--config.init_from={root / "two"}',
    '--config.data.num_workers=0',
    '--config.mesh.shape=(-1,1,1)',
    '--config.batch_size=8',
    '--config.total_steps=4',
    '--config.warmup_steps=1',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=2',
    '--config.finetune.eval_every_steps=2',
    '--config.finetune.eval_batch_size=6',
    '--config.async_checkpointing=False',
  ]
  two = run_two_processes('mvm_jax.finetune', args + ['--workdir', str(tmp_path / 'two')], tmp_path)
  one = run_reference('mvm_jax.finetune', args + ['--workdir', str(tmp_path / 'one')], tmp_path)
  assert_close(scalars(two[0], 'loss'), scalars(one, 'loss'))
  periodic = scalars(two[0], 'test/top1')
  assert list(periodic) == [2] and scalars(two[1], 'test/top1') == periodic  # all processes evaluate
  assert_close(periodic, scalars(one, 'test/top1'))
  results = [json.loads((tmp_path / d / 'results.json').read_text())['finetune'] for d in ('two', 'one')]
  assert results[0]['views_per_video'] == 6 and results[0]['num_test'] == 20  # 2 × 3 views, test_windows
  for key in ('top1', 'top5'):
    assert results[0][key] == pytest.approx(results[1][key])
  np.testing.assert_array_equal(results[0]['confusion'], results[1]['confusion'])


@pytest.mark.slow
def test_two_process_knn_features_match_one_process(pretrained, tmp_path):
  root, _, _ = pretrained
  args = [
    '--config',
    'configs/knn.py:tiny',
    f'--config.init_from={root / "two"}',
    '--config.data.num_workers=0',
    '--config.mesh.shape=(-1,1,1)',
    '--config.knn.train_views=1',  # augmented passes draw per shard position, as training data does
    '--config.knn.extract_batch_size=6',  # 20 records: shards of 10, the last step padded
  ]
  run_two_processes('mvm_jax.knn', args + ['--workdir', str(tmp_path / 'two')], tmp_path)
  run_reference('mvm_jax.knn', args + ['--workdir', str(tmp_path / 'one')], tmp_path)
  for split in ('train_windows', 'test_windows'):
    two, one = (np.load(tmp_path / d / f'features_{split}.npz') for d in ('two', 'one'))
    np.testing.assert_array_equal(two['index'], one['index'])
    np.testing.assert_array_equal(two['labels'], one['labels'])
    assert two['features'].shape[0] == 20
    np.testing.assert_allclose(two['features'], one['features'], rtol=1e-4, atol=1e-5)
  results = [json.loads((tmp_path / d / 'results.json').read_text())['knn'] for d in ('two', 'one')]
  assert results[0]['num_train'] == results[0]['num_test'] == 20
  assert results[0]['k'] == results[1]['k']  # top-1 / top-5 at every k
  np.testing.assert_array_equal(results[0]['confusion'], results[1]['confusion'])
