"""Replicas: which shard a replica is, which shard owns a target, and the schedule's periods.

Ownership follows kube-state-metrics' convention (`--shard`, `--total-shards`, or the
StatefulSet pod's ordinal): a target belongs to shard
``int.from_bytes(sha256(name as UTF-8)[:8], "big") % total_shards``. SHA-256, not
Python's hash(), because hash() of a str is salted per process: two replicas (or one
after a restart) would disagree on who owns what.

Periods are the same on every replica and across restarts, whenever each one started:
an interval schedule of P seconds has period k = [k·P, (k+1)·P) counted from the Unix
epoch; a daily_at schedule has one period per day, starting at the slot. One row per
target per period, whichever replica writes it (docs/daemon.md, "Replicas").
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from typing import Mapping

# A StatefulSet pod is named <statefulset>-<ordinal>; the pod's HOSTNAME is that name.
_ORDINAL = re.compile(r"-(\d+)$")
TAKEOVER_SHARE = 0.1  # takeover_after_seconds defaults to this share of a period


def owner_shard(target: str, total_shards: int) -> int:
    """The shard that owns a target: the same on every replica, in every process."""
    digest = hashlib.sha256(target.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % total_shards


def shard_from_hostname(hostname: str | None) -> int:
    """The ordinal of a StatefulSet pod name (`pgbv-2` -> 2); ValueError naming what is wrong."""
    if not hostname:
        raise ValueError("shard: auto needs the pod name in HOSTNAME (a StatefulSet pod such as pgbv-0); HOSTNAME is not set")
    match = _ORDINAL.search(hostname.strip())
    if not match:
        raise ValueError(
            f"shard: auto takes the ordinal at the end of the pod name (pgbv-2 -> 2); HOSTNAME={hostname!r} has none "
            "(run as a StatefulSet, or set schedule.shard to a number)"
        )
    return int(match.group(1))


def resolve_shard(shard: int | str | None, total_shards: int, environ: Mapping[str, str]) -> int:
    """This replica's shard from the configured value; ValueError when it cannot be one."""
    if shard is None:
        if total_shards > 1:
            raise ValueError(f"total_shards is {total_shards}: set shard to this replica's number (0 to "
                             f"{total_shards - 1}) or to auto (a StatefulSet pod's ordinal)")
        return 0
    if shard == "auto":
        number = shard_from_hostname(environ.get("HOSTNAME"))
        if number >= total_shards:
            raise ValueError(f"shard: auto gives {number} (HOSTNAME={environ.get('HOSTNAME')!r}) but total_shards is "
                             f"{total_shards}: run at most {total_shards} replicas or raise total_shards")
        return number
    if not 0 <= int(shard) < total_shards:
        raise ValueError(f"shard must be between 0 and total_shards - 1 ({total_shards - 1}), got {shard}")
    return int(shard)


def period_start(now: datetime, interval_seconds: float | None, daily_at: str) -> datetime:
    """The start of the period `now` falls in (UTC)."""
    if interval_seconds:
        epoch = now.timestamp()
        return datetime.fromtimestamp(epoch - epoch % interval_seconds, timezone.utc)
    hour, minute = map(int, daily_at.split(":"))
    now = now.astimezone(timezone.utc)
    slot = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return slot if slot <= now else slot - timedelta(days=1)


def period_seconds(interval_seconds: float | None) -> float:
    return float(interval_seconds) if interval_seconds else 86400.0


def takeover_delay(own_shard: int, owner: int, total_shards: int, grace: float) -> float:
    """How long after a period's start this replica tries another shard's target.

    The next shard round the ring tries after one grace period, the one after it after
    two, and so on: a dead replica's targets are picked up by one survivor without a
    race, and by the next one if that one is dead too.
    """
    distance = (own_shard - owner) % total_shards
    return grace * max(1, distance)
