"""pgbv's log lines: JSON that parses and carries the extras, text with target and
status, and no secret in any line, whether it comes in the message, an extra or
the text of an exception raised by a library."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime, timezone

import psycopg
import pytest

from exporter.logs import run_line, setup_logging
from exporter.redact import MASK
from exporter.result import CheckResult, RunResult

SECRET = "s3cr3t-Pa ss/wörd"


@pytest.fixture
def capture():
    """capture(fmt, secrets) -> the stream the root logger now writes to."""
    root = logging.getLogger()
    level = root.level
    installed: list[logging.Handler] = []

    def setup(fmt: str, secrets: list[str] = (SECRET,), level: int = logging.INFO) -> io.StringIO:
        stream = io.StringIO()
        installed.append(setup_logging(fmt, list(secrets), level=level, stream=stream))
        return stream

    yield setup
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def make_run(**fields) -> RunResult:
    checks = [
        CheckResult("critical_tables", "pass", "7 tables present"),
        CheckResult("backup_age", "warn", "newest backup is 30.0 h old"),
    ]
    return RunResult("app", datetime(2026, 11, 27, 5, 0, 1, tzinfo=timezone.utc), checks=checks,
                     duration_seconds=0.4132, **fields)


def test_json_lines_parse_and_carry_the_extras(capture):
    stream = capture("json")
    log = logging.getLogger("pgbv.daemon")
    log.info("run finished", extra={"target": "app", "status": "success", "passed": 14, "failed_checks": ["a", "b"]})
    log.warning("target %s: result spooled", "app")

    first, second = json_lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["level"] == "INFO" and first["logger"] == "pgbv.daemon" and first["msg"] == "run finished"
    assert first["target"] == "app" and first["status"] == "success" and first["passed"] == 14
    assert first["failed_checks"] == ["a", "b"]
    assert second["msg"] == "target app: result spooled" and second["level"] == "WARNING"
    assert set(second) == {"ts", "level", "logger", "msg"}


def test_json_extras_never_shadow_the_line_s_own_keys(capture):
    stream = capture("json")
    logging.getLogger("pgbv").info("x", extra={"level": "mine", "ts": 1, "odd": {1, 2}, "nan": float("nan")})
    (line,) = json_lines(stream)
    assert line["level"] == "INFO" and line["extra_level"] == "mine" and line["extra_ts"] == 1
    assert sorted(line["odd"]) == [1, 2] and line["nan"] == "nan"


def test_the_run_line_in_text_has_target_status_and_counts(capture):
    stream = capture("text")
    message, extra = run_line(make_run())
    logging.getLogger("pgbv.daemon").info(message, extra=extra)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO pgbv\.daemon run finished target=app status=warning"
        r" passed=2 failed=0 warned=1 duration=0\.413s warned_checks=backup_age\n",
        stream.getvalue(),
    ), stream.getvalue()


def test_the_run_line_in_json(capture):
    stream = capture("json")
    run = make_run(unreachable="connection refused")
    run.facts["trigger"] = "schedule"
    message, extra = run_line(run)
    logging.getLogger("pgbv.daemon").warning(message, extra=extra)
    (line,) = json_lines(stream)
    assert line["msg"] == "run finished"
    assert {k: line[k] for k in ("target", "status", "passed", "failed", "warned", "duration_seconds")} == {
        "target": "app", "status": "failure", "passed": 2, "failed": 0, "warned": 1, "duration_seconds": 0.413,
    }
    assert line["unreachable"] == "connection refused" and line["trigger"] == "schedule"


def test_text_values_with_spaces_are_quoted(capture):
    stream = capture("text")
    logging.getLogger("pgbv").info("x", extra={"reason": 'a "b" c', "none": None, "empty": ""})
    assert stream.getvalue().rstrip("\n").endswith(' x reason="a \\"b\\" c" none=null empty=""')


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_a_line(capture, fmt, pg_server):
    stream = capture(fmt)
    log = logging.getLogger("pgbv.daemon")
    log.info("connecting with password %s", SECRET)
    log.info("an extra", extra={"dsn": f"password={SECRET}", "nested": {"list": [SECRET]}})
    log.info("a URI: postgresql://pgbv:%s@db/app", SECRET.replace(" ", "%20").replace("/", "%2F").replace("ö", "%C3%B6"))
    try:
        datetime.fromisoformat(SECRET)  # a library's exception that quotes its input
    except ValueError:
        log.exception("parsing failed")
    try:
        # A real PostgreSQL error that quotes a value it was given.
        psycopg.connect(pg_server.dsn(SECRET), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        log.warning("connect failed: %s", exc, exc_info=True)
        assert SECRET in str(exc), "the server should quote the database name back"
    logging.getLogger("psycopg").error("from a library's logger: %r", SECRET)

    out = stream.getvalue()
    assert SECRET not in out
    for escaped in (json.dumps(SECRET)[1:-1], repr(SECRET)[1:-1], "s3cr3t-Pa%20ss%2Fw%C3%B6rd"):
        assert escaped not in out
    assert out.count(MASK) >= 7, out
    if fmt == "json":
        lines = json_lines(stream)
        assert len(lines) == 6
        assert "Traceback" in lines[3]["exc"] and MASK in lines[3]["exc"]
        assert lines[1]["nested"] == {"list": [MASK]}


def test_a_second_setup_replaces_the_first_and_honours_the_level(capture):
    first = capture("text")
    second = capture("json", level=logging.WARNING)
    log = logging.getLogger("pgbv.spool")
    log.info("not shown")
    log.warning("shown")
    assert first.getvalue() == ""
    assert [line["msg"] for line in json_lines(second)] == ["shown"]
    pgbv_handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_PgbvHandler"]
    assert len(pgbv_handlers) == 1


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text or json"):
        setup_logging("xml", [])  # type: ignore[arg-type]
