"""Sweeps: TOML specs, the grid of cells, executors."""
