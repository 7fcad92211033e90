"""An app whose handler blocks the event loop once per event, for the loop watch's tests.

``fault.blocking`` with ``{"how": "sleep"}`` calls ``time.sleep`` (nothing on the loop can
cancel it); ``{"how": "stop"}`` stops its own process with SIGSTOP (not even a thread of it
runs). Either only on an event's first delivery: ``EARNORM_TEST_BLOCK_DIR/<id>.blocked`` holds
the pid that blocked, ``<id>.done`` the pid that then handled it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from earnorm import Event, event_handler

_DIR = Path(os.environ["EARNORM_TEST_BLOCK_DIR"])


@event_handler("fault.blocking", time_limit=1)
async def blocks_the_loop_once(event: Event) -> None:
    blocked = _DIR / f"{event.id}.blocked"
    if not blocked.exists():
        blocked.write_text(str(os.getpid()))
        if event.data.get("how") == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(120)  # noqa: ASYNC251 - the point: it blocks the loop
    (_DIR / f"{event.id}.done").write_text(str(os.getpid()))
