"""The Prometheus exposition of a Snapshot.

A scrape never queries a database: the collector only reads the current
Snapshot, and `Exposition` renders each Snapshot object once, so a scrape
copies bytes. Every family is a gauge (the values are states and points in
time, not counts we increment) but pgbv_runs_total, the one count of this
process's own work; built here without a created time, it has no `_created`
series either.

Per-target series exist from the first scrape with 0 for what is not known yet,
because an alert on an absent series never fires. Per-check and per-table series
exist only for what the last run saw: inventing zeros for them would read as
"table empty" or "check failed".
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import exporter
from exporter.logschema import STATUSES
from exporter.record import RATIO_WINDOWS
from exporter.shards import owner_shard
from exporter.snapshot import Snapshot, TargetSnapshot

# generate_latest writes the classic text format; prometheus_client's own
# CONTENT_TYPE_LATEST announces 1.0.0, which older scrapers do not negotiate.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CACHED = "cached from the last verification recorded in backup_verification_log"
_CONFIG = "from the configuration"

OUTCOMES = (("passed", "checks_passed"), ("warned", "checks_warned"), ("failed", "checks_failed"))


def _num(value: float | int | None) -> float:
    return 0.0 if value is None else float(value)


class SnapshotCollector(Collector):
    """Yields fresh gauge families from whatever Snapshot the source returns now."""

    def __init__(self, source: Callable[[], Snapshot]):
        self._source = source

    def collect(self) -> Iterator[Metric]:
        # One read of the source per collect, so all families describe the same snapshot.
        snapshot = self._source()
        targets = snapshot.targets

        def per_target(name: str, help_text: str, value: Callable[[TargetSnapshot], float | int | None]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=["target"])
            for t in targets:
                family.add_metric([t.name], _num(value(t)))
            return family

        yield per_target(
            "pgbv_up",
            "1 if the last attempt to reach the target succeeded, 0 if not or not tried yet; "
            "refreshed with the snapshot, not at scrape time.",
            lambda t: 1 if t.up else 0,
        )
        yield per_target(
            "pgbv_last_run_timestamp_seconds",
            f"End of the last verification run, any status, in Unix seconds; 0 before the first run; {_CACHED}.",
            lambda t: t.last_run_timestamp,
        )
        yield per_target(
            "pgbv_last_success_timestamp_seconds",
            f"End of the last verification run with status success, in Unix seconds; 0 if none; {_CACHED}.",
            lambda t: t.last_success_timestamp,
        )

        status = GaugeMetricFamily(
            "pgbv_last_run_status",
            f"1 for the status of the last verification run (success, warning or failure), 0 for the others; "
            f"all 0 before the first run; {_CACHED}.",
            labels=["target", "status"],
        )
        for t in targets:
            for s in STATUSES:
                status.add_metric([t.name, s], 1.0 if t.last_status == s else 0.0)
        yield status

        yield per_target(
            "pgbv_last_run_duration_seconds",
            f"Duration of the last verification run; 0 before the first run; {_CACHED}.",
            lambda t: t.last_duration_seconds,
        )

        checks = GaugeMetricFamily(
            "pgbv_checks",
            f"Checks of the last verification run by outcome (passed, warned, failed; errors count as failed); {_CACHED}.",
            labels=["target", "outcome"],
        )
        for t in targets:
            for outcome, attr in OUTCOMES:
                checks.add_metric([t.name, outcome], float(getattr(t, attr)))
        yield checks

        success = GaugeMetricFamily(
            "pgbv_check_success",
            f"1 if the check passed or warned in the last verification run, 0 if it failed or errored; "
            f"only checks that ran are listed; {_CACHED}.",
            labels=["target", "check"],
        )
        for t in targets:
            for check in sorted(t.check_success):
                success.add_metric([t.name, check], float(t.check_success[check]))
        yield success

        yield per_target(
            "pgbv_backup_last_completion_timestamp_seconds",
            f"End of the newest backup seen by the last verification run, in Unix seconds; 0 if none was found; {_CACHED}.",
            lambda t: t.backup_completion_timestamp,
        )
        yield per_target(
            "pgbv_backup_age_seconds",
            f"Age of the newest backup when the last verification run saw it; 0 if none was found; {_CACHED}.",
            lambda t: t.backup_age_seconds,
        )
        yield per_target(
            "pgbv_backup_size_bytes",
            f"Size of the newest backup seen by the last verification run; 0 if none was found; {_CACHED}.",
            lambda t: t.backup_size_bytes,
        )
        yield per_target(
            "pgbv_database_size_bytes",
            f"Size of the verified database at the last verification run; 0 if not measured; {_CACHED}.",
            lambda t: t.database_size_bytes,
        )

        rows = GaugeMetricFamily(
            "pgbv_table_rows",
            f"Rows seen per critical table (catalog estimate) by the last verification run; {_CACHED}.",
            labels=["target", "table"],
        )
        policies = GaugeMetricFamily(
            "pgbv_rls_policies",
            f"Row-level security policies per RLS table seen by the last verification run; {_CACHED}.",
            labels=["target", "table"],
        )
        for t in targets:
            for table in sorted(t.table_rows):
                rows.add_metric([t.name, table], float(t.table_rows[table]))
            for table in sorted(t.rls_policies):
                policies.add_metric([t.name, table], float(t.rls_policies[table]))
        yield rows
        yield policies

        ratio = GaugeMetricFamily(
            "pgbv_success_ratio",
            "Share of verification runs over the window (7d, 30d) whose checks other than success_rate "
            "did not fail (success or warning), 0 to 1; runs that could not reach the database or the backups are left out "
            "(pgbv_unreached_runs); 0 when the window holds no counted run; computed from "
            "backup_verification_log when the snapshot is refreshed.",
            labels=["target", "window"],
        )
        unreached = GaugeMetricFamily(
            "pgbv_unreached_runs",
            "Runs over the window (7d, 30d) that could not reach the database or the backups (target "
            "unreachable, backup source not answering), left out of pgbv_success_ratio; computed from "
            "backup_verification_log when the snapshot is refreshed.",
            labels=["target", "window"],
        )
        for t in targets:
            for window in RATIO_WINDOWS:
                ratio.add_metric([t.name, window], _num(t.success_ratio.get(window)))
                unreached.add_metric([t.name, window], float(t.unreached_runs.get(window, 0)))
        yield ratio
        yield unreached

        yield GaugeMetricFamily(
            "pgbv_next_run_timestamp_seconds",
            "When the scheduler starts the next verification run, in Unix seconds; 0 when none is scheduled.",
            value=_num(snapshot.next_run_timestamp),
        )

        # A target without a backup source has no age limits: a 0 here would make
        # every "age > limit" rule fire, so these series are left out instead.
        for name, attr, what in (
            ("pgbv_backup_warn_age_seconds", "warn_age_seconds", "warns (warn_age_hours)"),
            ("pgbv_backup_max_age_seconds", "max_age_seconds", "fails (max_age_hours)"),
        ):
            limit = GaugeMetricFamily(
                name,
                f"Backup age beyond which backup_age {what}, {_CONFIG}; only for targets with a backup source.",
                labels=["target"],
            )
            for t in targets:
                if getattr(t, attr) is not None:
                    limit.add_metric([t.name], float(getattr(t, attr)))
            yield limit

        yield per_target(
            "pgbv_success_ratio_min",
            f"Lowest acceptable 7-day success ratio (checks.min_success_ratio), {_CONFIG}.",
            lambda t: t.success_ratio_min,
        )
        yield GaugeMetricFamily(
            "pgbv_schedule_interval_seconds",
            f"One schedule period (daily, or schedule.interval_minutes), {_CONFIG}.",
            value=float(snapshot.schedule_interval_seconds),
        )
        yield GaugeMetricFamily(
            "pgbv_spool_rows",
            "Verification results waiting in the local spool to be written to backup_verification_log.",
            value=float(snapshot.spool_rows),
        )
        # Restore drills: only targets with restore.enabled have these series.
        drilled = [t for t in targets if t.rto_target_seconds is not None]
        for name, help_text, value in (
            ("pgbv_restore_duration_seconds",
             f"Duration of the last restore drill (restore, checks and comparison); 0 before the first; {_CACHED}.",
             lambda t: t.restore_duration_seconds),
            ("pgbv_restore_last_success_timestamp_seconds",
             f"End of the last restore drill that passed (or only exceeded the RTO), in Unix seconds; 0 if none; {_CACHED}.",
             lambda t: t.restore_last_success_timestamp),
            ("pgbv_rto_target_seconds",
             f"The recovery time objective a drill is measured against (restore.rto_minutes), {_CONFIG}.",
             lambda t: t.rto_target_seconds),
            ("pgbv_restore_interval_seconds",
             f"How often a restore drill is due (restore.interval_days), {_CONFIG}.",
             lambda t: t.restore_interval_seconds),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["target"])
            for t in drilled:
                family.add_metric([t.name], _num(value(t)))
            yield family
        restored = GaugeMetricFamily(
            "pgbv_restore_rows",
            f"Rows per critical table in the copy restored by the last restore drill (exact counts); {_CACHED}.",
            labels=["target", "table"],
        )
        for t in drilled:
            for table in sorted(t.restore_rows):
                restored.add_metric([t.name, table], float(t.restore_rows[table]))
        yield restored

        # The WAL archive: only targets whose backup source keeps one have a recovery
        # window; only those that also drill have a measured RPO. A 0 in an absent
        # target's place would read as "nothing recoverable" and fire the rules.
        archived = [t for t in targets if t.keeps_wal]
        for name, help_text, value in (
            ("pgbv_recovery_window_start_timestamp_seconds",
             f"Oldest point a recovery can reach (the end of the oldest usable base backup), in Unix seconds; "
             f"0 if not known; only for targets whose backup source keeps a WAL archive; {_CACHED}.",
             lambda t: t.recovery_window_start),
            ("pgbv_recovery_window_end_timestamp_seconds",
             f"Newest point a recovery can reach (the time of the newest archived WAL), in Unix seconds; "
             f"0 if not known; only for targets whose backup source keeps a WAL archive; {_CACHED}.",
             lambda t: t.recovery_window_end),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["target"])
            for t in archived:
                family.add_metric([t.name], _num(value(t)))
            yield family
        replayed = [t for t in archived if t.rpo_objective_seconds is not None]
        for name, help_text, value in (
            ("pgbv_restore_recovered_until_timestamp_seconds",
             f"Newest point the last drill that replayed the WAL archive to its end recovered to (its copy's newest "
             f"verified_at or replayed commit), in Unix seconds; 0 before the first; {_CACHED}.",
             lambda t: t.restore_recovered_until),
            ("pgbv_restore_rpo_seconds",
             f"Recovery point measured by the last drill that replayed the WAL archive to its end: the drill's start "
             f"minus the point recovered to; 0 before the first; {_CACHED}.",
             lambda t: t.restore_rpo_seconds),
            ("pgbv_restore_rpo_objective_seconds",
             f"The recovery point objective a replaying drill is measured against (restore.rpo_hours), {_CONFIG}.",
             lambda t: t.rpo_objective_seconds),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["target"])
            for t in replayed:
                family.add_metric([t.name], _num(value(t)))
            yield family

        # Replicas (docs/daemon.md, "Replicas"). Per replica: its shard and its own runs.
        info = GaugeMetricFamily(
            "pgbv_shard_info", "Always 1; this replica's shard and the number of shards (schedule.shard, total_shards).",
            labels=["shard", "total_shards"],
        )
        info.add_metric([str(snapshot.shard), str(snapshot.total_shards)], 1.0)
        yield info
        runs = CounterMetricFamily(
            "pgbv_runs", "Verification runs this replica made since it started, by trigger: own (its shard's targets, "
            "on schedule or at start) or takeover (another shard's target with no row in the period).",
            labels=["trigger"],
        )
        for trigger in ("own", "takeover"):
            runs.add_metric([trigger], float(snapshot.runs_total.get(trigger, 0)))
        yield runs
        # The same on every replica: from the log tables.
        stalled = GaugeMetricFamily(
            "pgbv_shard_last_run_timestamp_seconds",
            "The oldest, over the shard's targets, of the newest run by the target's own shard (not a takeover), in "
            "Unix seconds; 0 while one of them has none. Only shards that own a target; " + _CACHED + ".",
            labels=["shard"],
        )
        oldest: dict[int, float] = {}
        for t in targets:
            shard = owner_shard(t.name, snapshot.total_shards)
            oldest[shard] = min(oldest.get(shard, float("inf")), _num(t.last_own_run_started))
        for shard in sorted(oldest):
            stalled.add_metric([str(shard)], oldest[shard])
        yield stalled

        build = GaugeMetricFamily(
            "pgbv_exporter_build_info", "Always 1; the version label names the running pgbv.", labels=["version"]
        )
        # Read at collect time, not import time, so tests can pin it.
        build.add_metric([exporter.__version__], 1.0)
        yield build


def registry_for(source: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry holding only our collector: no process, platform or GC series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    return registry


def render(snapshot: Snapshot) -> bytes:
    """The text exposition (format 0.0.4) of one snapshot."""
    return generate_latest(registry_for(lambda: snapshot))


@dataclass(frozen=True)
class Rendered:
    snapshot: Snapshot
    plain: bytes
    gzipped: bytes


class Exposition:
    """Renders each Snapshot object once (by identity) and keeps its plain and gzip bytes.

    Scrapes far outnumber snapshot rebuilds (every few seconds from each
    Prometheus replica vs. every refresh_seconds), so the work belongs to the
    rebuild, and concurrent scrapes of a new snapshot wait for one render
    instead of each doing it.
    """

    def __init__(self, source: Callable[[], Snapshot]):
        self._source = source
        self._lock = threading.Lock()
        self._current: Rendered | None = None
        self.renders = 0

    def get(self) -> Rendered:
        snapshot = self._source()
        current = self._current
        if current is not None and current.snapshot is snapshot:
            return current
        with self._lock:
            current = self._current
            if current is None or current.snapshot is not snapshot:
                plain = render(snapshot)
                # mtime=0: the same snapshot always gives the same bytes.
                current = Rendered(snapshot, plain, gzip.compress(plain, compresslevel=6, mtime=0))
                self._current = current
                self.renders += 1
            return current
