"""Cython hot-path kernels: they import nothing of the agent; each has an oracle in tests."""
