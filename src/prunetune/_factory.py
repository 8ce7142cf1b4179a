"""User factories: ``"package.module:callable"`` → the callable, and its ``params`` as search
dimensions.

A spec names a factory and the values of its parameters (``model: {factory: …, params: …}``,
``dataset: {factory: …, params: …}``). A value follows the spec's convention:

* a scalar is fixed: ``depth: 20``;
* ``[low, high]`` of two numbers is a range (two ints: an int range): ``width: [8, 32]``;
* ``{low: …, high: …, log: true}`` is a range on a log scale;
* any other list is a choice: ``activation: [relu, silu]``, ``depth: [8, 14, 20]``;
* ``{value: …}`` is a fixed value of any kind, e.g. a list: ``widths: {value: [300, 100]}``.

Every check names the spec field, the import path and the reason, so a bad factory fails when
the spec is validated, before anything is created. Imports nothing heavy.

Example:
    >>> from prunetune._factory import parse_params
    >>> dims = parse_params({"depth": [8, 14, 20], "width": [8, 32], "widths": {"value": [3]}},
    ...                     "model.params")
    >>> [d.kind for d in dims.values()]
    ['choice', 'int', 'fixed']
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Dim",
    "FactoryError",
    "accepts",
    "check_signature",
    "import_paths",
    "parse_params",
    "resolve",
]


class FactoryError(ValueError):
    """A factory cannot be resolved or called; the message names the field and the path."""


_HINT = (
    "prunetune looks in the spec file's folder, the working directory and the installed "
    "packages (on a Ray cluster: install the package there or ship it with --runtime-env)"
)


def resolve(path: Any, field: str) -> Callable[..., Any]:
    """The callable that ``path`` (``"package.module:callable"``, the attribute may be dotted)
    names.

    Raises:
        FactoryError: ``path`` is malformed, its module does not import, the attribute is
            missing or not callable — naming ``field`` and ``path``.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise FactoryError(
            f"{field}: must be an import path 'package.module:callable', got {path!r}"
        )
    mod_name, attr = path.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise FactoryError(
                f"{field}: cannot import {path!r}: no module named {e.name!r} ({_HINT})"
            ) from None
        raise FactoryError(
            f"{field}: importing module {mod_name!r} of {path!r} failed: ModuleNotFoundError: {e}"
        ) from None
    except Exception as e:  # a broken install (e.g. torchvision built for another torch)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FactoryError(
            f"{field}: importing module {mod_name!r} of {path!r} failed: "
            f"{type(e).__name__}: {reason}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FactoryError(
                f"{field}: {path!r}: module {mod_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise FactoryError(
            f"{field}: {path!r} is not callable (it is a {type(obj).__name__}); name a function "
            "or a class"
        )
    return obj


@contextlib.contextmanager
def import_paths(*folders: str | Path | None) -> Iterator[None]:
    """``folders`` appended to ``sys.path`` while the block runs (those already there stay)."""
    added = []
    for f in folders:
        if f is None:
            continue
        p = str(Path(f).resolve())
        if p not in sys.path:
            sys.path.append(p)
            added.append(p)
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


@dataclass(frozen=True)
class Dim:
    """One factory parameter: a fixed value, an int/float range, or a choice."""

    kind: Literal["fixed", "int", "float", "choice"]
    value: Any = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, name: str) -> Any:
        """The value of this dimension for an Optuna trial (``trial.suggest_*`` as ``name``)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    @property
    def extreme_values(self) -> tuple[Any, Any]:
        """(smallest, largest) value: range ends, the choices' min/max when they order."""
        if self.kind == "fixed":
            return self.value, self.value
        if self.kind == "choice":
            try:
                return min(self.choices), max(self.choices)
            except TypeError:
                return self.choices[0], self.choices[-1]
        cast = int if self.kind == "int" else float
        return cast(self.low), cast(self.high)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_SCALAR = (str, int, float, bool, type(None))


