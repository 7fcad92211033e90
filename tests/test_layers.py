"""The house's rules, read from the code's own imports (every ``import``, at module level, in a
function or under ``TYPE_CHECKING``): what may import what, and where Redis key names live.
docs/architecture.md explains the layers these tests hold."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "earnorm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports, by its full dotted name (``from a import b`` names
    ``a.b`` when that is a module, else ``a``)."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in MODULES else node.module


def project_imports(name: str) -> set[str]:
    return {target for target in imports(name) if target in MODULES and target != name}


def is_face(name: str) -> bool:
    """A package's ``__init__``: it hands names on (lazily) and is left out of the circles."""
    return MODULES[name].name == "__init__.py"


ORM = ("earnorm.base", "earnorm._environment", "earnorm._transaction", "earnorm._outbox",
       "earnorm._runtime", "earnorm._cli", "pymongo", "bson")
# The spec's own import paths, which name the ORM's decorators beside the events' ones, and
# the two programs, which only call earnorm._cli.
SPEC_ALIASES = {"earnorm.events.decorators", "earnorm.events.utils",
                "earnorm.events.__main__", "earnorm.events.consumer.__main__"}


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def events_modules() -> list[str]:
    return [n for n in MODULES if under(n, "earnorm.events") and not is_face(n)]


@pytest.mark.parametrize("name", [n for n in events_modules() if n not in SPEC_ALIASES])
def test_events_never_import_the_orm(name: str) -> None:
    orm = sorted(t for t in imports(name) if under(t, *ORM) or t == "earnorm")
    assert orm == [], f"{name} imports the ORM side: {orm}"


WIRE_FORBIDDEN = ("redis", "asyncio", "anyio", "pymongo", "bson")


@pytest.mark.parametrize("name", [n for n in MODULES if under(n, "earnorm.events._wire")])
def test_the_wire_does_no_io(name: str) -> None:
    io = sorted(t for t in imports(name) if under(t, *WIRE_FORBIDDEN))
    inward = sorted(t for t in project_imports(name)
                    if under(t, "earnorm.events") and not under(t, "earnorm.events._wire"))
    assert io == [] and inward == [], f"{name}: I/O {io}, layers above {inward}"


@pytest.mark.parametrize("name", [n for n in MODULES if not under(n, "earnorm.events._broker")])
def test_only_the_broker_talks_to_redis(name: str) -> None:
    """Outside ``_broker`` a module may name redis-py's types and errors (to type a client or
    catch an error), never open a client or send a command through one it made."""
    allowed = {"redis.asyncio", "redis.exceptions", "redis.typing", "redis.asyncio.client"}
    used = sorted(t for t in imports(name) if under(t, "redis") and t not in allowed)
    assert used == [], f"{name} reaches into redis-py: {used}"


COMMANDS = {"get", "set", "delete", "unlink", "exists", "expire", "incr", "hget", "hset",
            "hgetall", "hincrby", "hdel", "lpush", "rpush", "llen", "lrange", "zadd", "zrange",
            "zrem", "zcard", "scan", "scan_iter", "eval", "evalsha", "pipeline", "ping", "info",
            "time", "publish", "pubsub", "mget", "execute_command", "blmove", "lmove", "rpop"}


@pytest.mark.parametrize("name", [n for n in MODULES if not under(n, "earnorm.events._broker")])
def test_only_the_broker_sends_redis_commands(name: str) -> None:
    """A command sent through something named ``redis`` (``self.redis.get``,
    ``bus.redis.zrange``) outside ``_broker``: a second place that knows the data layout."""
    sent = sorted({f"{ast.unparse(node.func.value)}.{node.func.attr}"
                   for node in ast.walk(ast.parse(MODULES[name].read_text()))
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and node.func.attr in COMMANDS
                   and ast.unparse(node.func.value).split(".")[-1] == "redis"})
    assert sent == [], f"{name} sends Redis commands: {sent}"


KEY_SPELLING = re.compile(r""":(done|dedup|cache|failed|inflight|delayed|schedules|server"""
                          r"""|consumers|stats|landing)\b|["']earnorm:"""
                          r"""|celery-task(set)?-meta-|^unacked(_index|_mutex)?$|_kombu\.binding""")


@pytest.mark.parametrize("name", [n for n in MODULES if n != "earnorm.events._broker.keys"])
def test_key_names_are_spelled_in_one_module(name: str) -> None:
    """Every Redis key name is built in ``_broker/keys.py``; a string elsewhere that spells a
    key's suffix is a second place to keep in step."""
    tree = ast.parse(MODULES[name].read_text())
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    spelled = [node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and id(node) not in docstrings and KEY_SPELLING.search(node.value)]
    assert spelled == [], f"{name} spells key names: {spelled}"


def test_no_import_circles() -> None:
    graph = {name: {t for t in project_imports(name) if not is_face(t)}
             for name in MODULES if not is_face(name)}
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_checks_see_imports() -> None:
    """The reader above finds what it must (a check that reads nothing passes everything)."""
    assert "earnorm.events._broker.broker" in project_imports("earnorm.events._bus")
    assert "redis.asyncio" in set(imports("earnorm.events._broker.broker"))
    assert len(events_modules()) > 40


def test_architecture_maps_every_module() -> None:
    """docs/architecture.md names every module of the package (and no module that is gone)."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^(earnorm/\S+\.py)", page, re.MULTILINE))
    files = {str(path.relative_to(ROOT)) for path in MODULES.values()}
    assert sorted(files - listed) == [] and sorted(listed - files) == []
