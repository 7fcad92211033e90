"""Run one case: the peer script in its own interpreter, bounded in time, JSON on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from harness.plan import PEERS_DIR, Case, Peer


@dataclass
class Outcome:
    """The result of one run of a case."""

    status: str  # "ok", "skipped" or "error"
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads(line))
    return None


def invoke(peer: Peer, args: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run the peer's script with ``args``; return its JSON reply (or None) and its stderr."""
    proc = subprocess.Popen(
        [str(peer.python()), str(PEERS_DIR / peer.script), *args],
        cwd=PEERS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(PEERS_DIR),
             **({"EARNORM_TREE": str(peer.tree)} if peer.tree else {})},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except KeyboardInterrupt:
        # The driver's finally blocks stop its worker on SIGTERM.
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        raise
    except subprocess.TimeoutExpired:
        # The driver's own finally blocks stop its worker; give them a moment, then kill.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        return None, f"timed out after {timeout:.0f}s; stderr: {stderr[-800:]}"
    return _last_json(stdout), stderr


def describe(peer: Peer) -> dict[str, Any]:
    reply, stderr = invoke(peer, ["--describe"], timeout=60)
    if reply is None or not reply.get("ok"):
        raise RuntimeError(f"{peer.name} --describe failed: {stderr[-1500:]}")
    return reply


def run_case(peer: Peer, case: Case, redis_url: str) -> Outcome:
    args = [
        "--workload",
        case.workload,
        "--redis-url",
        redis_url,
        "--params",
        json.dumps(case.params),
    ]
    start = time.monotonic()
    reply, stderr = invoke(peer, args, case.timeout)
    seconds = time.monotonic() - start
    if reply is None:
        return Outcome("error", reason=stderr[-1500:] or "no JSON reply", seconds=seconds)
    if reply.get("ok"):
        return Outcome("ok", metrics=reply["metrics"], seconds=seconds)
    if "skipped" in reply:
        return Outcome("skipped", reason=reply["skipped"], seconds=seconds)
    return Outcome("error", reason=reply.get("error", "unknown error"), seconds=seconds)
