"""Benchmarks: each runs this project and its baseline side by side and prints the ratio."""
