"""The exposition of a Snapshot: the metric contract of design.md, golden files, caching.

Golden files (tests/golden/*.prom) hold the exact bytes for a recorded snapshot;
a diff is a bug or a behaviour change the commit explains. To accept a change:
    PGBV_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_metrics.py
then review the diff of tests/golden/.
"""

from __future__ import annotations

import gzip
import os
import shutil
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import exporter
from exporter.config import Settings
from exporter.metrics import Exposition, render
from exporter.snapshot import Snapshot, TargetSnapshot, empty

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_VERSION = "0.0.0-golden"  # pinned so that a release does not rewrite the golden files

# The design's metric table: name -> labels besides the value. The contract.
CONTRACT: dict[str, tuple[str, ...]] = {
    "pgbv_up": ("target",),
    "pgbv_last_run_timestamp_seconds": ("target",),
    "pgbv_last_success_timestamp_seconds": ("target",),
    "pgbv_last_run_status": ("target", "status"),
    "pgbv_last_run_duration_seconds": ("target",),
    "pgbv_checks": ("target", "outcome"),
    "pgbv_check_success": ("target", "check"),
    "pgbv_backup_last_completion_timestamp_seconds": ("target",),
    "pgbv_backup_age_seconds": ("target",),
    "pgbv_backup_size_bytes": ("target",),
    "pgbv_database_size_bytes": ("target",),
    "pgbv_table_rows": ("target", "table"),
    "pgbv_rls_policies": ("target", "table"),
    "pgbv_success_ratio": ("target", "window"),
    "pgbv_unreached_runs": ("target", "window"),
    "pgbv_next_run_timestamp_seconds": (),
    "pgbv_backup_warn_age_seconds": ("target",),
    "pgbv_backup_max_age_seconds": ("target",),
    "pgbv_success_ratio_min": ("target",),
    "pgbv_schedule_interval_seconds": (),
    "pgbv_spool_rows": (),
    "pgbv_restore_duration_seconds": ("target",),
    "pgbv_restore_last_success_timestamp_seconds": ("target",),
    "pgbv_rto_target_seconds": ("target",),
    "pgbv_restore_interval_seconds": ("target",),
    "pgbv_restore_rows": ("target", "table"),
    "pgbv_recovery_window_start_timestamp_seconds": ("target",),
    "pgbv_recovery_window_end_timestamp_seconds": ("target",),
    "pgbv_restore_recovered_until_timestamp_seconds": ("target",),
    "pgbv_restore_rpo_seconds": ("target",),
    "pgbv_restore_rpo_objective_seconds": ("target",),
    "pgbv_shard_info": ("shard", "total_shards"),
    "pgbv_runs_total": ("trigger",),
    "pgbv_shard_last_run_timestamp_seconds": ("shard",),
    "pgbv_exporter_build_info": ("version",),
}
# Series every target has from the first scrape (per-table, per-check and age-limit series excepted).
PER_TARGET_ALWAYS = {
    "pgbv_up": 1,
    "pgbv_last_run_timestamp_seconds": 1,
    "pgbv_last_success_timestamp_seconds": 1,
    "pgbv_last_run_status": 3,
    "pgbv_last_run_duration_seconds": 1,
    "pgbv_checks": 3,
    "pgbv_backup_last_completion_timestamp_seconds": 1,
    "pgbv_backup_age_seconds": 1,
    "pgbv_backup_size_bytes": 1,
    "pgbv_database_size_bytes": 1,
    "pgbv_success_ratio": 2,
    "pgbv_unreached_runs": 2,
    "pgbv_success_ratio_min": 1,
}

# 2026-01-28 05:00:00 UTC, the seed's first scheduled slot.
RUN_START = 1769576400.0


def two_target_settings() -> Settings:
    return Settings(
        targets=[
            {
                "name": "app",
                "dsn": "host=db.example dbname=app user=pgbv",
                "password": "Sup3r-s3cret-pw",
                "backup": {"source": "directory", "path": "/var/backups/app", "pattern": "*.dump"},
                "checks": {"min_success_ratio": 0.95},
            },
            {"name": "reporting", "dsn": "host=db.example dbname=reporting user=pgbv"},
        ]
    )


def empty_snapshot() -> Snapshot:
    return replace(empty(two_target_settings()), built_at=RUN_START)


