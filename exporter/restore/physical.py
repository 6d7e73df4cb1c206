"""Physical restore drills: a base backup (pg_basebackup folder, a pgBackRest
backup, or a Barman backup) started as a private PostgreSQL on a Unix socket in a
scratch folder, checked and compared like a logical copy, stopped and deleted.

Where the backup has a WAL archive (pgBackRest, Barman, a base backup folder with
backup.wal_path) the copy replays it, to its end (restore.target latest: the
recovered-until time gives the RPO) or to a random time inside the recovery window
(restore.target random: a point-in-time drill), and is promoted; see
exporter/restore/replay.py. A base backup folder without an archive starts at its
own consistency point, as before, and measures no RPO.

The private server is started with settings that keep it private and harmless
whatever the production configuration it was copied with says: no TCP listener,
archiving off (it must never push WAL into the production archive), no SSL (the
certificate paths are the production host's), small shared memory, its own
pg_hba.conf trusting only its own socket, whose folder only its user can enter.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from exporter.backups.barman import BarmanBackupSource, _messages
from exporter.backups.base import BackupSourceError, BackupUnreadable
from exporter.backups.command import excerpt
from exporter.config import TargetConfig
from exporter.db import TargetUnreachable, connect_dsn
from exporter.pgtools import Tool, ToolError, ToolNotFound, candidates, probe, run_tool
from exporter.redact import scrub
from exporter.restore import active, replay as replaying
from exporter.restore.compare import compare, copy_checks, copy_counts, live_counts
from exporter.restore.result import DrillError, DrillResult, RestoreFailed
from exporter.restore.replay import Replay
from exporter.restore.scratch import created_at, remove_folder, scratch_name
from exporter.result import BackupInfo

log = logging.getLogger("pgbv.restore")

PORT = 5432  # the socket lives in the scratch folder, so the usual port never collides
PRIVATE_SETTINGS = {
    "listen_addresses": "",
    "port": str(PORT),
    "archive_mode": "off",
    "ssl": "off",
    "shared_buffers": "128MB",
    "hot_standby": "off",
    "logging_collector": "off",
    "shared_preload_libraries": "",
}


def scratch_base(target: TargetConfig) -> Path:
    return Path(target.restore.scratch_dir or tempfile.gettempdir())


def drill_user(target: TargetConfig) -> str | None:
    """Who runs the private server: nobody special when we are not root (we are that
    user); when root (PostgreSQL refuses root), restore.os_user or else postgres."""
    if os.geteuid() != 0:
        return None
    name = target.restore.os_user or "postgres"
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise DrillError(f"restore.os_user {name!r} does not exist; physical drills run PostgreSQL as that user") from None
    return name


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _tool_of_major(name: str, major: int, pg_bin_dir: Path | None) -> Tool:
    """A server binary must be the backup's own major version, not just a newer one."""
    paths = [Path(pg_bin_dir) / name] if pg_bin_dir else candidates(name)
    found = []
    for path in paths:
        try:
            tool = probe(path, name)
        except ToolNotFound:
            continue
        found.append(tool)
        if tool.major == major:
            return tool
    seen = ", ".join(f"{t.version} ({t.path})" for t in found) or "none"
    raise DrillError(
        f"the backup is PostgreSQL {major}; no {name} {major} found (found: {seen}); set restore.pg_bin_dir"
    )


def _free_space(folder: Path, needed: int) -> None:
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise DrillError(f"not enough space: {free} bytes free in {folder}, the drill needs at least {needed} (twice the backup)")


def remove_leftovers(target: TargetConfig, older_than: timedelta) -> list[Path]:
    """Scratch folders of this target left by a killed drill: stop their server, delete them."""
    prefix = scratch_name(target.name).rsplit("_", 1)[0] + "_"
    removed = []
    base = scratch_base(target)
    if not base.is_dir():
        return removed
    now = datetime.now(timezone.utc)
    for path in base.iterdir():
        born = created_at(path.name)
        if not path.name.startswith(prefix) or born is None or now - born <= older_than:
            continue
        _kill_server(path / "data")
        remove_folder(path)
        removed.append(path)
    return removed


def _kill_server(data: Path) -> None:
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 9)
    except (OSError, ValueError, IndexError):
        pass


