"""Schedule time arithmetic: croniter's DST-correct times in a zone, and epoch-aligned intervals."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from earnorm import ConfigError, Schedule

PARIS = ZoneInfo("Europe/Paris")


def ms(moment: datetime) -> float:
    return moment.timestamp() * 1000


def at(value: float) -> datetime:
    return datetime.fromtimestamp(value / 1000, PARIS)


def test_a_daily_cron_keeps_its_local_hour_across_both_dst_changes() -> None:
    daily = Schedule("report.daily", cron="0 7 * * *", tz="Europe/Paris")
    # Spring forward in Paris: 2026-03-29 02:00 -> 03:00 (UTC+1 -> UTC+2).
    before = ms(datetime(2026, 3, 28, 12, 0, tzinfo=PARIS))
    first = daily.next_after(before)
    second = daily.next_after(first)
    assert at(first).isoformat() == "2026-03-29T07:00:00+02:00"
    assert second - first == 24 * 3600 * 1000  # 29th -> 30th, both at UTC+2
    assert first - daily.latest_at(first - 1) == 23 * 3600 * 1000  # 28th -> 29th: 23 hours
    # Fall back: 2026-10-25 03:00 -> 02:00 (UTC+2 -> UTC+1): that day has 25 hours.
    autumn = daily.next_after(ms(datetime(2026, 10, 24, 12, 0, tzinfo=PARIS)))
    assert at(autumn).isoformat() == "2026-10-25T07:00:00+01:00"
    assert autumn - daily.latest_at(autumn - 1) == 25 * 3600 * 1000


def test_a_time_that_does_not_exist_on_the_spring_day_fires_once_that_day() -> None:
    nightly = Schedule("job.nightly", cron="30 2 * * *", tz="Europe/Paris")
    start = ms(datetime(2026, 3, 28, 12, 0, tzinfo=PARIS))
    fired = []
    moment = start
    for _ in range(3):
        moment = nightly.next_after(moment)
        fired.append(at(moment).isoformat())
    # 02:30 does not exist on the 29th: croniter fires at 03:00 (the first valid time)
    assert fired == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
                     "2026-03-31T02:30:00+02:00"]
    assert nightly.ticks_between(start, ms(datetime(2026, 3, 31, 12, 0, tzinfo=PARIS))) == 3


def test_every_is_aligned_to_the_epoch_and_counts_missed_ticks() -> None:
    tick = Schedule("tick.x", every=timedelta(seconds=5))
    assert tick.every == 5.0
    assert tick.latest_at(12_345) == 10_000
    assert tick.next_after(12_345) == 15_000
    assert tick.next_after(15_000) == 20_000
    assert tick.ticks_between(10_000, 30_000) == 3  # 15, 20, 25
    assert tick.event_id("q", 10_000) == Schedule("tick.x", every=5).event_id("q", 10_000)
    assert tick.event_id("q", 10_000) != tick.event_id("q", 15_000)
    assert tick.grace_ms == 1000  # a tenth of the interval, at least a second
    # an interval that is no exact float in ms still gives integer ticks every consumer agrees on
    odd = Schedule("tick.odd", every=1.1)
    latest = odd.latest_at(1_796_223_540_123.7)
    assert latest == int(latest) and latest % 1100 == 0
    assert odd.next_after(latest) - latest == 1100


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of cron= or every="),
    ({"cron": "* * * * *", "every": 1}, "exactly one"),
    ({"cron": "61 * * * *"}, "invalid cron"),
    ({"every": 0}, "every= must be"),
    ({"every": 1, "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"every": 1, "missed": "later"}, "missed= must be"),
])
def test_bad_schedules_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Schedule("bad.one", **kwargs)  # type: ignore[arg-type]
