"""The alert rules: promtool accepts them and their unit tests pass; every alert
fires in a test and stays quiet in another; every runbook link has its heading."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "pgbv.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.tests.yml"))
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"

# Alerts whose names an issue fixed (issue 14), outside the PgBackup... prefix.
ISSUE_NAMED = {"PgbvRPOExceeded", "PgbvWALArchiveGap", "PgbvRecoveryWindowShort", "PgbvShardStalled"}

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


@promtool
def test_promtool_check_rules():
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@promtool
def test_promtool_test_rules():
    proc = subprocess.run(["promtool", "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=120,
                          cwd=RULE_TESTS[0].parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_fires_in_a_test_and_stays_quiet_in_another():
    cases = [case for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in alerts():
        name = rule["alert"]
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name} never fires in a test"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name} is never shown quiet"


def test_every_alert_is_complete_and_aggregates_replicas():
    for rule in alerts():
        name = rule["alert"]
        # Issue 14 named its three alerts Pgbv...; the older ones keep PgBackup...
        assert name.startswith("PgBackup") or name in ISSUE_NAMED, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert "{{ $labels.target }}" in rule["annotations"]["description"] or "instance" in rule["annotations"]["description"] \
            or name == "PgBackupVerificationExporterAbsent", name
        if "pgbv_" in rule["expr"] and "absent(" not in rule["expr"]:
            assert "max without (instance, pod)" in rule["expr"], f"{name} would page once per replica"


def test_every_runbook_link_has_its_heading():
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.MULTILINE)}
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/RUNBOOK.md" and anchor in anchors, (rule["alert"], url)


def test_rules_name_only_metrics_the_exporter_exports():
    exported = {line.split()[2] for line in (ROOT / "tests/golden/full.prom").read_text().splitlines() if line.startswith("# HELP")}
    exported.add("up")
    for rule in alerts():
        for name in re.findall(r"\b(pgbv_[a-z_]+|up)\b(?=\s*[{)\s])", rule["expr"]):
            assert name in exported, (rule["alert"], name)
