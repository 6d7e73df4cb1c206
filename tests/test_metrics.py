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
        assert family.type == "gauge", family.name
        assert family.documentation, f"{family.name} has no HELP"
        series = found.setdefault(family.name, {})
        for sample in family.samples:
            assert sample.name == family.name, sample.name
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
