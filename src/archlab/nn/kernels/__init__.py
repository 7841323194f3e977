"""Compute kernels shared by several mixers (no parameters, no config)."""
