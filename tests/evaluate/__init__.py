"""Tests of mvm_jax.evaluate."""
