"""A planted fault pages through the real chain, and its fix resolves the page:

    PostgreSQL -> pgbv verify (row in backup_verification_log) -> pgbv run's snapshot
    -> /metrics -> Prometheus scrape -> shipped rule -> Alertmanager (shipped example
    routes and inhibition) -> webhook.

Also: every Grafana panel expression returns data from that Prometheus, and every
metric it names is in the live scrape.

The stack and why its timings differ from production: tests/e2e/conftest.py.
"""

from __future__ import annotations

import time

import yaml

from tests.conftest import execute
from tests.e2e.conftest import RULES, needs_binaries

pytestmark = needs_binaries

FAILED = "PgBackupVerificationFailed"
FAULT = "ALTER TABLE contacts DISABLE ROW LEVEL SECURITY"
FIX = "ALTER TABLE contacts ENABLE ROW LEVEL SECURITY"
PAGE_TIMEOUT = 30  # seconds from the fault; typically well under 10
RESOLVE_TIMEOUT = 30


def shipped_rule(name: str) -> dict:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return rule
    raise AssertionError(f"{name} is not in {RULES}")


def _run_output(run) -> str:
    return f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"


def test_fault_pages_and_fix_resolves(stack):
    rule = shipped_rule(FAILED)
    # Healthy to begin with: the alert is neither pending nor firing, nothing was paged for it.
    assert stack.exporter_value("pgbv_last_run_status", target="app", status="success") == 1, stack.diagnostics()
    assert stack.prometheus_state(FAILED) is None, stack.diagnostics()
    assert stack.webhook.find(FAILED, "firing") is None, stack.diagnostics()

    # --- the fault ----------------------------------------------------------------------
    fault_at = time.monotonic()
    execute(stack.dsn, FAULT)
    run = stack.trigger_run()
    verify_took = time.monotonic() - fault_at
    assert run.returncode == 2, "pgbv verify should fail on the planted fault: " + _run_output(run)
    assert "rls_policies" in run.stdout, _run_output(run)
    assert stack.newest_status() == "failure", stack.diagnostics()

    seen: dict[str, float] = {}

    def paged():
        now = time.monotonic() - fault_at
        if "exporter" not in seen and stack.exporter_value("pgbv_last_run_status", target="app", status="failure") == 1:
            seen["exporter"] = now
        if "prometheus" not in seen and stack.prometheus_state(FAILED) == "firing":
            seen["prometheus"] = now
        return stack.webhook.find(FAILED, "firing", path="/pager", since=fault_at)

    stack.wait_until(f"{FAILED} to be paged (firing, on /pager)", paged, timeout=PAGE_TIMEOUT)
    notification, alert = stack.webhook.find(FAILED, "firing", path="/pager", since=fault_at)
    fault_to_page = notification.at - fault_at

    payload = notification.payload
    assert payload["receiver"] == "pager" and payload["status"] == "firing", payload
    assert payload["groupLabels"] == {"alertname": FAILED, "target": "app"}, payload
    labels = alert["labels"]
    assert labels["severity"] == "critical" == rule["labels"]["severity"], labels
    assert labels["target"] == "app" and labels["job"] == "pgbv" and labels["status"] == "failure", labels
    assert "instance" not in labels, f"the rule aggregates replicas away; got {labels}"
    annotations = alert["annotations"]
    assert annotations["runbook_url"] == "docs/RUNBOOK.md#pgbackupverificationfailed" == rule["annotations"]["runbook_url"]
    assert annotations["summary"] == rule["annotations"]["summary"], annotations
    assert annotations["description"] == rule["annotations"]["description"].replace("{{ $labels.target }}", "app"), annotations
    # One fault, one page: nothing else critical fired for it.
    other_pages = {a["labels"]["alertname"] for n, a in stack.webhook.alerts("/pager")
                   if n.at >= fault_at and a["status"] == "firing"} - {FAILED}
    assert not other_pages, f"the fault paged more than once: {other_pages}\n{stack.diagnostics()}"

    # --- the fix --------------------------------------------------------------------------
    fix_at = time.monotonic()
    execute(stack.dsn, FIX)
    run = stack.trigger_run()
    fix_verify_took = time.monotonic() - fix_at
    assert run.returncode == 0, "pgbv verify should pass once RLS is back: " + _run_output(run)
    assert stack.newest_status() == "success", stack.diagnostics()

    stack.wait_until(f"{FAILED} to be resolved (on /pager)",
                     lambda: stack.webhook.find(FAILED, "resolved", path="/pager", since=fix_at), timeout=RESOLVE_TIMEOUT)
    notification, resolved = stack.webhook.find(FAILED, "resolved", path="/pager", since=fix_at)
    fix_to_resolve = notification.at - fix_at
    assert notification.payload["status"] == "resolved", notification.payload
    assert resolved["labels"] == labels, (resolved["labels"], labels)
    assert resolved["annotations"]["runbook_url"] == annotations["runbook_url"]
    assert resolved["endsAt"] >= resolved["startsAt"], resolved
    assert stack.prometheus_state(FAILED) is None, stack.diagnostics()

    exporter, prometheus = seen.get("exporter", float("nan")), seen.get("prometheus", float("nan"))
    print(f"\nfault -> page {fault_to_page:.1f} s (pgbv verify {verify_took:.1f} s, exporter shows the failure at "
          f"{exporter:.1f} s, Prometheus firing at {prometheus:.1f} s); fix -> resolve {fix_to_resolve:.1f} s "
          f"(pgbv verify {fix_verify_took:.1f} s); stack up in {stack.timings['prometheus_scraping']:.1f} s")
    # Loose bounds: scrape 1 s + evaluation 1 s + for 1 s + group_wait 1 s + a verify run.
    assert fault_to_page < PAGE_TIMEOUT and fix_to_resolve < RESOLVE_TIMEOUT


