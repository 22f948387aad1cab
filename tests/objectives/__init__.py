"""Tests of mvm_jax.objectives."""
