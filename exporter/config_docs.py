"""Prints docs/configuration.md from the configuration models, so that the
reference and the code cannot drift (a test compares them)."""

from __future__ import annotations

import types
import typing

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from exporter.catalog import valid_name
from exporter.config import BarmanBackup, CommandBackup, DirectoryBackup, NoBackup, PgBackRestBackup, Settings, WalgBackup

HEADER = """# Configuration reference

Generated from `exporter/config.py` by `make docs`; do not edit by hand.

pgbv reads a YAML file (`--config FILE` or `PGBV_CONFIG`) and then `PGBV_`
environment variables, which win. Nested keys are joined with `__` and list
items are addressed by index: `PGBV_TARGETS__0__PASSWORD`,
`PGBV_SCHEDULE__DAILY_AT=04:30`, `PGBV_TARGETS__0__CHECKS__CRITICAL_TABLES='["a","b"]'`
(lists and mappings as JSON). Unknown keys are errors. Sizes in MB are 2^20 bytes.
Every number must be finite and within its range (the column "range", bounds
included): far beyond any sensible setting, far below what would overflow. A number
is written as one: `yes`, `true` and the other YAML booleans are refused there.
See `examples/seed-app.yml` for a full example.
"""


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        if any(getattr(meta, "func", None) is valid_name for meta in annotation.__metadata__):
            return "name"  # a table, index or function name (docs/checks.md, "Names")
        return _type_name(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    if origin in (typing.Union, types.UnionType):
        # A "|" would end the Markdown table cell.
        return " or ".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


# annotated_types class: (its attribute, how the range column says it)
_BOUND_WORDS = {annotated_types.Gt: ("gt", "more than"), annotated_types.Ge: ("ge", "at least"),
                annotated_types.Lt: ("lt", "less than"), annotated_types.Le: ("le", "at most")}


def _bounds(metadata) -> str:
    """'1 to 44,640', 'more than 0, at most 8,784': what a numeric key accepts."""
    bounds = {type(meta): getattr(meta, _BOUND_WORDS[type(meta)][0]) for meta in metadata if type(meta) in _BOUND_WORDS}
    if set(bounds) == {annotated_types.Ge, annotated_types.Le}:
        return f"{_number(bounds[annotated_types.Ge])} to {_number(bounds[annotated_types.Le])}"
    return ", ".join(f"{_BOUND_WORDS[kind][1]} {_number(value)}" for kind, value in bounds.items())


def _range(field) -> str:
    found = _bounds(field.metadata)
    why = (field.json_schema_extra or {}).get("range_reason") if isinstance(field.json_schema_extra, dict) else None
    if found and why:
        found = f"{found} ({why})"
    if not found and typing.get_origin(field.annotation) is dict:
        value_type = typing.get_args(field.annotation)[1]
        if typing.get_origin(value_type) is typing.Annotated:
            found = _bounds(m for meta in value_type.__metadata__ for m in getattr(meta, "metadata", [meta]))
            found = f"each value {found}" if found else ""
    return found


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`" if field.default is not None else "`null`"


def _section(title: str, model: type[BaseModel], prefix: str) -> list[str]:
    lines = [f"## {title}", "", "| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        lines.append(
            f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {_range(field)} "
            f"| {field.description or ''} |"
        )
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"`{prefix}{name}`", annotation, f"{prefix}{name}."))
        elif typing.get_origin(annotation) is list:
            (inner,) = typing.get_args(annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                nested.append((f"`{prefix}{name}[]`", inner, f"{prefix}{name}[]."))
    lines.append("")
    for sub_title, sub_model, sub_prefix in nested:
        lines += _section(sub_title, sub_model, sub_prefix)
    return lines


def render() -> str:
    lines = [HEADER]
    lines += _section("Top level", Settings, "")
    lines += ["## Backup sources", "", "`backup.source` selects one; each has its own keys.", ""]
    for model in (DirectoryBackup, PgBackRestBackup, WalgBackup, BarmanBackup, CommandBackup, NoBackup):
        source = model.model_fields["source"].annotation.__args__[0]
        lines += _section(f"`source: {source}`", model, "targets[].backup.")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
