"""The recovery point, measured: the restore drill of this run replayed the WAL
archive, and the copy's recovered-until time (pgbv's own heartbeat rows and the last
replayed commit, see exporter/restore/replay.py) is no older than restore.rpo_hours
before the drill started; past half of it warns.

It runs with the drill (on demand, like restore) and judges what the drill measured:
a target whose backups keep a WAL archive (pgBackRest, Barman, a base backup folder
with backup.wal_path) must come out of the drill with a recovery point, so a drill
that failed, or replayed nothing it could date, is an error: the RPO was not proved.
"""

from __future__ import annotations

from exporter.backups import keeps_wal
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class RpoCheck(Check):
    name = "rpo"
    title = "Recovery point (measured by a replaying drill)"
    on_demand = True

    def applies(self, target: TargetConfig) -> bool:
        return target.restore.enabled and keeps_wal(target.backup)

    def run(self, ctx: CheckContext) -> CheckResult:
        objective = ctx.target.restore.rpo_hours
        expected = f"< {objective:g} h"
        drill = ctx.drill_result
        if drill is None:
            return self.errored("no recovery point measured: the restore drill did not complete (see restore)",
                                expected=expected)
        if drill.recovery_target is None:
            return self.errored(
                "no recovery point measured: the drill did not replay the WAL archive"
                + (f" ({'; '.join(drill.notes)})" if drill.notes else ""), expected=expected)
        if drill.recovered_until is None:
            return self.errored(
                "no recovery point measured: the copy replayed the archive but holds no time to date it by"
                + (f" ({'; '.join(drill.notes)})" if drill.notes else ""), expected=expected,
                recovery_target=drill.recovery_target)
        if drill.replay_facts.get("forked_from_live"):
            return self.failed(
                "no recovery point of the live database: the archive's latest timeline forks off the live server's "
                "(see restore); recovery to latest would follow the fork", expected=expected,
                recovered_until=drill.recovered_until.isoformat(), recovery_target=drill.recovery_target)
        rpo = drill.rpo_seconds or 0.0
        data = {"recovered_until": drill.recovered_until.isoformat(), "rpo_seconds": round(rpo, 3),
                "recovery_target": drill.recovery_target}
        observed = f"{rpo / 3600:.4g} h"
        kind = drill.recovery_target.get("kind")
        raw = (ctx.now if drill.started_at is None else drill.started_at) - drill.recovered_until
        if drill.replay_facts.get("caught_up_with_live") and rpo < raw.total_seconds() - 0.5:
            # The copy holds every WAL segment the live server had finished: the newest
            # commit is old only because nothing newer was committed (replay.bounded_rpo).
            where = (f"recovered until {drill.recovered_until.isoformat()}, every WAL segment the live server had "
                     f"finished when the drill started: measured RPO {_duration(rpo)} (what was not archived yet)")
        else:
            where = (f"recovered until {drill.recovered_until.isoformat()}, {_duration(rpo)} before the drill started"
                     + (f" (random target {drill.recovery_target.get('time')})" if kind == "random" else ""))
        data.update(drill.replay_facts)
        limit = objective * 3600
        if kind == "random" and rpo > limit / 2:
            # A point-in-time drill stops where it was drawn to: the archive reaches at least
            # that far, so its RPO is proved only when that point is recent enough.
            return self.errored(f"{where}: a point-in-time drill proves only that the archive reaches its target; "
                                "the RPO is not measured this time (a latest drill measures the archive's end)",
                                observed, expected, **data)
        if rpo > limit:
            return self.failed(f"{where}: the RPO exceeds the objective of {objective:g} h", observed, expected, **data)
        if rpo > limit / 2:
            return self.warned(f"{where}: past half the objective of {objective:g} h", observed, expected, **data)
        return self.passed(f"{where}: within the objective of {objective:g} h", observed, expected, **data)


CHECK = RpoCheck()
