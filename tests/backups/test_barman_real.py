"""The barman source against the real Debian `barman` package: a streaming backup
(backup_method = postgres, a replication slot, barman receive-wal) of a throwaway
PostgreSQL 15 cluster, verified by `barman verify-backup` healthy and damaged.

Barman runs as the unprivileged test user through a runuser wrapper (the source's
`binary`), the way an operator runs it as the barman user. The repository is built
once per module (about 15 s: a WAL switch waits for receive-wal); a damaged case
works on a copy.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from exporter.backups import BarmanBackupSource
from exporter.backups.base import BackupSourceError, BackupUnreadable
from exporter.config import BarmanBackup
from tests.pgcluster import Cluster, _unprivileged_user

PG15_BIN = Path(os.environ.get("PGBV_BARMAN_PG_BIN", "/usr/lib/postgresql/15/bin"))
BARMAN = shutil.which("barman")
SERVER = "pg"
ROWS = 10000


def _owned_dir(prefix: str, user: str | None) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    if user:
        shutil.chown(base, user)
    return base


class BarmanRepo:
    """A Barman home with its configuration file in one folder owned by Barman's user;
    copy() gives a damaged case its own folder and file."""

    def __init__(self, base: Path, user: str | None, socket_dir: Path):
        self.base, self.user, self.socket_dir = base, user, socket_dir
        self.conf = base / "barman.conf"
        self.home = base / "home"

    def write_config(self) -> None:
        self.home.mkdir(exist_ok=True)
        self.conf.write_text(
            "[barman]\n"
            f"barman_home = {self.home}\n"
            f"barman_user = {self.user or getpass.getuser()}\n"
            f"log_file = {self.base / 'barman.log'}\n"
            "log_level = INFO\n"
            f"[{SERVER}]\n"
            "description = pgbv test cluster\n"
            f"conninfo = host={self.socket_dir} user=postgres dbname=postgres\n"
            f"streaming_conninfo = host={self.socket_dir} user=postgres\n"
            "backup_method = postgres\n"
            "streaming_archiver = on\n"
            "slot_name = pgbv_barman\n"
            f"path_prefix = {PG15_BIN}\n"
        )
        if self.user:
            for path in (self.conf, self.home):
                shutil.chown(path, self.user)

    def barman(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [BARMAN, "-c", str(self.conf), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        # cwd /: Barman's user may not enter the test runner's folder.
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"barman {' '.join(args)} exited with code {done.returncode}: {done.stdout} {done.stderr}")
        return done

    def copy(self) -> BarmanRepo:
        base = _owned_dir("pgbv-barman-copy-", self.user)
        # cp -a keeps the owner, which Barman checks; the copy's file points at its own home.
        subprocess.run(["cp", "-a", str(self.home), str(base / "home")], check=True)
        copy = BarmanRepo(base, self.user, self.socket_dir)
        copy.write_config()
        return copy

    def data_dir(self, backup_id: str) -> Path:
        return self.home / SERVER / "base" / backup_id / "data"


def _wait_for_streaming(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'").fetchone():
                return
            time.sleep(0.2)
    raise RuntimeError(f"barman receive-wal did not start streaming within {timeout:g} s")


@pytest.fixture(scope="module")
def real_barman():
    """A PG15 cluster with a table of ROWS rows, streamed to Barman with one backup."""
    if BARMAN is None:
        pytest.skip("barman is not installed (apt-get install barman)")
    if not (PG15_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 server binaries in {PG15_BIN}")
    user = _unprivileged_user()
    cluster = Cluster(bin_dir=PG15_BIN, settings={"wal_level": "replica", "max_wal_senders": "10",
                                                    "max_replication_slots": "10"})
    repo = BarmanRepo(_owned_dir("pgbv-barman-", user), user, cluster.base)
    repo.write_config()
    timings: dict[str, float] = {}
    try:
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE t AS SELECT g FROM generate_series(1, {ROWS}) g")
        started = time.monotonic()
        # The slot first, so that no WAL is lost before receive-wal connects; cron
        # starts receive-wal in the background; the WAL switch is only archived once
        # it streams (under load it may take seconds to connect).
        repo.barman("receive-wal", "--create-slot", SERVER)
        repo.barman("cron")
        _wait_for_streaming(cluster, timeout=60)
        repo.barman("switch-wal", "--force", "--archive", "--archive-timeout", "60", SERVER)
        timings["receive-wal and the first WAL"] = time.monotonic() - started
        started = time.monotonic()
        repo.barman("backup", SERVER, "--wait")
        timings["backup --wait"] = time.monotonic() - started
        repo.timings = timings
        yield repo
    finally:
        try:
            repo.barman("receive-wal", "--stop", SERVER, timeout=30)
        except (subprocess.SubprocessError, OSError, RuntimeError):
            pass
        cluster.destroy()
        shutil.rmtree(repo.base, ignore_errors=True)


@pytest.fixture(scope="module")
def barman_wrapper(tmp_path_factory) -> Path:
    """The documented way to run barman as its own user: a runuser wrapper as `binary`."""
    user = _unprivileged_user()
    if not user:
        return Path(BARMAN or "barman")
    wrapper = tmp_path_factory.mktemp("wrapper") / "barman-as-user"
    wrapper.write_text(f'#!/bin/sh\nexec runuser -u {user} -- {BARMAN or "/usr/bin/barman"} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def real_source(repo: BarmanRepo, wrapper: Path, **fields) -> BarmanBackupSource:
    return BarmanBackupSource(BarmanBackup(source="barman", server=SERVER, binary=str(wrapper),
                                           config_file=repo.conf, **fields))


def test_real_backup_is_found_and_verifies(real_barman, barman_wrapper):
    source = real_source(real_barman, barman_wrapper)
    info = source.latest()
    assert info.kind == "barman full" and info.details["status"] == "DONE"
    assert source.checks_readable()
    started = time.monotonic()
    message = source.verify_readable(info, 150000)
    print(f"\nreal verify-backup, healthy ({time.monotonic() - started:.2f}s; setup {real_barman.timings}): {message}")
    assert message.startswith(f"barman verify-backup {SERVER} {info.id}: pg_verifybackup checked every file")


def _damaged(real_barman: BarmanRepo, wrapper: Path, damage) -> tuple[str, str]:
    copy = real_barman.copy()
    try:
        source = real_source(copy, wrapper)
        info = source.latest()
        victim = damage(copy.data_dir(info.id))
        started = time.monotonic()
        with pytest.raises(BackupUnreadable) as caught:
            source.verify_readable(info, 150000)
        print(f"\nreal verify-backup, {victim} damaged ({time.monotonic() - started:.2f}s): {caught.value}")
        return victim, str(caught.value)
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


def _largest_relation(data: Path) -> Path:
    files = [p for p in (data / "base").rglob("*") if p.is_file() and p.name.isdigit()]
    return max(files, key=lambda p: p.stat().st_size)


def test_real_backup_with_a_data_file_removed_fails_naming_it(real_barman, barman_wrapper):
    def remove(data: Path) -> str:
        victim = _largest_relation(data)
        victim.unlink()
        return victim.relative_to(data).as_posix()

    victim, message = _damaged(real_barman, barman_wrapper, remove)
    assert f'"{victim}" is present in the manifest but not on disk' in message
    assert f"1 file(s): {victim})" in message


def test_real_backup_with_a_data_files_bytes_changed_fails_on_its_checksum(real_barman, barman_wrapper):
    def flip(data: Path) -> str:
        victim = _largest_relation(data)
        content = bytearray(victim.read_bytes())
        content[len(content) // 2] ^= 0xFF  # same size: only the checksum can tell
        victim.write_bytes(bytes(content))
        return victim.relative_to(data).as_posix()

    victim, message = _damaged(real_barman, barman_wrapper, flip)
    assert f'checksum mismatch for file "{victim}"' in message


def test_real_backup_without_its_manifest_is_an_error_not_a_pass(real_barman, barman_wrapper):
    copy = real_barman.copy()
    try:
        source = real_source(copy, barman_wrapper)
        info = source.latest()
        (copy.data_dir(info.id) / "backup_manifest").unlink()
        with pytest.raises(BackupSourceError, match="pg_verifybackup could not check the backup: could not open file"):
            source.verify_readable(info, 150000)
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


def test_real_inactive_server_is_an_error_not_a_pass(real_barman, barman_wrapper):
    # Barman skips an inactive server with exit 0: nothing was verified.
    copy = real_barman.copy()
    try:
        source = real_source(copy, barman_wrapper)
        info = source.latest()
        with open(copy.conf, "a") as conf:
            conf.write("active = false\n")
        with pytest.raises(BackupSourceError, match="verified nothing .*Skipping inactive server 'pg'"):
            source.verify_readable(info, 150000)
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


def test_real_barman_missing_or_erroring_is_an_error(real_barman, barman_wrapper, tmp_path):
    info = real_source(real_barman, barman_wrapper).latest()
    missing = real_source(real_barman, tmp_path / "no-such-barman")
    with pytest.raises(BackupSourceError, match="barman verify-backup: cannot run no-such-barman"):
        missing.verify_readable(info, 150000)
    with pytest.raises(BackupSourceError, match="Unknown server 'nosuch'"):
        BarmanBackupSource(BarmanBackup(source="barman", server="nosuch", binary=str(barman_wrapper),
                                        config_file=real_barman.conf)).verify_readable(info, 150000)
    if os.geteuid() == 0 and real_barman.user != "nobody":
        # As root Barman switches to barman_user itself; as any other user it refuses.
        wrong_user = barman_wrapper.parent / "barman-as-nobody"
        wrong_user.write_text(f'#!/bin/sh\nexec runuser -u nobody -- {BARMAN} "$@"\n')
        wrong_user.chmod(0o755)
        with pytest.raises(BackupSourceError, match=r"barman verify-backup: .*please run barman as"):
            real_source(real_barman, wrong_user).verify_readable(info, 150000)


# --- the WAL archive (wal_continuity, the recovery window) ----------------------------------

WAL_SWITCHES = 4


@pytest.fixture(scope="module")
def barman_wal(real_barman):
    """More WAL after the backup: rows and WAL_SWITCHES switches, archived by Barman
    (the fixture's other tests see only more WAL). One switch-wal --archive waits for
    receive-wal to have streamed; archive-wal then files every finished segment."""
    cluster_dsn = f"host={real_barman.socket_dir} user=postgres dbname=postgres"
    with psycopg.connect(cluster_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS w (g int)")
        for _ in range(WAL_SWITCHES - 1):
            conn.execute("INSERT INTO w SELECT generate_series(1, 1000)")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("INSERT INTO w SELECT generate_series(1, 1000)")
    real_barman.barman("switch-wal", "--force", "--archive", "--archive-timeout", "60", SERVER)
    real_barman.barman("archive-wal", SERVER)
    real_barman.wal_done_at = time.time()
    return real_barman


def _wals_dir(repo: BarmanRepo) -> Path:
    return repo.home / SERVER / "wals"


def test_real_wal_archive_without_a_gap(barman_wal, barman_wrapper):
    source = real_source(barman_wal, barman_wrapper)
    info = source.latest()
    started = time.monotonic()
    archive = source.wal_archive(info)
    print(f"\nreal barman wal_archive, healthy ({time.monotonic() - started:.2f}s): {archive.as_dict()}")
    assert archive.gap is None and archive.checked_from == info.details["begin_wal"]
    on_disk = sorted(p.name for p in _wals_dir(barman_wal).glob("*/*") if len(p.name) == 24)
    assert archive.last == on_disk[-1] and archive.segments_checked >= WAL_SWITCHES
    assert archive.timeline == 1 and archive.holds(info.details["begin_wal"]) is True
    assert archive.window_start == info.finished_at  # one DONE backup: the oldest is the newest
    assert info.finished_at <= archive.last_archived_at
    assert archive.last_archived_at.timestamp() <= barman_wal.wal_done_at + 1


def test_real_wal_archive_with_a_segment_deleted_names_the_gap(barman_wal, barman_wrapper):
    copy = barman_wal.copy()
    try:
        source = real_source(copy, barman_wrapper)
        info = source.latest()
        begin = info.details["begin_wal"]
        files = {p.name: p for p in _wals_dir(copy).glob("*/*") if len(p.name) == 24 and p.name > begin}
        after = sorted(files)
        victim = after[len(after) // 2]
        files[victim].unlink()
        archive = source.wal_archive(info)
        print(f"\nreal barman wal_archive, {victim} deleted: {archive.as_dict()}")
        assert archive.gap == victim and archive.last == after[-1]
        assert any(f"missing from {_wals_dir(copy)}: {victim}" in note for note in archive.notes)
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)
