"""A Celery client applying two chords, run as its own process by the chord test: prints what
it saw as one JSON line. (Celery keeps chord results alive until its process exits.)"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from celery import chord

from tests.interop.celery_app import make_app


def _signature_only(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("runs on the consumer, never here")


def main(redis_url: str, queue: str) -> dict[str, Any]:
    app = make_app(redis_url, queue)
    app.conf.update(result_backend=redis_url, task_ignore_result=False)
    for name in ("results.add", "chord.body", "chord.flaky"):
        app.task(name=name, shared=False)(_signature_only)
    out: dict[str, Any] = {}
    ok = chord([app.signature("results.add", args=[i]) for i in range(4)])(
        app.signature("chord.body"))
    out["value"] = ok.get(timeout=20)
    failing = chord([app.signature("chord.flaky", args=[i]) for i in range(3)])(
        app.signature("chord.body"))
    try:
        failing.get(timeout=20)
    except Exception as exc:  # Celery re-raises the failed part's error from the group
        out["raised"] = f"{type(exc).__name__}: {exc}"
    deadline = time.monotonic() + 10
    while (meta := app.backend.get_task_meta(failing.id))["status"] != "FAILURE":
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    out["body_status"] = meta["status"]
    out["body_error"] = f"{type(meta['result']).__name__}: {meta['result']}"
    return out


def mixed(redis_url: str, queue: str, celery_queue: str) -> dict[str, Any]:
    """Parts 0 and 1 on a Celery worker's queue, 2 and 3 on ours, the body on ours."""
    app = make_app(redis_url, queue)
    app.conf.update(result_backend=redis_url, task_ignore_result=False)
    for name in ("results.add", "chord.body"):
        app.task(name=name, shared=False)(_signature_only)
    header = [app.signature("results.add", args=[i]).set(
        queue=celery_queue if i < 2 else queue) for i in range(4)]
    return {"value": chord(header)(app.signature("chord.body").set(queue=queue)).get(
        timeout=30)}


if __name__ == "__main__":
    if len(sys.argv) > 3:
        print(json.dumps(mixed(sys.argv[1], sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(main(sys.argv[1], sys.argv[2])))
