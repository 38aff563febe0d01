"""Benchmarks: each prints its figures (never asserts on time)."""
