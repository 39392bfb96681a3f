"""Benchmarks: `make bench` runs each; every one prints one JSON line last (see _report.py)."""
