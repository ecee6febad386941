"""A run's config: `schema` (fields and defaults, no JAX), `validation` (the whole-config
check) and `workdir` (what a rerun in a used workdir may change)."""
