"""The algorithms this image holds, one package each; the rest of kmeans/ is the container.

An algorithm is found by its package's name (the setting SAGE_KMEANS_ALGORITHM, and
model.json's "algorithm"): kmeans.algorithms.<name> must define ALGORITHM, an
kmeans.algorithm.Algorithm. Adding one is adding its folder: nothing here lists them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported to list the names: the supervisor reads them at start
    from kmeans.algorithm import Algorithm

DEFAULT = "kmeans"


def available() -> list[str]:
    """The names of the algorithm packages beside this file, without importing them."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if module.ispkg)


@functools.cache
def named(name: object) -> Algorithm:
    """The algorithm called `name`; LookupError, saying which there are, for any other."""
    if not isinstance(name, str) or name not in available():
        raise LookupError(
            f"no algorithm named {name!r} in this image; it has {', '.join(available())}"
        )
    from kmeans.algorithm import Algorithm

    algorithm = importlib.import_module(f"{__name__}.{name}").ALGORITHM
    if not isinstance(algorithm, Algorithm) or algorithm.name != name:
        raise LookupError(f"kmeans/algorithms/{name}/ must define ALGORITHM, named {name!r}")
    return algorithm
