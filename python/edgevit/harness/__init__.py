"""Harnesses: accuracy-and-latency measurement of eager models and artifacts."""
