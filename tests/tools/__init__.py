"""Tests of mvm_jax.tools."""
