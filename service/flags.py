"""Command-line flags generated from a pydantic-settings class, and one way to report invalid settings.

Used by `cxr serve` (service.settings.Settings) and `cxr pacs` (pacs.settings.PacsSettings): every field is a
`--flag` whose help names its environment variable; an absent flag leaves the environment or the default in
force (flags win over the environment). Booleans get `--x/--no-x`; lists may repeat the flag or separate
values with commas.
"""

from __future__ import annotations

import argparse
import logging
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

S = typing.TypeVar("S", bound=BaseSettings)


def _flag_type(annotation: Any) -> tuple[Any, list[Any] | None]:
    """argparse `type` and `choices` for a field annotation (list items stay strings)."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return type(args[0]), list(args)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if annotation is SecretStr or origin is Annotated or origin is list:
        return str, None
    return annotation, None


def _is_list(annotation: Any) -> bool:
    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    return typing.get_origin(inner) is list


def add_flags(
    parser: argparse.ArgumentParser, settings: type[BaseSettings], *, list_flags: dict[str, str] | None = None
) -> None:
    """One flag per field of `settings`. `list_flags` renames a list field's flag (e.g. `modalities` ->
    `--modality`, repeated once per value)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    hints = typing.get_type_hints(settings, include_extras=True)
    for name, info in settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        help_text = f"{info.description} (env {prefix}{name.upper()})"
        kind, choices = _flag_type(hints[name])
        if kind is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif _is_list(hints[name]):
            flag = (list_flags or {}).get(name, flag)
            parser.add_argument(
                flag,
                dest=name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=flag.removeprefix("--").replace("-", "_").upper(),
                help=help_text + "; repeat the flag or separate values with commas",
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=kind,
                choices=choices,
                default=argparse.SUPPRESS,
                metavar=None if choices else name.upper(),
                help=help_text,
            )


def split_commas(value: Any) -> Any:
    """A list setting from `a,b` (environment), `["a,b", "c"]` (repeated flags) or a list: stripped, no
    empty items. For use in a `mode="before"` field validator."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [part.strip() for item in value for part in item.split(",") if part.strip()]
    return value


def from_flags(settings: type[S], args: argparse.Namespace) -> S:
    """`settings` from parsed flags, falling back to its environment variables and defaults."""
    given = {name: value for name, value in vars(args).items() if name in settings.model_fields}
    return settings(**given)


def report_invalid(error: ValidationError, logger: logging.Logger) -> None:
    """One log line per invalid setting. include_input=False: values are never echoed (a key or a
    password could be among them)."""
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        logger.error("invalid setting %s: %s", where, problem["msg"])
