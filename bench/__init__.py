"""Benchmarks of ctrguard: ``python -m bench.run`` (``make bench``). See ``BENCHMARKS.md``."""
