"""Physical drills that replay the WAL archive and measure the recovery point, on real
parts: a PostgreSQL 15 whose archive_command copies WAL into a folder next to a
pg_basebackup; pgbv's own log rows (the heartbeat) and other rows written over
several WAL switches after the backup; drills to the archive's end, to a random
time, and across a segment removed from the middle of the archive. The `rpo` check
judges each."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from exporter.migrate import migrate
from exporter.restore.physical import _kill_server
from exporter.restore.replay import compare_runs
from exporter.restore.scratch import remove_folder
from exporter.pgtools import find_tool, run_tool
from exporter.verify import verify_target
from tests.conftest import make_target
from tests.pgcluster import Cluster

PG15_BIN = Path(os.environ.get("PGBV_PGBACKREST_PG_BIN", "/usr/lib/postgresql/15/bin"))
ROUNDS = 4  # WAL switches after the base backup, each holding one heartbeat
GAP_ROUND = 2  # the round whose segment the gap tests remove
PAUSE_BEFORE_GAP = 4.0  # seconds between the last commit before the gap and the first after it


def _private_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres")
    return path


def heartbeat(dsn: str, target: str = "app", verified_at: str = "clock_timestamp()") -> tuple[str, datetime]:
    """A row as pgbv writes one per run (committed at once: its commit follows its verified_at)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO backup_verification_log (verified_at, status, checks_passed, checks_failed, verification_details) "
            f"VALUES ({verified_at}, 'success', 1, 0, jsonb_build_object('target', %s::text, 'duration_seconds', 0.2)) "
            "RETURNING id::text, verified_at", [target]).fetchone()


