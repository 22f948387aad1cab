"""Tests of mvm_jax.methods: each method through the training step."""
