"""CLI options generated from a flow's parameter model (:mod:`storage.params`): one source for names, defaults, help.

Each field becomes ``--field-name`` (or the flag named in its ``cli`` extra; ``""`` makes it positional). Booleans are
switches, tuples take several values, ``dict`` fields are repeated ``NAME=VALUE`` pairs; defaults and help text come
from the field. :func:`params_from` reads the parsed namespace back into the model (pydantic validates it).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)


def _cli_extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    cli = extra.get("cli")
    return dict(cli) if isinstance(cli, dict) else {}


def flag_of(name: str, info: FieldInfo) -> str:
    flag = _cli_extra(info).get("flag")
    return "--" + name.replace("_", "-") if flag is None else str(flag)


def _scalar(annotation: Any) -> Any:
    """``int | None`` -> int; the one non-None type of an optional."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


def parse_value(text: str) -> Any:
    """``NAME=VALUE`` values as JSON (``16``, ``0.5``, ``true``, ``null``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    skip: Iterable[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Add one option per field of ``model`` (except ``skip``) to ``parser``; ``choices`` by field name (e.g. the
    strategy names of a registry)."""
    choices = choices or {}
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        flag, extra = flag_of(name, info), _cli_extra(info)
        kind = _scalar(info.annotation)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        shown = f" (default: {default})" if default not in (None, (), {}, False, "") else ""
        help_text = (info.description or "") + shown
        if flag == "":
            parser.add_argument(name, help=info.description)
        elif kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, dest=name, nargs="*", default=default, choices=choices.get(name), help=help_text)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(
                flag, dest=name, action="append", metavar=extra.get("metavar", "NAME=VALUE"), help=help_text
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=kind if kind in (int, float) else str,
                default=default,
                choices=choices.get(name),
                help=help_text,
            )


def params_from(args: argparse.Namespace, model: type[M], **extra: Any) -> M:
    """The ``model`` instance the parsed options describe (``extra`` sets fields the CLI does not offer)."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if typing.get_origin(_scalar(info.annotation)) is dict:
            pairs: dict[str, Any] = {}
            for item in value or []:
                key, sep, text = item.partition("=")
                if not sep or not key:
                    raise SystemExit(f"{flag_of(name, info)} expects NAME=VALUE, got {item!r}")
                pairs[key] = parse_value(text)
            value = pairs
        elif value is None and not info.is_required():
            continue  # the model's default
        values[name] = value
    return model.model_validate({**values, **extra})
