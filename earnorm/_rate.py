"""Rate limits in Celery's syntax: ``"10/s"``, ``"100/m"``, ``"1000/h"``, or a number (per
second), read once into events per second.

>>> parse_rate("100/m", "rate_limit")
1.6666666666666667
>>> parse_rate(20, "rate_limit"), parse_rate("5", "rate_limit"), parse_rate("0.5/s", "x")
(20.0, 5.0, 0.5)
>>> parse_rate("10/d", "rate_limit")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
earnorm._errors.ConfigError: rate_limit must be a positive number per s, m or h (...), got '10/d'
"""

from __future__ import annotations

import re
from typing import Any

from earnorm._errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(value: Any, field: str) -> float:
    """Events per second for a rate limit; ``ConfigError`` naming ``field`` if invalid."""
    rate = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str) and (match := _RATE.match(value)):
        rate = float(match.group(1)) / _UNITS[match.group(2) or "s"]
    if rate is None or not rate > 0 or rate > 1_000_000:
        raise ConfigError(f"{field} must be a positive number per s, m or h ('10/s', '100/m', "
                          f"'1000/h'), got {value!r}")
    return rate


def interval_us(rate: float) -> int:
    """Microseconds between two events at ``rate`` per second (at least 1).

    >>> interval_us(20.0), interval_us(100 / 60)
    (50000, 600000)
    """
    return max(1, round(1_000_000 / rate))
