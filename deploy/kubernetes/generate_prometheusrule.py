#!/usr/bin/env python3
"""Writes deploy/kubernetes/prometheusrule.yaml from alerts/pgbv.rules.yml.

The rules file is the one source: promtool checks and unit-tests it, and the
Prometheus Operator gets the same groups wrapped in a PrometheusRule. A test
fails when the two drift; after editing the rules, run:

    python3 deploy/kubernetes/generate_prometheusrule.py

--check exits 1 (and changes nothing) when the file is stale. --runbook-base URL
prefixes the rules' relative runbook_url annotations (docs/RUNBOOK.md#...) so
that a page links to where you serve the runbook; the committed file keeps them
as they are in the rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RULES = ROOT / "alerts" / "pgbv.rules.yml"
OUTPUT = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from alerts/pgbv.rules.yml by deploy/kubernetes/generate_prometheusrule.py;
# do not edit: change the rules file (and its promtool tests), then run the script.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line expressions stay readable block scalars, as in the rules file.
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def render(rules_text: str, runbook_base: str = "") -> str:
    rules = yaml.safe_load(rules_text)
    if runbook_base:
        base = runbook_base.rstrip("/") + "/"
        for group in rules["groups"]:
            for rule in group["rules"]:
                url = rule.get("annotations", {}).get("runbook_url")
                if url and "://" not in url:
                    rule["annotations"]["runbook_url"] = base + url
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "pgbv",
            "labels": {"app.kubernetes.io/name": "pgbv", "app.kubernetes.io/component": "alert-rules"},
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when prometheusrule.yaml is stale; write nothing")
    parser.add_argument("--runbook-base", default="", metavar="URL", help="prefix for relative runbook_url annotations")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    text = render(RULES.read_text(), args.runbook_base)
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
