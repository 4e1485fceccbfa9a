"""Measurements that print side-by-side ratios; run from the repository root as ``python -m bench.<name>``."""