# --- dashboards -------------------------------------------------------------------------------

# Series Prometheus makes itself, not found in pgbv's scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                     "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}


def dashboard_queries(**values: str) -> list[tuple[str, str]]:
    """(dashboard / panel / refId, expr) of every panel query, variables substituted,
    from tests/dashboard_exprs.py; its dashboard_expressions() is the list queried."""
    from tests import dashboard_exprs

    exprs = dashboard_exprs.dashboard_expressions(**values)
    places = [f"{name} / {title} / {ref}" for name, dashboard in dashboard_exprs.load_dashboards().items()
              for title, ref, _ in dashboard_exprs.raw_expressions(dashboard)]
    if len(places) != len(exprs):  # the helper changed its order or content: keep going, by index
        places = [f"#{i}" for i in range(len(exprs))]
    return list(zip(places, exprs))


def test_dashboard_expressions_return_data(stack):
    """Every panel query, with Grafana's "All" values and with this exporter's own
    job/instance/target picked, runs without error and returns data, and every metric
    it names is in the live scrape."""
    from tests.dashboard_exprs import FEATURE_METRICS, expression_needs, metric_names

    instance = stack.daemon.url.split("//", 1)[1]
    queries = dashboard_queries(target="app")
    queries += [(f"{where} (job=pgbv, instance={instance})", expr)
                for where, expr in dashboard_queries(target="app", job="pgbv", instance=instance)]
    assert queries, "tests/dashboard_exprs.py returned no expressions"
    scraped = {name for name, _ in stack.daemon.scrape()}
    # The stack's target keeps no WAL archive (pg_dump files): the recovery window and
    # measured RPO series are absent for it by design (docs/metrics.md), so their panels
    # are empty here; their queries must still run.
    absent_here = FEATURE_METRICS["wal"]
    problems = []
    for where, expr in queries:
        answer = stack.query(expr)
        if answer.get("status") != "success":
            problems.append(f"{where}: {expr}\n    error: {answer.get('errorType')}: {answer.get('error')}")
            continue
        empty = answer["data"]["resultType"] in ("vector", "matrix") and not answer["data"]["result"]
        if empty and "wal" not in expression_needs(expr):
            problems.append(f"{where}: {expr}\n    no data")
        missing = metric_names(expr) - scraped - PROMETHEUS_SERIES - absent_here
        if missing:
            problems.append(f"{where}: {expr}\n    not in the live scrape: {sorted(missing)}")
    print(f"\n{len(queries)} dashboard queries run against Prometheus, {len(problems)} problem(s)")
    assert not problems, "\n".join(problems) + f"\n\nscraped metric names: {sorted(scraped)}"
