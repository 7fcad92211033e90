"""What to run: the peers, the event counts of a quick and a full run, and the cases."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
ENVS_DIR = BENCH_DIR / ".envs"
REQUIREMENTS_DIR = BENCH_DIR / "requirements"


@dataclass(frozen=True)
class Counts:
    """Event counts and repetitions for one run mode."""

    publish: int  # published (sequentially, then batched) and drained
    io: int
    delay: int
    spread_s: float
    latency: int
    rate: float
    floor: int
    reps: int
    instant_timeout_s: float


# The issue's counts. About 45 minutes on a 2-core machine: use ``--issue-counts``.
ISSUE = Counts(
    publish=20_000,
    io=2_000,
    delay=5_000,
    spread_s=10.0,
    latency=5_000,
    rate=500.0,
    floor=20_000,
    reps=3,
    instant_timeout_s=60.0,
)
# The default full run: a smaller no-op backlog and a shorter latency window, which leave the
# rates and percentiles where they are (measured) and keep the run under 25 minutes.
FULL = Counts(
    publish=6_000,
    io=2_000,
    delay=5_000,
    spread_s=10.0,
    latency=2_000,
    rate=500.0,
    floor=10_000,
    reps=3,
    instant_timeout_s=25.0,
)
QUICK = Counts(
    publish=2_000,
    io=500,
    delay=1_000,
    spread_s=3.0,
    latency=500,
    rate=500.0,
    floor=5_000,
    reps=1,
    instant_timeout_s=20.0,
)


def main_python() -> Path:
    """The project's venv interpreter (EarnORM and the floor run there), else this one."""
    candidate = REPO_DIR / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


@dataclass(frozen=True)
class Peer:
    name: str
    script: str
    env: str | None  # benchmarks/.envs/<env>, built from requirements/<env>.txt; None: main venv
    tree: Path | None = None  # EarnORM's source tree, when not this checkout's (--baseline)

    def python(self) -> Path:
        if self.env is None:
            return main_python()
        return ENVS_DIR / self.env / "bin" / "python"


PEERS = [
    # EarnORM and the floor in an environment of EarnORM's runtime dependencies only, like
    # every peer: the project's dev venv has opentelemetry-sdk, which redis-py 8 imports.
    Peer("floor", "floor_bench.py", "earnorm"),
    Peer("earnorm", "earnorm_bench.py", "earnorm"),
    Peer("celery", "celery_bench.py", "celery"),
    Peer("saq", "saq_bench.py", "saq"),
    Peer("arq", "arq_bench.py", "arq"),
    Peer("taskiq", "taskiq_bench.py", "taskiq"),
    Peer("dramatiq", "dramatiq_bench.py", "dramatiq"),
]


@dataclass(frozen=True)
class Case:
    """One subprocess invocation of a peer script."""

    peer: str
    workload: str
    variant: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.peer}/{self.workload}/{self.variant}"

    @property
    def timeout(self) -> float:
        """Wall-clock bound for the whole subprocess: the wait bound plus publishing and boot."""
        return float(self.params.get("timeout", 60)) + 120.0


def floor_cases(counts: Counts) -> list[Case]:
    n = {"n": counts.floor}
    return [
        Case("floor", "floor_publish", "-", "LPUSH", n),
        Case("floor", "floor_consume", "-", "move + ack", n),
        # the drained backlog of EarnORM's pubdrain, for the worker's RSS over the floor's
        Case("floor", "floor_drain", "-", "bare worker", {"n": counts.publish}),
        Case("floor", "floor_imports", "-", "imports", {"n": 5}),
    ]


def peer_cases(peer: str, described: dict[str, Any], counts: Counts) -> list[Case]:
    """The cases of one peer, from the variants its script described."""
    variants: dict[str, dict[str, str]] = described.get("variants", {})
    cases: list[Case] = []
    drain = variants.get("drain", {})
    for variant, label in drain.items():
        publish = "seq" if variant == "default" else "batch"
        params = {
            "n": counts.publish,
            "variant": variant,
            "publish": publish,
            "timeout": counts.publish / 100,
        }
        cases.append(Case(peer, "pubdrain", variant, label, params))
    for variant, label in variants.get("io", {}).items():
        params = {"n": counts.io, "variant": variant, "timeout": counts.io / 20}
        cases.append(Case(peer, "io", variant, label, params))
    default = drain.get("default", "default")
    spread = {
        "n": counts.delay,
        "spread": counts.spread_s,
        "lead": 2.0,
        "timeout": counts.spread_s + 60,
    }
    cases.append(Case(peer, "delay_spread", "default", default, spread))
    instant = {
        "n": counts.delay,
        "lead": max(2.0, counts.delay / 800),
        "timeout": counts.instant_timeout_s,
    }
    cases.append(Case(peer, "delay_instant", "default", default, instant))
    latency = {
        "n": counts.latency,
        "rate": counts.rate,
        "timeout": counts.latency / counts.rate + 60,
    }
    cases.append(Case(peer, "latency", "default", default, latency))
    return cases
