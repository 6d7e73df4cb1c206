"""Any program that prints the newest backup as JSON: the escape hatch for managed
services (RDS snapshots, a provider's API, a script around another backup tool).

The program prints one JSON object::

    {"id": "snap-0123", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 3921455104}

``finished_at`` is ISO 8601 with a zone (``Z`` or an offset); ``size_bytes`` is an
integer, or ``null`` when the service does not say (``backup_size`` then errors).
Optional keys: ``kind`` and ``location`` (text), ``details`` (an object); any other
key is kept in the backup's details. ``{}`` or ``null`` means "there is no backup".

This module also holds what the tool-driven sources share (walg, barman): running a
tool under the source's time limit with its words scrubbed of secrets, reading JSON
without losing big integers, and reading time stamps into UTC.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn

from exporter.backups.base import BackupSource, BackupSourceError, NoBackupFound
from exporter.config import CommandBackup
from exporter.pgtools import ToolError, run_tool
from exporter.redact import scrub
from exporter.result import BackupInfo

# How much of an unparseable output an error message quotes: enough to recognise
# "sudo: a password is required" or an HTML error page, not a whole dump.
EXCERPT_CHARS = 200

_REQUIRED = ("id", "finished_at", "size_bytes")
_OPTIONAL = ("kind", "location", "details")


# --- shared by the tool-driven sources -----------------------------------------------


def fail(message: str, secrets: Iterable[str]) -> NoReturn:
    """Raise BackupSourceError with message scrubbed of secrets."""
    raise BackupSourceError(scrub(message, secrets))


def run_source_tool(
    program: str,
    args: list[str],
    *,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None,
    secrets: Iterable[str],
    ok_codes: Collection[int] = (0,),
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> subprocess.CompletedProcess:
    """run_tool, with every failure (timeout, exit code, cannot start) turned into
    BackupSourceError("{what}: {the tool's words}") scrubbed of secrets."""
    try:
        return run_tool(program, args, timeout, env=dict(env) if env else None, ok_codes=ok_codes, on_start=on_start)
    except ToolError as exc:
        fail(f"{what}: {exc}", secrets)


def _no_constants(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which no tool means as a size or a time.
    raise ValueError(f"{name} is not a JSON value")


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[:EXCERPT_CHARS] + "..."


def parse_json(text: str, *, what: str, secrets: Iterable[str]) -> Any:
    """The JSON value of a tool's output, integers exact (json keeps int, never float).
    BackupSourceError quoting the start of the output when it is not JSON."""
    text = text.lstrip("\ufeff")  # a BOM some Windows-born scripts write
    if not text.strip():
        fail(f"{what} printed nothing", secrets)
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        fail(f"{what} printed something that is not JSON ({exc.msg} at line {exc.lineno} "
             f"column {exc.colno}): {excerpt(text)!r}", secrets)
    except (ValueError, RecursionError) as exc:
        fail(f"{what} printed something that is not usable JSON ({exc}): {excerpt(text)!r}", secrets)


def parse_timestamp(value: Any, *, what: str, key: str, secrets: Iterable[str] = ()) -> datetime:
    """An ISO 8601 / RFC 3339 text with a zone, as a timezone-aware UTC datetime.

    Python 3.11's fromisoformat reads "Z", any number of fraction digits (Go drops
    trailing zeros; more than 6 are truncated) and a space instead of "T". A time
    without a zone is refused: guessing the zone would move the backup by hours.
    """
    if not isinstance(value, str):
        fail(f"{what}: {key} must be an ISO 8601 time text with a zone, got {json_type(value)}", secrets)
    text = value.strip()
    if text[-1:] == "z":  # RFC 3339 allows a lower-case z; fromisoformat does not
        text = text[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{what}: {key} {value!r} is not an ISO 8601 time", secrets)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        fail(f"{what}: {key} {value!r} has no time zone (add Z or an offset such as +00:00)", secrets)
    return parsed.astimezone(timezone.utc)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, list):
        return "a list"
    return "an object"


def require_int(value: Any, *, what: str, key: str, secrets: Iterable[str] = (), minimum: int | None = 0) -> int:
    """An integer from JSON: an int, or a float without a fraction (jq and JavaScript
    write 1e9 for big numbers); never a boolean, which Python counts as an int."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{what}: {key} must be an integer, got {json_type(value)}", secrets)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            fail(f"{what}: {key} must be an integer, got {value!r}", secrets)
        value = int(value)
    if minimum is not None and value < minimum:
        fail(f"{what}: {key} must not be negative, got {value}", secrets)
    return value


# --- the command source ----------------------------------------------------------------


def parse_command_output(data: Any, *, what: str, secrets: Iterable[str] = ()) -> BackupInfo:
    """The BackupInfo a command's JSON describes; NoBackupFound for {} or null."""
    if data is None or data == {}:
        raise NoBackupFound(scrub(f"{what} reports no backup", secrets))
    if not isinstance(data, dict):
        fail(f"{what} must print a JSON object with {', '.join(_REQUIRED)} "
             f"(or {{}} / null for no backup), got {json_type(data)}", secrets)
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        fail(f"{what}: the output has no {', '.join(repr(key) for key in missing)} "
             f"(it needs {', '.join(_REQUIRED)})", secrets)

    backup_id = data["id"]
    if isinstance(backup_id, int) and not isinstance(backup_id, bool):
        backup_id = str(backup_id)  # numeric snapshot ids are common
    if not isinstance(backup_id, str) or not backup_id.strip():
        fail(f"{what}: id must be a non-empty text, got {json_type(data['id'])}", secrets)
    finished_at = parse_timestamp(data["finished_at"], what=what, key="finished_at", secrets=secrets)
    size = None if data["size_bytes"] is None else require_int(
        data["size_bytes"], what=what, key="size_bytes", secrets=secrets
    )

    kind = data.get("kind", "command")
    location = data.get("location", "")
    for key, value in (("kind", kind), ("location", location)):
        if not isinstance(value, str):
            fail(f"{what}: {key} must be a text, got {json_type(value)}", secrets)
    details = data.get("details", {})
    if not isinstance(details, dict):
        fail(f"{what}: details must be an object, got {json_type(details)}", secrets)
    extra = {key: value for key, value in data.items() if key not in _REQUIRED + _OPTIONAL}
    return BackupInfo(
        id=backup_id,
        finished_at=finished_at,
        size_bytes=size,
        kind=kind or "command",
        location=location,
        details={**extra, **details},
    )


class CommandBackupSource(BackupSource):
    name = "command"

    def __init__(self, config: CommandBackup):
        self.config = config

    @property
    def secrets(self) -> list[str]:
        return [value for value in self.config.env.values() if value]

    @property
    def what(self) -> str:
        # Only the program's name: its arguments may hold a token.
        return f"command {os.path.basename(self.config.command[0])}"

    def latest(self) -> BackupInfo:
        program, *args = self.config.command
        done = run_source_tool(
            program, args, what=self.what, timeout=self.config.timeout_seconds,
            env=self.config.env, secrets=self.secrets,
        )
        if not done.stdout.strip():
            fail(f"{self.what} printed nothing; it must print a JSON object, or {{}} or null "
                 "when there is no backup", self.secrets)
        data = parse_json(done.stdout, what=self.what, secrets=self.secrets)
        return parse_command_output(data, what=self.what, secrets=self.secrets)
