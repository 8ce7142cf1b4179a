"""Hyperparameter declarations: one table per method (and one for training) validates configs,
bounds study-spec ranges and builds search spaces.

A method declares each hyperparameter once — its type, valid range and default. The same table
validates a config (:func:`validate_config`), bounds the ranges a study spec may ask for and is
turned into an Optuna space by ``prunetune.search.space`` (scikit-learn's
``_parameter_constraints`` pattern), so validation and search cannot drift apart. Imports nothing heavy: the CLI builds its
options from these tables without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Float:
    """A real hyperparameter in ``[low, high]``; ``log`` means it is searched on a log scale."""

    low: float
    high: float
    default: float
    log: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"`low <= default <= high` must hold, but got {self}.")
        if self.log and self.low <= 0:
            raise ValueError(f"A log-scale range needs low > 0, but got {self}.")

    def check(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{field} must be a number, but got {value!r}.")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ValueError(f"{field} must be in [{self.low}, {self.high}], but got {value!r}.")
        return float(value)

    def invalid_values(self) -> list[Any]:
        return ["x", float("nan"), self.low - abs(self.low) - 1.0, self.high + abs(self.high) + 1.0]


@dataclass(frozen=True)
class Int:
    """An integer hyperparameter in ``[low, high]``."""

    low: int
    high: int
    default: int
    log: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"`low <= default <= high` must hold, but got {self}.")

    def check(self, field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} must be an integer, but got {value!r}.")
        if not self.low <= value <= self.high:
            raise ValueError(f"{field} must be in [{self.low}, {self.high}], but got {value!r}.")
        return int(value)

    def invalid_values(self) -> list[Any]:
        return [1.5, "x", self.low - 1, self.high + 1]


@dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter."""

    choices: tuple[Any, ...]
    default: Any
    help: str = ""

    def __post_init__(self) -> None:
        if self.default not in self.choices:
            raise ValueError(f"default must be one of the choices, but got {self}.")

    def check(self, field: str, value: Any) -> Any:
        if value not in self.choices or isinstance(value, bool) != isinstance(self.default, bool):
            raise ValueError(f"{field} must be one of {list(self.choices)}, but got {value!r}.")
        return value

    def invalid_values(self) -> list[Any]:
        return ["__not_a_choice__"]


@dataclass(frozen=True)
class Many:
    """A list of distinct values among ``choices`` (e.g. ``train.augment: [crop, flip]``); a
    spec gives it one value, it is not searched."""

    choices: tuple[Any, ...]
    default: tuple[Any, ...] = ()
    help: str = ""

    def check(self, field: str, value: Any) -> tuple[Any, ...]:
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(
                f"{field} must be a list of values among {list(self.choices)}, but got {value!r}."
            )
        for i, v in enumerate(value):
            if v not in self.choices:
                raise ValueError(
                    f"{field}[{i}] must be one of {list(self.choices)}, but got {v!r}."
                )
            if v in value[:i]:
                raise ValueError(f"{field} lists {v!r} twice, in {list(value)!r}.")
        return tuple(value)

    def invalid_values(self) -> list[Any]:
        return ["crop", ["__not_a_choice__"]]


Param = Float | Int | Choice | Many
HParamTable = Mapping[str, Param]


def validate_config(
    table: HParamTable, config: Mapping[str, Any], *, where: str = ""
) -> dict[str, Any]:
    """Check ``config`` against ``table`` and fill in defaults.

    Args:
        table: the method's hyperparameter table.
        config: user values; every key must be declared in ``table``.
        where: field path prefix for error messages, e.g. ``"method"``.

    Raises:
        ValueError: naming the field path and the bad value.
    """
    prefix = f"{where}." if where else ""
    unknown = sorted(set(config) - set(table))
    if unknown:
        raise ValueError(
            f"{prefix}{unknown[0]} is not a known hyperparameter; "
            f"expected one of {sorted(table)}, got {unknown[0]!r}."
        )
    return {
        name: (param.check(f"{prefix}{name}", config[name]) if name in config else param.default)
        for name, param in table.items()
    }


def check_range(param: Param, field: str, value: Any) -> tuple[Any, ...]:
    """Validate a study-spec range for ``param``: ``[low, high]`` within the table, or choices.

    Returns:
        ``(low, high)`` for numbers, the tuple of choices for categoricals, or ``(value,)`` for a
        fixed value.
    """
    if isinstance(param, Many):
        return (param.check(field, value),)
    if isinstance(param, Choice):
        if not isinstance(value, list):
            return (param.check(field, value),)
        if not value:
            raise ValueError(f"{field} must list at least one choice, but got {value!r}.")
        return tuple(param.check(f"{field}[{i}]", v) for i, v in enumerate(value))
    if not isinstance(value, list):
        return (param.check(field, value),)
    if len(value) != 2:
        raise ValueError(f"{field} must be a [low, high] range, but got {value!r}.")
    low = param.check(f"{field}[0]", value[0])
    high = param.check(f"{field}[1]", value[1])
    if low > high:
        raise ValueError(f"`low <= high` must hold in {field}, but got {value!r}.")
    return (low, high)


def describe(table: HParamTable) -> list[dict[str, Any]]:
    """Rows for ``--help``-style listings."""
    rows = []
    for name, p in table.items():
        if isinstance(p, Choice):
            rng = " | ".join(map(str, p.choices))
        elif isinstance(p, Many):
            rng = "list of " + " | ".join(map(str, p.choices))
        else:
            rng = f"[{p.low}, {p.high}]" + (" log" if p.log else "")
        rows.append({"name": name, "range": rng, "default": p.default, "help": p.help})
    return rows
