"""Prints docs/configuration.md from the configuration models, so that the
reference and the code cannot drift (a test compares them)."""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from exporter.config import BarmanBackup, CommandBackup, DirectoryBackup, NoBackup, PgBackRestBackup, Settings, WalgBackup

HEADER = """# Configuration reference

Generated from `exporter/config.py` by `make docs`; do not edit by hand.

pgbv reads a YAML file (`--config FILE` or `PGBV_CONFIG`) and then `PGBV_`
environment variables, which win. Nested keys are joined with `__` and list
items are addressed by index: `PGBV_TARGETS__0__PASSWORD`,
`PGBV_SCHEDULE__DAILY_AT=04:30`, `PGBV_TARGETS__0__CHECKS__CRITICAL_TABLES='["a","b"]'`
(lists and mappings as JSON). Unknown keys are errors. Sizes in MB are 2^20 bytes.
See `examples/seed-app.yml` for a full example.
"""


def _type_name(annotation) -> str:
    text = repr(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    text = text.replace("<class '", "").replace("'>", "").replace("exporter.config.", "")
    # A "|" would end the Markdown table cell.
    return text.replace(" | ", " or ")


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
    lines = [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        lines.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
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
