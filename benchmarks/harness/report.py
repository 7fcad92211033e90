"""Aggregate repeated runs (median and min) and render the Markdown report."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.plan import Case
from harness.runner import Outcome


@dataclass
class CaseResult:
    """All repetitions of one case."""

    case: Case
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[dict[str, Any]]:
        return [o.metrics for o in self.outcomes if o.status == "ok"]

    @property
    def status(self) -> str:
        if self.ok_runs:
            return "ok"
        return self.outcomes[-1].status if self.outcomes else "not run"

    @property
    def reason(self) -> str:
        failed = [o.reason for o in self.outcomes if o.status != "ok"]
        return failed[-1] if failed else ""

    def per_rep(self, metric: str) -> list[float | None]:
        """The metric in each repetition, in run order (None where that one failed)."""
        return [o.metrics.get(metric) if o.status == "ok" else None for o in self.outcomes]

    def stat(self, metric: str) -> dict[str, float] | None:
        values = [run[metric] for run in self.ok_runs if run.get(metric) is not None]
        if not values:
            return None
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }

    def to_json(self) -> dict[str, Any]:
        metrics = sorted({k for run in self.ok_runs for k in run})
        return {
            "peer": self.case.peer,
            "workload": self.case.workload,
            "variant": self.case.variant,
            "label": self.case.label,
            "params": self.case.params,
            "status": self.status,
            "reason": self.reason,
            "errors": [o.reason for o in self.outcomes if o.status == "error"],
            "seconds": [round(o.seconds, 1) for o in self.outcomes],
            "runs": [o.metrics for o in self.outcomes if o.status == "ok"],
            "summary": {m: s for m in metrics if (s := self.stat(m)) is not None},
        }


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _number(value: float, unit: str) -> str:
    if unit == "rate":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}"


class Table:
    """Renders cells as "median (min X)" and collects footnotes for skipped or failed cells."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes

    def cell(self, result: CaseResult | None, metric: str, unit: str) -> str:
        if result is None:
            return "—"
        if result.status != "ok":
            note = f"{result.case.peer} {result.case.workload}: {result.reason}"
            if note not in self.notes:
                self.notes.append(note)
            return f"{result.status} [{self.notes.index(note) + 1}]"
        stat = result.stat(metric)
        if stat is None:
            return "—"
        if stat["n"] == 1:
            return _number(stat["median"], unit)
        return f"{_number(stat['median'], unit)} (min {_number(stat['min'], unit)})"


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(results: list[CaseResult], meta: dict[str, Any]) -> str:
    """The whole Markdown report."""
    by_key = {r.case.key: r for r in results}
    peers = list(dict.fromkeys(r.case.peer for r in results if r.case.peer != "floor"))
    notes: list[str] = []
    table = Table(notes)
    counts = meta["counts"]
    out = [
        f"# Benchmark results ({meta['mode']} run, {meta['finished']})",
        "",
        f"Machine: {meta['machine']}. Server: {meta['redis']} (private, persistence off). "
        f"Each case ran {counts['reps']} time(s): median, with the minimum in parentheses. "
        f"Whole run: {meta['elapsed_s'] / 60:.1f} min. Load average (1/5/15 min) at start "
        f"{_load(meta['load_average']['start'])}, at end {_load(meta['load_average']['end'])}: "
        "other work on the machine shows up as noise, in every system alike.",
        "",
        f"## Publish ({counts['publish']:,} no-op events, events/s)",
        "",
    ]
    rows = []
    for peer in peers:
        seq = by_key.get(f"{peer}/pubdrain/default")
        batch = by_key.get(f"{peer}/pubdrain/tuned")
        rows.append(
            [
                peer,
                table.cell(seq, "publish_seq_per_s", "rate"),
                table.cell(batch, "publish_batch_per_s", "rate"),
                meta["batch_api"].get(peer, ""),
            ]
        )
    floor_pub = by_key.get("floor/floor_publish/-")
    if floor_pub is not None:
        rows.append(
            [
                "redis-py floor (LPUSH)",
                table.cell(floor_pub, "lpush_seq_per_s", "rate"),
                table.cell(floor_pub, "lpush_pipe100_per_s", "rate"),
                "pipeline(100)",
            ]
        )
    out += _rows(["system", "sequential (awaited)", "batch of 100", "batch API"], rows)

    out += ["", f"## Drain: {counts['publish']:,} no-op events, one worker process", ""]
    rows = [
        [
            r.case.peer,
            r.case.label,
            table.cell(r, "drain_per_s", "rate"),
            table.cell(r, "startup_s", "s"),
            table.cell(r, "rss_mb", "mb"),
            table.cell(r, "rss_tree_mb", "mb"),
        ]
        for r in results
        if r.case.workload == "pubdrain"
    ]
    out += _rows(["system", "configuration", "events/s (first to last handler)",
                  "start-up s (launch to first handler)", "peak RSS MB", "process tree MB"],
                 rows)
    floor_consume = by_key.get("floor/floor_consume/-")
    if floor_consume is not None:
        out += ["", "Floor (bare redis-py, no decoding, no handler):", ""]
        out += _rows(
            ["per-event commands", "events/s"],
            [
                [
                    "LMOVE to in-flight + LREM ack, one await each",
                    table.cell(floor_consume, "move_ack_seq_per_s", "rate"),
                ],
                [
                    "the same, pipelined by 100",
                    table.cell(floor_consume, "move_ack_pipe100_per_s", "rate"),
                ],
                [
                    "RPOP 100 + HSET in-flight + HDEL ack (bulk, not atomic)",
                    table.cell(floor_consume, "pop_hash_bulk100_per_s", "rate"),
                ],
            ],
        )

    out += ["", f"## I/O-bound: {counts['io']:,} events, handler waits 10 ms", ""]
    rows = [
        [
            r.case.peer,
            r.case.label,
            table.cell(r, "io_per_s", "rate"),
            table.cell(r, "rss_mb", "mb"),
            table.cell(r, "rss_tree_mb", "mb"),
        ]
        for r in results
        if r.case.workload == "io"
    ]
    out += _rows(["system", "pool", "events/s", "peak RSS MB", "process tree MB"], rows)

    out += [
        "",
        f"## Delayed: {counts['delay']:,} events",
        "",
        f"Spread evenly over {counts['spread_s']:.0f} s: lateness = handler start - due time. "
        "Due at one instant: seconds from the due time until all are back on the ready "
        "list (where observable) and until all ran.",
        "",
    ]
    rows = []
    for peer in peers:
        spread = by_key.get(f"{peer}/delay_spread/default")
        instant = by_key.get(f"{peer}/delay_instant/default")
        not_done = instant.stat("not_done_within_s") if instant is not None else None
        ran = (
            f"not done in {not_done['median']:.0f} s"
            if not_done and not instant.stat("all_ran_s")
            else table.cell(instant, "all_ran_s", "s")
        )  # type: ignore[union-attr]
        rows.append(
            [
                peer,
                table.cell(spread, "lateness_p50_ms", "ms"),
                table.cell(spread, "lateness_p99_ms", "ms"),
                table.cell(spread, "published_late", "count"),
                table.cell(instant, "all_ready_s", "s"),
                ran,
            ]
        )
    out += _rows(
        [
            "system",
            "spread p50 ms",
            "spread p99 ms",
            "spread: published after due",
            "instant: all ready s",
            "instant: all ran s",
        ],
        rows,
    )

    out += [
        "",
        f"## Latency at a steady {counts['rate']:.0f} events/s "
        f"({counts['latency']:,} events, publish to handler start)",
        "",
    ]
    rows = [
        [
            peer,
            table.cell(by_key.get(f"{peer}/latency/default"), "latency_p50_ms", "ms"),
            table.cell(by_key.get(f"{peer}/latency/default"), "latency_p99_ms", "ms"),
        ]
        for peer in peers
    ]
    out += _rows(["system", "p50 ms", "p99 ms"], rows)

    goals = goal_rows(by_key, peers)
    if goals:
        out += ["", "## EarnORM against the goals of issue 26, in each repetition", "",
                "Each repetition's figures come from cases that ran one after the other in "
                "that repetition; a goal is met when every repetition meets it.", ""]
        out += _rows(["goal", "each repetition", "met"], goals)
    floor_imports = by_key.get("floor/floor_imports/-")
    if floor_imports is not None:
        out += ["", "## Import time and memory (fresh interpreter, median of 5)", ""]
        out += _rows(["what", "ms", "resident MB"], [
            ["`import asyncio, redis.asyncio`",
             table.cell(floor_imports, "import_floor_ms", "ms"),
             table.cell(floor_imports, "import_rss_floor_mb", "mb")],
            ["then `from earnorm import Consumer, Event, HandlerRegistry` (added)",
             table.cell(floor_imports, "import_earnorm_ms", "ms"),
             table.cell(floor_imports, "import_rss_earnorm_mb", "mb")],
        ])

    targets = target_rows(by_key, peers)
    if targets:
        out += ["", "## EarnORM against the targets of issue 7", ""]
        out += _rows(["target", "measured", "met"], targets)
    if notes:
        out += ["", "## Notes", ""]
        out += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(out) + "\n"


