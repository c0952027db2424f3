"""Benchmarks of the core against diffusers and the engines (README, bench/RESULTS.md).

Each script runs as `python bench/NAME.py ...` or `python -m bench.NAME ...`; their timers live
in `bench.timing`, and they observe the core through its probes (helios_backends.probes).
"""
