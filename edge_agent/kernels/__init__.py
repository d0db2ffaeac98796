"""Cython hot-path kernels: they import nothing of the agent; each has an oracle in tests.

A kernel that was never compiled (its `.pyx` is here, its extension module is not) fails to
import with an ImportError that says how to build it: there is no slow pure-Python fallback.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from pathlib import Path


class MissingKernelFinder(MetaPathFinder):
    """Last on sys.meta_path, so asked only once every real finder has failed."""

    def __init__(self, package: str, directory: Path):
        self.package = package
        self.directory = directory

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent == self.package and (self.directory / f"{name}.pyx").exists():
            raise ImportError(
                f"{fullname} is not compiled: run `make test` or `pip install -e .`",
                name=fullname,
            )
        return None


if not any(isinstance(f, MissingKernelFinder) for f in sys.meta_path):
    sys.meta_path.append(MissingKernelFinder(__name__, Path(__file__).parent))
