"""8. Replaying drill overhead: pgbv's physical drill of a pgBackRest backup that
replays the WAL archived after it (restore --type=default, a private server started,
recovery to the archive's end, promotion, the recovered-until time and RPO, the
copy's checks, exact row counts compared with live, stop, delete) against a raw
`pgbackrest restore --type=default` of the same backup plus the server's start to
the end of recovery (pg_is_in_recovery() false), alternating, several runs each.

A PostgreSQL 15 cluster (pgBackRest 2.45 supports up to 15) archiving into a fresh
stanza: a database of about --db-mb, a full backup, then about --wal-mb of WAL
written after it (updates, with a pgbv heartbeat row per switch), all archived. Both
sides restore with the same pgbackrest, as the repository's owner, into a fresh
folder, and start the server with the drill's private settings (Unix socket only,
archive_mode off, hot_standby off); the raw side's stop and delete are outside its
time, the drill's inside (they are part of the drill).

    .venv/bin/python -m bench.bench_replay [--quick] [--db-mb 300] [--wal-mb 256] [--runs 4]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import Report, arguments, workdir
from exporter.backups import source_for
from exporter.config import TargetConfig
from exporter.migrate import migrate
from exporter.restore import drill
from exporter.restore.physical import PRIVATE_SETTINGS, PORT
from tests.pgcluster import Cluster

PG15_BIN = Path(os.environ.get("PGBV_PGBACKREST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBACKREST = shutil.which("pgbackrest") or "/usr/bin/pgbackrest"
STANZA = "bench"


def as_postgres(*argv, timeout: float = 3600) -> subprocess.CompletedProcess:
    command = [str(a) for a in argv]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout, cwd="/")


def owned_dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(mode=0o755)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres")
    return path


class Setup:
    def __init__(self, base: Path):
        self.base = base
        self.conf = base / "pgbackrest.conf"
        self.cluster = Cluster(bin_dir=PG15_BIN, settings={
            "archive_mode": "on", "wal_level": "replica", "max_wal_size": "1GB",
            "archive_command": f"{PGBACKREST} --stanza={STANZA} --config={self.conf} archive-push %p",
        })
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={owned_dir(base, 'repo')}\n"
            f"log-path={owned_dir(base, 'log')}\n"
            f"lock-path={owned_dir(base, 'lock')}\n"
            "log-level-file=off\nstart-fast=y\ncompress-type=lz4\n"
            f"[{STANZA}]\npg1-path={self.cluster.data}\npg1-socket-path={self.cluster.base}\n"
        )
        if os.geteuid() == 0:
            shutil.chown(self.conf, "postgres")
        self.wrapper = base / "pgbackrest-as-postgres"
        self.wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- {PGBACKREST} "$@"\n'
                                if os.geteuid() == 0 else f'#!/bin/sh\nexec {PGBACKREST} "$@"\n')
        self.wrapper.chmod(0o755)

    def pgbackrest(self, *args, timeout: float = 3600) -> subprocess.CompletedProcess:
        return as_postgres(PGBACKREST, f"--stanza={STANZA}", f"--config={self.conf}", *args, timeout=timeout)

    def dsn(self) -> str:
        return self.cluster.dsn()


def build(setup: Setup, db_mb: float, wal_mb: float) -> dict:
    cluster = setup.cluster
    cluster.start()
    t = time.monotonic()
    setup.pgbackrest("stanza-create")
    migrate(target(setup))
    rows = int(db_mb * 2**20 / 140)  # about 140 bytes per row with its index
    with psycopg.connect(setup.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL)")
        conn.execute("INSERT INTO accounts SELECT g, g %% 1000, md5(g::text) FROM generate_series(1, %s) g", [rows])
        conn.execute("VACUUM ANALYZE accounts")
        db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    built = time.monotonic() - t
    t = time.monotonic()
    setup.pgbackrest("backup", "--type=full")
    backed_up = time.monotonic() - t
    t = time.monotonic()
    with psycopg.connect(setup.dsn(), autocommit=True) as conn:
        start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        step = max(rows // 50, 1)
        low = 1
        while True:
            written = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [start]).fetchone()[0]
            if written >= wal_mb * 2**20:
                break
            conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id BETWEEN %s AND %s", [low, low + step - 1])
            conn.execute("INSERT INTO backup_verification_log (status, verification_details) "
                         "VALUES ('success', jsonb_build_object('target', 'bench', 'duration_seconds', 0))")
            low = low + step if low + step <= rows else 1
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        while conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] != segment:
            time.sleep(0.1)
        wal_bytes = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [start]).fetchone()[0]
    return {"rows": rows, "db_bytes": db_bytes, "built": built, "backup": backed_up, "wal_bytes": wal_bytes,
            "wal_written": time.monotonic() - t}


def target(setup: Setup, scratch: Path | None = None) -> TargetConfig:
    return TargetConfig(
        name="bench", dsn=setup.dsn(),
        checks={"critical_tables": ["accounts"], "min_policies": {"accounts": 0}, "max_row_drop_percent": 1},
        backup={"source": "pgbackrest", "stanza": STANZA, "config_file": str(setup.conf), "binary": str(setup.wrapper),
                "timeout_seconds": 3600},
        restore={"enabled": True, "scratch_dir": str(scratch) if scratch else None, "timeout_minutes": 120,
                 "pg_bin_dir": str(PG15_BIN)},
    )


def raw_replay(setup: Setup, scratch: Path, label: str, n: int) -> float:
    """pgbackrest restore --type=default, then the server started to the end of recovery."""
    folder = owned_dir(scratch, f"raw_{n}")
    os.chmod(folder, 0o700)
    data = folder / "data"
    pg_ctl = PG15_BIN / "pg_ctl"
    settings = dict(PRIVATE_SETTINGS, unix_socket_directories=str(folder))
    options = " ".join(f"-c {name}='{value}'" for name, value in settings.items())
    t = time.monotonic()
    setup.pgbackrest("restore", f"--set={label}", "--type=default", "--archive-mode=off", f"--pg1-path={data}")
    as_postgres(pg_ctl, "-D", data, "-l", folder / "server.log", "-w", "-t", "7200", "-o", options, "start", timeout=7300)
    # pg_ctl -w returns once the server is consistent; with hot_standby off it refuses
    # connections until recovery has ended (the drill waits the same way).
    while True:
        try:
            with psycopg.connect(f"host={folder} port={PORT} dbname=postgres user=postgres", autocommit=True) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    break
        except psycopg.OperationalError as exc:
            if "not accepting connections" not in str(exc) and "starting up" not in str(exc):
                raise
        time.sleep(0.2)
    seconds = time.monotonic() - t
    as_postgres(pg_ctl, "-D", data, "-m", "fast", "-w", "stop")
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def main() -> None:
    def extra(p):
        p.add_argument("--db-mb", type=float, default=None, help="database size in MiB (default 300, quick 20)")
        p.add_argument("--wal-mb", type=float, default=None, help="WAL written after the backup, MiB (default 256, quick 48)")
        p.add_argument("--runs", type=int, default=None, help="runs of each side (default 4, quick 2)")

    args = arguments(__doc__, extra)
    db_mb = args.db_mb or (20 if args.quick else 300)
    wal_mb = args.wal_mb or (48 if args.quick else 256)
    runs = args.runs or (2 if args.quick else 4)
    report = Report("replay", "8. Replaying drill overhead (pgBackRest, WAL replay to the archive's end)", quick=args.quick)
    if not (PG15_BIN / "initdb").exists() or not shutil.which("pgbackrest"):
        report.say(f"skipped: needs pgbackrest and PostgreSQL 15 binaries in {PG15_BIN}")
        report.target("replaying drill vs raw restore + recovery", "<= 1.10x", "not measured", None)
        report.finish(args.json)
        return
    base = workdir("replay")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    setup = Setup(base)
    # Short: the private server's socket path must stay under 108 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="pgbv-rb-"))
    os.chmod(scratch, 0o755)
    try:
        facts = build(setup, db_mb, wal_mb)
        print(f"database {facts['db_bytes'] / 2**20:.0f} MiB built in {facts['built']:.0f} s, backed up in "
              f"{facts['backup']:.0f} s; {facts['wal_bytes'] / 2**20:.0f} MiB of WAL after it in "
              f"{facts['wal_written']:.0f} s", flush=True)
        tgt = target(setup, scratch)
        info = source_for(tgt.backup).lookup().info
        assert info is not None, "no backup found"
        raws, drills, details = [], [], []
        raw_replay(setup, scratch, info.id, 0)  # warm-up: the repository in the page cache for both sides
        for n in range(1, runs + 1):
            if n % 2:
                raws.append(raw_replay(setup, scratch, info.id, n))
            t = time.monotonic()
            result = drill(tgt, info)
            drills.append(time.monotonic() - t)
            if not n % 2:
                raws.append(raw_replay(setup, scratch, info.id, n))
            problems = result.problems + [f"{c.name}: {c.message}" for c in result.failed_checks]
            details.append({"restore_seconds": result.restore_seconds, "duration_seconds": result.duration_seconds,
                            "recovered_until": result.recovered_until.isoformat() if result.recovered_until else None,
                            "rpo_seconds": result.rpo_seconds, "problems": problems, "rows": result.rows})
            print(f"run {n}: raw {raws[-1]:.1f} s; drill {drills[-1]:.1f} s (restore + recovery {result.restore_seconds:.1f} s, "
                  f"RPO {result.rpo_seconds or 0:.0f} s){'; PROBLEMS ' + str(problems) if problems else ''}", flush=True)
        leftovers = [p.name for p in scratch.iterdir()]
    finally:
        if not args.keep:
            setup.cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)

    raw_med, drill_med = statistics.median(raws), statistics.median(drills)
    ratio = drill_med / raw_med
    inner = statistics.median(d["restore_seconds"] for d in details)
    report.say(f"Database: {facts['db_bytes'] / 2**20:,.0f} MiB ({facts['rows']:,} rows), a full pgBackRest backup "
               f"(lz4), then {facts['wal_bytes'] / 2**20:,.0f} MiB of WAL archived after it (updates and a heartbeat row "
               f"per batch). PostgreSQL 15, pgbackrest as the repository's owner. One untimed raw restore first (page "
               f"cache), then {runs} pairs, raw first in odd pairs and the drill first in even ones.")
    report.say()
    report.table(["run", "raw restore + recovery", "drill (all)", "drill: restore + recovery", "drill: the rest", "drill / raw"],
                 [[n + 1, f"{r:.1f} s", f"{d:.1f} s", f"{x['restore_seconds']:.1f} s",
                   f"{d - x['restore_seconds']:.1f} s", f"{d / r:.3f}"]
                  for n, (r, d, x) in enumerate(zip(raws, drills, details))])
    report.say(f"Medians: raw {raw_med:.1f} s, drill {drill_med:.1f} s (its restore + recovery {inner:.1f} s); "
               f"drill / raw = {ratio:.3f} (sums: {sum(drills) / sum(raws):.3f}). The rest of the drill is the "
               f"recovered-until reading, the copy's checks, an exact count of {facts['rows']:,} rows, live estimates, "
               f"the comparison, the server's stop and the folder's deletion. Scratch folders left behind: {len(leftovers)}.")
    report.command(f"pgbackrest --stanza={STANZA} restore --set=<label> --type=default --archive-mode=off --pg1-path=<new>; "
                   "pg_ctl start -w (the drill's private settings); poll pg_is_in_recovery() until false")
    report.command("exporter.restore.drill(target, backup) with restore.target latest (what `pgbv restore-drill` runs)")
    report.target("replaying drill vs raw restore + recovery", "<= 1.10x", f"{ratio:.3f}x", ratio <= 1.10,
                  f"{facts['wal_bytes'] / 2**20:,.0f} MiB of WAL replayed")
    report.data = {"raw": raws, "drill": drills, "details": details, **facts}
    report.finish(args.json)


if __name__ == "__main__":
    main()
