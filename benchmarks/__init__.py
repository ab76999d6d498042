"""Benchmarks for the SPEC §8 performance targets; each module has a ``run(quick) -> dict`` and a ``main``."""