def switch_and_wait(dsn: str) -> str:
    """Close the current segment and wait until archive_command has archived it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + 60
        while conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] != segment:
            assert time.monotonic() < deadline, f"{segment} was not archived within 60 s"
            time.sleep(0.05)
    return segment


def write_rounds(dsn: str, pause_before: int | None = None) -> list[dict]:
    """ROUNDS rounds of rows and a heartbeat, each closed by a WAL switch."""
    rounds = []
    for number in range(ROUNDS):
        if number == pause_before:
            time.sleep(PAUSE_BEFORE_GAP)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO events (round) SELECT %s FROM generate_series(1, 100)", [number])
        run_id, at = heartbeat(dsn)
        rounds.append({"id": run_id, "verified_at": at, "segment": switch_and_wait(dsn)})
    return rounds


class Archive:
    """A PG15 cluster archiving into a WAL folder, with one base backup before the rounds."""

    def __init__(self) -> None:
        self.wal = _private_dir("pgbv-wal-")
        self.cluster = Cluster(bin_dir=PG15_BIN, settings={
            "archive_mode": "on", "wal_level": "replica",
            "archive_command": f"test ! -f {self.wal}/%f && cp %p {self.wal}/%f",
        })
        self.backups = _private_dir("pgbv-backups-")

    def setup(self) -> None:
        self.cluster.start()
        dsn = self.cluster.dsn()
        migrate(make_target(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
            conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, round int, at timestamptz DEFAULT clock_timestamp())")
        self.before_backup = heartbeat(dsn)
        tool = find_tool("pg_basebackup", pg_bin_dir=PG15_BIN)
        run_tool(tool, ["-D", str(self.backups / "base-1"), "-Fp", "-X", "stream", "-c", "fast", "-d", dsn], timeout=120)
        self.backup_done = datetime.now(timezone.utc)
        self.rounds = write_rounds(dsn, pause_before=GAP_ROUND)

    def copy_wal(self) -> Path:
        copy = _private_dir("pgbv-wal-copy-")
        subprocess.run(["cp", "-a", f"{self.wal}/.", str(copy)], check=True)
        return copy

    def destroy(self) -> None:
        self.cluster.destroy()
        for folder in (self.wal, self.backups):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def archive():
    if not (PG15_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 server binaries in {PG15_BIN}")
    made = Archive()
    try:
        made.setup()
        yield made
    finally:
        made.destroy()


@pytest.fixture
def scratch_dir():
    path = Path(tempfile.mkdtemp(prefix="pgbv-scratch-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def folder_target(archive: Archive, scratch: Path, wal_path: Path | None, **restore):
    return make_target(
        archive.cluster.dsn(),
        checks={"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        backup={"source": "directory", "path": str(archive.backups), "pattern": "base-*", "min_size_mb": 0,
                **({"wal_path": str(wal_path)} if wal_path else {})},
        restore={"enabled": True, "scratch_dir": str(scratch), "pg_bin_dir": str(PG15_BIN), **restore},
    )


def drill_of(result):
    restore, rpo = result.check("restore"), result.check("rpo")
    print(f"\n  restore: {restore.outcome}: {restore.message}\n  rpo: {rpo and rpo.outcome}: {rpo and rpo.message}")
    return restore, rpo, restore.data.get("restore", {})


def parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


# --- latest: to the archive's end -----------------------------------------------------------


def test_latest_drill_replays_the_wal_folder_to_its_end_and_rpo_passes(archive, scratch_dir):
    started = time.monotonic()
    result = verify_target(folder_target(archive, scratch_dir, archive.wal), record_result=False, drill=True)
    restore, rpo, drill = drill_of(result)
    print(f"  replaying drill: {time.monotonic() - started:.1f} s")
    assert restore.outcome == "pass", restore.message
    assert drill["recovery_target"] == {"kind": "latest", "time": None}
    last = archive.rounds[-1]["verified_at"]
    recovered = parse(drill["recovered_until"])
    assert recovered.tzinfo is not None
    # The newest heartbeat is in the copy; its commit a moment later is the last replayed one.
    assert last <= recovered < last + timedelta(seconds=3), (recovered, last)
    assert 0 <= drill["rpo_seconds"] < 120
    # PostgreSQL 15 keeps the last replayed commit's time after promotion.
    assert not any("is NULL" in note for note in drill["notes"]), drill["notes"]
    assert rpo.outcome == "pass" and rpo.expected == "< 24 h", rpo.message
    assert rpo.data["recovered_until"] == drill["recovered_until"]
    assert list(scratch_dir.iterdir()) == []


def test_compressed_segments_are_replayed_too(archive, scratch_dir):
    wal = archive.copy_wal()
    try:
        segments = [r["segment"] for r in archive.rounds]
        for segment, (tool, suffix) in zip(segments, (("gzip", "gz"), ("zstd", "zst"), ("lz4", "lz4"), ("gzip", "gz"))):
            plain = wal / segment
            # An explicit output: lz4 writes to stdout when it is not a terminal.
            with open(plain, "rb") as raw, open(f"{plain}.{suffix}", "wb") as packed:
                subprocess.run([tool, "-c"], stdin=raw, stdout=packed, check=True)
            plain.unlink()
        assert not any((wal / s).exists() for s in segments)
        result = verify_target(folder_target(archive, scratch_dir, wal), record_result=False, drill=True)
        restore, rpo, drill = drill_of(result)
        assert restore.outcome == "pass", restore.message
        assert parse(drill["recovered_until"]) >= archive.rounds[-1]["verified_at"]
        assert rpo.outcome == "pass", rpo.message
    finally:
        shutil.rmtree(wal, ignore_errors=True)


def test_a_segment_removed_from_the_middle_stops_the_drill_at_the_gap_and_rpo_fails(archive, scratch_dir):
    wal = archive.copy_wal()
    try:
        gone = archive.rounds[GAP_ROUND]["segment"]
        (wal / gone).unlink()
        # An objective shorter than the pause before the gap: what the copy misses is older than it.
        target = folder_target(archive, scratch_dir, wal, rpo_hours=(PAUSE_BEFORE_GAP - 1) / 3600)
        result = verify_target(target, record_result=False, drill=True)
        restore, rpo, drill = drill_of(result)
        recovered = parse(drill["recovered_until"])
        before, after = archive.rounds[GAP_ROUND - 1]["verified_at"], archive.rounds[GAP_ROUND]["verified_at"]
        assert before <= recovered < after, (before, recovered, after)
        assert rpo.outcome == "fail", rpo.message
        assert "exceeds the objective" in rpo.message and rpo.data["recovered_until"] == drill["recovered_until"]
        # The same archive whole meets the same objective.
        whole = verify_target(folder_target(archive, scratch_dir, archive.wal, rpo_hours=(PAUSE_BEFORE_GAP - 1) / 3600),
                              record_result=False, drill=True)
        assert parse(whole.check("restore").data["restore"]["recovered_until"]) >= archive.rounds[-1]["verified_at"]
        assert list(scratch_dir.iterdir()) == []
    finally:
        shutil.rmtree(wal, ignore_errors=True)


def test_a_quiet_database_with_a_complete_archive_is_as_behind_as_archive_timeout_allows(archive, scratch_dir):
    """A daily run's heartbeat is a day old on a quiet database: "drill start minus the
    newest commit" would call a complete archive a day behind and page. When the copy
    replayed every segment the live server had finished, only its current segment is
    unarchived: the RPO is bounded by archive_timeout, or with it off by the age of the
    last archived segment (WAL written since may wait that long)."""
    dsn = archive.cluster.dsn()
    heartbeat(dsn)
    switch_and_wait(dsn)
    quiet = 5
    objective = (quiet - 1) / 3600  # shorter than the quiet time
    time.sleep(quiet)
    # archive_timeout off: the unarchived segment may hold writes as old as the last switch.
    result = verify_target(folder_target(archive, scratch_dir, archive.wal, rpo_hours=objective),
                           record_result=False, drill=True)
    restore, rpo, drill = drill_of(result)
    assert drill["caught_up_with_live"] is True, drill["notes"]
    assert drill["rpo_seconds"] >= quiet and rpo.outcome == "fail", rpo.message
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET archive_timeout = '2s'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        result = verify_target(folder_target(archive, scratch_dir, archive.wal, rpo_hours=objective),
                               record_result=False, drill=True)
        restore, rpo, drill = drill_of(result)
        assert drill["caught_up_with_live"] is True and drill["wal_behind_live_bytes"] < 16 * 1024 * 1024
        assert drill["rpo_seconds"] <= 2, drill
        assert rpo.outcome == "pass" and "every WAL segment the live server had finished" in rpo.message, rpo.message
        # The recovered-until time is still the newest commit the copy holds, not the bound.
        assert parse(drill["recovered_until"]) <= datetime.now(timezone.utc) - timedelta(seconds=quiet)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET archive_timeout")
            conn.execute("SELECT pg_reload_conf()")


def test_a_corrupt_compressed_segment_stops_recovery_short_of_the_archive_and_fails_the_drill(archive, scratch_dir):
    """A truncated .gz passes any listing (its name is there), but recovery cannot read
    it and stops: the drill knows the archive's newest segment and fails, even with
    an RPO objective the stop would meet (a DBA trial found it passing)."""
    wal = archive.copy_wal()
    try:
        broken = wal / archive.rounds[GAP_ROUND]["segment"]
        with open(broken, "rb") as raw, open(f"{broken}.gz", "wb") as packed:
            subprocess.run(["gzip", "-c"], stdin=raw, stdout=packed, check=True)
        broken.unlink()
        with open(f"{broken}.gz", "r+b") as packed:
            packed.truncate(1000)
        result = verify_target(folder_target(archive, scratch_dir, wal), record_result=False, drill=True)
        restore, rpo, drill = drill_of(result)
        assert restore.outcome == "fail", restore.message
        assert f"(segment {broken.name})" in restore.message and "could not be restored or replayed" in restore.message
        # The whole archive is judged the same way and passes.
        whole = verify_target(folder_target(archive, scratch_dir, archive.wal), record_result=False, drill=True)
        assert whole.check("restore").outcome == "pass", whole.check("restore").message
    finally:
        shutil.rmtree(wal, ignore_errors=True)


def test_a_restored_copy_promoted_with_archiving_on_forks_the_archive_and_fails_the_drill(archive, scratch_dir):
    """A test restore promoted with archiving left on pushes timeline 2 into the
    production archive while production stays on timeline 1. Recovery to latest follows
    timeline 2 and loses production's WAL after the fork: the copy is complete and
    recent (its own commits), so only the timelines tell."""
    dsn = archive.cluster.dsn()
    fork = archive.copy_wal()
    kept = verify_target(folder_target(archive, scratch_dir, archive.wal), record_result=False, drill=True, keep=True)
    stray = kept.check("restore").data["restore"]
    try:
        with psycopg.connect(kept.check("restore").message.split("psql '")[1].split("'")[0], autocommit=True) as copy:
            copy.execute("CREATE TABLE stray AS SELECT 1 AS x")
            copy.execute("SELECT pg_switch_wal()")
        pg_wal = Path(stray["scratch"]) / "data" / "pg_wal"
        for path in pg_wal.iterdir():
            if path.name.startswith("00000002") and (len(path.name) == 24 or path.name.endswith(".history")):
                shutil.copy(path, fork / path.name)
                if os.geteuid() == 0:
                    shutil.chown(fork / path.name, "postgres")
        assert (fork / "00000002.history").exists()
    finally:
        _stop_kept(stray)
    # Production goes on writing on timeline 1, into the same archive.
    heartbeat(dsn)
    segment = switch_and_wait(dsn)
    shutil.copy(archive.wal / segment, fork / segment)
    try:
        result = verify_target(folder_target(archive, scratch_dir, fork), record_result=False, drill=True)
        restore, rpo, drill = drill_of(result)
        assert drill["forked_from_live"] is True and drill["recovered_timeline"] == 2
        assert restore.outcome == "fail" and "forks off the live server's timeline 1" in restore.message, restore.message
        assert rpo.outcome == "fail" and "forks off" in rpo.message, rpo.message
        # Production's own archive, without the stray timeline, passes.
        whole = verify_target(folder_target(archive, scratch_dir, archive.wal), record_result=False, drill=True)
        assert whole.check("restore").outcome == "pass" and whole.check("rpo").outcome == "pass"
        assert whole.check("restore").data["restore"]["recovered_timeline"] == 1
    finally:
        shutil.rmtree(fork, ignore_errors=True)


def test_a_heartbeat_dated_in_the_future_is_not_taken_as_the_recovery_point(archive, scratch_dir):
    """A clock ahead when pgbv wrote its row would make any archive look fresh."""
    dsn = archive.cluster.dsn()
    heartbeat(dsn, target="skewed", verified_at="clock_timestamp() + interval '2 hours'")
    switch_and_wait(dsn)
    target = make_target(dsn, name="skewed", **{k: v for k, v in folder_target(archive, scratch_dir, archive.wal)
                                                .model_dump(exclude_unset=True).items() if k not in ("name", "dsn")})
    result = verify_target(target, record_result=False, drill=True)
    restore, rpo, drill = drill_of(result)
    assert any("later than now: a clock was ahead" in note for note in drill["notes"]), drill["notes"]
    assert parse(drill["recovered_until"]) <= datetime.now(timezone.utc)


def test_without_a_wal_folder_the_drill_stops_at_the_backup_and_measures_no_rpo(archive, scratch_dir):
    result = verify_target(folder_target(archive, scratch_dir, None), record_result=False, drill=True)
    restore = result.check("restore")
    assert restore.outcome == "pass", restore.message
    drill = restore.data["restore"]
    assert drill["recovery_target"] is None and drill["recovered_until"] is None and drill["rpo_seconds"] is None
    assert any("no RPO measured" in note for note in drill["notes"])
    assert result.check("rpo") is None  # nothing to measure: not listed


def test_a_missing_wal_folder_is_a_drill_error(archive, scratch_dir, tmp_path):
    result = verify_target(folder_target(archive, scratch_dir, tmp_path / "nowhere"), record_result=False, drill=True)
    restore, rpo = result.check("restore"), result.check("rpo")
    assert restore.outcome == "error" and "backup.wal_path" in restore.message and "nowhere" in restore.message
    assert rpo.outcome == "error" and "did not complete" in rpo.message
    assert list(scratch_dir.iterdir()) == []



def test_with_the_log_in_log_dsn_the_last_replayed_commit_dates_the_copy(archive, scratch_dir):
    with psycopg.connect(archive.cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE pgbvlog")
    try:
        target = folder_target(archive, scratch_dir, archive.wal).model_copy(
            update={"log_dsn": archive.cluster.dsn("pgbvlog")})
        result = verify_target(target, record_result=False, drill=True)
        restore, rpo, drill = drill_of(result)
        assert restore.outcome == "pass", restore.message
        assert any("log_dsn" in note and "no pgbv heartbeat" in note for note in drill["notes"]), drill["notes"]
        # The heartbeat rows in the target database are commits all the same.
        assert parse(drill["recovered_until"]) >= archive.rounds[-1]["verified_at"]
        assert rpo.outcome == "pass", rpo.message
    finally:
        with psycopg.connect(archive.cluster.dsn(), autocommit=True) as conn:
            conn.execute("DROP DATABASE pgbvlog")

# --- random: a point-in-time drill -----------------------------------------------------------


def _stop_kept(drill: dict) -> None:
    folder = Path(drill["scratch"])
    _kill_server(folder / "data")
    remove_folder(folder)


def test_random_target_recovers_to_a_point_and_the_copy_holds_exactly_the_runs_up_to_it(archive, scratch_dir):
    target = folder_target(archive, scratch_dir, archive.wal, target="random")
    result = verify_target(target, record_result=False, drill=True, keep=True)
    restore, rpo, drill = drill_of(result)
    try:
        assert restore.outcome == "pass", restore.message
        point = parse(drill["recovery_target"]["time"])
        assert drill["recovery_target"]["kind"] == "random"
        # The window ends where the source says the archive ends: the newest segment's file time.
        archive_end = max(datetime.fromtimestamp(p.stat().st_mtime, timezone.utc) for p in archive.wal.iterdir())
        assert archive.before_backup[1] < point <= archive_end, (point, archive_end)
        # Read the kept copy independently: every heartbeat up to the point, none after it.
        with psycopg.connect(restore.message.split("psql '")[1].split("'")[0]) as copy:
            held = {row[0] for row in copy.execute(
                "SELECT id::text FROM backup_verification_log WHERE verification_details->>'target' = 'app'")}
        # Every row of the target the live log has (other tests of this module add heartbeats too).
        with psycopg.connect(archive.cluster.dsn()) as live:
            everyone = live.execute("SELECT id::text, verified_at FROM backup_verification_log "
                                    "WHERE verification_details->>'target' = 'app'").fetchall()
        assert held == {rid for rid, at in everyone if at <= point}, (point, everyone)
        assert parse(drill["recovered_until"]) <= point + timedelta(seconds=1)
        assert rpo is not None and rpo.outcome in ("pass", "error")
    finally:
        _stop_kept(drill)


def test_random_target_fails_when_the_copy_lacks_a_run_the_live_log_has_before_the_point(archive, scratch_dir):
    # A run the live log says happened before the backup, that no archive holds: the
    # point-in-time copy must miss it and the drill must say which.
    run_id, at = heartbeat(archive.cluster.dsn(), verified_at="now() - interval '1 hour'")
    try:
        result = verify_target(folder_target(archive, scratch_dir, archive.wal, target="random"),
                               record_result=False, drill=True)
        restore = result.check("restore")
        print(f"\n  restore: {restore.outcome}: {restore.message}")
        assert restore.outcome == "fail"
        assert f"the copy lacks 1 run(s) of the live log from before it; the first: {run_id}" in restore.message
        assert list(scratch_dir.iterdir()) == []
    finally:
        with psycopg.connect(archive.cluster.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM backup_verification_log WHERE id = %s", [run_id])



def test_random_target_the_archive_cannot_reach_fails_the_drill(archive, scratch_dir):
    # Every segment written after the backup gone: no commit after any point in the
    # window can be replayed, so recovery ends before the target and the drill fails.
    wal = archive.copy_wal()
    try:
        (wal / archive.rounds[0]["segment"]).unlink()
        result = verify_target(folder_target(archive, scratch_dir, wal, target="random"), record_result=False, drill=True)
        restore, rpo = result.check("restore"), result.check("rpo")
        print(f"\n  restore: {restore.outcome}: {restore.message}\n  rpo: {rpo.outcome}: {rpo.message}")
        assert restore.outcome == "fail"
        assert "ended before reaching it: the archive has a gap before that time" in restore.message
        assert rpo.outcome == "error"
        assert list(scratch_dir.iterdir()) == []
    finally:
        shutil.rmtree(wal, ignore_errors=True)

def test_runs_in_flight_at_the_point_are_not_judged_and_extra_runs_are_named():
    point = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    live = [("a", point - timedelta(minutes=5), 1.0), ("b", point - timedelta(seconds=2), 60.0),
            ("c", point + timedelta(minutes=1), 1.0)]
    assert compare_runs(point, live, live[:1]) == []  # b was still running at the point
    problems = compare_runs(point, live, live)
    assert problems == [f"recovered to {point.isoformat()}, the copy holds 1 run(s) from after it; "
                        f"the first: c verified at {live[2][1].isoformat()}"]


# --- pgBackRest: restore --type=default (latest) and --type=time (random) ----------------------

from tests.backups.test_pgbackrest import STANZA, as_postgres_wrapper, real_repo  # noqa: E402,F401 (fixtures)


@pytest.fixture(scope="module")
def brest(real_repo):
    """The pgBackRest repository's cluster with pgbv's log table and rounds of rows and
    heartbeats after its newest backup, each round's segment pushed by archive-push."""
    dsn = f"host={real_repo.socket_dir} dbname=postgres user=postgres"
    migrate(make_target(dsn))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, round int, at timestamptz DEFAULT clock_timestamp())")
    # A pause inside the rounds: pgBackRest dates the backup's end and the archive's
    # files in whole seconds, and rounds written within one second would leave a random
    # target no window after the backup's end.
    real_repo.rounds = write_rounds(dsn, pause_before=1)
    real_repo.dsn = dsn
    return real_repo


