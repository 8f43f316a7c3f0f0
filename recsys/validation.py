"""Settings checked from typed signatures: one shared step for models, the datamodule and the run.

A signature says what a setting may be with ``typing.Annotated`` constraints:

    def __init__(self, dim: Size = 64, reg: NonNegative = 0.1, reg_scaling: RegScaling = "frequency"): ...

and :func:`check_arguments` checks values against it before anything runs, with errors that name the key,
the value and what is allowed (``model.dim=0: must be >= 1``). A new model gets its checks from its own
signature, without a hand-kept list elsewhere.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class AtLeast:
    low: float
    strict: bool = False

    def check(self, value) -> str | None:
        ok = value > self.low if self.strict else value >= self.low
        return None if ok else f"must be {'>' if self.strict else '>='} {self.low:g}"


@dataclass(frozen=True)
class Below:
    high: float

    def check(self, value) -> str | None:
        return None if value < self.high else f"must be < {self.high:g}"


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", tuple(values))

    def check(self, value) -> str | None:
        return None if value in self.values else f"must be one of {list(self.values)}"


@dataclass(frozen=True)
class Regularizes:
    """Marks a hyperparameter as a regularizer (a prior's strength, a penalty's weight): what the generic tests
    weaken to let a model fit a target exactly, and what a search space should cover. It constrains nothing."""

    def check(self, value) -> None:
        return None


REGULARIZER = Regularizes()

Size = Annotated[int, AtLeast(1)]
NonNegative = Annotated[float, AtLeast(0)]
Reg = Annotated[float, AtLeast(0), REGULARIZER]  # a regularizer: ≥ 0
PositiveReg = Annotated[float, AtLeast(0, strict=True), REGULARIZER]  # a regularizer that must be > 0
Positive = Annotated[float, AtLeast(0, strict=True)]
Fraction = Annotated[float, AtLeast(0, strict=True), Below(1)]

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
          list: "a list", tuple: "a list"}


def _accepts(kind, value) -> bool:
    if kind is Any:
        return True
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(kind) or kind
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or origin is Mapping:
        return isinstance(value, Mapping)
    return isinstance(value, origin) if isinstance(origin, type) else True


def check(key: str, annotation, value) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``value`` fits ``annotation`` (type and constraints)."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    problems = []
    for option in options:
        if option is type(None):
            if value is None:
                return
            problems.append("null")
            continue
        kind, constraints = option, ()
        if typing.get_origin(option) is Annotated:
            kind, *constraints = typing.get_args(option)
        if not _accepts(kind, value):
            name = _NAMES.get(typing.get_origin(kind) or kind, getattr(kind, "__name__", str(kind)))
            problems.append(f"must be {name}")
            continue
        failed = [c.check(value) for c in constraints if c.check(value)]
        if not failed:
            return
        problems.append(" and ".join(failed))
    raise ValueError(f"{key}={value!r}: {' or '.join(problems)}")


def regularizers(func) -> tuple[str, ...]:
    """The parameters of ``func`` annotated as regularizers (:data:`Reg`, :data:`PositiveReg`, or any annotation
    carrying :data:`REGULARIZER`, ``Reg | None`` included), in signature order."""

    def marked(annotation) -> bool:
        if typing.get_origin(annotation) is Annotated:
            return any(isinstance(m, Regularizes) for m in annotation.__metadata__)
        return any(marked(a) for a in typing.get_args(annotation))

    return tuple(name for name, annotation in hints(func).items() if name != "return" and marked(annotation))


def hints(func) -> dict:
    """The parameter annotations of ``func`` with their constraints (``Annotated`` kept)."""
    return typing.get_type_hints(func, include_extras=True)


def check_arguments(func, values: Mapping, prefix: str, skip: tuple = ()) -> None:
    """Check every value whose parameter in ``func``'s signature is annotated; unknown keys are errors."""
    params = inspect.signature(func).parameters
    annotations = hints(func)
    for key, value in values.items():
        if key in skip or key.startswith("_"):
            continue
        if key not in params:
            known = [k for k in params if k != "self"]
            owner = func.__qualname__.split(".")[0]
            raise ValueError(f"{prefix}{key} is not a setting of {owner}; its settings are {known}")
        if key in annotations:
            check(f"{prefix}{key}", annotations[key], value)
