"""Draw the charts from ``latest.json``; runs in the charts venv (matplotlib), stdlib otherwise.

Usage: ``python plot.py RESULTS_JSON OUTPUT_DIR``; writes ``summary.png`` and one PNG per panel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

EARNORM_COLOR = "#d62728"
PEER_COLOR = "#1f77b4"
FLOOR_COLOR = "#7f7f7f"


def _median(result: dict[str, Any], metric: str) -> float | None:
    stat = result.get("summary", {}).get(metric)
    return None if stat is None else float(stat["median"])


def _color(peer: str) -> str:
    return {"earnorm": EARNORM_COLOR, "floor": FLOOR_COLOR}.get(peer, PEER_COLOR)


def _bars(
    ax: Axes,
    labels: list[str],
    values: list[float],
    colors: list[str],
    title: str,
    unit: str,
    log: bool = True,
) -> None:
    ax.barh(labels, values, color=colors)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    for y, value in enumerate(values):
        ax.text(
            value, y, f" {value:,.0f}" if value >= 10 else f" {value:.1f}", va="center", fontsize=6
        )


def _metric_panel(
    ax: Axes,
    results: list[dict[str, Any]],
    workload: str,
    metric: str,
    title: str,
    unit: str,
    with_label: bool = True,
) -> None:
    labels, values, colors = [], [], []
    for result in results:
        if result["workload"] != workload or (value := _median(result, metric)) is None:
            continue
        labels.append(f"{result['peer']} {result['label']}" if with_label else result["peer"])
        values.append(value)
        colors.append(_color(result["peer"]))
    _bars(ax, labels, values, colors, title, unit)


def _floor_and_peers(ax: Axes, results: list[dict[str, Any]]) -> None:
    labels, values, colors = [], [], []
    for result in results:
        if result["workload"] == "pubdrain" and result["variant"] == "default":
            label, value = result["peer"], _median(result, "publish_seq_per_s")
        elif result["workload"] == "floor_publish":
            label, value = "redis-py LPUSH", _median(result, "lpush_seq_per_s")
        else:
            continue
        if value is not None:
            labels.append(label)
            values.append(value)
            colors.append(_color(result["peer"]))
    _bars(ax, labels, values, colors, "Sequential publish (awaited)", "events/s", log=False)


def _rss(ax: Axes, results: list[dict[str, Any]]) -> None:
    peak: dict[str, float] = {}
    for result in results:
        stat = result.get("summary", {}).get("rss_mb")
        if stat is not None:
            peak[result["peer"]] = max(peak.get(result["peer"], 0.0), float(stat["max"]))
    _bars(
        ax,
        list(peak),
        list(peak.values()),
        [_color(p) for p in peak],
        "Worker peak RSS (main process)",
        "MiB",
        log=False,
    )


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    results = data["results"]
    panels = [
        (
            "drain",
            lambda ax: _metric_panel(
                ax,
                results,
                "pubdrain",
                "drain_per_s",
                "No-op drain, one worker process",
                "events/s",
            ),
        ),
        (
            "io",
            lambda ax: _metric_panel(
                ax, results, "io", "io_per_s", "10 ms I/O handlers", "events/s"
            ),
        ),
        ("publish", lambda ax: _floor_and_peers(ax, results)),
        (
            "latency",
            lambda ax: _metric_panel(
                ax, results, "latency", "latency_p99_ms", "Latency p99 at 500 events/s", "ms", False
            ),
        ),
        (
            "delayed",
            lambda ax: _metric_panel(
                ax,
                results,
                "delay_spread",
                "lateness_p99_ms",
                "Delayed lateness p99 (spread)",
                "ms",
                False,
            ),
        ),
        ("rss", lambda ax: _rss(ax, results)),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(12, 11))
    for ax, (_, draw) in zip(axes.flat, panels, strict=True):
        draw(ax)
    fig.suptitle(f"EarnORM and peers: {data['meta']['machine']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=110)
    plt.close(fig)
    for name, draw in panels:
        fig, ax = plt.subplots(figsize=(7, 4))
        draw(ax)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
