"""Tests of mvm_jax.masking."""
