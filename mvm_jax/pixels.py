"""Pixel normalisation on the device: the loader emits uint8 clips; jitted steps normalise them.

Importable without TensorFlow, Grain or PyAV (only jax/numpy), so the benchmark path stays bare.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def normalize(x, mean: Sequence[float], std: Sequence[float]):
  """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std``, in the very arithmetic of the host's
  :func:`mvm_jax.data.transforms.normalize` (so both give the same float32 values). Anything not
  uint8 (already normalised pixels, token ids) is returned unchanged."""
  if x.dtype != jnp.uint8:
    return x
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  return x.astype(jnp.float32) * scale - (mean / std).astype(np.float32)
