"""The packages' names before 0.2 (sglang_plugin, vllm_plugin, npu), importable for one release.

Each old name's package (compat/<old>/__init__.py) is one call to `forward`: the old name and
every module under it resolve to the very module objects of the new name, so a process that
uses both names still holds one copy of each module and its state (registries, locks). The
warning is a FutureWarning, which Python shows by default: the old names reach us through
users' environment variables and command-line flags, where a DeprecationWarning stays hidden.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings


class _Forward(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `old.x.y` as the already importable `new.x.y`."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(self.old + "."):
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        module = importlib.import_module(self.new + spec.name[len(self.old) :])
        spec.loader_state = module.__spec__  # the import system overwrites __spec__; exec_module puts it back
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = module.__spec__.loader_state


def forward(old: str, new: str):
    """Make the package `old` (being imported) an alias of `new`, warning once per process."""
    warnings.warn(f"the package {old!r} is now named {new!r}; {old!r} goes away in the next release", FutureWarning, stacklevel=3)
    module = importlib.import_module(new)
    if not any(isinstance(f, _Forward) and f.old == old for f in sys.meta_path):
        sys.meta_path.insert(0, _Forward(old, new))
    sys.modules[old] = module
    return module
