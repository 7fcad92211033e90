"""The Python blocks of the user's spec (``tests/spec/spec.md``, a verbatim copy made by
``scripts/copy_spec.py``), as the suite runs them: the code unchanged, found by a line it
contains.

A block ends at its closing fence, or where the spec's prose resumes: one of its blocks (the
lifecycle ``User``) is never closed, and its section headings (``### Available Lifecycle
Hooks``) follow the code directly. A ``##`` heading at the start of a line is prose; no Python
line of the spec starts that way.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

SPEC = Path(__file__).with_name("spec.md")
_HEADING = re.compile(r"^#{2,6} ")


@dataclass(frozen=True)
class Block:
    line: int  # where the code starts in spec.md, 1-based
    code: str

    def compiled(self) -> CodeType:
        """The block compiled as a module that may ``await`` at the top level (the spec's
        ``await init(...)`` and ``await event_bus.publish(...)`` are written that way)."""
        code: CodeType = compile(self.code, f"spec.md:{self.line}", "exec",
                                 flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        return code

    def imports(self) -> list[tuple[str, str]]:
        """``(module, name)`` of each ``from module import name`` line."""
        return [(node.module or "", alias.name) for node in ast.walk(ast.parse(self.code))
                if isinstance(node, ast.ImportFrom) for alias in node.names]


def spec_blocks(text: str | None = None) -> list[Block]:
    lines = (SPEC.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    code: list[str] | None = None
    start = 0
    for number, line in enumerate(lines, 1):
        if code is None:
            if line.strip() == "```python":
                code, start = [], number + 1
            continue
        if line.startswith("```") or _HEADING.match(line):
            blocks.append(Block(start, "\n".join(code).rstrip() + "\n"))
            code = [] if line.strip() == "```python" else None
            start = number + 1
            continue
        code.append(line)
    if code:
        blocks.append(Block(start, "\n".join(code).rstrip() + "\n"))
    return blocks


def block(containing: str, nth: int = 0) -> Block:
    """The ``nth`` block (0-based) with a line containing ``containing``."""
    found = [b for b in spec_blocks() if containing in b.code]
    if len(found) <= nth:
        raise LookupError(f"no block #{nth} containing {containing!r} in {SPEC}")
    return found[nth]