def full_snapshot() -> Snapshot:
    app = TargetSnapshot(
        name="app",
        up=True,
        last_run_timestamp=RUN_START + 12.5,
        last_own_run_started=RUN_START,
        last_success_timestamp=RUN_START + 12.5,
        last_status="success",
        last_duration_seconds=12.5,
        checks_passed=13,
        checks_warned=1,
        checks_failed=0,
        check_success={
            "log_table": 1, "log_functions": 1, "critical_tables": 1, "row_counts": 1, "rls_policies": 1,
            "database_size": 1, "required_indexes": 1, "required_tables": 1, "index_coverage": 1,
            "required_functions": 1, "success_rate": 1, "constraints_valid": 1, "backup_age": 1,
            "backup_size": 1,  # backup_size warned: a warning still counts as success
        },
        backup_completion_timestamp=RUN_START - 3 * 3600,
        backup_age_seconds=3 * 3600 + 0.25,
        backup_size_bytes=734_003_200,
        database_size_bytes=12_884_901_888,
        table_rows={"public.appointments": 41, "public.users": 12, "audit.logs": 0, "public.clinics": 3},
        rls_policies={"public.appointments": 9, "public.users": 11, "public.clinics": 3},
        success_ratio={"7d": 1.0, "30d": 27 / 28},
        unreached_runs={"7d": 0, "30d": 2},  # two nights the target could not be reached: left out of the ratio
        warn_age_seconds=26 * 3600.0,
        max_age_seconds=49 * 3600.0,
        success_ratio_min=0.95,
        rto_target_seconds=3600.0,
        restore_interval_seconds=7 * 86400.0,
        restore_duration_seconds=184.5,
        restore_last_success_timestamp=RUN_START - 86400 + 184.5,
        restore_rows={"public.appointments": 40, "public.users": 12},
        # A WAL archive from the oldest base backup's end (9 days back) to 40 s before the run;
        # the last drill replayed it to 2 min before the drill started (a day before).
        keeps_wal=True,
        recovery_window_start=RUN_START - 9 * 86400 + 1800,
        recovery_window_end=RUN_START - 40,
        rpo_objective_seconds=24 * 3600.0,
        restore_recovered_until=RUN_START - 86400 - 120,
        restore_rpo_seconds=120.5,
    )
    reporting = TargetSnapshot(
        name="reporting",
        up=True,
        last_run_timestamp=RUN_START + 3.0,
        last_own_run_started=RUN_START - 86400,  # its newest run was a takeover
        last_success_timestamp=RUN_START + 3.0,
        last_status="success",
        last_duration_seconds=3.0,
        checks_passed=2,
        check_success={"critical_tables": 1, "success_rate": 1},
        database_size_bytes=52_428_800,
        table_rows={"public.reports": 1200},
        success_ratio={"7d": 1.0, "30d": 1.0},
        unreached_runs={"7d": 0, "30d": 0},
        success_ratio_min=0.9,
    )
    return Snapshot(
        targets=(app, reporting),
        schedule_interval_seconds=86400.0,
        next_run_timestamp=RUN_START + 86400,
        spool_rows=2,
        built_at=RUN_START + 20,
        shard=1,
        total_shards=3,
        runs_total={"own": 7, "takeover": 2},
    )


def failure_snapshot() -> Snapshot:
    app = TargetSnapshot(
        name="app",
        up=True,
        last_run_timestamp=RUN_START + 8.0,
        last_success_timestamp=RUN_START - 86400 + 11.0,
        last_status="failure",
        last_duration_seconds=8.0,
        checks_passed=12,
        checks_warned=0,
        checks_failed=2,
        check_success={"backup_age": 0, "backup_size": 0, "critical_tables": 1, "row_counts": 1},
        backup_completion_timestamp=RUN_START - 60 * 3600,
        backup_age_seconds=60 * 3600.0,
        backup_size_bytes=512,
        database_size_bytes=12_884_901_888,
        table_rows={"public.appointments": 41},
        rls_policies={"public.appointments": 9},
        success_ratio={"7d": 6 / 7, "30d": 29 / 30},
        unreached_runs={"7d": 0, "30d": 0},
        warn_age_seconds=26 * 3600.0,
        max_age_seconds=49 * 3600.0,
        success_ratio_min=0.95,
    )
    # Unreachable: the daemon recorded a failure row without checks, and it is down now.
    # That run reached nothing: it is left out of the ratio (no counted run: 0) and counted apart.
    reporting = TargetSnapshot(
        name="reporting",
        up=False,
        last_run_timestamp=RUN_START + 5.0,
        last_status="failure",
        last_duration_seconds=5.0,
        success_ratio={"7d": None, "30d": None},
        unreached_runs={"7d": 1, "30d": 1},
        success_ratio_min=0.9,
    )
    return Snapshot(
        targets=(app, reporting),
        schedule_interval_seconds=86400.0,
        next_run_timestamp=RUN_START + 86400,
        spool_rows=1,
        built_at=RUN_START + 20,
    )


