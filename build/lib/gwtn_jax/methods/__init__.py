"""Recipes: what is trained, the loss, what is frozen (one file per method)."""
