"""A pytest plugin (`-p import_faults`) that makes named modules absent or broken in this process,
as a runner without an optional dependency, or with a broken install of it, would have them.

TC_TEST_HIDE=a,b: `importlib.util.find_spec` finds none of them (not installed).
TC_TEST_BREAK=x.y: the module is found, and importing it raises ImportError (installed, broken).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys


def _names(variable: str) -> set[str]:
    return {n for n in os.environ.get(variable, "").split(",") if n}


class _Broken(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(f"planted: {module.__name__} is broken (tests/import_faults.py)")


class _Hiding(importlib.abc.MetaPathFinder):
    """Wraps one of sys.meta_path's finders: the hidden modules are not there to find."""

    def __init__(self, inner, hidden: set[str]) -> None:
        self.inner, self.hidden = inner, hidden

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.hidden or not hasattr(self.inner, "find_spec"):
            return None
        return self.inner.find_spec(name, path, target)

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()

    def find_distributions(self, *args, **kwargs):  # importlib.metadata (pytest's entry points) asks this
        return getattr(self.inner, "find_distributions", lambda *a, **k: ())(*args, **kwargs)


class _Breaking(importlib.abc.MetaPathFinder):
    def __init__(self, broken: set[str]) -> None:
        self.broken = broken

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, _Broken()) if name in self.broken else None


_hidden, _broken = _names("TC_TEST_HIDE"), _names("TC_TEST_BREAK")
for _name in list(sys.modules):
    if _name.split(".")[0] in _hidden or _name in _broken:
        del sys.modules[_name]
if _hidden:
    sys.meta_path[:] = [_Hiding(f, _hidden) for f in sys.meta_path]
if _broken:
    sys.meta_path.insert(0, _Breaking(_broken))
