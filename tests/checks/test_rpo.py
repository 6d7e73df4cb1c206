"""rpo: the measured recovery point of this run's replaying drill against
restore.rpo_hours. The drills themselves (real PostgreSQL 15, a WAL folder,
pgBackRest, Barman) are in tests/restore/test_replay.py, where the check passes on a
whole archive and fails on one with a segment removed; here its judgement of a
drill's figures, and what it says when there is nothing to judge."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from exporter.checks import ORDER
from exporter.checks.base import CheckContext
from exporter.checks.rpo import CHECK as RPO
from exporter.restore.result import DrillResult
from tests.conftest import make_target


def _target(**restore):
    return make_target("host=/nowhere dbname=x", backup={"source": "directory", "path": "/tmp", "wal_path": "/tmp"},
                       restore={"enabled": True, **restore})


def _ctx(target, drill):
    return CheckContext(target=target, conn=None, log_conn=None, backup=None, previous=None,
                        now=datetime.now(timezone.utc), drill=True, drill_result=drill)


def _judge(rpo_seconds: float, rpo_hours: float, kind: str = "latest") -> tuple[str, str]:
    now = datetime.now(timezone.utc)
    drill = DrillResult(kind="physical", scratch="-", backup_id="b", recovery_target={"kind": kind, "time": None},
                        recovered_until=now - timedelta(seconds=rpo_seconds), rpo_seconds=rpo_seconds,
                        replay_expected=True)
    judged = RPO.run(_ctx(_target(rpo_hours=rpo_hours), drill))
    assert judged.expected == f"< {rpo_hours:g} h"
    assert judged.outcome == "error" or judged.data["rpo_seconds"] == rpo_seconds
    return judged.outcome, judged.observed


def test_rpo_passes_within_half_warns_past_half_and_fails_past_the_objective():
    assert _judge(3600, 24) == ("pass", "1 h")
    assert _judge(13 * 3600, 24) == ("warn", "13 h")
    assert _judge(25 * 3600, 24) == ("fail", "25 h")
    # A random point far back proves nothing about the objective: not measured, not failed.
    assert _judge(25 * 3600, 24, kind="random")[0] == "error"


def test_rpo_is_an_error_when_the_drill_replayed_nothing_it_could_date():
    drill = DrillResult(kind="physical", scratch="-", backup_id="b", recovery_target={"kind": "latest", "time": None},
                        notes=["pg_last_xact_replay_timestamp() is NULL"], replay_expected=True)
    judged = RPO.run(_ctx(_target(), drill))
    assert judged.outcome == "error" and "holds no time to date it by" in judged.message


def test_rpo_is_an_error_when_the_drill_did_not_replay():
    drill = DrillResult(kind="physical", scratch="-", backup_id="b", notes=["no WAL archive to replay"])
    judged = RPO.run(_ctx(_target(), drill))
    assert judged.outcome == "error" and "did not replay the WAL archive" in judged.message


def test_rpo_is_an_error_when_the_drill_did_not_complete():
    judged = RPO.run(_ctx(_target(), None))
    assert judged.outcome == "error" and "the restore drill did not complete" in judged.message


def test_rpo_runs_after_restore_and_only_where_a_wal_archive_is_configured():
    assert ORDER.index("rpo") == ORDER.index("restore") + 1
    assert RPO.on_demand
    assert RPO.applies(_target())
    assert not RPO.applies(make_target("host=/nowhere dbname=x", backup={"source": "directory", "path": "/tmp"},
                                       restore={"enabled": True}))
    assert not RPO.applies(_target(enabled=False))
