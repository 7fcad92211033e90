"""How the CLI consumer learns the app's Redis and queue: the ``--app`` module may declare
``EARNORM_SETTINGS``, the keyword arguments the app gives ``init()``, so the app and its
consumer read one definition::

    # myapp/handlers.py
    EARNORM_SETTINGS = {
        "redis_uri": os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        "event_config": {"queue_name": "my_app:events", "retry_policy": {...}},
    }

    # the app:      await earnorm.init(**EARNORM_SETTINGS)
    # its consumer: python -m earnorm.events.consumer --app myapp.handlers

What the command line or the environment says explicitly wins over it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from earnorm._config import EventConfig
from earnorm._errors import ConfigError

ATTRIBUTE = "EARNORM_SETTINGS"
_KNOWN = ("redis_uri", "event_config", "mongo_uri", "mongodb_uri", "database")


@dataclass(frozen=True)
class AppSettings:
    """What an ``--app`` module declared; empty when it declared nothing.

    >>> AppSettings(declared_config={"queue_name": "my_app:events"}).queue_name
    'my_app:events'
    >>> AppSettings().event_config({"max_deliveries": 3}).max_deliveries
    3
    """

    redis_uri: str | None = None
    declared_config: Mapping[str, Any] | EventConfig | None = None  # its event_config
    mongo_uri: str | None = None
    database: str | None = None

    @classmethod
    def of(cls, module: ModuleType) -> AppSettings:
        """The module's ``EARNORM_SETTINGS``; ``ConfigError`` naming what is wrong with it."""
        settings = getattr(module, ATTRIBUTE, None)
        if settings is None:
            return cls()
        where = f"{module.__name__}.{ATTRIBUTE}"
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where} must be a dict of init()'s keyword arguments, got "
                              f"{type(settings).__name__}")
        unknown = sorted(set(settings) - set(_KNOWN))
        if unknown:
            raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: "
                              f"{', '.join(_KNOWN)})")
        for key in ("redis_uri", "mongo_uri", "mongodb_uri", "database"):
            if settings.get(key) is not None and not isinstance(settings[key], str):
                raise ConfigError(f"{where}['{key}'] must be a string, got "
                                  f"{type(settings[key]).__name__}")
        event_config = settings.get("event_config")
        EventConfig.from_dict(event_config)  # ConfigError naming the bad setting
        return cls(redis_uri=settings.get("redis_uri"), declared_config=event_config,
                   mongo_uri=settings.get("mongo_uri") or settings.get("mongodb_uri"),
                   database=settings.get("database"))

    @property
    def queue_name(self) -> str | None:
        raw = self.declared_config
        if isinstance(raw, EventConfig):
            return raw.queue_name
        return raw.get("queue_name") if raw is not None else None

    def event_config(self, overrides: Mapping[str, Any]) -> EventConfig:
        """The app's event_config with ``overrides`` (each already given explicitly) on top."""
        raw = self.declared_config
        if isinstance(raw, EventConfig):
            checked = EventConfig.from_dict(dict(overrides))
            return dataclasses.replace(raw, **{k: getattr(checked, k) for k in overrides})
        return EventConfig.from_dict({**(raw or {}), **overrides})


_PROBE = """
import importlib, json, sys
settings = getattr(importlib.import_module(sys.argv[1]), "EARNORM_SETTINGS", None)
uri = settings.get("redis_uri") if isinstance(settings, dict) else None
print(json.dumps(uri if isinstance(uri, str) else None))
"""


def probe_redis_uri(app: str) -> str | None:
    """The ``redis_uri`` that ``app`` declares, read in a child interpreter (the supervisor of
    ``--processes`` does not import the app itself: an app that kills its process at import
    must take down a child, not the supervisor). None if it declares none or cannot be
    imported (the children then report why)."""
    done = subprocess.run([sys.executable, "-c", _PROBE, app], capture_output=True, text=True,
                          cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))},
                          check=False, timeout=60)
    if done.returncode != 0:
        return None
    uri = done.stdout.strip().splitlines()[-1:] or ["null"]
    value = orjson.loads(uri[0])
    return value if isinstance(value, str) else None
