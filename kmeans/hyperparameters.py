"""Hyperparameters: parse what any SageMaker client sends, validate, name every mistake.

Values in hyperparameters.json are always strings, encoded differently by each SDK
("3", "\\"k-means++\\"", "True", "true"). Each value is read with json.loads and falls back
to the raw string. Both the built-in K-Means names and the scikit-learn names are
accepted; two names for one setting must agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HyperparameterError(ValueError):
    """A hyperparameter is missing, unknown or out of range."""


def _decode(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip()


def _shown(raw: Any) -> str:
    return repr(raw) if isinstance(raw, str) else repr(json.dumps(raw))


def _integer(minimum: int) -> Callable[[str, Any], int]:
    def parse(name: str, raw: Any) -> int:
        value = _decode(raw)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise HyperparameterError(f"{name} must be an integer ≥ {minimum}, got {_shown(raw)}")
        return value

    return parse


def _number(minimum: float) -> Callable[[str, Any], float]:
    def parse(name: str, raw: Any) -> float:
        value = _decode(raw)
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise HyperparameterError(f"{name} must be a number ≥ {minimum:g}, got {_shown(raw)}")
        return float(value)

    return parse


def _choice(options: dict[str, str]) -> Callable[[str, Any], str]:
    accepted = ", ".join(repr(option) for option in options)

    def parse(name: str, raw: Any) -> str:
        value = _decode(raw)
        if not isinstance(value, str) or value.lower() not in options:
            raise HyperparameterError(f"{name} must be one of {accepted}, got {_shown(raw)}")
        return options[value.lower()]

    return parse


def _boolean(name: str, raw: Any) -> bool:
    value = _decode(raw)
    if isinstance(value, str):
        value = {"true": True, "false": False}.get(value.lower(), value)
    if value in (0, 1) and not isinstance(value, str):
        return bool(value)
    raise HyperparameterError(f"{name} must be true or false, got {_shown(raw)}")


def _integer_or_auto(minimum: int) -> Callable[[str, Any], int | str]:
    integer = _integer(minimum)

    def parse(name: str, raw: Any) -> int | str:
        if str(_decode(raw)).lower() == "auto":
            return "auto"
        try:
            return integer(name, raw)
        except HyperparameterError:
            message = f"{name} must be 'auto' or an integer ≥ {minimum}, got {_shown(raw)}"
            raise HyperparameterError(message) from None

    return parse


METRICS = ("msd", "ssd")


def _metrics(name: str, raw: Any) -> tuple[str, ...]:
    value = _decode(raw)
    if isinstance(value, str):  # "msd", "msd,ssd" or Python's str() of a list
        value = [part.strip(" '\"") for part in value.strip("[]").split(",")]
    if not isinstance(value, list) or not value or not all(m in METRICS for m in value):
        raise HyperparameterError(
            f"{name} must be a list drawn from {list(METRICS)} (or one name), got {_shown(raw)}"
        )
    return tuple(dict.fromkeys(value))


_INIT = {"kmeans++": "k-means++", "k-means++": "k-means++", "random": "random"}


@dataclass(frozen=True)
class _Spec:
    names: tuple[str, ...]
    parse: Callable[[str, Any], Any]
    default: Any = None
    note: str = ""


# Canonical name first; the others are aliases that must agree with it.
SPECS: dict[str, _Spec] = {
    "k": _Spec(("k", "n_clusters"), _integer(2)),
    "feature_dim": _Spec(("feature_dim",), _integer(1)),
    "init": _Spec(("init_method", "init"), _choice(_INIT), "k-means++"),
    "max_iter": _Spec(("local_lloyd_max_iter", "max_iter"), _integer(1), 300),
    "tol": _Spec(("local_lloyd_tol", "tol"), _number(0.0), 1e-4),
    "n_init": _Spec(("local_lloyd_num_trials", "n_init"), _integer_or_auto(1), "auto"),
    "algorithm": _Spec(("algorithm",), _choice({"lloyd": "lloyd", "elkan": "elkan"}), "lloyd"),
    "seed": _Spec(("random_state", "seed"), _integer(0), 0),
    "mini_batch_size": _Spec(("mini_batch_size",), _integer(1)),
    "epochs": _Spec(("epochs",), _integer(1), 1),
    "eval_metrics": _Spec(("eval_metrics",), _metrics, ("msd",)),
    "standardize": _Spec(("standardize",), _boolean, False),
    # Accepted so that jobs written for the built-in algorithm run unchanged.
    "local_lloyd_init_method": _Spec(
        ("local_lloyd_init_method",), _choice(_INIT), note="built-in only; no effect here"
    ),
    "extra_center_factor": _Spec(
        ("extra_center_factor",), _integer_or_auto(1), note="built-in only; no effect here"
    ),
    "half_life_time_size": _Spec(
        ("half_life_time_size",), _integer(0), note="built-in only; no effect here"
    ),
}
_IGNORED = ("force_dense", "_tuning_objective_metric")
_KNOWN = {name: key for key, spec in SPECS.items() for name in spec.names}


@dataclass(frozen=True)
class Hyperparameters:
    """Validated settings for one training job."""

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
    given: dict[str, Any] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The settings in force, for model.json and checkpoints."""
        values = {key: getattr(self, key) for key in SPECS if hasattr(self, key)}
        return values | {"eval_metrics": list(self.eval_metrics)}


def parse(raw: Any) -> Hyperparameters:
    """Validate the decoded content of hyperparameters.json."""
    if not isinstance(raw, dict):
        raise HyperparameterError(
            f"hyperparameters.json must hold a JSON object, got {type(raw).__name__}"
        )
    chosen: dict[str, tuple[str, Any]] = {}
    notes = []
    for name, value in raw.items():
        if name.startswith("sagemaker_") or name in _IGNORED:
            continue
        key = _KNOWN.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(_KNOWN), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(_KNOWN)}"
            raise HyperparameterError(f"unknown hyperparameter {name!r}{hint}")
        parsed = SPECS[key].parse(name, value)
        if key in chosen and chosen[key][1] != parsed:
            other = chosen[key][0]
            raise HyperparameterError(
                f"{other} and {name} name the same setting but disagree: "
                f"{_shown(raw[other])} vs {_shown(value)}"
            )
        chosen[key] = (name, parsed)
        if SPECS[key].note:
            notes.append(f"{name}={parsed}: {SPECS[key].note}")
    if "k" not in chosen:
        raise HyperparameterError("k is required: the number of clusters, an integer ≥ 2")
    fields = {f.name for f in dataclasses.fields(Hyperparameters)}
    values = {key: parsed for key, (_, parsed) in chosen.items() if key in fields}
    given = {name: value for name, value in raw.items() if name in _KNOWN}
    return Hyperparameters(**values, given=given, notes=tuple(notes))