class PrivateServer:
    def __init__(self, folder: Path, data: Path, pg_ctl: Tool, user: str | None):
        self.folder, self.data, self.pg_ctl, self.user = folder, data, pg_ctl, user

    def prepare(self) -> None:
        # Debian keeps postgresql.conf outside the data folder: a restored copy may have none.
        conf = self.data / "postgresql.conf"
        if not conf.exists():
            conf.write_text("# written by pgbv for a restore drill\n")
        (self.folder / "pg_hba.conf").write_text("local all all trust\n")
        (self.data / "standby.signal").unlink(missing_ok=True)
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        if self.user:
            record = pwd.getpwnam(self.user)
            for root, dirs, files in os.walk(self.folder):
                os.chown(root, record.pw_uid, record.pw_gid)
                for name in files:
                    os.chown(os.path.join(root, name), record.pw_uid, record.pw_gid, follow_symlinks=False)
        os.chmod(self.data, 0o700)
        os.chmod(self.folder, 0o700)

    def start(self, timeout: float) -> None:
        settings = dict(PRIVATE_SETTINGS, unix_socket_directories=str(self.folder), hba_file=str(self.folder / "pg_hba.conf"))
        options = " ".join(f"-c {name}='{value}'" for name, value in settings.items())
        argv = [str(self.pg_ctl.path), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                "-t", str(max(int(timeout), 1)), "-o", options, "start"]
        try:
            subprocess.run(_as_user(self.user, argv), check=True, capture_output=True, text=True, timeout=timeout + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            raise RestoreFailed(f"the restored copy did not start: {self.log_tail()}") from None

    def log_text(self) -> str:
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        lines = self.log_text().strip().splitlines()
        if not (self.folder / "server.log").exists():
            return "no server log"
        return "; ".join(lines[-3:]) or "empty server log"

    def stop(self) -> None:
        argv = [str(self.pg_ctl.path), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"]
        try:
            subprocess.run(_as_user(self.user, argv), capture_output=True, timeout=40)
        except subprocess.TimeoutExpired:
            pass
        _kill_server(self.data)

    def dsn(self, dbname: str, user: str) -> str:
        return f"host={self.folder} port={PORT} dbname={dbname} user={user}"


def _connect_when_ready(target: TargetConfig, dsn: str, deadline: float) -> psycopg.Connection:
    """pg_ctl -w may return while the copy still replays WAL ("not accepting
    connections"): keep trying until it is ready or the drill's time is up."""
    while True:
        try:
            return connect_dsn(dsn, None, target=target, what="restored copy", parallel=True)
        except TargetUnreachable as exc:
            still_starting = "not accepting connections" in exc.reason or "starting up" in exc.reason
            if not still_starting:
                raise RestoreFailed(f"the restored copy does not accept connections: {exc.reason}") from None
            if time.monotonic() > deadline:
                # Still replaying when the time is up: the drill ran out of time, the backup did not fail.
                raise DrillError(f"the restored copy was still recovering when timeout_minutes "
                                 f"({target.restore.timeout_minutes:g}) ran out: {exc.reason}") from None
            time.sleep(0.2)


def _restore_pgbackrest(target: TargetConfig, info: BackupInfo, data: Path, timeout: float, on_start,
                        replay: Replay | None) -> list[str]:
    config = target.backup
    args = [f"--stanza={config.stanza}"]
    if config.config_file:
        args.append(f"--config={config.config_file}")
    if config.repo:
        args.append(f"--repo={config.repo}")
    # pgBackRest writes recovery.signal and its own archive-get restore_command: the
    # copy reads the archive as a real recovery would.
    if replay is None:
        how = ["--type=immediate", "--target-action=promote"]
    elif replay.time is None:
        how = ["--type=default"]
    else:
        how = ["--type=time", f"--target={replay.time.isoformat(sep=' ')}", "--target-action=promote"]
    args += ["restore", f"--set={info.id}", *how, "--archive-mode=off", f"--pg1-path={data}"]
    try:
        run_tool(config.binary, args, timeout=timeout, on_start=on_start)
    except ToolError as exc:
        message = scrub(str(exc), target.secrets())
        raise (DrillError(message) if exc.timed_out or exc.returncode is None else RestoreFailed(message)) from None
    return []


def _barman_recover(source: BarmanBackupSource, backup_id: str, destination: Path, timeout: float, on_start,
                    replay: Replay) -> list[str]:
    """``barman recover`` to the archive's end or to a time (BarmanBackupSource.recover
    stops at consistency): to the end, Barman copies every archived segment after the
    backup into pg_wal and writes no recovery settings; to a time, it copies them into
    barman_wal and writes a restore_command reading them."""
    server = source.config.server
    what = f"barman recover {server} {backup_id}"
    flags = [] if replay.time is None else ["--target-time", replay.time.isoformat(sep=" "), "--target-action", "promote"]
    done, data = source._run_barman("recover", *flags, server, backup_id, str(destination), timeout=timeout, on_start=on_start)
    errors = _messages(data, "_ERROR") + _messages(data, "_EXCEPTION")
    if errors:
        raise BackupUnreadable(f"{what}: {'; '.join(errors)}")
    if done.returncode != 0:
        raise BackupSourceError(f"{what} exited with code {done.returncode}: {excerpt(done.stdout)!r}")
    if "recovery_start_time" not in data:
        said = "; ".join(_messages(data, "_WARNING") + _messages(data, "_INFO"))
        raise BackupSourceError(f"{what} recovered nothing (exit 0 without a recovery report)" + (f"; it said: {said}" if said else ""))
    if replay.time is None:
        # An archive recovery (not the crash recovery Barman leaves) over the WAL it put
        # in pg_wal: PostgreSQL then keeps the last replayed commit's time and promotes.
        # restore_command "false" finds nothing, so every segment is read from pg_wal.
        replaying.write_recovery(destination, {"restore_command": "false"})
    return [str(w) for w in data.get("warnings") or [] if w]


def _restore_barman(target: TargetConfig, info: BackupInfo, data: Path, timeout: float, on_start,
                    replay: Replay | None) -> list[str]:
    # Local recovery: Barman's user writes into data, so it must be the drill's user
    # (restore.os_user) or able to write into that user's folder.
    source = BarmanBackupSource(target.backup)
    try:
        if replay is None:
            warnings = source.recover(info.id, data, timeout, on_start=on_start)
        else:
            warnings = _barman_recover(source, info.id, data, timeout, on_start, replay)
    except BackupUnreadable as exc:
        raise RestoreFailed(scrub(str(exc), target.secrets())) from None
    except BackupSourceError as exc:
        raise DrillError(scrub(str(exc), target.secrets())) from None
    return [scrub(f"barman recover warned: {warning}", target.secrets()) for warning in warnings]


# Backups a tool restores into an empty data folder: kind prefix -> how (each returns
# the tool's warnings, for the drill's notes).
_TOOL_RESTORES = {"pgbackrest": _restore_pgbackrest, "barman": _restore_barman}


def _tool_restore(kind: str):
    return next((restore for prefix, restore in _TOOL_RESTORES.items() if kind.startswith(prefix)), None)


def _replay_wal_folder(target: TargetConfig, folder: Path, data: Path, replay: Replay) -> None:
    wal_path = Path(target.backup.wal_path)
    if not wal_path.is_dir():
        raise DrillError(f"backup.wal_path {wal_path} is not a folder: the drill has no WAL archive to replay")
    command = replaying.wal_folder_restore_command(folder, wal_path)
    replaying.write_recovery(data, {"restore_command": command, **replaying.recovery_settings(replay)})


def _measure(target: TargetConfig, info: BackupInfo, result: DrillResult, replay: Replay, copy: psycopg.Connection,
             drill_started: datetime, live: replaying.LiveWal | None, data: Path) -> None:
    """After recovery: the recovered-until time and RPO; for a random target, the copy's
    log against the live log."""
    reached = replaying.recovered_until(target, copy, info.finished_at)
    result.notes += reached.notes
    if reached.at is not None:
        result.recovered_until = reached.at.astimezone(timezone.utc)
        # Commits made after the drill started may be archived and replayed while it runs.
        result.rpo_seconds = max((drill_started - result.recovered_until).total_seconds(), 0.0)
        if replay.time is None:
            end, why = replaying.copy_end(copy, data)
            if end is None:
                result.notes.append(f"{why}: where recovery stopped is not judged")
            else:
                short = replaying.stopped_short(end, replay.archive)
                forked = replaying.forked_from_live(end, live)
                result.problems += [p for p in (short, forked) if p]
                result.replay_facts["recovered_timeline"] = end.recovered_timeline
                if forked:
                    result.replay_facts["forked_from_live"] = True
                else:
                    result.rpo_seconds, notes, facts = replaying.bounded_rpo(result.rpo_seconds, end.lsn, live, drill_started)
                    result.notes += notes
                    result.replay_facts.update(facts)
            if replay.archive_error:
                result.notes.append(f"the archive's newest segment is not known ({replay.archive_error}): "
                                    "whether recovery stopped short of it is not judged")
    if replay.time is not None:
        problems, notes = replaying.point_in_time_problems(target, replay.time, copy)
        result.problems += problems
        result.notes += notes
        if not replay.end_known:
            result.notes.append("the source did not tell the archive's end: the random target was drawn up to the newest run "
                                "in the live log (or the drill's start)")


def drill_physical(target: TargetConfig, info: BackupInfo, keep: bool = False) -> DrillResult:
    config = target.restore
    deadline = time.monotonic() + config.timeout_minutes * 60
    started = time.monotonic()
    drill_started = datetime.now(timezone.utc)
    user = drill_user(target)
    base = scratch_base(target)
    base.mkdir(parents=True, exist_ok=True)
    for stale in remove_leftovers(target, timedelta(minutes=config.timeout_minutes)):
        log.warning("target %s: removed %s, left by an interrupted drill", target.name, stale, extra={"target": target.name})
    if info.size_bytes:
        _free_space(base, 2 * info.size_bytes)
    name = scratch_name(target.name)
    folder = base / name
    data = folder / "data"
    result = DrillResult(kind="physical", scratch=str(folder), backup_id=info.id, started_at=drill_started)
    replay = replaying.plan(target, info, drill_started)
    result.replay_expected = replay is not None
    if replay is None:
        result.notes.append("no WAL archive to replay (backup.wal_path unset): the copy stops at the backup's end; no RPO measured")
    else:
        result.recovery_target = replay.as_dict()
        if config.target == "random" and replay.time is None:
            result.notes.append("restore.target random: the recovery window has no point after the backup's end yet; "
                                "recovered to the archive's end instead")
    live = None
    if replay is not None and replay.time is None:
        # Read before the restore: what the live server had written when the drill
        # started is what the copy must reach to be caught up.
        live, why = replaying.live_wal(target)
        if why:
            result.notes.append(f"{why}: the RPO is the recovered-until time's age")
    folder.mkdir(mode=0o700)
    server: PrivateServer | None = None
    active.register(name, lambda: (server.stop() if server else None, remove_folder(folder)))
    try:
        restore_started = time.monotonic()
        restore = _tool_restore(info.kind)
        if restore is not None:
            data.mkdir(mode=0o700)
            if user:
                shutil.chown(folder, user)
                shutil.chown(data, user)
            result.notes += restore(target, info, data, max(deadline - time.monotonic(), 1),
                                    lambda proc: active.register_process(name, proc), replay)
        else:
            shutil.copytree(info.location, data, symlinks=True)
            if replay is not None:
                _replay_wal_folder(target, folder, data, replay)
        try:
            major = int((data / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            raise RestoreFailed(f"the restored folder has no readable PG_VERSION: {info.location}") from None
        pg_ctl = _tool_of_major("pg_ctl", major, config.pg_bin_dir)
        server = PrivateServer(folder, data, pg_ctl, user)
        server.prepare()
        role = conninfo_to_dict(target.dsn).get("user") or "postgres"
        dbname = conninfo_to_dict(target.dsn).get("dbname") or role
        try:
            # With hot_standby off, pg_ctl -w returns once the copy is consistent; a
            # replaying copy answers only after recovery has ended, or stops on the way.
            server.start(max(deadline - time.monotonic(), 1))
            copy = _connect_when_ready(target, server.dsn(dbname, role), deadline)
        except RestoreFailed:
            if replay is not None and replay.time is not None and replaying.recovery_ended_early(server.log_text()):
                replaying.raise_target_unreached(replay, server.log_tail())
            raise
        with copy:
            if replay is not None:
                replaying.wait_for_promotion(copy, deadline, config.timeout_minutes)
            result.restore_seconds = time.monotonic() - restore_started
            if replay is not None:
                _measure(target, info, result, replay, copy, drill_started, live, data)
            result.copy_checks = copy_checks(target, copy)
            names = list(dict.fromkeys(target.checks.critical_tables))
            result.rows = copy_counts(copy, names)
        result.live_rows = live_counts(target, names)
        result.problems += compare(target, result.live_rows, result.rows)
        if time.monotonic() > deadline:
            raise DrillError(f"the drill took longer than timeout_minutes ({config.timeout_minutes:g})")
        if keep:
            result.kept_dsn = server.dsn(dbname, role)
    except (OSError, shutil.Error) as exc:
        raise DrillError(f"scratch folder {folder}: {exc}") from None
    except psycopg.Error as exc:
        raise DrillError(scrub(f"{type(exc).__name__}: {exc}", target.secrets())) from None
    finally:
        result.duration_seconds = time.monotonic() - started
        active.unregister(name)
        if not keep:
            if server is not None:
                server.stop()
            remove_folder(folder)
    return result
