"""`pgbv run`: verifies on schedule, serves /metrics, and stays up through faults.

Threads: the main thread runs the scheduler loop; one thread refreshes the
snapshot (and flushes the spool, and runs the daily cleanup) every
refresh_seconds; each target's run is a daemon thread, at most
max_concurrent_targets at a time; the HTTP server has its own. SIGTERM or SIGINT
sets one event that every loop waits on, so the process stops within a second
or two; a run cut short leaves no row (each insert is one atomic statement).

Sessions, per server: a run holds one. Without log_dsn the log table lives in
the target, and the run's read-only check session takes the run lock, asks
whether this period is done, runs the checks, writes the row in one READ WRITE
transaction and reads the target's new picture for the snapshot. With log_dsn
the run holds one session on the log database for all of that and one check
session on the target. The refresh thread uses one session at a time. So at
most max_concurrent_targets + 1 sessions per server, plus a restore drill's own
(docs/daemon.md).

Replicas (docs/daemon.md, "Replicas"): periods are aligned to the Unix epoch (or the
daily slot), so every replica agrees on them; at a period's start a replica runs the
targets its shard owns (exporter.shards), and after takeover_after_seconds it tries
the others' targets that have no row in the period yet. Two guards keep it to one
row per target per period: the run lock (an advisory lock on the log database) and,
under it, the question whether the period already has a row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import signal
import threading
import time
from dataclasses import replace
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Callable

import psycopg
import schedule

from exporter import record, shards, snapshot
from exporter.config import ConfigError, Settings, TargetConfig
from exporter.db import TargetUnreachable, close, connect, first_line, writable
from exporter.logs import run_line, setup_logging
from exporter.redact import scrub
from exporter.result import RunResult
from exporter.spool import Spool, SpoolError
from exporter.verify import _drill_due, unreachable_result, verify_target, write

log = logging.getLogger("pgbv.daemon")

TRIGGER_SCHEDULE = "schedule"
TRIGGER_START = "start"
TRIGGER_TAKEOVER = "takeover"
# The triggers of the daemon's runs: a period holds one row of any of them.
DAEMON_TRIGGERS = (TRIGGER_SCHEDULE, TRIGGER_START, TRIGGER_TAKEOVER)
# How long the loop may go without a tick before /healthz says the process is stuck.
HEALTH_STALL_SECONDS = 60


def outage_line(result: RunResult) -> str:
    """What a run of an unreachable target did, in words: which checks ran, with their
    outcomes, and which it skipped."""
    ran = ", ".join(f"{check.name} {check.outcome}" for check in result.checks) or "none"
    line = f"target {result.target} unreachable: {result.unreachable}; checks that need no database ran: {ran}"
    skipped = result.facts.get("skipped_checks")
    if skipped:
        line += f"; skipped (they need the database): {', '.join(skipped)}"
    return line


def advisory_key(target: str) -> int:
    """A stable 64-bit lock key per target (hashtext differs between PostgreSQL versions)."""
    return int.from_bytes(hashlib.sha256(f"pgbv-run:{target}".encode()).digest()[:8], "big", signed=True)


class Daemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.period = snapshot.schedule_interval_seconds(settings)
        self.spool = Spool(settings.spool_dir)
        self.stop_event = threading.Event()
        self.scheduler = schedule.Scheduler()
        self._snapshot = snapshot.empty(settings)
        # Pictures are replaced from run threads and the refresh thread: under this
        # lock, and only by a picture read later than the one in place.
        self._snapshot_lock = threading.Lock()
        self._read_at: dict[str, float] = {}  # target -> time.monotonic() its picture's read began
        self._dirty: set[str] = set()  # targets the refresh thread re-reads at once
        self._dirty_lock = threading.Lock()
        self._cleanup_due = threading.Event()
        self._slots = threading.BoundedSemaphore(settings.schedule.max_concurrent_targets)
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._refresh_now = threading.Event()
        self._last_tick = time.monotonic()
        self._standby_warned: set[str] = set()
        self._secrets = settings.secrets()
        self.server = None
        sched = settings.schedule
        self.total_shards = sched.total_shards
        try:
            self.shard = shards.resolve_shard(sched.shard, sched.total_shards, os.environ)
        except ValueError as exc:
            raise ConfigError(f"schedule.shard: {exc}") from None
        self.grace = sched.takeover_seconds
        self.owner = {t.name: shards.owner_shard(t.name, self.total_shards) for t in settings.targets}
        self.runner = {"host": os.environ.get("HOSTNAME") or socket.gethostname(), "shard": self.shard}
        self._period: datetime | None = None  # the period the loop last started own runs for
        self._tried: dict[str, float] = {}  # target -> time.monotonic() of this period's last takeover try
        self.runs_total = {"own": 0, "takeover": 0}  # rows this process produced (written or spooled)
        self._counts_lock = threading.Lock()
        self._started = time.monotonic()
        self._drills = threading.BoundedSemaphore(settings.restore.max_concurrent_drills)

    # --- what the HTTP server reads -----------------------------------------------------

    def current_snapshot(self) -> snapshot.Snapshot:
        return self._snapshot

    def healthy(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() - self._last_tick < HEALTH_STALL_SECONDS

    # --- scheduling ----------------------------------------------------------------------

    def _schedule_jobs(self) -> None:
        # Runs follow the periods (tick); only the daily cleanup is a timer of this process.
        self.scheduler.every(24).hours.do(self.request_cleanup)

    def next_run_timestamp(self) -> float | None:
        """The next period's start: when this replica runs its own targets next."""
        return (self.period_start(datetime.now(timezone.utc)) + timedelta(seconds=self.period)).timestamp()

    def period_start(self, now: datetime) -> datetime:
        """Rows verified at or after this moment belong to the current period (the same
        moment on every replica: epoch-aligned, or the daily slot)."""
        sched = self.settings.schedule
        return shards.period_start(now, self.period if sched.interval_minutes else None, sched.daily_at)

    def owns(self, target: TargetConfig) -> bool:
        return self.owner[target.name] == self.shard

    def run_all(self, reason: str = TRIGGER_SCHEDULE) -> None:
        """Start this replica's own targets."""
        for target in self.settings.targets:
            if self.owns(target):
                self.start_run(target, reason)

    def tick(self, now: datetime | None = None) -> None:
        """One pass of the scheduler: own targets at a period's start; other shards'
        targets with no row in the period after their takeover delay."""
        now = now or datetime.now(timezone.utc)
        start = self.period_start(now)
        if start != self._period:
            first = self._period is None
            self._period = start
            self._tried = {}
            if not first:  # the first period's own runs are start()'s (run_on_start)
                self.run_all(TRIGGER_SCHEDULE)
        if self.total_shards == 1:
            return
        if time.monotonic() - self._started < self.grace:
            # Replicas start together (a rollout, a node's reboot): siblings get one grace
            # period to run their own targets before this one takes any over.
            return
        elapsed = (now - start).total_seconds()
        pictures = {t.name: t for t in self._snapshot.targets}
        for target in self.settings.targets:
            owner = self.owner[target.name]
            if owner == self.shard or elapsed < shards.takeover_delay(self.shard, owner, self.total_shards, self.grace):
                continue
            started = pictures[target.name].last_run_started
            if started is not None and started >= start.timestamp():
                continue  # the period has its row (as far as the last picture knows)
            last_try = self._tried.get(target.name)
            if last_try is not None and time.monotonic() - last_try < self.grace:
                continue  # tried lately: the owner may still be running it
            with self._running_lock:
                if target.name in self._running:
                    continue
            self._tried[target.name] = time.monotonic()
            log.info("target %s: no row in this period %.0f s after its start; trying it for shard %d",
                     target.name, elapsed, owner, extra={"target": target.name})
            self.start_run(target, TRIGGER_TAKEOVER)

    def start_run(self, target: TargetConfig, reason: str) -> threading.Thread | None:
        with self._running_lock:
            if target.name in self._running:
                log.warning("target %s: previous run still going; this one is skipped", target.name,
                            extra={"target": target.name})
                return None
            self._running.add(target.name)
        thread = threading.Thread(target=self._run_guarded, args=(target, reason), name=f"pgbv-run-{target.name}", daemon=True)
        thread.start()
        return thread

    def _run_guarded(self, target: TargetConfig, reason: str) -> None:
        try:
            with self._slots:
                if not self.stop_event.is_set():
                    self.run_target(target, reason)
        except Exception as exc:  # noqa: BLE001 - a failing job is logged; the loop goes on
            log.error("target %s: run failed: %s", target.name, scrub(f"{type(exc).__name__}: {exc}", self._secrets),
                      extra={"target": target.name})
            self._mark_dirty(target.name)
        finally:
            with self._running_lock:
                self._running.discard(target.name)

    # --- one run ------------------------------------------------------------------------

    def run_target(self, target: TargetConfig, reason: str = "schedule") -> RunResult | None:
        """Verify one target, as one writer among replicas; returns None when skipped.

        One session per server. The run's session on the log database (read-only,
        as connect opens it) takes the run lock and reads whether this period is
        done; without log_dsn it is the target's check session too, so the checks
        run on it; the row is written on it in one READ WRITE transaction, and the
        target's new picture is read on it. Closing it releases the lock.
        """
        started = time.monotonic()
        verified_at = datetime.now(timezone.utc)
        try:
            session = connect(target, log=True)
        except TargetUnreachable as exc:
            if reason == TRIGGER_TAKEOVER:
                # Without the log database no replica can tell whether the period has its row:
                # every replica's spooled failure would become one more row for the period.
                # The owner records the outage; the refresh shows pgbv_up 0 here.
                log.info("target %s: log database unreachable; takeover skipped (%s)", target.name, exc,
                         extra={"target": target.name, "skipped": "unreachable"})
                self._mark_dirty(target.name)
                return None
            # No log database: nobody can coordinate. Verify anyway; the row goes to the spool.
            if target.log_dsn is None:
                # The log database is the target: no second connect (and timeout) to the same
                # server. The backup checks run all the same (_finish says what ran).
                result = unreachable_result(target, exc.reason, verified_at, started)
            else:
                result = verify_target(target, record_result=False)
                if result.unreachable is None:
                    log.warning("%s; verified target %s without the replica lock", exc, target.name,
                                extra={"target": target.name})
            return self._finish(target, result, reason, None)
        try:
            with session.transaction():
                got = session.execute("SELECT pg_try_advisory_lock(%s)", [advisory_key(target.name)]).fetchone()[0]
            if not got:
                log.info("target %s: another replica holds the run lock; skipped", target.name,
                         extra={"target": target.name, "skipped": "locked"})
                return None
            if reason in DAEMON_TRIGGERS and self._already_ran(session, target):
                log.info("target %s: already verified in this period (by another replica); skipped", target.name,
                         extra={"target": target.name, "skipped": "done"})
                self._read_picture_on(session, target, None)
                return None
            drill = self._take_drill_slot(session, target)
            try:
                if target.log_dsn is None:
                    result = verify_target(target, record_result=False, conn=session, drill=drill)
                else:
                    result = verify_target(target, record_result=False, log_conn=session, drill=drill)
            finally:
                if drill:
                    self._drills.release()
            return self._finish(target, result, reason, session)
        finally:
            close(session)  # ends the session, which releases the advisory lock

    def _take_drill_slot(self, session: psycopg.Connection, target: TargetConfig) -> bool:
        """True (a drill slot taken) when the target's drill is due and this replica runs fewer than
        restore.max_concurrent_drills; a due drill without a slot waits for the target's next run,
        rather than holding a run slot (and the period) for the length of other drills."""
        if not target.restore.enabled or not _drill_due(session, target, datetime.now(timezone.utc)):
            return False
        if self._drills.acquire(blocking=False):
            return True
        log.info("target %s: restore drill due, but %d drill(s) already run on this replica "
                 "(restore.max_concurrent_drills); it waits for the next run", target.name,
                 self.settings.restore.max_concurrent_drills, extra={"target": target.name})
        return False

    def _finish(self, target: TargetConfig, result: RunResult, reason: str, session: psycopg.Connection | None) -> RunResult:
        result.facts["trigger"] = reason
        result.facts["runner"] = dict(self.runner)
        with self._counts_lock:
            self.runs_total["takeover" if reason == TRIGGER_TAKEOVER else "own"] += 1
        if result.unreachable is not None:
            log.warning("%s", outage_line(result), extra={"target": target.name})
        read_at = time.monotonic()
        written = self._write(target, result, session)
        message, extra = run_line(result)
        (log.info if result.status == "success" else log.warning)(message, extra=extra)
        if written:
            # This target's picture, on the run's own session: no other connection, no other target re-read.
            if self._spool_pending(target.name):
                self._flush(target, session)
            self._read_picture_on(session, target, result.unreachable is None)
        else:
            # Shown at once from the spool (the log database cannot give it back); the
            # refresh thread writes the spooled row and re-reads when it can.
            before = self._picture(target)
            self._publish([(read_at, self._with_spool(target, replace(before, up=result.unreachable is None)))])
            self._mark_dirty(target.name)
        return result

    def _already_ran(self, conn: psycopg.Connection, target: TargetConfig) -> bool:
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT 1 FROM backup_verification_log"
                    " WHERE verified_at >= %(since)s"
                    f"   AND {record.TARGET_OF} = %(target)s"
                    "   AND verification_details->>'trigger' = ANY(%(triggers)s) LIMIT 1",
                    {"since": self.period_start(datetime.now(timezone.utc)), "target": target.name,
                     "triggers": list(DAEMON_TRIGGERS)},
                ).fetchone()
        except psycopg.Error:
            return False
        return row is not None

    def _write(self, target: TargetConfig, result: RunResult, conn: psycopg.Connection | None) -> bool:
        """Write the row on the run's session, else spool it; True when it is in the table."""
        if conn is not None and not conn.closed:
            try:
                write(conn, result)
                return True
            except psycopg.Error as exc:
                reason = first_line(exc)
        else:
            reason = "log database unreachable"
        try:
            self.spool.add(target.name, result)
            log.warning("target %s: result spooled (%s); it will be written when the database is back",
                        target.name, scrub(reason, self._secrets), extra={"target": target.name})
        except SpoolError as exc:
            log.error("target %s: result LOST: could not write it (%s) nor spool it (%s)",
                      target.name, reason, exc, extra={"target": target.name})
        return False

    # --- refresh ------------------------------------------------------------------------

    def refresh(self) -> snapshot.Snapshot:
        """The full pass: rebuild every target's picture from its log database; flush spooled rows."""
        with self._dirty_lock:
            self._dirty.clear()  # read now; a run finishing during the pass marks its target again
        previous = {t.name: t for t in self._snapshot.targets}
        pictures = []
        for target in self.settings.targets:
            read_at = time.monotonic()
            pictures.append((read_at, self._refresh_target(target, previous.get(target.name) or snapshot.configured(target))))
        return self._publish(pictures)

    def refresh_targets(self, names: Iterable[str]) -> snapshot.Snapshot:
        """Re-read only these targets' pictures; the others stay as they are."""
        wanted = set(names)
        previous = {t.name: t for t in self._snapshot.targets}
        pictures = []
        for target in self.settings.targets:
            if target.name in wanted:
                read_at = time.monotonic()
                pictures.append((read_at, self._refresh_target(target, previous.get(target.name) or snapshot.configured(target))))
        return self._publish(pictures)

    def _publish(self, pictures: Iterable[tuple[float, snapshot.TargetSnapshot]]) -> snapshot.Snapshot:
        """Put pictures into a new snapshot. A picture replaces the one in place only
        when its read began later: a slow full pass must not undo a run's newer one."""
        spool_rows = self._spool_pending()
        next_run = self.next_run_timestamp()
        with self._snapshot_lock:
            current = {t.name: t for t in self._snapshot.targets}
            for read_at, picture in pictures:
                if read_at >= self._read_at.get(picture.name, float("-inf")):
                    current[picture.name] = picture
                    self._read_at[picture.name] = read_at
            self._snapshot = snapshot.Snapshot(
                targets=tuple(current.get(t.name) or snapshot.configured(t) for t in self.settings.targets),
                schedule_interval_seconds=self.period,
                next_run_timestamp=next_run,
                spool_rows=spool_rows,
                shard=self.shard,
                total_shards=self.total_shards,
                runs_total=self._runs_so_far(),
            )
            return self._snapshot

    def _runs_so_far(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self.runs_total)

    def _read_picture_on(self, conn: psycopg.Connection, target: TargetConfig, up: bool | None) -> None:
        """Read the target's picture on a run's open session and publish it; up=None keeps
        the known up (the session is not on the target)."""
        if up is None:
            up = target.log_dsn is None or next((t.up for t in self._snapshot.targets if t.name == target.name), False)
        read_at = time.monotonic()
        try:
            with conn.transaction():
                picture = snapshot.read_target(conn, target, up)
        except psycopg.Error as exc:
            log.debug("target %s: snapshot not refreshed after the run: %s", target.name, exc)
            self._mark_dirty(target.name)
            return
        self._publish([(read_at, self._with_spool(target, picture))])

    def _picture(self, target: TargetConfig) -> snapshot.TargetSnapshot:
        return next((t for t in self._snapshot.targets if t.name == target.name), None) or snapshot.configured(target)

    def _with_spool(self, target: TargetConfig, picture: snapshot.TargetSnapshot) -> snapshot.TargetSnapshot:
        """picture with the target's newest spooled run when that one is newer (an outage)."""
        try:
            row = self.spool.newest(target.name)
        except SpoolError as exc:
            log.error("cannot read the spool: %s", exc)
            return picture
        return snapshot.with_spooled(picture, row)

    def _mark_dirty(self, name: str) -> None:
        with self._dirty_lock:
            self._dirty.add(name)
        self._refresh_now.set()

    def _take_dirty(self) -> set[str]:
        with self._dirty_lock:
            names, self._dirty = self._dirty, set()
        return names

    def _spool_pending(self, target: str | None = None) -> int:
        # An unreadable spool must not stop the refresh: it is logged and shown as empty.
        try:
            return self.spool.pending(target)
        except SpoolError as exc:
            log.error("cannot read the spool: %s", exc)
            return 0

    def _warn_standby(self, target: TargetConfig, standby: bool) -> None:
        if standby and not target.log_dsn and target.name not in self._standby_warned:
            self._standby_warned.add(target.name)
            log.error("target %s is a hot standby: pgbv cannot write its log there (runs are spooled); "
                      "set log_dsn to a primary or a central database", target.name, extra={"target": target.name})

    def _target_up(self, target: TargetConfig) -> bool:
        """Probe the target on a session of its own (log_dsn set: the log is elsewhere)."""
        conn = None
        try:
            conn = connect(target, autocommit=True)
            standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except (TargetUnreachable, psycopg.Error):
            return False
        finally:
            close(conn)
        self._warn_standby(target, standby)
        return True

    def _refresh_target(self, target: TargetConfig, before: snapshot.TargetSnapshot) -> snapshot.TargetSnapshot:
        """The target's picture, on one session per server: without log_dsn, one session
        on the target probes it, flushes its spooled rows and reads its log."""
        shared = target.log_dsn is None
        up = True if shared else self._target_up(target)
        conn = None
        try:
            conn = connect(target, log=True, autocommit=True)
            if shared:
                try:
                    standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                except psycopg.Error:
                    up = False
                    raise
                self._warn_standby(target, standby)
            else:
                standby = False
            if not standby and self._spool_pending(target.name):
                self._flush(target, conn)
            picture = snapshot.read_target(conn, target, up)
        except TargetUnreachable as exc:
            log.debug("target %s: snapshot not refreshed: %s", target.name, exc)
            picture = replace(before, up=False if shared else up)
        except psycopg.Error as exc:
            log.debug("target %s: snapshot not refreshed: %s", target.name, exc)
            picture = replace(before, up=up)
        finally:
            close(conn)
        # Whatever the log database said (or could not say), runs still in the spool are newer.
        return self._with_spool(target, picture)

    def _flush(self, target: TargetConfig, conn: psycopg.Connection) -> None:
        """Write the target's spooled rows on an open session of its log database (in one
        READ WRITE transaction: the session is read-only otherwise)."""
        try:
            with writable(conn):
                written = self.spool.flush(target.name, conn)
            if written:
                log.info("target %s: wrote %d spooled result(s)", target.name, written, extra={"target": target.name})
        except (psycopg.Error, SpoolError) as exc:
            log.warning("target %s: spooled results not written yet: %s", target.name,
                        scrub(str(exc), self._secrets), extra={"target": target.name})

    def _refresh_loop(self) -> None:
        """Full passes every refresh_seconds; in between, the targets marked (a run that
        could not read its own picture, a spooled row) at once; the daily cleanup."""
        every = self.settings.schedule.refresh_seconds
        next_full = time.monotonic() + every  # start() has just done one
        while not self.stop_event.is_set():
            self._refresh_now.wait(max(0.0, next_full - time.monotonic()))
            self._refresh_now.clear()
            if self.stop_event.is_set():
                break
            try:
                if self._cleanup_due.is_set():
                    self._cleanup_due.clear()
                    self.cleanup()
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + every
                    self.refresh()
                else:
                    names = self._take_dirty()
                    if names:
                        self.refresh_targets(names)
            except Exception as exc:  # noqa: BLE001 - the refresher must outlive any fault
                log.error("snapshot refresh failed: %s", scrub(f"{type(exc).__name__}: {exc}", self._secrets))

    def request_cleanup(self) -> None:
        """The scheduler's daily job: the refresh thread runs the cleanup, on its session."""
        self._cleanup_due.set()
        self._refresh_now.set()

    def cleanup(self) -> None:
        days = self.settings.retention_days
        for target, deleted, problem in record.cleanup_targets(self.settings.targets, days):
            if problem is not None:
                log.warning("%s", problem, extra={"target": target.name})
            else:
                log.info("target %s: cleanup deleted %d rows older than %d days", target.name, deleted, days,
                         extra={"target": target.name})

    # --- life cycle ---------------------------------------------------------------------

    def _due_on_start(self) -> list[TargetConfig]:
        """Own targets with no row in the current period (a restart never skips a period,
        and a replica restarted mid-period does not run one twice)."""
        since = self.period_start(datetime.now(timezone.utc)).timestamp()
        pictures = {t.name: t for t in self._snapshot.targets}
        due = []
        for target in self.settings.targets:
            last = pictures[target.name].last_run_started
            if self.owns(target) and (last is None or last < since):
                due.append(target)
        return due

    def start(self) -> None:
        from exporter.server import MetricsServer

        # Built first: a bad web config (TLS, basic auth) stops the start before any database work.
        self.server = MetricsServer(self.settings.http.listen, self.current_snapshot, self.healthy,
                                    web_config_file=self.settings.http.web_config_file)
        self._schedule_jobs()
        # Read the log first, so that the first scrape already shows the last verdict
        # (a database that is down costs at most its connect timeout here).
        self.refresh()
        self.server.start()
        log.info("serving metrics on %s/metrics", self.server.url)
        if self.settings.schedule.run_on_start:
            for target in self._due_on_start():
                log.info("target %s: no run in this period yet; verifying now", target.name,
                         extra={"target": target.name})
                self.start_run(target, TRIGGER_START)
        threading.Thread(target=self._refresh_loop, name="pgbv-refresh", daemon=True).start()

    def serve(self, on_started: Callable[[Daemon], None] | None = None) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code (0)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_event.set())
        self.start()
        log.info("shard %d of %d: owns %d of %d targets; takes over the others after %g s", self.shard,
                 self.total_shards, sum(map(self.owns, self.settings.targets)), len(self.settings.targets), self.grace)
        if on_started is not None:
            on_started(self)
        nxt = self.next_run_timestamp()
        if nxt:
            log.info("next scheduled run at %s", datetime.fromtimestamp(nxt, timezone.utc).isoformat(timespec="seconds"))
        while not self.stop_event.is_set():
            self._last_tick = time.monotonic()
            self.tick()
            self.scheduler.run_pending()
            self.stop_event.wait(0.5)
        self.stop()
        log.info("stopped")
        return 0

    def stop(self) -> None:
        from exporter.restore import active

        self.stop_event.set()
        self._refresh_now.set()
        # A drill in progress: kill its pg_restore and drop its scratch copy before exiting.
        stopped = active.abort_all()
        if stopped:
            log.info("stopped %d restore drill(s) and removed their scratch copies", stopped)
        if self.server is not None:
            self.server.stop()


def run_daemon(settings: Settings) -> int:
    setup_logging(settings.log_format, settings.secrets())
    return Daemon(settings).serve()
