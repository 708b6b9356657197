"""Benchmark scripts (run by hand, never timed assertions in tests)."""
