"""Benchmarks against peer tools (used by scripts/bench_*.py; the logic lives here)."""
