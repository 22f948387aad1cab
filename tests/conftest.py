"""Test setup: 8 fake CPU devices (for sharding tests) and small shared configs."""

import os

# Must be set before JAX is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def micro_config():
  """A very small MAE-ST config (4×32×32 clips, 2-block ViT) on one device."""
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
  return c


@pytest.fixture
def config():
  return micro_config()