def pgbackrest_target(repo, wrapper: Path, scratch: Path, **restore):
    return make_target(
        repo.dsn,
        checks={"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        backup={"source": "pgbackrest", "stanza": STANZA, "config_file": str(repo.conf),
                "binary": str(wrapper), "timeout_seconds": 300},
        restore={"enabled": True, "scratch_dir": str(scratch), **restore},
    )


def test_pgbackrest_latest_drill_replays_the_archive_and_measures_the_rpo(brest, as_postgres_wrapper, scratch_dir):
    started = time.monotonic()
    result = verify_target(pgbackrest_target(brest, as_postgres_wrapper, scratch_dir), record_result=False, drill=True)
    restore, rpo, drill = drill_of(result)
    print(f"  pgBackRest replaying drill: {time.monotonic() - started:.1f} s")
    assert restore.outcome == "pass", restore.message
    assert drill["recovery_target"] == {"kind": "latest", "time": None} and drill["rows"] == {"t": 10000}
    last = brest.rounds[-1]["verified_at"]
    assert last <= parse(drill["recovered_until"]) < last + timedelta(seconds=3)
    assert rpo.outcome == "pass", rpo.message
    assert list(scratch_dir.iterdir()) == []


def test_pgbackrest_random_drill_recovers_to_a_point_inside_the_window(brest, as_postgres_wrapper, scratch_dir):
    result = verify_target(pgbackrest_target(brest, as_postgres_wrapper, scratch_dir, target="random"),
                           record_result=False, drill=True, keep=True)
    restore, rpo, drill = drill_of(result)
    try:
        assert restore.outcome == "pass", restore.message
        point = parse(drill["recovery_target"]["time"])
        assert drill["recovery_target"]["kind"] == "random", drill["notes"]
        assert brest.rounds[0]["verified_at"] - timedelta(seconds=2) < point <= datetime.now(timezone.utc), point
        with psycopg.connect(restore.message.split("psql '")[1].split("'")[0]) as copy:
            held = {row[0] for row in copy.execute("SELECT id::text FROM backup_verification_log")}
        assert held == {r["id"] for r in brest.rounds if r["verified_at"] <= point}, point
    finally:
        _stop_kept(drill)



