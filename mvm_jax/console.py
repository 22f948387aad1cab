"""Console logging shared by the entry points."""

from __future__ import annotations

from absl import logging


class _QuietLibraries:
  """Drop INFO chatter of checkpointing and data internals; warnings and errors still show."""

  NOISY = ('/orbax/', '/etils/', '/grain/')

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  """Keep the console to our progress lines: hide INFO logs of orbax, etils and grain."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def log_runtime() -> None:
  """One line: JAX version, devices, this process's place among the hosts."""
  import jax

  logging.info(
    'JAX %s on %d %s device(s), process %d of %d.',
    jax.__version__,
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_index(),
    jax.process_count(),
  )
