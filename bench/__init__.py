"""Benchmarks for livemigrate: `make bench` (full) and `python -m bench.run --size smoke` (the test suite's run).

Why: the engine's speed claims must be numbers measured on the machine at hand,
each against a baseline taken in the same run on the same servers (a 2-core
machine shared with other work is noisy, a ratio much less so).  Nothing here
is imported by the engine, the flows or the tests' fixtures.
"""
