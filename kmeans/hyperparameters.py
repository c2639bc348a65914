"""Hyperparameters: parse what any SageMaker client sends, validate, name every mistake.

The container's part, used by every algorithm: an algorithm declares its settings once,
as a Table of Specs (kmeans/algorithms/kmeans/hyperparameters.py is one), and `parse`
reads hyperparameters.json against it. Values there are always strings, encoded
differently by each SDK ("3", "\\"k-means++\\"", "True", "true"). Each value is read with
json.loads and falls back to the raw string. A setting may have several names (the
built-in algorithm's and scikit-learn's); two names for one setting must agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


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


@dataclass(frozen=True)
class Domain:
    """The values a parser accepts, as SageMaker's CreateAlgorithm describes a
    hyperparameter (kmeans/algorithm_spec.py): an Integer or Continuous number from
    `minimum` up, a Categorical one of `values`, or FreeText. `accepts` says it in words,
    as the parser's error message does."""

    kind: Literal["Integer", "Continuous", "Categorical", "FreeText"]
    accepts: str
    minimum: float | None = None
    values: tuple[str, ...] = ()

    @property
    def tunable(self) -> bool:
        return self.kind != "FreeText"  # the tuner searches ranges and categories only


@dataclass(frozen=True)
class Parser:
    """Reads one hyperparameter's value (`read(name, raw)`), and says what it accepts."""

    read: Callable[[str, Any], Any]
    domain: Domain

    def __call__(self, name: str, raw: Any) -> Any:
        return self.read(name, raw)


def integer(minimum: int) -> Parser:
    domain = Domain("Integer", f"an integer ≥ {minimum}", minimum)

    def parse(name: str, raw: Any) -> int:
        value = _decode(raw)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise HyperparameterError(f"{name} must be {domain.accepts}, got {_shown(raw)}")
        return value

    return Parser(parse, domain)


def number(minimum: float) -> Parser:
    domain = Domain("Continuous", f"a number ≥ {minimum:g}", minimum)

    def parse(name: str, raw: Any) -> float:
        value = _decode(raw)
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise HyperparameterError(f"{name} must be {domain.accepts}, got {_shown(raw)}")
        return float(value)

    return Parser(parse, domain)


def choice(options: dict[str, str]) -> Parser:
    accepted = ", ".join(repr(option) for option in options)
    domain = Domain("Categorical", f"one of {accepted}", values=tuple(options))

    def parse(name: str, raw: Any) -> str:
        value = _decode(raw)
        if not isinstance(value, str) or value.lower() not in options:
            raise HyperparameterError(f"{name} must be {domain.accepts}, got {_shown(raw)}")
        return options[value.lower()]

    return Parser(parse, domain)


def _boolean(name: str, raw: Any) -> bool:
    value = _decode(raw)
    if isinstance(value, str):
        value = {"true": True, "false": False}.get(value.lower(), value)
    if value in (0, 1) and not isinstance(value, str):
        return bool(value)
    raise HyperparameterError(f"{name} must be {boolean.domain.accepts}, got {_shown(raw)}")


# The values: JSON's spelling (SDK v3's json.dumps) and Python's (SDK v2's str).
boolean = Parser(
    _boolean, Domain("Categorical", "true or false", values=("true", "false", "True", "False"))
)


def integer_or_auto(minimum: int) -> Parser:
    whole = integer(minimum)
    # FreeText: a Categorical's values cannot hold every integer, and "auto" is no Integer.
    domain = Domain("FreeText", f"'auto' or {whole.domain.accepts}", minimum)

    def parse(name: str, raw: Any) -> int | str:
        if str(_decode(raw)).lower() == "auto":
            return "auto"
        try:
            return whole(name, raw)
        except HyperparameterError:
            message = f"{name} must be {domain.accepts}, got {_shown(raw)}"
            raise HyperparameterError(message) from None

    return Parser(parse, domain)


def names(options: tuple[str, ...]) -> Parser:
    """A list drawn from `options`: JSON, "a,b", Python's str() of a list, or one name."""
    domain = Domain("FreeText", f"a list drawn from {list(options)} (or one name)")

    def parse(name: str, raw: Any) -> tuple[str, ...]:
        value = _decode(raw)
        if isinstance(value, str):
            value = [part.strip(" '\"") for part in value.strip("[]").split(",")]
        if not isinstance(value, list) or not value or not all(v in options for v in value):
            raise HyperparameterError(f"{name} must be {domain.accepts}, got {_shown(raw)}")
        return tuple(dict.fromkeys(value))

    return Parser(parse, domain)


