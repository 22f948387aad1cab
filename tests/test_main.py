"""Command-line entry points: bad configs fail fast and clearly; SIGTERM saves and exits 0."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import MICRO_FLAGS, REPO, run_module


@pytest.mark.parametrize(
  'override,key',
  [
    ('--config.masking.ratio=1.5', 'masking.ratio'),
    ('--config.model.patch_size=7', 'model.patch_size'),
    ('--config.masking.kind=checkerboard', 'masking.kind'),
  ],
)
def test_bad_config_fails_before_compiling_naming_the_key(tmp_path, override, key):
  start = time.time()
  result = run_module(
    'mvm_jax.main', '--config', 'configs/mae_st.py:tiny', '--workdir', str(tmp_path), override, timeout=120
  )
  assert result.returncode != 0
  assert f'config.{key}' in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')
  assert time.time() - start < 60


@pytest.mark.parametrize(
  'module,args',
  [
    ('mvm_jax.tools.bench', ['--config', 'configs/mae_st.py:tiny']),
    ('mvm_jax.tools.aot_compile', ['--config', 'configs/mae_st.py:tiny', '--topology', 'cpu-1']),
    ('mvm_jax.finetune', ['--config', 'configs/finetune.py:tiny', '--workdir', '{workdir}']),
  ],
)
def test_the_tools_and_finetuning_validate_before_building_naming_the_key(tmp_path, module, args):
  """The library's builders take the config as valid: each entry point validates it, once."""
  start = time.time()
  args = [a.format(workdir=tmp_path) for a in args]
  result = run_module(module, *args, '--config.model.patch_size=7', timeout=120)
  assert result.returncode != 0 and 'config.model.patch_size' in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'checkpoints')
  assert time.time() - start < 60


def test_misspelt_key_is_rejected(tmp_path):
  result = run_module(
    'mvm_jax.main',
    '--config',
    'configs/mae_st.py:tiny',
    '--workdir',
    str(tmp_path),
    '--config.model.encoder.widht=3',
    timeout=120,
  )
  assert result.returncode != 0
  assert (
    "--config.model.encoder.widht=3: the config has no key 'widht'. Did you mean 'width'?" in result.stderr
  )
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]


def test_override_of_a_section_the_run_lacks_names_the_objectives_that_bring_it(tmp_path):
  """`config.hpm` rides only in runs that train loss_prediction: the error says so, no traceback."""
  result = run_module(
    'mvm_jax.knn',
    '--config',
    'configs/knn.py:tiny',
    '--workdir',
    str(tmp_path),
    '--config.hpm.ema_momentum=0.9',
    timeout=120,
  )
  assert result.returncode != 0
  assert "--config.hpm.ema_momentum=0.9: the config has no key 'hpm'" in result.stderr
  assert 'objectives loss_prediction' in result.stderr and 'Traceback' not in result.stderr


def test_unknown_preset_is_named(tmp_path):
  result = run_module(
    'mvm_jax.main', '--config', 'configs/mae_st.py:huge', '--workdir', str(tmp_path), timeout=120
  )
  assert result.returncode != 0 and "unknown preset 'huge'" in result.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='3')
  args = [
    sys.executable,
    '-m',
    'mvm_jax.main',
    '--config',
    'configs/mae_st.py:tiny',
    '--workdir',
    str(tmp_path),
    *MICRO_FLAGS,
    '--config.total_steps=100000',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=100000',
  ]
  proc = subprocess.Popen(
    args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  output = []
  deadline = time.time() + 300
  for line in proc.stdout:
    output.append(line)
    if '] loss=' in line or ' loss=' in line and 'grad_norm' in line:
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, ''.join(output[-20:])
  rest, _ = proc.communicate(timeout=300)
  log = ''.join(output) + rest
  assert proc.returncode == 0, log[-3000:]
  assert 'SIGTERM received' in log
  steps = [int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()]
  assert steps and max(steps) < 100000