def _peers_of(systems: list[str]) -> list[str]:
    """The peers EarnORM is compared with: not EarnORM, nor EarnORM at a ``--baseline``."""
    return [p for p in systems if p != "earnorm" and not p.startswith("earnorm@")]


def _best(by_key: dict[str, CaseResult], peer: str, workload: str, metric: str) -> float | None:
    values = [
        s["median"]
        for key, r in by_key.items()
        if key.startswith(f"{peer}/{workload}/") and (s := r.stat(metric)) is not None
    ]
    return max(values) if values else None


def target_rows(by_key: dict[str, CaseResult], peers: list[str]) -> list[list[str]]:
    """Issue 7's targets for EarnORM, as ratios within this run."""
    if "earnorm" not in peers:
        return []
    others = _peers_of(peers)
    rows: list[list[str]] = []

    def ratio_row(
        name: str, ours: float | None, theirs: list[float | None], goal: float | None
    ) -> None:
        best = max((t for t in theirs if t is not None), default=None)
        if ours is None or not best:
            return
        met = "(info)" if goal is None else ("yes" if ours / best >= goal else "no")
        rows.append([name, f"{ours / best:.2f}x", met])

    ratio_row(
        "no-op drain >= 10x the fastest peer",
        _best(by_key, "earnorm", "pubdrain", "drain_per_s"),
        [_best(by_key, p, "pubdrain", "drain_per_s") for p in others],
        10,
    )
    ratio_row(
        "10 ms I/O >= 3x the fastest peer",
        _best(by_key, "earnorm", "io", "io_per_s"),
        [_best(by_key, p, "io", "io_per_s") for p in others],
        3,
    )
    ratio_row(
        "sequential publish >= 0.8x bare LPUSH loop",
        _best(by_key, "earnorm", "pubdrain", "publish_seq_per_s"),
        [_best(by_key, "floor", "floor_publish", "lpush_seq_per_s")],
        0.8,
    )
    ratio_row(
        "no-op drain / floor (LMOVE+LREM pipelined by 100)",
        _best(by_key, "earnorm", "pubdrain", "drain_per_s"),
        [_best(by_key, "floor", "floor_consume", "move_ack_pipe100_per_s")],
        None,
    )
    ratio_row(
        "no-op drain / bulk floor (RPOP 100 + HSET + HDEL)",
        _best(by_key, "earnorm", "pubdrain", "drain_per_s"),
        [_best(by_key, "floor", "floor_consume", "pop_hash_bulk100_per_s")],
        None,
    )
    spread = by_key.get("earnorm/delay_spread/default")
    p99 = spread.stat("lateness_p99_ms") if spread else None
    if p99:
        rows.append(
            [
                "spread delayed lateness p99 < 50 ms",
                f"{p99['median']:.1f} ms",
                "yes" if p99["median"] < 50 else "no",
            ]
        )
    rss = [
        s["max"]
        for key, r in by_key.items()
        if key.startswith("earnorm/") and (s := r.stat("rss_mb")) is not None
    ]
    if rss:
        rows.append(
            ["worker peak RSS < 60 MB", f"{max(rss):.1f} MB", "yes" if max(rss) < 60 else "no"]
        )
    return rows


