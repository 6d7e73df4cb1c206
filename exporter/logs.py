"""pgbv's own log lines, on stderr: text for people, JSON (one object a line) for collectors.

Structured fields ("extras") go in the standard ``extra=`` mapping of a logging call::

    log.info("run finished", extra={"target": "app", "status": "success", "duration_seconds": 0.41})

text::

    2026-11-27T05:00:01Z INFO pgbv.daemon run finished target=app status=success duration=0.41s

  UTC time to the second, level, logger, message, then each extra as ``key=value``
  in the order given. A string with spaces, quotes, ``=`` or nothing in it is
  written in JSON quotes; None, booleans, mappings and lists as JSON (a list of
  plain words as ``a,b``); a number under a key ending in ``_seconds`` as
  ``name=0.41s``. A traceback follows on the next lines.

json::

    {"ts": "2026-11-27T05:00:01.123Z", "level": "INFO", "logger": "pgbv.daemon",
     "msg": "run finished", "target": "app", "status": "success", "duration_seconds": 0.41}

  Extras are top-level keys; one named ts, level, logger, exc or stack is written
  as ``extra_<name>`` (``msg`` and the other LogRecord attributes are refused by
  logging itself). A value JSON cannot hold becomes its str(). An exception
  (``log.exception``, ``exc_info=True``) is the traceback text under ``exc``,
  ``stack_info`` under ``stack``.

Secrets: a filter on the handler, so it sees every logger's records (libraries'
included), replaces each secret in the message, the extras, the exception text
and the stack before any formatter runs: as given, and as it appears percent-
encoded in a URI DSN or escaped in a repr or a JSON string.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

from exporter.redact import scrub
from exporter.result import RunResult

# Every attribute a LogRecord has of its own; anything else on a record came in `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}
_JSON_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})
_BARE = re.compile(r"^[^\s\"'=\\]+$")
_WORD = re.compile(r"^[\w.:/@+-]+$")


def extras(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """The fields a logging call gave in `extra`, in their order."""
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            yield key, value


def _variants(secrets: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        found.update({secret, quote(secret, safe=""), quote_plus(secret), repr(secret)[1:-1], json.dumps(secret)[1:-1]})
    return sorted(found)


class SecretFilter(logging.Filter):
    """Masks secrets in a record in place; never drops one."""

    _formatter = logging.Formatter()

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = _variants(secrets)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value, self.secrets)
        if isinstance(value, dict):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._scrub(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        # Anything else would reach the line through its str(): an exception, a path, a DSN object.
        return scrub(str(value), self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the record
            message = f"{record.msg!r} % {record.args!r}"
        # The args are merged in so that no formatter can put the raw values back.
        record.msg, record.args = scrub(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        for key, value in list(extras(record)):
            setattr(record, key, self._scrub(value))
        return True


def _timestamp(record: logging.LogRecord, millis: bool) -> str:
    moment = datetime.fromtimestamp(record.created, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{int(record.msecs):03d}" if millis else "") + "Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or None


def _text_value(key: str, value: Any) -> str:
    if key.endswith("_seconds") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{key[: -len('_seconds')]}={round(value, 3):g}s"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and _WORD.match(v) for v in value):
        return f"{key}={','.join(value)}"
    if isinstance(value, str):
        return f"{key}={value}" if _BARE.match(value) else f"{key}={json.dumps(value)}"
    if value is None or isinstance(value, (bool, dict, list, tuple)):
        return f"{key}={json.dumps(_plain(value), separators=(',', ':'))}"
    if isinstance(value, (int, float)):
        return f"{key}={value}"
    return _text_value(key, str(value))


def _plain(value: Any) -> Any:
    """value as data json.dumps accepts and keeps valid JSON (no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record, millis=False), record.levelname, record.name, record.getMessage()]
        parts += [_text_value(key, value) for key, value in extras(record)]
        line = " ".join(part for part in parts if part)
        exc = _exception_text(self, record)
        if exc:
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extras(record):
            out[f"extra_{key}" if key in _JSON_KEYS else key] = _plain(value)
        exc = _exception_text(self, record)
        if exc:
            out["exc"] = exc
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)


class _PgbvHandler(logging.StreamHandler):
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(
    fmt: Literal["text", "json"],
    secrets: list[str],
    level: int = logging.INFO,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger's records to stderr (or stream) in fmt, secrets masked.

    Handlers others installed on the root logger are left alone; calling again
    replaces the previous pgbv handler. Returns the handler.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PgbvHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _PgbvHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def run_line(result: RunResult) -> tuple[str, dict[str, Any]]:
    """The message and extras of the one line logged per run per target."""
    extra: dict[str, Any] = {
        "target": result.target,
        "status": result.status,
        "passed": result.checks_passed,
        "failed": result.checks_failed,
        "warned": result.checks_warned,
        "duration_seconds": round(result.duration_seconds, 3),
    }
    failed = [check.name for check in result.checks if check.failed]
    warned = [check.name for check in result.checks if check.outcome == "warn"]
    if failed:
        extra["failed_checks"] = failed
    if warned:
        extra["warned_checks"] = warned
    if result.unreachable is not None:
        extra["unreachable"] = result.unreachable
    if result.facts.get("trigger"):
        extra["trigger"] = result.facts["trigger"]
    if result.id is not None:
        extra["id"] = str(result.id)
    if result.record_error is not None:
        extra["record_error"] = result.record_error
    return "run finished", extra
