"""Old import paths. EMPAS 0.1 kept every module side by side (``empas.profiling``,
``empas.sensitivity``, ``empas.apply``, ...); they now live in one folder per
pipeline stage. Importing an old path still works: it gives a stand-in module whose
public names come from the new places (with a DeprecationWarning naming them); a name that is not there any more is an ImportError that names the
new modules."""

from __future__ import annotations

import importlib
import sys
import types
import warnings

__all__ = ["MOVED", "install"]

# old module -> the modules its public names now come from (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "empas.profiling": ("empas.profile", "empas.profile.checkpoint"),
    "empas.sensitivity": ("empas.profile.table",),
    "empas.synthetic": ("empas.profile.synthetic",),
    "empas.qformats": ("empas.quant.config",),
    "empas.packing": ("empas.quant.packing",),
    "empas.nn": ("empas.quant.nn",),
    "empas.apply": ("empas.quant.apply", "empas.quant.config"),
    "empas.checkpoint": ("empas.quant.checkpoint",),
    "empas.sizes": ("empas.util.sizes",),
    "empas.plotting": ("empas.search.plot",),
    "empas.config": ("empas.cli.config_files",),
}


class MovedModule(types.ModuleType):
    """Stands in for a module that moved: public names resolve to the new modules."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"moved to {', '.join(targets)}")
        self.__moved_to__ = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        targets = self.__moved_to__
        if not attr.startswith("_"):
            for t in targets:
                mod = importlib.import_module(t)
                if hasattr(mod, attr):
                    warnings.warn(
                        f"{self.__name__} has moved: import {attr} from {t} (or from empas)",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    return getattr(mod, attr)
        raise ImportError(
            f"{self.__name__}.{attr} is gone: {self.__name__} moved to {', '.join(targets)} "
            "(see the Layout section of the README)"
        )

    def __dir__(self):
        names: set[str] = set()
        for t in self.__moved_to__:
            names.update(n for n in dir(importlib.import_module(t)) if not n.startswith("_"))
        return sorted(names)


def install() -> None:
    """Registers the stand-ins (cheap: nothing is imported until a name is used)."""
    for old, targets in MOVED.items():
        if old not in sys.modules:
            sys.modules[old] = MovedModule(old, targets)
