"""Logical restore drills: a pg_dump archive restored into a scratch database,
checked like the live one, and compared with it.

The live database is only read, in short transactions (a drill can take an
hour; a transaction held open that long would hold back vacuum).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.config import TargetConfig
from exporter.db import TargetUnreachable, connect_dsn, first_line
from exporter.pgtools import Tool, ToolError, ToolNotFound, candidates, find_tool, probe, run_tool
from exporter.redact import scrub
from exporter.restore import active
from exporter.restore.compare import compare, copy_checks, copy_counts, live_counts
from exporter.restore.progress import Progress, count_items, run_with_progress
from exporter.restore.result import DrillError, DrillResult, RestoreFailed
from exporter.restore.scratch import create_database, drop_database, leftovers, scratch_name
from exporter.result import BackupInfo

log = logging.getLogger("pgbv.restore")

RESTORABLE_KINDS = ("pg_dump custom", "pg_dump directory", "pg_dump tar")


def _with_db(dsn: str, dbname: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["dbname"] = dbname
    params.pop("password", None)
    return make_conninfo(**params)


def _free_space_problem(admin: psycopg.Connection, needed: int) -> str | None:
    """'not enough space' when the scratch server is on this machine and its disk is short.

    A remote server's disk cannot be seen from here (PostgreSQL has no function for
    it); the drill then relies on its timeout and cleanup instead.
    """
    try:
        with admin.transaction():
            data_directory = admin.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.Error:
        return None
    path = Path(data_directory)
    if not path.is_dir():
        return None
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        return f"not enough space: {free} bytes free in {path}, the drill needs at least {needed} (twice the backup)"
    return None


def _amcheck(target: TargetConfig, conn: psycopg.Connection, dsn: str, password: str | None, version: int, timeout: float) -> str:
    with conn.transaction():
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'").fetchone()
    if not available:
        return "amcheck skipped: the amcheck extension is not available on the scratch server"
    tool = find_tool("pg_amcheck", version, target.restore.pg_bin_dir or target.pg_bin_dir)
    run_tool(tool, ["--install-missing", "--index=*", f"--dbname={dsn}"], timeout=timeout,
             env={"PGPASSWORD": password} if password else None)
    return "pg_amcheck found no corruption in the copy's B-tree indexes"


_HARMLESS = 'unrecognized configuration parameter "transaction_timeout"'


def _harmless_errors(exc: ToolError) -> int:
    """How many errors pg_restore reported, when every one of them is the known harmless one.

    pg_restore 17+ starts each session with `SET transaction_timeout = 0`, which a
    PostgreSQL 16 or older server rejects. Such a restore runs without
    --exit-on-error, and any other error still fails the drill.
    """
    # pg_restore 17+ also reports where an error happened as an error line of its own
    # ("pg_restore: error: from TOC entry 228; ..."): context, not another error.
    errors = [line for line in exc.stderr.splitlines() if "error:" in line and "error: from TOC entry" not in line]
    if errors and all(_HARMLESS in line for line in errors):
        return len(errors)
    return 0


def _choose_pg_restore(server_version: int, pg_bin_dir, info: BackupInfo, timeout: float) -> tuple[Tool, str]:
    """The pg_restore to use, and the archive's table of contents.

    Newer pg_restore sends settings an older server rejects, so a pg_restore of the
    server's own major version is preferred when it can read the archive (an archive
    written by a newer pg_dump it cannot); otherwise the newest, never older than
    the server.
    """
    newest = find_tool("pg_restore", server_version, pg_bin_dir)
    major = server_version // 10000
    if newest.major > major and pg_bin_dir is None:
        for path in candidates("pg_restore"):
            try:
                tool = probe(path, "pg_restore")
            except ToolNotFound:
                continue
            if tool.major != major:
                continue
            try:
                return tool, run_tool(tool, ["--list", str(info.location)], timeout=timeout).stdout
            except ToolError as exc:
                if exc.timed_out:
                    raise  # the drill's time is up: not a sign the archive is too new for it
                break  # the archive is newer than this pg_restore reads
    return newest, run_tool(newest, ["--list", str(info.location)], timeout=timeout).stdout


def drill_logical(target: TargetConfig, info: BackupInfo, keep: bool = False) -> DrillResult:
    """Restore info's archive into a new scratch database, check it, compare it, drop it."""
    if info.kind not in RESTORABLE_KINDS:
        raise DrillError(f"{info.kind} backups cannot be drilled logically; pg_dump custom, directory or tar archives can")
    config = target.restore
    deadline = time.monotonic() + config.timeout_minutes * 60
    started = time.monotonic()
    scratch_dsn, password = target.scratch_dsn_and_password()
    secrets = target.secrets()
    env = {"PGPASSWORD": password} if password else None
    name = scratch_name(target.name)
    result = DrillResult(kind="logical", scratch=name, backup_id=info.id)

    try:
        admin = connect_dsn(scratch_dsn, password, target=target, what="scratch server", read_only=False, autocommit=True)
    except TargetUnreachable as exc:
        raise DrillError(str(exc)) from None
    created = False
    try:
        with admin:
            for stale in leftovers(admin, target.name, older_than=timedelta(minutes=config.timeout_minutes)):
                log.warning("target %s: dropping %s, left by an interrupted drill", target.name, stale, extra={"target": target.name})
                drop_database(admin, stale)
            if info.size_bytes:
                problem = _free_space_problem(admin, 2 * info.size_bytes)
                if problem:
                    raise DrillError(problem)
            version = admin.info.server_version
            pg_restore, listing = _choose_pg_restore(version, config.pg_bin_dir or target.pg_bin_dir, info,
                                                     max(deadline - time.monotonic(), 1))
            create_database(admin, name)
            created = True
            active.register(name, lambda: _drop_quietly(scratch_dsn, password, target, name))
            copy_dsn = _with_db(scratch_dsn, name)

            progress = Progress(f"restore {target.name}", count_items(listing))
            restore_started = time.monotonic()
            newer_tool = pg_restore.major > version // 10000
            args = ["--verbose", "--no-owner", "--no-privileges", f"--jobs={config.jobs}", f"--dbname={copy_dsn}", str(info.location)]
            if not newer_tool:
                args.insert(1, "--exit-on-error")
            try:
                run_with_progress(pg_restore, args, timeout=max(deadline - time.monotonic(), 1), progress=progress, env=env,
                                  register=lambda proc: active.register_process(name, proc))
            except ToolError as exc:
                ignored = _harmless_errors(exc) if newer_tool and not exc.timed_out else 0
                if not ignored:
                    raise
                result.notes.append(
                    f"pg_restore {pg_restore.major} into a PostgreSQL {version // 10000} server: ignored {ignored} "
                    "'SET transaction_timeout' error(s), a setting older servers do not have"
                )
            result.restore_seconds = time.monotonic() - restore_started
            result.items = progress.total

            with connect_dsn(copy_dsn, password, target=target, what="restored copy", parallel=True) as copy:
                result.copy_checks = copy_checks(target, copy)
                names = list(dict.fromkeys(target.checks.critical_tables))
                result.rows = copy_counts(copy, names)
                if config.amcheck:
                    result.notes.append(_amcheck(target, copy, copy_dsn, password, version, max(deadline - time.monotonic(), 1)))
            result.live_rows = live_counts(target, names)
            result.problems += compare(target, result.live_rows, result.rows)
            if time.monotonic() > deadline:
                raise DrillError(f"the drill took longer than timeout_minutes ({config.timeout_minutes:g})")
    except ToolError as exc:
        message = scrub(str(exc), secrets)
        raise (DrillError(message) if exc.timed_out or exc.returncode is None else RestoreFailed(message)) from None
    except ToolNotFound as exc:
        raise DrillError(str(exc)) from None
    except psycopg.Error as exc:
        raise DrillError(scrub(f"{type(exc).__name__}: {first_line(exc)}", secrets)) from None
    finally:
        result.duration_seconds = time.monotonic() - started
        if created:
            if keep:
                result.kept_dsn = _with_db(scratch_dsn, name)
                active.unregister(name)
            else:
                _drop_quietly(scratch_dsn, password, target, name)
                active.unregister(name)
    return result


def _drop_quietly(dsn: str, password: str | None, target: TargetConfig, name: str) -> None:
    try:
        with connect_dsn(dsn, password, target=target, what="scratch server", read_only=False, autocommit=True) as conn:
            drop_database(conn, name)
    except (TargetUnreachable, psycopg.Error) as exc:
        log.error("target %s: could not drop scratch database %s (%s); the next drill removes it",
                  target.name, name, scrub(str(exc), target.secrets()), extra={"target": target.name})

