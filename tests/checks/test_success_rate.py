"""success_rate (seed test 12) against a real log table: this target's runs and the
legacy rows without a target count, other targets' runs do not; too little history
passes and says so; a ratio below the floor warns and never fails. A run counts by
the verdict of its other checks; runs that could not reach the database or the
backups are left out and counted apart; accept-rows entries are not runs."""

from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.types.json import Jsonb

from exporter.checks.success_rate import CHECK
from tests.checks.catalog_support import run_prepared
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target

NOW = datetime.now(timezone.utc)


def insert(dsn: str, *rows: tuple[float, str, str | None]) -> None:
    """Runs (days ago, status, target); target None writes a row as the seed's hand-made one,
    with no target in verification_details."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for days_ago, status, target in rows:
            details = Jsonb({"target": target, "status": status}) if target is not None else None
            conn.execute(
                "INSERT INTO backup_verification_log (verified_at, status, verification_details) VALUES (%s, %s, %s)",
                [NOW - timedelta(days=days_ago), status, details],
            )


def test_always_applies(demo_db):
    assert CHECK.applies(make_target(demo_db, checks={}))
    assert CHECK.uses_log_db


def test_absent_log_table_is_an_error(make_db):
    result = check_once(CHECK, make_target(make_db()), now=NOW)
    assert result.outcome == "error"
    assert result.message == "backup_verification_log does not exist; run pgbv migrate"


def test_empty_log_passes_and_says_why(demo_db):
    result, statements = run_prepared(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "not enough history yet (0 runs in 7 days; needs 3)"
    assert result.data == {"success_ratio_7d": None, "success_ratio_30d": None, "runs_7d": 0, "runs_30d": 0,
                           "unreached_runs_7d": 0, "unreached_runs_30d": 0}
    assert statements == 2


def test_two_failed_runs_are_not_enough_history(demo_db):
    insert(demo_db, (1, "failure", "app"), (2, "failure", "app"), (10, "success", "app"))
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.outcome == "pass"
    assert result.message == "not enough history yet (2 runs in 7 days; needs 3)"
    assert result.data == {"success_ratio_7d": 0.0, "success_ratio_30d": 1 / 3, "runs_7d": 2, "runs_30d": 3,
                           "unreached_runs_7d": 0, "unreached_runs_30d": 0}


def test_only_this_target_and_legacy_rows_count(demo_db):
    insert(
        demo_db,
        *[(day + 0.5, "success", "app") for day in range(6)],   # 6 successes this week
        (0.2, "failure", "app"),                                  # 1 failure this week
        (3, "success", None),                                     # the seed's hand-made row: counts
        (4, "failure", "other"), (5, "failure", "other"),         # another target: never counts
        (6, "warning", "other"), (1, "failure", "other"),
        (20, "failure", "app"),                                   # in 30 days only
        (45, "failure", "app"),                                   # in neither window
    )
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.data == {"success_ratio_7d": 7 / 8, "success_ratio_30d": 7 / 9, "runs_7d": 8, "runs_30d": 9,
                           "unreached_runs_7d": 0, "unreached_runs_30d": 0}
    # 87.5% is below the default floor of 90%: a warning, never a failure.
    assert result.outcome == "warn"
    assert result.message == (
        "7 of 8 runs in the last 7 days succeeded (87.5%), below the floor of 90% (min_success_ratio); "
        "30 days: 77.8% (7 of 9 runs)"
    )
    # The same rows judged for the other target: its own four runs (three failed, one
    # warned: a warning is not a failure) and the hand-made row.
    other = check_once(CHECK, make_target(demo_db, name="other"), now=NOW)
    assert other.data["runs_7d"] == 5 and other.data["success_ratio_7d"] == 2 / 5


def test_ratio_at_the_floor_passes(demo_db):
    insert(demo_db, *[(day / 2, "success", "app") for day in range(9)], (3.3, "failure", "app"))
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.outcome == "pass", result.message
    assert result.data["success_ratio_7d"] == 0.9
    assert result.message == "9 of 10 runs in the last 7 days succeeded (90.0%); 30 days: 90.0% (9 of 10 runs)"


def test_warnings_are_not_failures_and_the_floor_is_configurable(demo_db):
    # The ratio is the share of runs whose checks did not fail: a warning (a backup a
    # little old) pages through PgBackupVerificationWarning, not through the ratio too.
    insert(demo_db, (1, "success", "app"), (2, "warning", "app"), (3, "failure", "app"), (4, "failure", "app"))
    strict = check_once(CHECK, make_target(demo_db), now=NOW)
    assert strict.outcome == "warn"
    assert "2 of 4 runs" in strict.message
    lenient = check_once(CHECK, make_target(demo_db, checks={"min_success_ratio": 0.5}), now=NOW)
    assert lenient.outcome == "pass", lenient.message


def test_windows_follow_the_run_time(demo_db):
    # The windows end at the run's own clock (ctx.now), not the database's.
    insert(demo_db, (10, "failure", "app"), (11, "failure", "app"), (12, "failure", "app"))
    result = check_once(CHECK, make_target(demo_db), now=NOW - timedelta(days=9))
    assert result.data["runs_7d"] == 3 and result.outcome == "warn"


def test_separate_log_database(make_db):
    log_dsn = make_db(demo=True)
    insert(log_dsn, (1, "failure", "app"), (2, "failure", "app"), (3, "failure", "app"))
    result = check_once(CHECK, make_target(make_db(), log_dsn=log_dsn), now=NOW)
    assert result.outcome == "warn"
    assert result.data["runs_7d"] == 3


def test_log_table_without_the_target_function_is_an_error(demo_db):
    # A table made by hand from the seed, or migrated before the function existed.
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP FUNCTION backup_verification_log_target(jsonb) CASCADE")
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.outcome == "error"
    assert result.message == "public.backup_verification_log_target(jsonb) does not exist; run pgbv migrate"


# --- the ratio judges the backups, never itself ----------------------------------------


def ratio_now(target) -> float | None:
    """pgbv_success_ratio{window="7d"} as the metrics snapshot reads it."""
    from exporter import snapshot
    from exporter.db import connect

    with connect(target, log=True) as conn:
        return snapshot.read_target(conn, target, True).success_ratio["7d"]


def unreached_now(target) -> int:
    """pgbv_unreached_runs{window="7d"} as the metrics snapshot reads it."""
    from exporter import snapshot
    from exporter.db import connect

    with connect(target, log=True) as conn:
        return snapshot.read_target(conn, target, True).unreached_runs["7d"]


def test_two_failed_runs_never_lock_healthy_runs_in_failure(demo_db):
    # The sequence: two runs fail on a configuration mistake (a table that
    # does not exist); then the configuration is fixed. Every healthy run after them
    # is recorded as success or warning, never failure, and the ratio climbs.
    from exporter.verify import verify_target

    mistaken = make_target(demo_db, checks={**SEED_CHECKS, "critical_tables": ["no_such_table"]})
    for _ in range(2):
        failed = verify_target(mistaken)
        assert failed.status == "failure" and failed.check("critical_tables").outcome == "fail"
        assert failed.id is not None
    assert ratio_now(mistaken) == 0.0

    healthy = make_target(demo_db)
    ratios, statuses = [], []
    for _ in range(5):
        run = verify_target(healthy)
        assert run.id is not None, run.record_error
        assert run.status in ("success", "warning"), [c.as_dict() for c in run.checks if c.outcome != "pass"]
        # success_rate is the only check that may warn: the database is healthy.
        assert [c.name for c in run.checks if c.outcome != "pass"] in ([], ["success_rate"])
        statuses.append(run.status)
        ratios.append(ratio_now(healthy))
    # Three runs are needed before the ratio is judged: 0 of 2 is "not enough history".
    assert statuses == ["success", "warning", "warning", "warning", "warning"]
    assert ratios == [1 / 3, 2 / 4, 3 / 5, 4 / 6, 5 / 7]
    # The server goes away for two runs (recorded through a log database that is still
    # up): those runs are failures in the log, but they do not lower the ratio.
    gone = make_target("host=127.0.0.1 port=1 dbname=app user=pgbv connect_timeout=2", log_dsn=demo_db)
    for _ in range(2):
        outage = verify_target(gone)
        assert outage.unreachable is not None and outage.id is not None, outage.record_error
    assert ratio_now(healthy) == 5 / 7
    assert unreached_now(healthy) == 2
    after = verify_target(healthy)
    assert after.status == "warning" and ratio_now(healthy) == 6 / 8
    assert after.check("success_rate").data["unreached_runs_7d"] == 2
    with psycopg.connect(demo_db) as conn:
        recorded = [row[0] for row in conn.execute(
            "SELECT status FROM backup_verification_log ORDER BY verified_at").fetchall()]
    assert recorded == ["failure", "failure", *statuses, "failure", "failure", "warning"]


def record_run(dsn: str, result) -> None:
    from exporter import record

    with psycopg.connect(dsn, autocommit=True) as conn:
        record.insert(conn, result)


def run_result(*outcomes: tuple[str, str], days_ago: float = 0.5, **fields):
    from exporter.result import CheckResult, RunResult

    result = RunResult("app", NOW - timedelta(days=days_ago), **fields)
    result.checks = [CheckResult(name, outcome, f"{name} {outcome}") for name, outcome in outcomes]
    return result


def test_runs_that_reached_nothing_are_left_out_and_counted_apart(demo_db, tmp_path):
    from exporter.result import BackupLookup
    from exporter.spool import Spool

    healthy = [("critical_tables", "pass"), ("success_rate", "pass")]
    for day in range(4):
        record_run(demo_db, run_result(*healthy, days_ago=day + 0.5))
    # An unreachable target, recorded straight away (its backup checks still ran: an
    # outage run, docs/daemon.md; one of them even failed)...
    record_run(demo_db, run_result(("backup_age", "pass"), ("backup_readable", "fail"), days_ago=1.2,
                                   unreachable="connection refused"))
    # ...and an outage written back from the spool, as the daemon does.
    spool = Spool(tmp_path / "spool")
    spool.add("app", run_result(days_ago=1.3, unreachable="timeout expired"))
    with psycopg.connect(demo_db) as conn:
        assert spool.flush("app", conn) == 1
    # A backup source that could not answer (a bad repository path, a tool that died):
    # the run proved nothing about the backups.
    record_run(demo_db, run_result(("critical_tables", "pass"), ("backup_age", "error"), days_ago=2.2,
                                   backup=BackupLookup("pgbackrest", error="stanza not found")))
    target = make_target(demo_db)
    result = check_once(CHECK, target, now=NOW)
    assert result.outcome == "pass", result.message
    assert (result.data["runs_7d"], result.data["success_ratio_7d"], result.data["unreached_runs_7d"]) == (4, 1.0, 3)
    assert result.message.endswith("; 3 run(s) that could not reach the database or the backups in 7 days are left out")
    assert ratio_now(target) == 1.0


def test_a_run_counts_by_its_other_checks(demo_db):
    # A success_rate that failed (rows written before it only warned: the lock-in
    # itself) or errored (its log database was down and the row came back through the
    # spool) does not make the run count as failed; a failure of another check does.
    record_run(demo_db, run_result(("critical_tables", "pass"), ("success_rate", "warn"), days_ago=1))
    record_run(demo_db, run_result(("critical_tables", "pass"), ("success_rate", "error"), days_ago=2))
    record_run(demo_db, run_result(("critical_tables", "pass"), ("success_rate", "fail"), days_ago=2.5))
    record_run(demo_db, run_result(("critical_tables", "fail"), ("success_rate", "pass"), days_ago=3))
    record_run(demo_db, run_result(("critical_tables", "fail"), ("success_rate", "fail"), days_ago=3.5))
    record_run(demo_db, run_result(("backup_age", "warn"), ("success_rate", "pass"), days_ago=4))
    with psycopg.connect(demo_db) as conn:
        statuses = [row[0] for row in conn.execute(
            "SELECT status FROM backup_verification_log ORDER BY verified_at DESC").fetchall()]
    assert statuses == ["warning", "failure", "failure", "failure", "failure", "warning"]
    result = check_once(CHECK, make_target(demo_db, checks={"min_success_ratio": 0.5}), now=NOW)
    assert (result.data["runs_7d"], result.data["success_ratio_7d"]) == (6, 4 / 6)
    assert result.outcome == "pass", result.message


def test_accept_rows_entries_are_not_runs(demo_db):
    for day in range(3):
        record_run(demo_db, run_result(("critical_tables", "pass"), days_ago=day + 0.5))
    with psycopg.connect(demo_db, autocommit=True) as conn:
        for status in ("success", "failure"):
            conn.execute(
                "INSERT INTO backup_verification_log (verified_at, status, verification_details) VALUES (%s, %s, %s)",
                [NOW - timedelta(days=1), status,
                 Jsonb({"target": "app", "kind": "accept_rows", "table": "appointments", "by": "dba", "reason": "purge"})],
            )
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert (result.data["runs_7d"], result.data["unreached_runs_7d"], result.data["success_ratio_7d"]) == (3, 0, 1.0)


def test_the_ratio_never_opens_the_run_documents(demo_db):
    # A run's verification_details is several KB, compressed out of the row (TOAST):
    # opening it for every run in the window made the ratio ~40x slower (bench/). The
    # server counts the TOAST blocks a session reads: the ratio over successes,
    # warnings, failures (only success_rate's, or real ones) and unreachable runs reads none.
    from datetime import timedelta as td

    from exporter import record

    bulky = {"checks": [{"name": f"check_{i}", "message": NOW.isoformat() + str(i) * 40} for i in range(200)]}
    kinds = [(("critical_tables", "pass"),), (("critical_tables", "pass"), ("success_rate", "warn")),
             (("critical_tables", "fail"),), (("critical_tables", "pass"), ("success_rate", "fail"))]
    for index in range(40):
        result = run_result(*kinds[index % 4], days_ago=index / 10)
        result.facts["bulk"] = bulky
        record_run(demo_db, result)
    unreachable = run_result(days_ago=0.3, unreachable="connection refused")
    unreachable.facts["bulk"] = bulky
    record_run(demo_db, unreachable)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        assert conn.execute("SELECT pg_column_size(verification_details) < octet_length(verification_details::text)"
                            " FROM backup_verification_log LIMIT 1").fetchone()[0]  # compressed: TOASTed

        def toast_blocks() -> int:
            conn.execute("SELECT pg_stat_force_next_flush()")
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return conn.execute("SELECT coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0) FROM pg_statio_user_tables"
                                " WHERE relname = 'backup_verification_log'").fetchone()[0]

        before = toast_blocks()
        runs = record.success_ratios(conn, "app", NOW + td(seconds=1))
        after = toast_blocks()
        conn.execute("SELECT verification_details->>'target' FROM backup_verification_log").fetchall()
        opened = toast_blocks()
    assert runs["7d"] == record.RunCounts(counted=40, succeeded=30, unreached=1)
    assert after == before, "the ratio read TOASTed documents"
    assert opened > after  # the measure sees a read of the documents
