"""Test setup: 8 fake CPU devices (for sharding tests), one compilation cache per run, and small
shared configs."""

import os
import shutil
import tempfile

# Must be set before JAX is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# One persistent compilation cache for the whole run, fresh each run (removed at its end): the
# tests compile the same small steps many times over (a run and its resume, one device and a
# mesh, subprocesses of `main`), and each compile of a second or more is then paid once. Set
# here, before the xdist workers start, so that they and their subprocesses share it.
# Only the process that made it (the controller) holds its path here, and removes it.
OWN_JAX_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  OWN_JAX_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='mvm_jax_test_jax_cache_')

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def micro_config():
  """A very small MAE-ST config (4×32×32 clips, 2-block ViT) on one device."""
  import ml_collections

  from configs import mae_st

  c = mae_st.get_config('tiny')
  c.data.update(num_frames=4, crop_size=32, sampling_rate=2, num_workers=0, repeated_sampling=2)
  c.model.update(patch_size=8, pred_t_dim=2)
  c.model.encoder.update(width=32, depth=2, num_heads=2)
  c.model.decoder.update(width=32, depth=1, num_heads=2)
  c.batch_size = 8
  c.total_steps, c.warmup_steps = 6, 2
  c.mesh.shape = (1, 1, 1)
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.image_every_steps = 100
  c.async_checkpointing = False
  c.evaluators = ml_collections.ConfigDict()  # none (the tiny preset's: tests/evaluate/test_evaluators.py)
  return c


# The same micro config as command-line overrides of configs/mae_st.py:tiny.
MICRO_FLAGS = [
  '--config.data.num_frames=4',
  '--config.data.crop_size=32',
  '--config.data.sampling_rate=2',
  '--config.data.num_workers=0',
  '--config.data.repeated_sampling=2',
  '--config.model.patch_size=8',
  '--config.model.pred_t_dim=2',
  '--config.model.encoder.width=32',
  '--config.model.encoder.depth=2',
  '--config.model.encoder.num_heads=2',
  '--config.model.decoder.width=32',
  '--config.model.decoder.depth=1',
  '--config.model.decoder.num_heads=2',
  '--config.batch_size=8',
  '--config.mesh.shape=(1,1,1)',
  '--config.evaluators={}',
]


def run_module(module, *args, timeout=600, **kwargs):
  """Run `python -m module args` from the repo root with 1 CPU device; returns CompletedProcess."""
  import subprocess

  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    **kwargs,
  )


@pytest.fixture
def config():
  return micro_config()


def tiny_preset(config_module, total_steps: int):
  """A config file's `tiny` preset shortened to `total_steps`, in-process data, synchronous checkpoints
  (the end-to-end tests)."""
  c = config_module.get_config('tiny')
  c.total_steps = total_steps
  c.data.num_workers = 0
  c.async_checkpointing = False
  return c


def pytest_collection_modifyitems(config, items):
  """Longest modules first: end-to-end modules (all tests slow), then modules with
  some slow tests, then the rest. With `pytest -n 2 --dist loadfile` (the README's
  command) the two workers then finish together instead of one waiting on a long tail."""
  slow, fast = set(), set()
  for item in items:
    (slow if item.get_closest_marker('slow') else fast).add(item.path)
  rank = lambda item: 0 if item.path not in fast else 1 if item.path in slow else 2
  items.sort(key=rank)  # stable: the order within a module is kept


def pytest_sessionfinish(session):
  """The run's compilation cache goes with it (on the controller, once the workers are done)."""
  if OWN_JAX_CACHE:
    shutil.rmtree(OWN_JAX_CACHE, ignore_errors=True)
