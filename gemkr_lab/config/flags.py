"""Command-line flags generated from a config dataclass: names, choices, defaults and help come from the fields.

`gemkr-lab prepare DATASET --data-root DIR --out DIR [flags]` takes one flag per prepare-time field of DataConfig
(`--clue-max-tokens 5`, `--detector yolo`, `--carriage-returns-to-spaces`); a field added to the config is a flag
at once, and values are checked by the same typed checker as a preset's (`config.experiment.build`).
"""

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import types
import typing
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from gemkr_lab.config.experiment import build, load_yaml


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The first line of each field's docstring (the string literal under it in the class body)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(after, ast.Expr):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[target.id] = " ".join(after.value.value.split("\n\n")[0].split())
    return docs


def _plain(hint: Any) -> Any:
    """The type under Annotated[...] and `| None`."""
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [_plain(a) for a in get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def flag(name: str) -> str:
    """`clue_max_tokens` -> `--clue-max-tokens`."""
    return "--" + name.replace("_", "-")


def add_field_flags(
    parser: argparse.ArgumentParser, cls: type, names: list[str], aliases: dict[str, tuple[str, ...]] | None = None
) -> None:
    """One flag per field in `names`, unset (None) unless given: the field's default stays the config's."""
    hints, defaults = get_type_hints(cls, include_extras=True), {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        hint, docs = _plain(hints[name]), field_docs(cls).get(name, "")
        default = defaults[name].default
        options = [flag(name), *(aliases or {}).get(name, ())]
        text = f"{docs} (default {default})" if docs else f"default {default}"
        if hint is bool:
            parser.add_argument(*options, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif get_origin(hint) is Literal:
            parser.add_argument(*options, dest=name, choices=list(get_args(hint)), default=None, help=text)
        else:
            parser.add_argument(*options, dest=name, default=None, metavar="VALUE", help=text)


def given_fields(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """{field: value} of the flags given, strings read as YAML scalars (5, 0.2, null), as `--set` values are."""
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = load_yaml(value) if isinstance(value, str) else value
    return out


def build_from_flags(cls: type, values: dict[str, Any]):
    """`cls` from flag values, checked from the annotations; an error names the flag."""
    return build(cls, values, where="the command line", sources={name: flag(name) for name in values})