@dataclass(frozen=True)
class Spec:
    """One setting: its names (canonical first; the others are aliases that must agree
    with it), how its value is read and checked, a note logged when it is given, for a
    required setting what it is (said when it is missing), and whether the tuner may
    search it (`tunable`: a Parser of an Integer, Continuous or Categorical domain). Its
    default is its Settings field's."""

    names: tuple[str, ...]
    parse: Parser | Callable[[str, Any], Any]
    note: str = ""
    required: str = ""
    tunable: bool = False

    def __post_init__(self) -> None:
        if self.tunable and not self.domain.tunable:
            raise TypeError(f"{self.names[0]}: a {self.domain.kind} setting cannot be tunable")

    @property
    def domain(self) -> Domain:
        """What the parser accepts (FreeText, said by its errors, for a plain function)."""
        if isinstance(self.parse, Parser):
            return self.parse.domain
        return Domain("FreeText", "what its error message says")


@dataclass(frozen=True)
class Settings:
    """Validated settings for one training job: an algorithm subclasses this frozen
    dataclass with one field per Spec (same key), the field's default the setting's."""

    given: dict[str, Any] = field(default_factory=dict, compare=False, kw_only=True)
    notes: tuple[str, ...] = field(default=(), compare=False, kw_only=True)

    def as_dict(self) -> dict[str, Any]:
        """The settings in force, for model.json and checkpoints."""
        values = {}
        for key in dataclasses.fields(self):
            if key.name not in ("given", "notes"):
                value = getattr(self, key.name)
                values[key.name] = list(value) if isinstance(value, tuple) else value
        return values


@dataclass(frozen=True)
class Table:
    """An algorithm's hyperparameters: the Settings class they fill, a Spec per field
    (keyed by field name), and names accepted and ignored (the built-in algorithm's that
    mean nothing here)."""

    settings: type[Settings]
    specs: dict[str, Spec]
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self.settings)} - {"given", "notes"}
        missing = sorted(fields - set(self.specs))
        if missing:
            raise TypeError(f"{self.settings.__name__} fields without a Spec: {missing}")

    @property
    def known(self) -> dict[str, str]:
        """Every accepted name -> the key of its setting."""
        return {name: key for key, spec in self.specs.items() for name in spec.names}

    @property
    def defaults(self) -> dict[str, Any]:
        """The key of every setting that has a default -> that default."""
        return {
            f.name: f.default
            for f in dataclasses.fields(self.settings)
            if f.name in self.specs and f.default is not dataclasses.MISSING
        }

    @property
    def ignored_names(self) -> tuple[str, ...]:
        """The names accepted and ignored, but for the platform's `sagemaker_*` ones."""
        return (*_IGNORED, *self.ignored)

    def parse(self, raw: Any) -> Settings:
        return parse(raw, self)


_IGNORED = ("_tuning_objective_metric",)  # the tuner's own entry


def parse(raw: Any, table: Table) -> Settings:
    """Validate the decoded content of hyperparameters.json against `table`."""
    if not isinstance(raw, dict):
        raise HyperparameterError(
            f"hyperparameters.json must hold a JSON object, got {type(raw).__name__}"
        )
    known = table.known
    chosen: dict[str, tuple[str, Any]] = {}
    notes = []
    for name, value in raw.items():
        if name.startswith("sagemaker_") or name in _IGNORED or name in table.ignored:
            continue
        key = known.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise HyperparameterError(f"unknown hyperparameter {name!r}{hint}")
        spec = table.specs[key]
        parsed = spec.parse(name, value)
        if key in chosen and chosen[key][1] != parsed:
            other = chosen[key][0]
            raise HyperparameterError(
                f"{other} and {name} name the same setting but disagree: "
                f"{_shown(raw[other])} vs {_shown(value)}"
            )
        chosen[key] = (name, parsed)
        if spec.note:
            notes.append(f"{name}={parsed}: {spec.note}")
    for key, spec in table.specs.items():
        if spec.required and key not in chosen:
            raise HyperparameterError(f"{key} is required: {spec.required}")
    fields = {f.name for f in dataclasses.fields(table.settings)}
    values = {key: parsed for key, (_, parsed) in chosen.items() if key in fields}
    given = {name: value for name, value in raw.items() if name in known}
    return table.settings(**values, given=given, notes=tuple(notes))
