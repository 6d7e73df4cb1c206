"""WAL archiving works (pg_stat_archiver): archive_mode is on, archiving is not failing,
and the last archived WAL segment is recent (wal_archiving_max_age_minutes).

A base backup is only as restorable as the WAL after it; a failing archive_command
shows nowhere else until the disk fills with WAL. pg_stat_archiver needs no privilege.
"Failing" needs the previous run: failed_count grew since then while nothing was
archived after the last failure. A first run judges only the age.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult

# The age is taken on the server's clock, the one last_archived_time was written with.
QUERY = """
SELECT archived_count, last_archived_wal, last_archived_time,
       failed_count, last_failed_wal, last_failed_time, stats_reset,
       extract(epoch FROM clock_timestamp() - last_archived_time)::float8 AS archived_age_seconds,
       current_setting('archive_mode') AS archive_mode
FROM pg_stat_archiver
"""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _when(wal: str | None, at: datetime | None) -> str:
    return f"{wal or '?'} at {at.isoformat() if at else '?'}"


class WalArchivingCheck(Check):
    name = "wal_archiving"
    title = "WAL archiving works and is recent"

    def applies(self, target: TargetConfig) -> bool:
        return target.checks.wal_archiving_max_age_minutes is not None

    def run(self, ctx: CheckContext) -> CheckResult:
        row = ctx.conn.execute(QUERY).fetchone()
        (archived, last_wal, last_time, failed, failed_wal, failed_time, reset, age, mode) = row
        limit = ctx.target.checks.wal_archiving_max_age_minutes
        figures: dict[str, Any] = {
            "archive_mode": mode,
            "archived_count": archived,
            "last_archived_wal": last_wal,
            "last_archived_time": _iso(last_time),
            "failed_count": failed,
            "last_failed_wal": failed_wal,
            "last_failed_time": _iso(failed_time),
            "stats_reset": _iso(reset),
        }
        data = {"wal_archiving": figures}
        expected = f"< {limit:g} min"
        observed = f"{age / 60:.1f} min" if age is not None else "never archived"

        if mode == "off":
            return self.failed(
                "archive_mode is off: this server archives no WAL, so no backup can be rolled forward "
                "from its archive", "archive_mode off", expected, **data,
            )

        problems: list[str] = []
        notes: list[str] = []
        previous = self._previous(ctx.previous, reset)
        if previous is not None and failed > previous:
            grew = failed - previous
            recovered = last_time is not None and failed_time is not None and last_time > failed_time
            if recovered:
                notes.append(f"{grew} failed attempt(s) since the last run, archived again since")
            else:
                problems.append(
                    f"archiving is failing: {grew} failed attempt(s) since the last run, the last for WAL "
                    f"{_when(failed_wal, failed_time)}, and nothing archived since"
                    + (f" (last archived: {_when(last_wal, last_time)})" if last_time else "")
                )
        elif previous is None and failed_time is not None and (last_time is None or failed_time > last_time):
            # One run cannot tell a failing archiver from an old hiccup: said, not judged.
            notes.append(f"the last attempt failed: WAL {_when(failed_wal, failed_time)}")

        if age is None:
            since = f" since the statistics were reset at {reset.isoformat()}" if reset else ""
            problems.append(f"no WAL segment has been archived{since}")
        elif age > limit * 60:
            problems.append(
                f"the last WAL segment archived, {_when(last_wal, last_time)}, is {age / 60:.1f} min old, older than "
                f"wal_archiving_max_age_minutes {limit:g} (an idle server archives only when a segment fills, "
                "unless archive_timeout forces a switch)"
            )
        if problems:
            return self.failed("; ".join(problems), observed, expected, **data)
        message = f"last WAL segment archived {age / 60:.1f} min ago ({_when(last_wal, last_time)}), {archived} archived"
        if notes:
            message += "; " + "; ".join(notes)
        return self.passed(message, observed, expected, **data)

    @staticmethod
    def _previous(previous: dict[str, Any] | None, reset: datetime | None) -> int | None:
        """failed_count of the previous run, when comparable with now (same statistics epoch)."""
        figures = (previous or {}).get("wal_archiving")
        if not isinstance(figures, dict) or not isinstance(figures.get("failed_count"), int):
            return None
        if figures.get("stats_reset") != _iso(reset):
            return None  # the counters restarted in between
        return figures["failed_count"]


CHECK = WalArchivingCheck()
