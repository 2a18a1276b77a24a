"""Benchmarks: ``python -m wmtp_jax.bench NAME [flags]`` prints one JSON object.

Each benchmark is a module ``wmtp_jax.bench.NAME`` with ``main(argv) -> dict``. Figures are
reported next to a reference measured in the same run (ratios), because shared machines are noisy.
"""
