"""Tests of mvm_jax.train."""
