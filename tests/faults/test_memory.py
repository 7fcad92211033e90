"""A long run through one consumer keeps its resident memory flat.

The full soak (1,000,000 events) is ``python -m benchmarks.soak``; here 50,000 events, and, when
``EARNORM_SOAK_EVENTS`` asks for more, as many as it says (marked slow).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from benchmarks.soak import MIB, run_soak

pytestmark = pytest.mark.anyio

# After warm-up a consumer holds nothing per event: what grows is noise (allocator arenas,
# redis-py's buffers), well under this.
GROWTH_LIMIT = 8 * MIB


def _report(result: dict[str, Any]) -> None:
    print(f"\nsoak: {result['events']:,} events at {result['rate_per_s']:,}/s; consumer RSS "
          f"{result['rss_start_mib']} -> {result['rss_end_mib']} MiB "
          f"(max {result['rss_max_mib']}, growth {result['rss_growth_mib']} MiB)")


async def test_fifty_thousand_events_keep_consumer_memory_flat(redis_url: str) -> None:
    result = await run_soak(redis_url, 50_000, warmup=10_000, backlog=10_000)
    _report(result)
    growth = float(result["rss_growth_mib"]) * MIB
    assert growth < GROWTH_LIMIT


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EARNORM_SOAK_EVENTS"), reason="set EARNORM_SOAK_EVENTS")
async def test_long_soak_keeps_consumer_memory_flat(redis_url: str) -> None:
    result = await run_soak(redis_url, int(os.environ["EARNORM_SOAK_EVENTS"]))
    _report(result)
    growth = float(result["rss_growth_mib"]) * MIB
    assert growth < GROWTH_LIMIT
