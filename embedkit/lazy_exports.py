"""A package's public names imported on first use (PEP 562 module `__getattr__`), so importing the package stays
cheap and loads none of the modules a caller does not use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The `__getattr__` of package `package`: name -> the attribute of the module `names[name]`, imported on
    first use and kept in `namespace` (the package's globals) so later lookups skip this function."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
