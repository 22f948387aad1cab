"""Training: state, step, loop, partitioning, checkpointing, optimizer."""
