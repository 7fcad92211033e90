"""Run the benchmark suite: EarnORM side by side with Celery, SAQ, arq, taskiq, dramatiq and a
bare redis-py floor, against one private Redis server.

    python benchmarks/run.py [--quick] [--only earnorm,celery,...] [--reps N]
    python benchmarks/run.py --only earnorm --baseline REV --out NAME

Writes ``benchmarks/results/<OUT>.md`` and ``.json`` (``--out``, default ``latest``) and PNG
charts (not with ``--no-charts``). ``--baseline REV`` adds EarnORM as of git revision REV as
one more system, its cases interleaved with this tree's, and a table of this tree's figures
over the baseline's. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.envs import ensure_envs, env_python, frozen_versions
from harness.machine import describe_machine
from harness.plan import (
    BENCH_DIR,
    FULL,
    ISSUE,
    PEERS,
    QUICK,
    Case,
    Counts,
    Peer,
    floor_cases,
    peer_cases,
)
from harness.redis_server import RedisServer
from harness.report import CaseResult, from_json, render
from harness.runner import Outcome, describe, run_case
from harness.trees import export_tree

RESULTS_DIR = BENCH_DIR / "results"
WORKLOAD_ORDER = [
    "floor_publish",
    "floor_consume",
    "floor_drain",
    "floor_imports",
    "pubdrain",
    "io",
    "delay_spread",
    "delay_instant",
    "latency",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument(
        "--only", default="", help="comma-separated systems: " + ",".join(p.name for p in PEERS)
    )
    parser.add_argument(
        "--issue-counts", action="store_true", help="issue 7's exact counts (about 45 minutes)"
    )
    parser.add_argument("--reps", type=int, default=None, help="override the repetitions")
    parser.add_argument("--no-charts", action="store_true", help="skip the matplotlib charts")
    parser.add_argument("--baseline", default="",
                        help="git revision: also run EarnORM as of it, interleaved, and compare")
    parser.add_argument("--out", default="latest", help="results/<OUT>.md and .json")
    parser.add_argument("--workloads", default="",
                        help="comma-separated: run only these workloads (pubdrain,io,latency,...)")
    parser.add_argument("--render", metavar="JSON", default="",
                        help="write the report of an earlier run's results/<OUT>.json again")
    return parser.parse_args()


def plan_cases(
    peers: list[Peer], counts: Counts, env_errors: dict[str, str]
) -> tuple[list[CaseResult], dict[str, str]]:
    """Ask each peer script for its variants and expand them into cases."""
    results: list[CaseResult] = []
    batch_api: dict[str, str] = {}
    for peer in peers:
        if peer.name == "floor":
            results += [CaseResult(case) for case in floor_cases(counts)]
            continue
        try:
            if peer.env in env_errors:
                raise RuntimeError(env_errors[peer.env])
            described = describe(peer)
        except Exception as exc:
            failed = CaseResult(Case(peer.name, "pubdrain", "default", "-"))
            failed.outcomes.append(Outcome("error", reason=str(exc)[-1500:]))
            results.append(failed)
            continue
        batch_api[peer.name] = described.get("batch_api", "")
        for case in peer_cases(peer.name, described, counts):
            result = CaseResult(case)
            if case.workload in described.get("skips", {}):
                result.outcomes.append(Outcome("skipped", reason=described["skips"][case.workload]))
            results.append(result)
    results.sort(key=lambda r: WORKLOAD_ORDER.index(r.case.workload))
    return results, batch_api


def _summary(outcome: Outcome) -> str:
    if outcome.status != "ok":
        return f"{outcome.status}: {outcome.reason[:160]}"
    return " ".join(
        f"{k}={v:,.1f}"
        for k, v in outcome.metrics.items()
        if isinstance(v, float | int) and not k.startswith("rss_tree")
    )


def run_all(
    results: list[CaseResult], peers: dict[str, Peer], server: RedisServer, reps: int
) -> list[str]:
    """Run every case ``reps`` times, interleaved; return the progress lines."""
    log: list[str] = []
    todo = [r for r in results if not r.outcomes]
    total = len(todo) * reps
    done = 0
    for rep in range(1, reps + 1):
        for result in todo:
            done += 1
            server.flushall()
            outcome = run_case(peers[result.case.peer], result.case, server.url)
            result.outcomes.append(outcome)
            line = (
                f"[{done}/{total}] rep {rep} {result.case.key} ({outcome.seconds:.1f}s) "
                f"{_summary(outcome)}"
            )
            log.append(line)
            print(line, file=sys.stderr, flush=True)
    return log


# Per case: the figures compared with the baseline, and whether more is better.
COMPARED = {
    "pubdrain/default": [("publish_seq_per_s", True), ("drain_per_s", True)],
    "pubdrain/tuned": [("publish_batch_per_s", True), ("drain_per_s", True)],
    "io/io": [("io_per_s", True)],
    "latency/default": [("latency_p50_ms", False), ("latency_p99_ms", False)],
}


def against_baseline(results: list[CaseResult], baseline: str) -> str:
    """This tree over the baseline, per figure: the median of each side's repetitions (and
    each repetition's pair, which ran one after the other). Above 1.00 is better, whichever
    way the figure goes (for latency the ratio is before/after)."""
    by_key = {r.case.key: r for r in results}
    lines = ["", f"## This tree against {baseline} (same run, interleaved)", "",
             "| case | figure | this tree | baseline | ratio (>1 better) | per repetition |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for case, figures in COMPARED.items():
        now, then = by_key.get(f"earnorm/{case}"), by_key.get(f"{baseline}/{case}")
        if now is None or then is None:
            continue
        for figure, more_is_better in figures:
            a, b = now.stat(figure), then.stat(figure)
            if a is None or b is None:
                continue
            ratio = a["median"] / b["median"] if more_is_better else b["median"] / a["median"]
            pairs = [(x.get(figure), y.get(figure))
                     for x, y in zip(now.ok_runs, then.ok_runs, strict=False)]
            each = ", ".join(f"{(x / y if more_is_better else y / x):.2f}"
                             for x, y in pairs if x and y)
            lines.append(f"| {case} | {figure} | {a['median']:,.1f} | {b['median']:,.1f} | "
                         f"{ratio:.2f} | {each} |")
    return "\n".join(lines) + "\n"


def draw_charts(json_path: Path) -> str | None:
    try:
        errors = ensure_envs(["charts"])
        if errors:
            return errors["charts"]
        plot = BENCH_DIR / "harness" / "plot.py"
        subprocess.run(
            [str(env_python("charts")), str(plot), str(json_path), str(RESULTS_DIR)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.CalledProcessError as exc:
        return exc.stderr[-1500:]
    except Exception as exc:
        return str(exc)
    return None


def compile_earnorm(tree: Path = BENCH_DIR.parent) -> None:
    """Byte-compile the source tree EarnORM runs from, as pip does for every peer's installed
    package: with PYTHONDONTWRITEBYTECODE set (this machine sets it) an uncompiled tree is
    compiled again at every start, which would count ~120 ms of compiling in its start-up."""
    subprocess.run([str(env_python("earnorm")), "-m", "compileall", "-q",
                    str(tree / "earnorm")], check=True)


def baseline_peer(revision: str) -> Peer:
    """EarnORM as of ``revision``: its ``earnorm/`` exported under ``.envs/trees/``."""
    sha, tree = export_tree(revision)
    return Peer(f"earnorm@{sha}", "earnorm_bench.py", "earnorm", tree=tree)


def report(results: list[CaseResult], meta: dict[str, Any]) -> str:
    """The Markdown report, with a comparison table per ``--baseline`` system in the run."""
    markdown = render(results, meta)
    for name in sorted({r.case.peer for r in results if r.case.peer.startswith("earnorm@")}):
        markdown += against_baseline(results, name)
    return markdown


def rerender(json_path: Path, out: str) -> int:
    """The Markdown of an earlier run again, from its JSON (after a change to the report)."""
    data = json.loads(json_path.read_text())
    markdown = report(from_json(data), data["meta"])
    if (RESULTS_DIR / "summary.png").exists():
        markdown += "\n![summary](summary.png)\n"
    (RESULTS_DIR / f"{out}.md").write_text(markdown)
    print(markdown)
    return 0


def main() -> int:
    args = parse_args()
    if args.render:
        return rerender(Path(args.render), args.out)
    counts = QUICK if args.quick else ISSUE if args.issue_counts else FULL
    if args.reps is not None:
        counts = Counts(**{**asdict(counts), "reps": args.reps})
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - {p.name for p in PEERS}
    if unknown:
        print(f"unknown system(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    peers = [p for p in PEERS if not only or p.name in only]
    baseline = baseline_peer(args.baseline) if args.baseline else None
    if baseline is not None:  # right after this tree's cases: the pair runs back to back
        names = [p.name for p in peers]
        peers.insert(names.index("earnorm") + 1 if "earnorm" in names else len(peers),
                     baseline)
    started = time.monotonic()
    load_start = os.getloadavg()
    env_names = list(dict.fromkeys(p.env for p in peers if p.env is not None))
    print(f"preparing venvs: {', '.join(env_names) or 'none needed'}", file=sys.stderr)
    env_errors = ensure_envs(env_names)
    if "earnorm" in env_names and "earnorm" not in env_errors:
        compile_earnorm()
        for peer in peers:
            if peer.tree is not None:
                compile_earnorm(peer.tree)
    server = RedisServer()
    server.start()
    print(
        f"{server.version()} on {server.url} (pid {server.proc.pid if server.proc else '?'})",
        file=sys.stderr,
    )
    try:
        redis_version = server.version()
        results, batch_api = plan_cases(peers, counts, env_errors)
        wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
        if wanted:
            results = [r for r in results if r.case.workload in wanted]
        log = run_all(results, {p.name: p for p in peers}, server, counts.reps)
    finally:
        server.stop()
    meta = {
        "mode": "quick" if args.quick else "issue-counts" if args.issue_counts else "full",
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.monotonic() - started,
        "machine": describe_machine(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "redis": redis_version,
        "counts": asdict(counts),
        "batch_api": batch_api,
        "versions": {name: frozen_versions(name) for name in env_names},
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.out}.log").write_text("\n".join(log) + "\n")
    json_path = RESULTS_DIR / f"{args.out}.json"
    json_path.write_text(
        json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=1) + "\n"
    )
    markdown = report(results, meta)
    if not args.no_charts:
        chart_error = draw_charts(json_path)
        if chart_error:
            markdown += f"\nCharts not drawn: {chart_error}\n"
        else:
            markdown += "\n![summary](summary.png)\n"
    (RESULTS_DIR / f"{args.out}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
