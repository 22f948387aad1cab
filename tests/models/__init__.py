"""Tests of mvm_jax.models."""
