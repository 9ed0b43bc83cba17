"""Benchmarks: measured comparisons against a baseline run beside them (see README.md)."""
