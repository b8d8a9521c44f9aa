"""mtlbench: multi-task learning benchmarks for classify-and-regress problems, and FastCAR."""

__version__ = "0.1.0"
