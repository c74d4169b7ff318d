"""Type and range checks derived from the config dataclasses' own annotations.

Every config dataclass calls `check_fields(self)` first in `__post_init__`: each field's value is checked
against its declared type (bool is true/false only, int is not bool or 2.5, float is finite, `Literal`
choices, optionals, unions, tuples, nested dataclasses) and against the bounds written beside the field
as `Annotated[int, AtLeast(1)]`. Nothing here keeps a list of fields: a new field is checked by being
declared. Errors are `FieldError`s that carry the key, the value and what was expected, so that the
composer (`gemkr_lab.config.experiment`) can name the full key and the preset or override it came from.
"""

import dataclasses
import math
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class FieldError(ValueError):
    """A field whose value does not fit its declaration."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key} = {value!r}: expected {expected}")

    def under(self, section: str) -> "FieldError":
        """The same error with its key prefixed by the section that holds it."""
        return FieldError(f"{section}.{self.key}", self.value, self.expected)


@dataclass(frozen=True)
class Bounds:
    """Bounds of a number, written beside a field: `Annotated[float, Bounds(ge=0, le=1)]`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, v: float) -> bool:
        """Whether `v` lies within the bounds."""
        return not (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        )

    def describe(self) -> str:
        """E.g. '>= 1', '> 0 and <= 1'."""
        pairs = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {_num(b)}" for op, b in pairs if b is not None)


def AtLeast(n: float) -> Bounds:
    """`>= n`."""
    return Bounds(ge=n)


POSITIVE = Bounds(gt=0)
PROBABILITY = Bounds(ge=0, le=1)


class PrepareTime:
    """Marks a field that `prepare` consumes (`Annotated[int, PREPARE_TIME]`).

    Prepared data is stamped with these fields, and a run refuses data whose stamp differs.
    """

    def __repr__(self) -> str:
        return "PREPARE_TIME"


PREPARE_TIME = PrepareTime()


class AtTestTime:
    """Marks a field that changes only what a trained model is given at test time (`Annotated[bool, TEST_TIME]`).

    A run's training identity leaves these fields out, so a cell that differs from another only in them decodes
    the other's trained model instead of training its own.
    """

    def __repr__(self) -> str:
        return "TEST_TIME"


TEST_TIME = AtTestTime()


def _marked(cls: type, marker: type) -> list[str]:
    hints = get_type_hints(cls, include_extras=True)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if get_origin(hints[f.name]) is Annotated and any(isinstance(e, marker) for e in get_args(hints[f.name]))
    ]


def prepare_time_fields(cls: type) -> list[str]:
    """The fields of `cls` marked PREPARE_TIME, in declaration order."""
    return _marked(cls, PrepareTime)


def test_time_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """{dotted key: default} of the fields marked TEST_TIME in `cls` and the config dataclasses it holds."""
    out: dict[str, Any] = {}
    marked = set(_marked(cls, AtTestTime))
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in marked:
            out[prefix + f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        elif dataclasses.is_dataclass(hints[f.name]):
            out |= test_time_defaults(hints[f.name], f"{prefix}{f.name}.")
    return out


test_time_defaults.__test__ = False  # a library function, not a pytest test


def check_fields(obj: Any) -> None:
    """Check (and normalise: lists to tuples, ints to floats) every field of a config dataclass in place."""
    hints = get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value = coerce(getattr(obj, f.name), hints[f.name], f.name)
        object.__setattr__(obj, f.name, value)  # frozen dataclasses: this is their own __post_init__


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` checked against the annotation `hint`; raises FieldError naming `key`."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        value = coerce(value, base, key)
        for bound in (e for e in extras if isinstance(e, Bounds)):
            if not bound.holds(value):
                raise FieldError(key, value, f"{describe(base)} {bound.describe()}")
        return value
    if origin is Literal:
        if any(value == c and type(value) is type(c) for c in get_args(hint)):
            return value
        raise FieldError(key, value, describe(hint))
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, key)
            except FieldError:
                continue
        raise FieldError(key, value, describe(hint))
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise FieldError(key, value, describe(hint))
        item = get_args(hint)[0]
        return tuple(coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise FieldError(key, value, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FieldError(key, value, "an integer")
    if hint is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise FieldError(key, value, "a finite number")
    if hint is str:
        if isinstance(value, str) and value:
            return value
        raise FieldError(key, value, "a non-empty string (quote numbers)")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise FieldError(key, value, f"a mapping of {hint.__name__} fields")
    raise TypeError(f"{key}: no check for the annotation {hint!r}; add one in gemkr_lab.config.checks")


def describe(hint: Any) -> str:
    """What a value of this annotation looks like, for error messages."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        bounds = " ".join(e.describe() for e in extras if isinstance(e, Bounds))
        return f"{describe(base)} {bounds}".strip()
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(hint))
    if origin in (Union, types.UnionType):
        parts = [describe(o) for o in get_args(hint) if o is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in get_args(hint) else text
    if origin is tuple:
        return f"a list of {describe(get_args(hint)[0])}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    return getattr(hint, "__name__", repr(hint))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# ---- YAML with YAML 1.2's booleans and floats ----------------------------------------------------------------
# PyYAML follows YAML 1.1: `yes`, `no`, `on`, `off` are booleans and `1e-5` is a string. Configs accept only
# true/false as booleans (a typo like `flase` or `nope` stays a string and is refused) and read 1e-5 as a float.
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)")
_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"


class ConfigLoader(yaml.SafeLoader):
    """A SafeLoader with YAML 1.2 booleans (true/false) and floats (1e-5)."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ConfigLoader.add_implicit_resolver(_FLOAT_TAG, re.compile(f"^{_FLOAT.pattern}$"), list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text with `ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


__all__ = [
    "POSITIVE",
    "PREPARE_TIME",
    "PROBABILITY",
    "TEST_TIME",
    "AtLeast",
    "Bounds",
    "ConfigLoader",
    "FieldError",
    "check_fields",
    "coerce",
    "describe",
    "load_yaml",
    "prepare_time_fields",
    "test_time_defaults",
]
