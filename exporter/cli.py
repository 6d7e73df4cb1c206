"""The `pgbv` command line. Exit codes follow the monitoring-plugin convention:
0 success, 1 warning, 2 failure, 3 unknown (bad arguments or configuration,
target unreachable, could not record)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import yaml

from exporter import __version__
from exporter.config import DAYS_MAX, ConfigError, Settings, TargetConfig, load_settings, masked
from exporter.result import EXIT_FAILURE, EXIT_OK, EXIT_UNKNOWN

PROG = "pgbv"


class _Parser(argparse.ArgumentParser):
    # Bad arguments are "unknown" (3) in the monitoring-plugin convention, not argparse's 2.
    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNKNOWN, f"{self.prog}: error: {message}\n")


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _targets(settings: Settings, name: str | None) -> list[TargetConfig]:
    return [settings.target(name)] if name else list(settings.targets)


# --- commands --------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from exporter.verify import verify_all

    settings = load_settings(args.config)
    results = verify_all(settings, _targets(settings, args.target), record_result=not args.no_record, drill=False,
                         full_read=args.full_read)
    return _report(results, args.format)


def _report(results, fmt: str) -> int:
    from exporter.report import render

    print(render(results, fmt, sys.stdout))
    code = EXIT_OK
    for result in results:
        # An unreachable target is said once, by the report (UNKNOWN, exit 3), not again here.
        if result.record_error is not None:
            _say(result.record_error)
        code = max(code, result.exit_code, EXIT_UNKNOWN if result.record_error else EXIT_OK)
    return code


def _who() -> str:
    """Who accepts a row count, for the log: the OS account (the one behind sudo too) and host."""
    import getpass
    import socket

    user = getpass.getuser()
    behind = os.environ.get("SUDO_USER")
    name = f"{behind} (sudo as {user})" if behind and behind != user else user
    return f"{name}@{socket.gethostname()}"


def cmd_accept_rows(args: argparse.Namespace) -> int:
    from exporter.checks.row_counts import Acceptance
    from exporter.verify import verify_target

    settings = load_settings(args.config)
    target = settings.target(args.target)
    critical = list(dict.fromkeys(target.checks.critical_tables))
    if not critical:
        raise ConfigError(f"targets.{target.name}.checks.critical_tables: empty, so there are no row counts to accept")
    tables = tuple(dict.fromkeys(args.table)) if args.table else None
    unknown = [name for name in tables or () if name not in critical]
    if unknown:
        _say(f"--table {', '.join(unknown)}: not a critical table of target {target.name} "
             f"(critical_tables: {', '.join(critical)})")
        return EXIT_UNKNOWN
    acceptance = Acceptance(by=_who(), reason=args.reason, tables=tables)
    result = verify_target(target, drill=False, accept=acceptance)
    code = _report([result], args.format)
    accepted = (result.facts.get("accepted_rows") or {}).get("tables", {})
    wanted = list(tables or [name for name in critical if name in accepted])
    refused = [name for name in tables or () if name not in accepted]
    if result.unreachable is not None or result.record_error is not None:
        _say(f"target {target.name}: nothing accepted: the run could not be recorded")
        return EXIT_UNKNOWN
    if not accepted or refused:
        check = result.check("row_counts")
        why = check.message if check is not None else "row_counts did not run"
        _say(f"target {target.name}: not accepted: {', '.join(refused) or 'no table'} (row_counts: {why})")
        return EXIT_UNKNOWN
    _say(f"target {target.name}: accepted the row counts of {', '.join(wanted)} as intended, by {acceptance.by}")
    return code


def cmd_restore_drill(args: argparse.Namespace) -> int:
    import signal

    from exporter.verify import verify_all

    settings = load_settings(args.config)
    targets = _targets(settings, args.target)
    for target in targets:
        if not target.restore.enabled or target.backup.source == "none":
            raise ConfigError(f"targets.{target.name}.restore.enabled: restore drills need restore.enabled: true and a backup source")

    def interrupted(signum, frame):
        # Unwinds through the drill's cleanup: its tool is killed and its scratch copy dropped.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    results = verify_all(settings, targets, drill=True, keep=args.keep)
    code = _report(results, args.format)
    if args.format == "text":
        for result in results:
            line = _recovery_point_line(result)
            if line:
                print(line)
    return code


def _recovery_point_line(result) -> str | None:
    """What a replaying drill measured, in one line: the recovered-until time and RPO."""
    check = result.check("restore")
    drill = (check.data.get("restore") if check is not None else None) or {}
    target = drill.get("recovery_target")
    if not target:
        return None
    if drill.get("recovered_until") is None:
        return f"target {result.target}: the drill replayed the WAL archive ({target['kind']}) but measured no recovery point"
    rpo = drill["rpo_seconds"]
    judged = result.check("rpo")
    verdict = f" (rpo: {judged.outcome}, objective {judged.expected})" if judged is not None else ""
    towards = f" towards {target['time']}" if target.get("time") else ""
    return (f"target {result.target}: recovered until {drill['recovered_until']} (replayed to {target['kind']}{towards}); "
            f"measured RPO {rpo:.0f} s = {rpo / 3600:.3g} h{verdict}")


def cmd_migrate(args: argparse.Namespace) -> int:
    from exporter.db import TargetUnreachable
    from exporter.migrate import MigrationMismatch, migrate

    settings = load_settings(args.config)
    code = EXIT_OK
    for target in settings.targets:
        try:
            report = migrate(target)
        except TargetUnreachable as exc:
            _say(str(exc))
            code = max(code, EXIT_UNKNOWN)
            continue
        except MigrationMismatch as exc:
            _say(f"target {target.name}: {exc}")
            code = max(code, EXIT_FAILURE)
            continue
        for name in report.applied:
            print(f"target {target.name}: applied {name}")
        for name in report.adopted:
            print(f"target {target.name}: adopted {name} (the existing backup_verification_log matches it; nothing changed)")
        for name in report.edited:
            _say(f"target {target.name}: warning: {name} changed after it was applied; migrations must never be edited")
        if not report.applied and not report.adopted:
            print(f"target {target.name}: up to date ({len(report.already)} migrations applied)")
    return code


def _acceptance_note(row: dict[str, Any]) -> str | None:
    """'row counts accepted by alice@db1 (reason): t 23 -> 3' for a run of `pgbv accept-rows`."""
    details = row.get("verification_details")
    accepted = details.get("accepted_rows") if isinstance(details, dict) else None
    if not isinstance(accepted, dict):
        return None
    tables = accepted.get("tables") if isinstance(accepted.get("tables"), dict) else {}
    moved = ", ".join(
        f"{name} {change.get('from') if change.get('from') is not None else '-'} -> {change.get('to')}"
        for name, change in tables.items() if isinstance(change, dict)
    )
    reason = f" ({accepted['reason']})" if accepted.get("reason") else ""
    return f"row counts accepted by {accepted.get('by')}{reason}: {moved or 'no table'}"


def _runner(row: dict[str, Any]) -> str:
    """Which replica wrote the row (`host/shard N`, `+takeover` when it ran another shard's
    target); `-` for rows of `pgbv verify` and of versions before replicas."""
    details = row.get("verification_details")
    runner = details.get("runner") if isinstance(details, dict) else None
    if not isinstance(runner, dict):
        return "-"
    text = f"{runner.get('host') or '?'}/shard {runner.get('shard')}"
    return text + (" +takeover" if details.get("trigger") == "takeover" else "")


def _history_text(target: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"target {target}: {len(rows)} runs"]
    lines.append(f"  {'VERIFIED AT':25}  {'STATUS':8}  PASSED  FAILED  BACKUP AGE  {'RUNNER':24}  BACKUP")
    for row in rows:
        age = "-" if row["backup_age_hours"] is None else f"{row['backup_age_hours']} h"
        lines.append(
            f"  {row['verified_at'].isoformat(timespec='seconds'):25}  {row['status']:8}  "
            f"{row['checks_passed']:6}  {row['checks_failed']:6}  {age:>10}  {_runner(row):24}  {row['backup_id'] or '-'}"
        )
        if (note := _acceptance_note(row)) is not None:
            lines.append(f"    {note}")
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace) -> int:
    import psycopg

    from exporter import record
    from exporter.db import TargetUnreachable, connect, first_line

    settings = load_settings(args.config)
    out: dict[str, list[dict[str, Any]]] = {}
    code = EXIT_OK
    for target in _targets(settings, args.target):
        try:
            with connect(target, log=True) as conn:
                out[target.name] = record.history(conn, args.days, target.name)
        except TargetUnreachable as exc:
            _say(str(exc))
            code = EXIT_UNKNOWN
        except psycopg.Error as exc:
            _say(f"target {target.name}: cannot read the history: {first_line(exc)}")
            code = EXIT_UNKNOWN
    if args.format == "json":
        print(json.dumps(out if len(out) != 1 else next(iter(out.values())), indent=2, default=str))
    elif args.format == "markdown":
        for name, rows in out.items():
            print(f"## Verification history: {name} (last {args.days} days)\n")
            print("| Verified at | Status | Passed | Failed | Backup age (h) | Runner | Backup | Note |\n|---|---|---|---|---|---|---|---|")
            for row in rows:
                note = (_acceptance_note(row) or "").replace("|", "\\|")
                print(f"| {row['verified_at'].isoformat(timespec='seconds')} | {row['status']} | {row['checks_passed']} | "
                      f"{row['checks_failed']} | {row['backup_age_hours'] if row['backup_age_hours'] is not None else '-'} | "
                      f"{_runner(row)} | {row['backup_id'] or '-'} | {note} |")
            print()
    else:
        print("\n\n".join(_history_text(name, rows) for name, rows in out.items()))
    return code


def cmd_cleanup(args: argparse.Namespace) -> int:
    from exporter import record

    settings = load_settings(args.config)
    days = args.retention_days or settings.retention_days
    code = EXIT_OK
    for target, deleted, problem in record.cleanup_targets(settings.targets, days):
        if problem is not None:
            _say(problem)
            code = EXIT_UNKNOWN
        else:
            print(f"target {target.name}: deleted {deleted} rows older than {days} days")
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if settings.http.web_config_file is not None:
        from exporter.webconfig import load_web_config

        # Same check as `pgbv run` makes at start, so a bad certificate path shows here first.
        load_web_config(settings.http.web_config_file)
    print(yaml.safe_dump(masked(settings), sort_keys=False), end="")
    print(f"# configuration is valid: {len(settings.targets)} target(s)", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    return run_demo(folder=args.dir, keep=args.keep, fmt=args.format, once=args.once, listen=args.listen)


def cmd_run(args: argparse.Namespace) -> int:
    from exporter.daemon import run_daemon

    return run_daemon(load_settings(args.config))


# --- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="pg-backup-verifier: proves that a PostgreSQL database's backups exist, are fresh "
        "and hold what they should, and records every verification in the database.",
        epilog="Exit codes: 0 success, 1 warning, 2 failure, 3 unknown (bad arguments or configuration, "
        "target unreachable). Configuration: --config FILE or PGBV_CONFIG, overridden by PGBV_* variables.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration (default: $PGBV_CONFIG)")

    formats = ("text", "json", "markdown")

    p = command("run", cmd_run, "The daemon: verify on schedule, serve /metrics, until SIGTERM or SIGINT (exit 0).")
    config_arg(p)

    p = command("verify", cmd_verify, "Verify every target (or one) now, record the result and print a report.")
    config_arg(p)
    p.add_argument("--target", metavar="NAME", help="verify only this target")
    p.add_argument("--format", choices=formats, default="text", help="report format (default: text)")
    p.add_argument("--no-record", action="store_true", help="do not write the result to backup_verification_log")
    p.add_argument("--full-read", action="store_true",
                   help="read every backup through now where its source reads on a cadence (pgbackrest verify, "
                   "normally every backup.verify_every_days), whatever the last full read was")

    p = command("accept-rows", cmd_accept_rows,
                "Accept a critical table's new row count as intended: verify the target now and record its current "
                "counts as the baseline row_counts compares with (until then a drop keeps failing).")
    config_arg(p)
    p.add_argument("--target", metavar="NAME", required=True, help="the target whose counts are accepted")
    p.add_argument("--table", metavar="NAME", action="append",
                   help="accept only this critical table (repeat for several; default: every critical table)")
    p.add_argument("--reason", metavar="TEXT", help="why the count changed, kept in the log and shown by `pgbv history`")
    p.add_argument("--format", choices=formats, default="text", help="report format (default: text)")

    p = command("restore-drill", cmd_restore_drill,
                "Verify now with a restore drill: restore the newest backup into a scratch copy, check and compare it.")
    config_arg(p)
    p.add_argument("--target", metavar="NAME", help="drill only this target")
    p.add_argument("--keep", action="store_true", help="leave the scratch copy for inspection and print how to connect")
    p.add_argument("--format", choices=formats, default="text", help="report format (default: text)")

    p = command("migrate", cmd_migrate, "Apply the log table migrations to every target's log database (safe to repeat).")
    config_arg(p)

    p = command("history", cmd_history, "Show recorded verifications (get_backup_verification_history).")
    config_arg(p)
    p.add_argument("--target", metavar="NAME", help="only this target")
    p.add_argument("--days", type=_days, default=7, help=f"how many days back, 1 to {DAYS_MAX} (default: 7)")
    p.add_argument("--format", choices=formats, default="text", help="output format (default: text)")

    p = command("cleanup", cmd_cleanup, "Delete log rows older than the retention (cleanup_old_backup_verification_logs).")
    config_arg(p)
    p.add_argument("--retention-days", type=_days, metavar="N",
                   help=f"1 to {DAYS_MAX}; default: retention_days from the configuration")

    p = command("check-config", cmd_check_config, "Validate the configuration and print it with secrets masked.")
    config_arg(p)

    p = command("demo", cmd_demo, "Run the whole system on an embedded PostgreSQL: demo schema, real pg_dump, migrate, verify.")
    p.add_argument("--dir", metavar="FOLDER", help="keep the demo's database and backups here (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="leave the embedded PostgreSQL running and its folder in place")
    p.add_argument("--format", choices=formats, default="markdown", help="report format (default: markdown)")
    p.add_argument("--once", action="store_true", help="print the report and stop, instead of running the daemon until Ctrl-C")
    p.add_argument("--listen", default="127.0.0.1:10047", metavar="HOST:PORT",
                   help="where the demo daemon serves /metrics (default: 127.0.0.1:10047; port 0 picks a free one)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _days(text: str) -> int:
    # The log functions take an integer; a century is far beyond any retention.
    value = _positive_int(text)
    if value > DAYS_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {DAYS_MAX} (a century), got {value}")
    return value


class _ClosedPipeGuard:
    """sys.stdout or sys.stderr that, once its reader has gone (`pgbv history |
    head`), sends the rest of the output to /dev/null. The command still finishes
    what it was doing (a verification is recorded, every target cleaned up) and
    exits with its usual code; only output nobody reads is lost."""

    def __init__(self, stream):
        self._stream = stream

    def _discard_the_rest(self) -> None:
        # Python's advice for BrokenPipeError: point the descriptor at /dev/null, so
        # that the pending buffer and the flush at exit go nowhere, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard_the_rest()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard_the_rest()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
def _server_said(exc: BaseException) -> str | None:
    """The server's words when exc is an error PostgreSQL sent (it has a SQLSTATE): a
    missing library or a corrupt page is the server's fault to report, not a bug in pgbv."""
    psycopg = sys.modules.get("psycopg")  # not imported: no psycopg error can have been raised
    if psycopg is None or not isinstance(exc, psycopg.Error) or exc.sqlstate is None:
        return None
    from exporter.db import first_line

    return f"{first_line(exc)} (SQLSTATE {exc.sqlstate})"


def main(argv: list[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ClosedPipeGuard(stdout), _ClosedPipeGuard(stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()  # a reader gone before the last buffer is found here, not at exit
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_UNKNOWN
    try:
        return args.func(args)
    except ConfigError as exc:
        _say(f"configuration error: {exc}")
        return EXIT_UNKNOWN
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_UNKNOWN
    except Exception as exc:  # noqa: BLE001 - never a traceback for a user; PGBV_DEBUG=1 shows it
        if os.environ.get("PGBV_DEBUG"):
            raise
        said = _server_said(exc)
        if said is not None:
            _say(f"the server reported: {said}")
            return EXIT_UNKNOWN
        _say(f"internal error: {type(exc).__name__}: {exc} (set PGBV_DEBUG=1 for a traceback)")
        return EXIT_UNKNOWN
