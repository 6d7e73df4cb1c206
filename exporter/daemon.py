"""`pgbv run`: verifies on schedule, serves /metrics, and stays up through faults.

Threads: the main thread runs the scheduler loop; one thread refreshes the
snapshot (and flushes the spool) every refresh_seconds; each target's run is a
daemon thread, at most max_concurrent_targets at a time; the HTTP server has its
own. SIGTERM or SIGINT sets one event that every loop waits on, so the process
stops within a second or two; a run cut short leaves no row (each insert is
one atomic statement).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Callable

import psycopg
import schedule

from exporter import record, snapshot
from exporter.config import Settings, TargetConfig
from exporter.db import TargetUnreachable, connect, first_line
from exporter.logs import run_line, setup_logging
from exporter.redact import scrub
from exporter.result import RunResult
from exporter.spool import Spool, SpoolError
from exporter.verify import verify_target

log = logging.getLogger("pgbv.daemon")

TRIGGER_SCHEDULE = "schedule"
# A replica skips a scheduled run when another wrote one this recently (share of a
# period): interval schedules start from each process's own start, so they are not
# aligned between replicas, and a slightly early slot must not make a second row.
SAME_PERIOD_SHARE = 0.9
# How long the loop may go without a tick before /healthz says the process is stuck.
HEALTH_STALL_SECONDS = 60


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
        self._slots = threading.BoundedSemaphore(settings.schedule.max_concurrent_targets)
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._refresh_now = threading.Event()
        self._last_tick = time.monotonic()
        self._standby_warned: set[str] = set()
        self._secrets = settings.secrets()
        self.server = None

    # --- what the HTTP server reads -----------------------------------------------------

    def current_snapshot(self) -> snapshot.Snapshot:
        return self._snapshot

    def healthy(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() - self._last_tick < HEALTH_STALL_SECONDS

    # --- scheduling ----------------------------------------------------------------------

    def _schedule_jobs(self) -> None:
        sched = self.settings.schedule
        if sched.interval_minutes:
            self.scheduler.every(sched.interval_minutes).minutes.do(self.run_all, reason="schedule")
        else:
            self.scheduler.every().day.at(sched.daily_at, "UTC").do(self.run_all, reason="schedule")
        self.scheduler.every(24).hours.do(self.cleanup)

    def next_run_timestamp(self) -> float | None:
        idle = self.scheduler.idle_seconds
        jobs = [job for job in self.scheduler.jobs if job.job_func.func == self.run_all]
        if not jobs or idle is None:
            return None
        return min(job.next_run for job in jobs).timestamp()

    def period_start(self, now: datetime) -> datetime:
        """Rows verified at or after this moment belong to the current period."""
        sched = self.settings.schedule
        if sched.interval_minutes:
            return now - timedelta(seconds=self.period * SAME_PERIOD_SHARE)
        hour, minute = map(int, sched.daily_at.split(":"))
        slot = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return slot if slot <= now else slot - timedelta(days=1)

    def run_all(self, reason: str = "schedule") -> None:
        for target in self.settings.targets:
            self.start_run(target, reason)

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
        finally:
            with self._running_lock:
                self._running.discard(target.name)
            self._refresh_now.set()

    # --- one run ------------------------------------------------------------------------

    def run_target(self, target: TargetConfig, reason: str = "schedule") -> RunResult | None:
        """Verify one target, as one writer among replicas; returns None when skipped."""
        lock_conn = None
        try:
            lock_conn = connect(target, log=True, read_only=False, autocommit=True)
        except TargetUnreachable as exc:
            # No log database: nobody can coordinate. Verify anyway; the row goes to the spool.
            log.warning("%s; verifying without the replica lock", exc, extra={"target": target.name})
        try:
            if lock_conn is not None:
                got = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", [advisory_key(target.name)]).fetchone()[0]
                if not got:
                    log.info("target %s: another replica holds the run lock; skipped", target.name,
                             extra={"target": target.name, "skipped": "locked"})
                    return None
                if reason == "schedule" and self._already_ran(lock_conn, target):
                    log.info("target %s: already verified in this period (by another replica); skipped", target.name,
                             extra={"target": target.name, "skipped": "done"})
                    return None
            result = verify_target(target, record_result=False)
            result.facts["trigger"] = reason
            self._write(target, result, lock_conn)
            message, extra = run_line(result)
            (log.info if result.status == "success" else log.warning)(message, extra=extra)
            return result
        finally:
            if lock_conn is not None:
                try:
                    lock_conn.close()  # ends the session, which releases the advisory lock
                except psycopg.Error:
                    pass

    def _already_ran(self, conn: psycopg.Connection, target: TargetConfig) -> bool:
        try:
            row = conn.execute(
                "SELECT 1 FROM backup_verification_log"
                " WHERE verified_at >= %(since)s"
                "   AND verification_details->>'target' = %(target)s"
                "   AND verification_details->>'trigger' = %(trigger)s LIMIT 1",
                {"since": self.period_start(datetime.now(timezone.utc)), "target": target.name, "trigger": TRIGGER_SCHEDULE},
            ).fetchone()
        except psycopg.Error:
            return False
        return row is not None

    def _write(self, target: TargetConfig, result: RunResult, conn: psycopg.Connection | None) -> None:
        if conn is not None and not conn.closed:
            try:
                result.id = record.insert(conn, result)
                return
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

    # --- refresh ------------------------------------------------------------------------

    def refresh(self) -> snapshot.Snapshot:
        """Rebuild the snapshot from every target's log database; flush spooled rows."""
        previous = {t.name: t for t in self._snapshot.targets}
        pictures = []
        for target in self.settings.targets:
            pictures.append(self._refresh_target(target, previous.get(target.name) or snapshot.configured(target)))
        self._snapshot = snapshot.Snapshot(
            targets=tuple(pictures),
            schedule_interval_seconds=self.period,
            next_run_timestamp=self.next_run_timestamp(),
            spool_rows=self._spool_pending(),
        )
        return self._snapshot

    def _spool_pending(self, target: str | None = None) -> int:
        # An unreadable spool must not stop the refresh: it is logged and shown as empty.
        try:
            return self.spool.pending(target)
        except SpoolError as exc:
            log.error("cannot read the spool: %s", exc)
            return 0

    def _target_up(self, target: TargetConfig) -> bool:
        try:
            with connect(target, autocommit=True) as conn:
                standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except (TargetUnreachable, psycopg.Error):
            return False
        if standby and not target.log_dsn and target.name not in self._standby_warned:
            self._standby_warned.add(target.name)
            log.error("target %s is a hot standby: pgbv cannot take its run lock or write its log there; "
                      "set log_dsn to a primary or a central database", target.name, extra={"target": target.name})
        return True

    def _refresh_target(self, target: TargetConfig, before: snapshot.TargetSnapshot) -> snapshot.TargetSnapshot:
        up = self._target_up(target)
        if target.log_dsn is None and not up:
            return replace(before, up=False)
        try:
            with connect(target, log=True, autocommit=True) as conn:
                if self._spool_pending(target.name):
                    self._flush(target)
                return snapshot.read_target(conn, target, up)
        except (TargetUnreachable, psycopg.Error) as exc:
            log.debug("target %s: snapshot not refreshed: %s", target.name, exc)
            return replace(before, up=up)

    def _flush(self, target: TargetConfig) -> None:
        try:
            with connect(target, log=True, read_only=False, autocommit=False) as conn:
                written = self.spool.flush(target.name, conn)
            if written:
                log.info("target %s: wrote %d spooled result(s)", target.name, written, extra={"target": target.name})
        except (TargetUnreachable, psycopg.Error, SpoolError) as exc:
            log.warning("target %s: spooled results not written yet: %s", target.name,
                        scrub(str(exc), self._secrets), extra={"target": target.name})

    def _refresh_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the refresher must outlive any fault
                log.error("snapshot refresh failed: %s", scrub(f"{type(exc).__name__}: {exc}", self._secrets))
            self._refresh_now.wait(self.settings.schedule.refresh_seconds)
            self._refresh_now.clear()

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
        """Targets whose newest row is older than one period (a restart never skips a day)."""
        now = time.time()
        pictures = {t.name: t for t in self._snapshot.targets}
        due = []
        for target in self.settings.targets:
            last = pictures[target.name].last_run_timestamp
            if last is None or now - last >= self.period:
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
                log.info("target %s: last run older than one period; verifying now", target.name,
                         extra={"target": target.name})
                self.start_run(target, "start")
        threading.Thread(target=self._refresh_loop, name="pgbv-refresh", daemon=True).start()

    def serve(self, on_started: Callable[[Daemon], None] | None = None) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code (0)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_event.set())
        self.start()
        if on_started is not None:
            on_started(self)
        nxt = self.next_run_timestamp()
        if nxt:
            log.info("next scheduled run at %s", datetime.fromtimestamp(nxt, timezone.utc).isoformat(timespec="seconds"))
        while not self.stop_event.is_set():
            self._last_tick = time.monotonic()
            self.scheduler.run_pending()
            self.stop_event.wait(max(0.2, min(1.0, self.scheduler.idle_seconds or 1.0)))
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
