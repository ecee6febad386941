"""Mesh, logical-axis rules, shardings, multi-host start."""
