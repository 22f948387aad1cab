"""Tests of mvm_jax.export."""
