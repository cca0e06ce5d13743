"""Helpers for tests and benchmarks: random-weight GGUF models and tensors (no reference packages needed)."""
