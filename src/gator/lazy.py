"""Lazy package exports: `from gator.train import pretrain` works, but importing `gator.train` costs nothing.

A package's `__init__.py` that imports its modules eagerly makes every `import gator.x.cli` pull in torch
(seconds), so `gator --help` would wait for torch. Instead the package calls

    lazy_exports(__name__, {"pretrain": "gator.train.loop", "TrainConfig": "gator.train.config", ...})

and each name is imported from its module on first use (PEP 562 module `__getattr__`). One detail keeps the
eager behaviour exactly: when a submodule has the same name as an export (`gator.eval.perplexity`, the
module, and `perplexity`, the function), importing the submodule must not replace the export on the
package, as Python's import system otherwise does.
"""

from __future__ import annotations

import importlib
import sys
import types


def lazy_exports(package: str, exports: dict[str, str]) -> None:
    """Make each `package.NAME` import `exports[NAME]` (a module path) and return its NAME, on first use."""
    module = sys.modules[package]

    class LazyPackage(types.ModuleType):
        def __getattr__(self, name: str):
            if name not in exports:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            value = getattr(importlib.import_module(exports[name]), name)
            types.ModuleType.__setattr__(self, name, value)
            return value

        def __setattr__(self, name: str, value) -> None:
            if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                return  # a submodule named like an export: the package keeps the export
            types.ModuleType.__setattr__(self, name, value)

        def __dir__(self):
            return sorted(set(super().__dir__()) | set(exports))

    module.__class__ = LazyPackage