def big_snapshot(targets: int = 10, tables: int = 50) -> Snapshot:
    names = [f"public.table_{i:02d}" for i in range(tables)]
    return Snapshot(
        targets=tuple(
            replace(
                full_snapshot().targets[0],
                name=f"target-{n:02d}",
                table_rows={t: 1000 + i for i, t in enumerate(names)},
                rls_policies={t: 2 for t in names},
            )
            for n in range(targets)
        ),
        schedule_interval_seconds=86400.0,
        next_run_timestamp=RUN_START + 86400,
    )


SNAPSHOTS = {"empty": empty_snapshot, "full": full_snapshot, "failure": failure_snapshot}


def parse(body: bytes) -> dict[str, dict[tuple, float]]:
    """metric name -> {sorted label items: value}; fails on a sample timestamp."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        # The one counter is this replica's own count of runs (metrics.py says why).
        assert family.type == "gauge" or (family.type, family.name) == ("counter", "pgbv_runs"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        name = family.name + ("_total" if family.type == "counter" else "")
        series = found.setdefault(name, {})
        for sample in family.samples:
            assert sample.name == name, sample.name
            assert sample.timestamp is None, f"{sample.name} carries a timestamp"
            key = tuple(sorted(sample.labels.items()))
            assert key not in series, f"duplicate series {sample.name}{dict(key)}"
            series[key] = sample.value
    return found


def value(found, name: str, **labels) -> float:
    return found[name][tuple(sorted(labels.items()))]


def promtool_check(body: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian package 'prometheus': apt-get install -y prometheus)")
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


@pytest.fixture
def pinned_version(monkeypatch):
    monkeypatch.setattr(exporter, "__version__", GOLDEN_VERSION)


# --- golden files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_golden(name, pinned_version):
    body = render(SNAPSHOTS[name]())
    path = GOLDEN / f"{name}.prom"
    if os.environ.get("PGBV_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(body)
    assert path.exists(), f"{path} missing; create it with PGBV_UPDATE_GOLDEN=1"
    assert body == path.read_bytes(), f"exposition differs from {path}; if intended, PGBV_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_golden_files_pass_promtool(name):
    promtool_check((GOLDEN / f"{name}.prom").read_bytes())


# --- the contract ------------------------------------------------------------------------


def test_every_contract_metric_exists_before_the_first_run_with_zeros():
    snapshot = empty_snapshot()
    found = parse(render(snapshot))
    assert set(found) == set(CONTRACT)
    for name, series in found.items():
        for key in series:
            assert tuple(sorted(CONTRACT[name])) == tuple(k for k, _ in key), (name, key)
    for target in ("app", "reporting"):
        for name, count in PER_TARGET_ALWAYS.items():
            mine = {k: v for k, v in found[name].items() if ("target", target) in k}
            assert len(mine) == count, (name, target)
            if name != "pgbv_success_ratio_min":
                assert set(mine.values()) == {0.0}, (name, target, mine)
    # Nothing was seen yet: no per-check or per-table series.
    assert found["pgbv_check_success"] == found["pgbv_table_rows"] == found["pgbv_rls_policies"] == {}
    assert value(found, "pgbv_success_ratio_min", target="app") == 0.95
    assert value(found, "pgbv_success_ratio_min", target="reporting") == 0.9
    assert value(found, "pgbv_next_run_timestamp_seconds") == 0.0
    assert value(found, "pgbv_schedule_interval_seconds") == 86400.0
    assert value(found, "pgbv_spool_rows") == 0.0


def test_age_limits_only_for_targets_with_a_backup_source():
    found = parse(render(empty_snapshot()))
    assert found["pgbv_backup_warn_age_seconds"] == {(("target", "app"),): 26 * 3600.0}
    assert found["pgbv_backup_max_age_seconds"] == {(("target", "app"),): 49 * 3600.0}


def test_values_follow_the_snapshot():
    snapshot = full_snapshot()
    found = parse(render(snapshot))
    for t in snapshot.targets:
        assert value(found, "pgbv_up", target=t.name) == 1.0
        assert value(found, "pgbv_last_run_timestamp_seconds", target=t.name) == t.last_run_timestamp
        assert value(found, "pgbv_last_success_timestamp_seconds", target=t.name) == t.last_success_timestamp
        assert value(found, "pgbv_last_run_duration_seconds", target=t.name) == t.last_duration_seconds
        assert value(found, "pgbv_checks", target=t.name, outcome="passed") == t.checks_passed
        assert value(found, "pgbv_checks", target=t.name, outcome="warned") == t.checks_warned
        assert value(found, "pgbv_checks", target=t.name, outcome="failed") == t.checks_failed
        assert {dict(k)["check"]: v for k, v in found["pgbv_check_success"].items() if ("target", t.name) in k} == t.check_success
        assert {dict(k)["table"]: v for k, v in found["pgbv_table_rows"].items() if ("target", t.name) in k} == t.table_rows
        assert {dict(k)["table"]: v for k, v in found["pgbv_rls_policies"].items() if ("target", t.name) in k} == t.rls_policies
        for window in ("7d", "30d"):
            assert value(found, "pgbv_success_ratio", target=t.name, window=window) == t.success_ratio[window]
            assert value(found, "pgbv_unreached_runs", target=t.name, window=window) == t.unreached_runs[window]
        assert value(found, "pgbv_success_ratio_min", target=t.name) == t.success_ratio_min
        assert value(found, "pgbv_database_size_bytes", target=t.name) == t.database_size_bytes
    app = snapshot.targets[0]
    assert value(found, "pgbv_backup_last_completion_timestamp_seconds", target="app") == app.backup_completion_timestamp
    assert value(found, "pgbv_backup_age_seconds", target="app") == app.backup_age_seconds
    assert value(found, "pgbv_backup_size_bytes", target="app") == app.backup_size_bytes
    # reporting has no backup source: its backup series are 0, its limits absent.
    assert value(found, "pgbv_backup_size_bytes", target="reporting") == 0.0
    assert (("target", "reporting"),) not in found["pgbv_backup_max_age_seconds"]
    assert value(found, "pgbv_next_run_timestamp_seconds") == RUN_START + 86400
    assert value(found, "pgbv_spool_rows") == 2.0


@pytest.mark.parametrize("status", ["success", "warning", "failure", None, "something-else"])
def test_last_run_status_is_one_hot(status):
    snapshot = Snapshot(targets=(TargetSnapshot(name="app", last_status=status),), schedule_interval_seconds=60)
    found = parse(render(snapshot))
    got = {dict(k)["status"]: v for k, v in found["pgbv_last_run_status"].items()}
    assert got == {s: (1.0 if s == status else 0.0) for s in ("success", "warning", "failure")}


def test_failing_run_shows_failed_checks_at_zero_and_unknown_ratio_as_zero():
    found = parse(render(failure_snapshot()))
    assert value(found, "pgbv_check_success", target="app", check="backup_age") == 0.0
    assert value(found, "pgbv_check_success", target="app", check="critical_tables") == 1.0
    assert value(found, "pgbv_last_run_status", target="app", status="failure") == 1.0
    assert value(found, "pgbv_up", target="reporting") == 0.0
    assert value(found, "pgbv_last_success_timestamp_seconds", target="reporting") == 0.0
    assert value(found, "pgbv_success_ratio", target="reporting", window="30d") == 0.0
    # Its unreachable run is not a failed verification: outside the ratio, counted apart.
    assert value(found, "pgbv_success_ratio", target="reporting", window="7d") == 0.0
    assert value(found, "pgbv_unreached_runs", target="reporting", window="7d") == 1.0


def test_build_info_names_the_running_version():
    found = parse(render(empty_snapshot()))
    assert found["pgbv_exporter_build_info"] == {(("version", exporter.__version__),): 1.0}


def test_no_default_collectors_created_series_or_timestamps():
    body = render(full_snapshot()).decode()
    assert "_created" not in body
    assert not any(line.startswith(("process_", "python_", "# HELP process_", "# HELP python_")) for line in body.splitlines())
    for line in body.splitlines():
        if not line.startswith("#"):
            series_end = line.rfind("}") + 1 or line.index(" ")
            assert len(line[series_end:].split()) == 1, f"sample with a timestamp: {line}"


def test_help_texts_say_where_values_come_from():
    body = render(empty_snapshot()).decode()
    helps = {line.split()[2]: line for line in body.splitlines() if line.startswith("# HELP")}
    for name in ("pgbv_last_run_timestamp_seconds", "pgbv_checks", "pgbv_table_rows", "pgbv_backup_age_seconds"):
        assert "cached from the last verification recorded in backup_verification_log" in helps[name]
    for name in ("pgbv_backup_warn_age_seconds", "pgbv_success_ratio_min", "pgbv_schedule_interval_seconds"):
        assert "from the configuration" in helps[name]


def test_label_values_are_escaped():
    snapshot = Snapshot(
        targets=(TargetSnapshot(name="app", table_rows={'public."Odd\\Name"': 1}),), schedule_interval_seconds=60
    )
    body = render(snapshot)
    assert b'table="public.\\"Odd\\\\Name\\""' in body
    assert value(parse(body), "pgbv_table_rows", target="app", table='public."Odd\\Name"') == 1.0


# --- the cache -------------------------------------------------------------------------------


def test_exposition_renders_once_per_snapshot_object():
    current = [full_snapshot()]
    exposition = Exposition(lambda: current[0])
    first = exposition.get()
    for _ in range(5):
        assert exposition.get() is first
    assert exposition.renders == 1
    assert first.plain == render(current[0])
    assert gzip.decompress(first.gzipped) == first.plain
    # An equal but new snapshot is a new object: identity, not equality, decides.
    current[0] = full_snapshot()
    second = exposition.get()
    assert exposition.renders == 2 and second is not first and second.plain == first.plain
    assert second.gzipped == first.gzipped  # gzip without a timestamp: same bytes for same input


def test_concurrent_gets_of_a_new_snapshot_render_once():
    snapshot = big_snapshot()
    exposition = Exposition(lambda: snapshot)
    start = threading.Barrier(8)

    def get(_):
        start.wait()
        return exposition.get().plain

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(get, range(8)))
    assert exposition.renders == 1
    assert len(set(bodies)) == 1


def test_render_of_ten_targets_with_fifty_tables_is_quick():
    snapshot = big_snapshot()
    started = time.perf_counter()
    body = render(snapshot)
    elapsed = time.perf_counter() - started
    found = parse(body)
    assert len(found["pgbv_table_rows"]) == len(found["pgbv_rls_policies"]) == 500
    # Generous: it takes a few ms; the bound only catches an accidental quadratic.
    assert elapsed < 1.0, f"render took {elapsed:.3f} s for {len(body)} bytes"


def test_docs_list_exactly_the_exported_metrics():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    exported = {line.split()[2] for line in (root / "tests/golden/full.prom").read_text().splitlines() if line.startswith("# HELP")}
    documented = set(re.findall(r"^\| `(pgbv_[a-z_]+)` \|", (root / "docs/metrics.md").read_text(), re.MULTILINE))
    assert documented == exported


# --- the recovery window and the measured RPO, from real log table rows (issue 14) -------------
#
# Rows of the shapes the wal_continuity check and the replaying drills record
# (verification_details->'wal', ->'restore'), written through record.insert into a real
# log table; the snapshot reads them back and the exposition shows them.

from datetime import datetime, timedelta, timezone  # noqa: E402

import psycopg  # noqa: E402

from exporter import snapshot  # noqa: E402
from exporter.migrate import migrate  # noqa: E402
from exporter.result import BackupInfo, BackupLookup, CheckResult, RunResult  # noqa: E402
from exporter.verify import write  # noqa: E402
from tests.conftest import make_target  # noqa: E402

NOW = datetime(2026, 3, 2, 5, 0, tzinfo=timezone.utc)
PGBACKREST = {"source": "pgbackrest", "stanza": "main"}


class Counting:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.statements = conn, 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        return self.conn.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def wal_entry(start: datetime | None, end: datetime | None, gap: str | None = None) -> dict:
    """verification_details->'wal' as WalArchive.as_dict writes it."""
    return {
        "where": "pgbackrest stanza main", "first": "000000010000000000000002", "last": "00000001000000000000001F",
        "last_archived_at": end.isoformat() if end else None, "checked_from": "000000010000000000000002",
        "segments_checked": 30, "gap": gap, "timeline": 1,
        "recovery_window": {"start": start.isoformat() if start else None, "end": end.isoformat() if end else None},
    }


def restore_entry(started: datetime, recovered_until: datetime | None, kind: str = "latest", outcome: str = "pass") -> dict:
    """verification_details->'restore' of a physical drill; recovered_until None: it did not replay."""
    rpo = (started - recovered_until).total_seconds() if recovered_until and kind == "latest" else None
    return {
        "kind": "physical", "duration_seconds": 95.0, "rows": {"public.accounts": 50}, "outcome": outcome,
        "message": "restored", "recovered_until": recovered_until.isoformat() if recovered_until else None,
        "rpo_seconds": rpo,
        "recovery_target": {"kind": kind, "time": recovered_until.isoformat() if kind == "random" and recovered_until else None},
    }


def log_run(conn, at: datetime, *, wal: dict | None = None, restore: dict | None = None, unreachable: str | None = None,
            target: str = "app") -> None:
    checks = []
    if unreachable is None:
        checks.append(CheckResult("backup_age", "pass", "fresh"))
        if wal is not None:
            outcome = "fail" if wal.get("gap") else "pass"
            checks.append(CheckResult("wal_continuity", outcome, f"first missing segment {wal['gap']}" if wal.get("gap")
                                      else "no gap", data={"wal": wal}))
        if restore is not None:
            checks.append(CheckResult("restore", restore["outcome"], restore["message"]))
            if restore.get("rpo_seconds") is not None:
                checks.append(CheckResult("rpo", "pass", "within the objective", observed=restore["rpo_seconds"],
                                          expected=86400.0))
    facts = {k: v for k, v in (("wal", wal), ("restore", restore)) if v is not None}
    result = RunResult(target, at, checks=checks, duration_seconds=2.0, facts=facts,
                       backup=BackupLookup("pgbackrest", BackupInfo("20260301-050000F", at - timedelta(hours=1), 4096,
                                                                    "pgbackrest full")))
    result.unreachable = unreachable
    write(conn, result)


def read(conn, target) -> tuple[snapshot.TargetSnapshot, int, dict]:
    counting = Counting(conn)
    picture = snapshot.read_target(counting, target, up=True, now=NOW)
    found = parse(render(Snapshot(targets=(picture,), schedule_interval_seconds=86400.0)))
    return picture, counting.statements, found


@pytest.fixture
def log_db(make_db):
    dsn = make_db()
    migrate(make_target(dsn, checks={}))
    return dsn


def test_window_and_rpo_from_the_newest_run_and_drill_without_another_statement(log_db):
    target = make_target(log_db, checks={}, backup=PGBACKREST, restore={"enabled": True, "rpo_hours": 12})
    oldest = NOW - timedelta(days=9)
    with psycopg.connect(log_db, autocommit=True) as conn:
        log_run(conn, NOW - timedelta(days=2), wal=wal_entry(oldest, NOW - timedelta(days=2, minutes=1)))
        drill_start = NOW - timedelta(days=1)
        log_run(conn, drill_start, wal=wal_entry(oldest, drill_start - timedelta(minutes=1)),
                restore=restore_entry(drill_start, drill_start - timedelta(seconds=95)))
        picture, statements, found = read(conn, target)
    # The newest run is the drill and carries the window: the 5 statements of a drilling target.
    assert statements == 5
    assert value(found, "pgbv_recovery_window_start_timestamp_seconds", target="app") == oldest.timestamp()
    assert value(found, "pgbv_recovery_window_end_timestamp_seconds", target="app") == (drill_start - timedelta(minutes=1)).timestamp()
    assert value(found, "pgbv_restore_recovered_until_timestamp_seconds", target="app") == (drill_start - timedelta(seconds=95)).timestamp()
    assert value(found, "pgbv_restore_rpo_seconds", target="app") == 95.0
    assert value(found, "pgbv_restore_rpo_objective_seconds", target="app") == 12 * 3600.0
    assert value(found, "pgbv_check_success", target="app", check="wal_continuity") == 1.0
    assert value(found, "pgbv_check_success", target="app", check="rpo") == 1.0
    promtool_check(render(Snapshot(targets=(picture,), schedule_interval_seconds=86400.0)))


def test_older_rows_fill_in_what_the_newest_run_and_drill_lack_in_one_statement(log_db):
    target = make_target(log_db, checks={}, backup=PGBACKREST, restore={"enabled": True})
    oldest = NOW - timedelta(days=9)
    measured_at = NOW - timedelta(days=8)
    with psycopg.connect(log_db, autocommit=True) as conn:
        # A drill that replayed to the archive's end: the measure.
        log_run(conn, measured_at, wal=wal_entry(oldest, measured_at - timedelta(minutes=3)),
                restore=restore_entry(measured_at, measured_at - timedelta(minutes=7)))
        # A point-in-time drill to a random time: not a recovery point, does not count.
        random_at = NOW - timedelta(days=4)
        log_run(conn, random_at, wal=wal_entry(oldest, random_at - timedelta(minutes=1)),
                restore=restore_entry(random_at, oldest + timedelta(days=2), kind="random"))
        # The newest drill failed before it replayed: the older measure stands.
        failed_at = NOW - timedelta(days=1)
        log_run(conn, failed_at, wal=wal_entry(oldest, failed_at - timedelta(minutes=2)),
                restore=restore_entry(failed_at, None, outcome="fail"))
        # The newest run could not reach the target, and read no archive: the window is the drill's run's.
        log_run(conn, NOW - timedelta(hours=1), unreachable="connection refused")
        picture, statements, found = read(conn, target)
    assert statements == 6  # one more, for both
    assert picture.recovery_window_end == (failed_at - timedelta(minutes=2)).timestamp()
    assert picture.recovery_window_start == oldest.timestamp()
    assert value(found, "pgbv_restore_recovered_until_timestamp_seconds", target="app") == (measured_at - timedelta(minutes=7)).timestamp()
    assert value(found, "pgbv_restore_rpo_seconds", target="app") == 420.0
    assert value(found, "pgbv_restore_rpo_objective_seconds", target="app") == 24 * 3600.0


def test_a_wal_target_shows_zeros_before_anything_is_known(log_db):
    target = make_target(log_db, checks={}, backup={"source": "directory", "path": "/var/backups/base",
                                                   "wal_path": "/var/backups/wal"}, restore={"enabled": True})
    with psycopg.connect(log_db, autocommit=True) as conn:
        picture, statements, found = read(conn, target)
        assert statements == 5  # an empty table: nothing older to look for
        # Runs but no drill yet, and an archive that knows no base backup (start null).
        log_run(conn, NOW - timedelta(hours=3), wal=wal_entry(None, NOW - timedelta(hours=3, minutes=1)))
        picture, statements, later = read(conn, target)
        assert statements == 5
    for name in ("pgbv_recovery_window_start_timestamp_seconds", "pgbv_recovery_window_end_timestamp_seconds",
                 "pgbv_restore_recovered_until_timestamp_seconds", "pgbv_restore_rpo_seconds"):
        assert found[name] == {(("target", "app"),): 0.0}, name
    assert found["pgbv_restore_rpo_objective_seconds"] == {(("target", "app"),): 86400.0}
    assert value(later, "pgbv_recovery_window_start_timestamp_seconds", target="app") == 0.0
    assert value(later, "pgbv_recovery_window_end_timestamp_seconds", target="app") == (NOW - timedelta(hours=3, minutes=1)).timestamp()
    assert value(later, "pgbv_restore_rpo_seconds", target="app") == 0.0


@pytest.mark.parametrize("backup, restore, window, rpo", [
    ({"source": "directory", "path": "/var/backups/app", "pattern": "*.dump"}, {"enabled": True}, False, False),
    ({"source": "none"}, {"enabled": False}, False, False),
    (PGBACKREST, {"enabled": False}, True, False),  # a window, but no drill measures an RPO
    ({"source": "barman", "server": "pg"}, {"enabled": True}, True, True),
    ({"source": "walg"}, {"enabled": False}, True, False),  # WAL-G has no drill
    ({"source": "command", "command": ["/bin/true"]}, {"enabled": True}, False, False),
])
def test_the_families_are_absent_for_targets_they_do_not_apply_to(log_db, backup, restore, window, rpo):
    target = make_target(log_db, checks={}, backup=backup, restore=restore)
    with psycopg.connect(log_db, autocommit=True) as conn:
        # Even rows that carry the shapes do not make the series appear: the configuration decides.
        drill_at = NOW - timedelta(hours=2)
        log_run(conn, drill_at, wal=wal_entry(NOW - timedelta(days=3), drill_at),
                restore=restore_entry(drill_at, drill_at - timedelta(minutes=1)))
        _, _, found = read(conn, target)
    assert bool(found["pgbv_recovery_window_start_timestamp_seconds"]) is window
    assert bool(found["pgbv_recovery_window_end_timestamp_seconds"]) is window
    for name in ("pgbv_restore_recovered_until_timestamp_seconds", "pgbv_restore_rpo_seconds",
                 "pgbv_restore_rpo_objective_seconds"):
        assert bool(found[name]) is rpo, name


def test_a_spooled_run_moves_the_window_on(log_db, tmp_path):
    from exporter.spool import Spool

    target = make_target(log_db, checks={}, backup=PGBACKREST)
    start = NOW - timedelta(days=9)
    with psycopg.connect(log_db, autocommit=True) as conn:
        log_run(conn, NOW - timedelta(hours=2), wal=wal_entry(start, NOW - timedelta(hours=2, minutes=1)))
        table = snapshot.read_target(conn, target, up=False, now=NOW)
    spool = Spool(tmp_path / "spool")
    newest = RunResult("app", NOW - timedelta(minutes=5), checks=[CheckResult("wal_continuity", "pass", "no gap")],
                       facts={"wal": wal_entry(start + timedelta(days=1), NOW - timedelta(minutes=6))})
    spool.add("app", newest)
    picture = snapshot.with_spooled(table, spool.newest("app"))
    assert picture.recovery_window_start == (start + timedelta(days=1)).timestamp()
    assert picture.recovery_window_end == (NOW - timedelta(minutes=6)).timestamp()
    # A spooled run that did not read the archive leaves the table's window as it was.
    spool.add("app", RunResult("app", NOW - timedelta(minutes=1), checks=[CheckResult("backup_age", "pass", "fresh")]))
    later = snapshot.with_spooled(table, spool.newest("app"))
    assert (later.recovery_window_start, later.recovery_window_end) == (table.recovery_window_start, table.recovery_window_end)
    assert later.last_run_timestamp > table.last_run_timestamp


def test_the_older_rows_statement_keeps_to_the_target_index(log_db):
    with psycopg.connect(log_db) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + snapshot._older_sql(True, True), {"target": "app"}))
    assert plan.count("idx_backup_verification_log_target") >= 3, plan  # the window's read, both halves of the replay's
    assert "Seq Scan" not in plan, plan


def test_the_replay_search_runs_once_per_drill(log_db):
    # A target that drills to random points only: its newest drill never measures the RPO,
    # and the search behind it would walk the whole log at every refresh.
    target = make_target(log_db, checks={}, backup=PGBACKREST, restore={"enabled": True, "target": "random"})
    oldest = NOW - timedelta(days=9)
    with psycopg.connect(log_db, autocommit=True) as conn:
        measured_at = NOW - timedelta(days=6)
        log_run(conn, measured_at, wal=wal_entry(oldest, measured_at),
                restore=restore_entry(measured_at, measured_at - timedelta(minutes=10)))
        random_at = NOW - timedelta(days=3)
        log_run(conn, random_at, wal=wal_entry(oldest, random_at), restore=restore_entry(random_at, oldest, kind="random"))
        first, statements, _ = read(conn, target)
        assert statements == 6 and first.restore_rpo_seconds == 600.0
        again, statements, _ = read(conn, target)
        assert statements == 5 and again.restore_rpo_seconds == 600.0  # the same newest drill: known
        # A newer drill that replayed to the end measures again, without a search.
        latest_at = NOW - timedelta(hours=1)
        log_run(conn, latest_at, wal=wal_entry(oldest, latest_at), restore=restore_entry(latest_at, latest_at - timedelta(minutes=2)))
        measured, statements, _ = read(conn, target)
        assert statements == 5 and measured.restore_rpo_seconds == 120.0
        # Then a random one again: the search finds that newer measure, not the remembered one.
        log_run(conn, NOW - timedelta(minutes=30), wal=wal_entry(oldest, NOW - timedelta(minutes=30)),
                restore=restore_entry(NOW - timedelta(minutes=30), oldest, kind="random"))
        after, statements, _ = read(conn, target)
        assert statements == 6 and after.restore_rpo_seconds == 120.0


def test_the_window_is_looked_for_among_the_newest_runs_only(log_db):
    target = make_target(log_db, checks={}, backup=PGBACKREST)
    start = NOW - timedelta(days=20)
    with psycopg.connect(log_db, autocommit=True) as conn:
        log_run(conn, NOW - timedelta(days=2), wal=wal_entry(start, NOW - timedelta(days=2)))
        runs = snapshot.WINDOW_LOOKBACK_RUNS
        for n in range(runs - 1, 0, -1):  # runs that never reached the target, nor read the archive
            log_run(conn, NOW - timedelta(minutes=n), unreachable="connection refused")
        within, _, _ = read(conn, target)
        assert within.recovery_window_start == start.timestamp()
        log_run(conn, NOW, unreachable="connection refused")
        beyond, statements, found = read(conn, target)
    assert statements == 4 and beyond.recovery_window_start is None
    assert value(found, "pgbv_recovery_window_start_timestamp_seconds", target="app") == 0.0
