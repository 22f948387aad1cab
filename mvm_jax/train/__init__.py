"""Training: state, step, loop, checkpointing, optimizer (sharding rules: mvm_jax.sharding)."""
