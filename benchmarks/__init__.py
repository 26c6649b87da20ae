"""Benchmarks, run by hand or with `make bench` (speed goals live here, never in tests).

  python -m benchmarks.pipeline --help
"""
