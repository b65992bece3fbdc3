"""Benchmarks are run with ``benchmarks/run.py``, never collected by pytest."""

collect_ignore_glob = ["*"]
