"""qcomp passes: each module in this package defines one pass and registers it by name.

Importing the package imports every module in it, so a new pass file registers itself.
"""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
