"""K-Means's hyperparameters: one table, read by the container's kmeans/hyperparameters.py.

Both the built-in K-Means names and the scikit-learn names are accepted (canonical name
first in each Spec; the others are aliases that must agree with it).
"""

from __future__ import annotations

from dataclasses import dataclass

from kmeans.hyperparameters import (
    Settings,
    Spec,
    Table,
    boolean,
    choice,
    integer,
    integer_or_auto,
    names,
    number,
)

METRICS = ("msd", "ssd")
_INIT = {"kmeans++": "k-means++", "k-means++": "k-means++", "random": "random"}


@dataclass(frozen=True)
class Hyperparameters(Settings):
    """Validated settings for one K-Means training job."""

    k: int
    feature_dim: int | None = None
    init: str = "k-means++"
    max_iter: int = 300
    tol: float = 1e-4
    n_init: int | str = "auto"
    algorithm: str = "lloyd"
    seed: int = 0
    mini_batch_size: int | None = None
    epochs: int = 1
    eval_metrics: tuple[str, ...] = ("msd",)
    standardize: bool = False
    local_lloyd_init_method: str = "k-means++"
    extra_center_factor: int | str = 1
    half_life_time_size: int = 0


# The built-in's streaming settings act in mini-batch and Pipe mode (extra_centres.py);
# full-batch Lloyd runs on the rows themselves and has no K centres to reduce.
MINI_BATCH_ONLY = "takes effect in mini-batch and Pipe mode only; no effect in full-batch training"
SEEDS_REDUCTION = (
    "seeds the local Lloyd step that reduces the extra centres to k in mini-batch and Pipe "
    "mode; no effect in full-batch training"
)

TABLE = Table(
    Hyperparameters,
    {
        "k": Spec(
            ("k", "n_clusters"),
            integer(2),
            required="the number of clusters, an integer ≥ 2",
            tunable=True,
        ),
        "feature_dim": Spec(("feature_dim",), integer(1)),
        "init": Spec(("init_method", "init"), choice(_INIT), tunable=True),
        "max_iter": Spec(("local_lloyd_max_iter", "max_iter"), integer(1), tunable=True),
        "tol": Spec(("local_lloyd_tol", "tol"), number(0.0), tunable=True),
        "n_init": Spec(("local_lloyd_num_trials", "n_init"), integer_or_auto(1)),
        "algorithm": Spec(("algorithm",), choice({"lloyd": "lloyd", "elkan": "elkan"})),
        "seed": Spec(("random_state", "seed"), integer(0)),
        "mini_batch_size": Spec(("mini_batch_size",), integer(1), tunable=True),
        "epochs": Spec(("epochs",), integer(1), tunable=True),
        "eval_metrics": Spec(("eval_metrics",), names(METRICS)),
        "standardize": Spec(("standardize",), boolean),
        # The built-in algorithm's streaming settings (extra_centres.py).
        "local_lloyd_init_method": Spec(
            ("local_lloyd_init_method",), choice(_INIT), note=SEEDS_REDUCTION
        ),
        "extra_center_factor": Spec(
            ("extra_center_factor",), integer_or_auto(1), note=MINI_BATCH_ONLY
        ),
        "half_life_time_size": Spec(("half_life_time_size",), integer(0), note=MINI_BATCH_ONLY),
    },
    ignored=("force_dense",),
)


def parse(raw: object) -> Hyperparameters:
    """Validate the decoded content of hyperparameters.json."""
    return TABLE.parse(raw)  # type: ignore[return-value]