def test_restore_drill_command_prints_the_recovered_until_time_and_the_rpo(brest, as_postgres_wrapper, scratch_dir, tmp_path):
    import sys

    import yaml

    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{
        "name": "app", "dsn": brest.dsn,
        "checks": {"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        "backup": {"source": "pgbackrest", "stanza": STANZA, "config_file": str(brest.conf),
                   "binary": str(as_postgres_wrapper), "timeout_seconds": 300},
        "restore": {"enabled": True, "scratch_dir": str(scratch_dir)},
    }]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    done = subprocess.run([sys.executable, "-m", "exporter", "restore-drill", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=300)
    line = next((x for x in done.stdout.splitlines() if x.startswith("target app: recovered until ")), None)
    print(f"\n  {line}")
    assert line is not None, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    recovered = parse(line.split("recovered until ")[1].split(" ")[0])
    assert recovered >= brest.rounds[-1]["verified_at"]
    assert "(replayed to latest); measured RPO " in line and "(rpo: pass, objective < 24 h)" in line


# --- Barman: recover to the archive's end ------------------------------------------------------

from tests.backups.test_barman_real import SERVER, barman_wrapper, real_barman  # noqa: E402,F401 (fixtures)


def test_barman_latest_drill_replays_the_wal_barman_received(real_barman, barman_wrapper, scratch_dir):
    dsn = f"host={real_barman.socket_dir} dbname=postgres user=postgres"
    migrate(make_target(dsn))
    heartbeats = []
    for _ in range(2):
        heartbeats.append(heartbeat(dsn))
        # Streamed by receive-wal, then moved into Barman's archive.
        real_barman.barman("switch-wal", "--force", "--archive", "--archive-timeout", "60", SERVER)
    target = make_target(
        dsn, checks={"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        backup={"source": "barman", "server": SERVER, "config_file": str(real_barman.conf),
                "binary": str(barman_wrapper), "timeout_seconds": 300},
        restore={"enabled": True, "scratch_dir": str(scratch_dir)},
    )
    result = verify_target(target, record_result=False, drill=True)
    restore, rpo, drill = drill_of(result)
    assert restore.outcome == "pass", restore.message
    assert drill["recovery_target"] == {"kind": "latest", "time": None}
    last = heartbeats[-1][1]
    assert last <= parse(drill["recovered_until"]) < last + timedelta(seconds=3)
    assert rpo.outcome == "pass", rpo.message
    assert list(scratch_dir.iterdir()) == []


def test_barman_random_drill_recovers_to_a_point_with_target_time(real_barman, barman_wrapper, scratch_dir):
    dsn = f"host={real_barman.socket_dir} dbname=postgres user=postgres"
    migrate(make_target(dsn))  # (again: a no-op after the test above)
    heartbeats = []
    for _ in range(2):
        heartbeats.append(heartbeat(dsn))
        real_barman.barman("switch-wal", "--force", "--archive", "--archive-timeout", "60", SERVER)
    target = make_target(
        dsn, checks={"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        backup={"source": "barman", "server": SERVER, "config_file": str(real_barman.conf),
                "binary": str(barman_wrapper), "timeout_seconds": 300},
        restore={"enabled": True, "scratch_dir": str(scratch_dir), "target": "random"},
    )
    result = verify_target(target, record_result=False, drill=True, keep=True)
    restore, rpo, drill = drill_of(result)
    try:
        assert restore.outcome == "pass", restore.message
        point = parse(drill["recovery_target"]["time"])
        assert drill["recovery_target"]["kind"] == "random"
        with psycopg.connect(restore.message.split("psql '")[1].split("'")[0]) as copy, psycopg.connect(dsn) as conn:
            held = {row[0] for row in copy.execute("SELECT id::text FROM backup_verification_log")}
            live = {row[0]: row[1] for row in conn.execute("SELECT id::text, verified_at FROM backup_verification_log")}
        assert held == {rid for rid, at in live.items() if at <= point}, point
    finally:
        _stop_kept(drill)
