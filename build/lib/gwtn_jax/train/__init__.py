"""The one generic train loop: state, optimizer, jitted sharded steps, eval, checkpoints, metrics."""