def _reps(result: CaseResult | None, metric: str) -> list[float | None]:
    return result.per_rep(metric) if result is not None else []


def _best_per_rep(results: list[CaseResult], metric: str) -> list[float | None]:
    """Per repetition, the best (highest) value over ``results`` (a system's variants)."""
    columns = [r.per_rep(metric) for r in results]
    reps = max((len(c) for c in columns), default=0)
    best: list[float | None] = []
    for i in range(reps):
        values = [c[i] for c in columns if i < len(c) and c[i] is not None]
        best.append(max(values) if values else None)
    return best


def _each(values: list[float | None], fmt: str) -> str:
    return ", ".join("-" if v is None else format(v, fmt) for v in values)


def _goal(name: str, values: list[float | None], ok: Callable[[float], bool],
          fmt: str) -> list[str] | None:
    if not values:
        return None
    met = all(v is not None and ok(v) for v in values)
    return [name, _each(values, fmt), "yes" if met else "no"]


def goal_rows(by_key: dict[str, CaseResult], peers: list[str]) -> list[list[str]]:
    """Issue 26's goals, repetition by repetition (same-run ratios)."""
    if "earnorm" not in peers:
        return []
    others = _peers_of(peers)

    def cases(peer: str, workload: str) -> list[CaseResult]:
        return [r for k, r in by_key.items() if k.startswith(f"{peer}/{workload}/")]

    def ratio_to_peers(workload: str, metric: str) -> list[float | None]:
        ours = _best_per_rep(cases("earnorm", workload), metric)
        theirs = [_best_per_rep(cases(p, workload), metric) for p in others]
        out: list[float | None] = []
        for i, value in enumerate(ours):
            best = max((t[i] for t in theirs if i < len(t) and t[i]), default=None)
            out.append(value / best if value and best else None)
        return out

    rows: list[list[str] | None] = []
    if others:
        rows.append(_goal("no-op drain >= 10x the fastest peer",
                          ratio_to_peers("pubdrain", "drain_per_s"), lambda v: v >= 10, ".1f"))
        rows.append(_goal("10 ms I/O >= 10x the fastest peer",
                          ratio_to_peers("io", "io_per_s"), lambda v: v >= 10, ".1f"))
        ours = _reps(by_key.get("earnorm/latency/default"), "latency_p99_ms")
        peer_p99 = [_reps(by_key.get(f"{p}/latency/default"), "latency_p99_ms")
                    for p in others]
        margins: list[float | None] = []
        for i, value in enumerate(ours):
            lowest = min((t[i] for t in peer_p99 if i < len(t) and t[i] is not None),
                         default=None)
            margins.append(None if value is None or lowest is None else lowest - value)
        rows.append(_goal("latency p99 below every peer's (ms ahead of the best peer)",
                          margins, lambda v: v > 0, ".2f"))
    rows.append(_goal("sequential publish >= 0.95x the floor beside it",
                      _reps(by_key.get("earnorm/pubdrain/default"), "publish_seq_ratio"),
                      lambda v: v >= 0.95, ".2f"))
    rows.append(_goal("batch publish >= 0.9x the pipelined floor beside it",
                      _reps(by_key.get("earnorm/pubdrain/tuned"), "publish_batch_ratio"),
                      lambda v: v >= 0.9, ".2f"))
    ours_rss = _reps(by_key.get("earnorm/pubdrain/default"), "rss_mb")
    floor_rss = _reps(by_key.get("floor/floor_drain/-"), "rss_mb")
    over = [None if a is None or b is None else a - b
            for a, b in zip(ours_rss, floor_rss, strict=False)]
    rows.append(_goal("worker peak RSS <= 4 MB over the bare asyncio + redis-py worker (MB)",
                      over, lambda v: v <= 4, ".1f"))
    return [row for row in rows if row is not None]


def from_json(data: dict[str, Any]) -> list[CaseResult]:
    """The results of a run's JSON (``--render``), each repetition an outcome again (the
    skipped ones with their reason)."""
    results = []
    for item in data["results"]:
        case = Case(item["peer"], item["workload"], item["variant"], item["label"],
                    item["params"])
        if item["status"] == "skipped":
            outcomes = [Outcome("skipped", reason=item["reason"])]
        else:
            outcomes = [Outcome("ok", metrics=run) for run in item["runs"]]
            outcomes += [Outcome("error", reason=e) for e in item["errors"]]
        results.append(CaseResult(case, outcomes))
    return results
