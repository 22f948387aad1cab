"""Tests of mvm_jax.data."""
