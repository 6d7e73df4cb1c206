"""success_rate (seed test 12) against a real log table: this target's runs and the
legacy rows without a target count, other targets' runs do not; too little history
passes and says so; a ratio below the floor fails."""

from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.types.json import Jsonb

from exporter.checks.success_rate import CHECK
from tests.checks.catalog_support import run_prepared
from tests.checks.helpers import check_once
from tests.conftest import make_target

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
    assert result.data == {"success_ratio_7d": None, "success_ratio_30d": None, "runs_7d": 0, "runs_30d": 0}
    assert statements == 2


def test_two_failed_runs_are_not_enough_history(demo_db):
    insert(demo_db, (1, "failure", "app"), (2, "failure", "app"), (10, "success", "app"))
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.outcome == "pass"
    assert result.message == "not enough history yet (2 runs in 7 days; needs 3)"
    assert result.data == {"success_ratio_7d": 0.0, "success_ratio_30d": 1 / 3, "runs_7d": 2, "runs_30d": 3}


def test_only_this_target_and_legacy_rows_count(demo_db):
    insert(
        demo_db,
        *[(day + 0.5, "success", "app") for day in range(6)],   # 6 successes this week
        (0.2, "failure", "app"),                                  # 1 failure this week
        (3, "success", None),                                     # the seed's hand-made row: counts
        (4, "failure", "other"), (5, "failure", "other"),         # another target: never counts
        (6, "warning", "other"), (1, "failure", "other"),
        (20, "warning", "app"),                                   # in 30 days only
        (45, "failure", "app"),                                   # in neither window
    )
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.data == {"success_ratio_7d": 7 / 8, "success_ratio_30d": 7 / 9, "runs_7d": 8, "runs_30d": 9}
    # 87.5% is below the default floor of 90%.
    assert result.outcome == "fail"
    assert result.message == (
        "7 of 8 runs in the last 7 days succeeded (87.5%), below the floor of 90% (min_success_ratio); "
        "30 days: 77.8% (7 of 9 runs)"
    )
    # The same rows judged for the other target: only its own four runs, all failed.
    other = check_once(CHECK, make_target(demo_db, name="other"), now=NOW)
    assert other.data["runs_7d"] == 5 and other.data["success_ratio_7d"] == 1 / 5


def test_ratio_at_the_floor_passes(demo_db):
    insert(demo_db, *[(day / 2, "success", "app") for day in range(9)], (3.3, "failure", "app"))
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.outcome == "pass", result.message
    assert result.data["success_ratio_7d"] == 0.9
    assert result.message == "9 of 10 runs in the last 7 days succeeded (90.0%); 30 days: 90.0% (9 of 10 runs)"


def test_warnings_are_not_successes_and_the_floor_is_configurable(demo_db):
    insert(demo_db, (1, "success", "app"), (2, "warning", "app"), (3, "warning", "app"), (4, "success", "app"))
    strict = check_once(CHECK, make_target(demo_db), now=NOW)
    assert strict.outcome == "fail"
    assert "2 of 4 runs" in strict.message
    lenient = check_once(CHECK, make_target(demo_db, checks={"min_success_ratio": 0.5}), now=NOW)
    assert lenient.outcome == "pass", lenient.message


def test_windows_follow_the_run_time(demo_db):
    # The windows end at the run's own clock (ctx.now), not the database's.
    insert(demo_db, (10, "failure", "app"), (11, "failure", "app"), (12, "failure", "app"))
    result = check_once(CHECK, make_target(demo_db), now=NOW - timedelta(days=9))
    assert result.data["runs_7d"] == 3 and result.outcome == "fail"


def test_separate_log_database(make_db):
    log_dsn = make_db(demo=True)
    insert(log_dsn, (1, "failure", "app"), (2, "failure", "app"), (3, "failure", "app"))
    result = check_once(CHECK, make_target(make_db(), log_dsn=log_dsn), now=NOW)
    assert result.outcome == "fail"
    assert result.data["runs_7d"] == 3


def test_log_table_without_the_target_function_is_an_error(demo_db):
    # A table made by hand from the seed, or migrated before the function existed.
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP FUNCTION backup_verification_log_target(jsonb) CASCADE")
    result = check_once(CHECK, make_target(demo_db), now=NOW)
    assert result.outcome == "error"
    assert result.message == "public.backup_verification_log_target(jsonb) does not exist; run pgbv migrate"
