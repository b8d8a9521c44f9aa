"""MTL architectures and weightings. Each method is one module that registers itself in
:mod:`mtlbench.methods.registry`; importing this package imports every module, so the registries are complete.
LibMTL 1.1.5's own classes are registered in ``architectures`` and ``weightings``."""

import importlib
import pkgutil

from mtlbench.methods import registry  # noqa: F401  (first: the method modules register into it)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