def _range(field: str, low: Any, high: Any, log: Any) -> Dim:
    if not (_number(low) and _number(high)):
        raise FactoryError(f"{field}: a range needs two numbers, got [{low!r}, {high!r}]")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise FactoryError(f"{field}: range ends must be finite, got [{low!r}, {high!r}]")
    if low > high:
        raise FactoryError(
            f"{field}: `low <= high` must hold in a range, got [{low!r}, {high!r}] "
            "(for a fixed list write {value: [...]})"
        )
    if not isinstance(log, bool):
        raise FactoryError(f"{field}.log: must be true or false, got {log!r}")
    if log and low <= 0:
        raise FactoryError(f"{field}: a log-scale range needs low > 0, got {low!r}")
    kind: Literal["int", "float"] = (
        "int" if isinstance(low, int) and isinstance(high, int) else "float"
    )
    return Dim(kind, low=low, high=high, log=log)


def parse_params(params: Any, field: str) -> dict[str, Dim]:
    """Spec ``params`` → one :class:`Dim` per parameter (see the module docstring).

    Raises:
        FactoryError: naming ``field.name`` and the bad value.
    """
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise FactoryError(f"{field}: must be a mapping of parameter values, got {params!r}")
    dims: dict[str, Dim] = {}
    for name, v in params.items():
        where = f"{field}.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            raise FactoryError(f"{field}: parameter names must be identifiers, got {name!r}")
        if isinstance(v, Mapping):
            keys = set(v)
            if keys == {"value"}:
                dims[name] = Dim("fixed", value=v["value"])
            elif {"low", "high"} <= keys <= {"low", "high", "log"}:
                dims[name] = _range(where, v["low"], v["high"], v.get("log", False))
            else:
                raise FactoryError(
                    f"{where}: a mapping must be {{value: ...}} (a fixed value) or "
                    f"{{low, high, log}} (a range), got {dict(v)!r}"
                )
        elif isinstance(v, list):
            if len(v) == 2 and all(_number(x) for x in v):
                dims[name] = _range(where, v[0], v[1], False)
            elif not v:
                raise FactoryError(f"{where}: a choice must list at least one value, got []")
            elif not all(isinstance(x, _SCALAR) for x in v):
                raise FactoryError(
                    f"{where}: choices must be scalars (numbers, strings, booleans), got {v!r} "
                    "(for a fixed list write {value: [...]})"
                )
            else:
                dims[name] = Dim("choice", choices=tuple(v))
        else:
            dims[name] = Dim("fixed", value=v)
    return dims


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: nothing to check against
        return None


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` has a parameter called ``name`` (by keyword; ``**kwargs`` does not count)."""
    sig = _signature(fn)
    return sig is not None and any(
        p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        for p in sig.parameters.values()
    )


def _numeric_annotation(fn: Callable[..., Any], param: inspect.Parameter) -> bool | None:
    """True/False when the parameter's annotation says numeric or not; None when unknown."""
    ann: Any = param.annotation
    if ann is inspect.Parameter.empty:
        return None
    if isinstance(ann, str):
        try:
            ann = typing.get_type_hints(fn).get(param.name, ann)
        except Exception:
            return None
        if isinstance(ann, str):
            return None
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    if any(a is Any for a in args):
        return None
    return any(isinstance(a, type) and issubclass(a, int | float) and a is not bool for a in args)


def check_signature(fn: Callable[..., Any], dims: Mapping[str, Dim], field: str, path: str) -> None:
    """Every parameter in ``dims`` is one ``fn`` takes by keyword, and ranges are on numeric
    parameters (by annotation, else by default value).

    Raises:
        FactoryError: naming ``field.name``, ``path`` and the reason.
    """
    sig = _signature(fn)
    if sig is None:
        return
    params = sig.parameters
    by_kw = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name, dim in dims.items():
        p = by_kw.get(name)
        if p is None:
            if var_kw:
                continue
            raise FactoryError(
                f"{field}.{name}: {path!r} takes no parameter {name!r}; it takes "
                f"{sorted(by_kw) or 'none'}"
            )
        if dim.kind in ("int", "float"):
            numeric = _numeric_annotation(fn, p)
            if numeric is None and p.default is not inspect.Parameter.empty:
                numeric = p.default is None or _number(p.default)
            if numeric is False:
                shown = (
                    p.annotation
                    if isinstance(p.annotation, str)
                    else getattr(p.annotation, "__name__", p.annotation)
                )
                what = (
                    f"annotated {shown}"
                    if p.annotation is not inspect.Parameter.empty
                    else f"default {p.default!r}"
                )
                raise FactoryError(
                    f"{field}.{name}: a range needs a numeric parameter, but {name!r} of "
                    f"{path!r} is not ({what}); list the choices instead"
                )
