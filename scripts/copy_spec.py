"""Copy the user's spec into the repository as the spec suite's fixture.

    python scripts/copy_spec.py PATH/TO/spec.txt

writes ``tests/spec/spec.md`` (the text unchanged) and checks that every Python block the
suite runs is found and compiles. The suite (``tests/spec/``) reads only that copy, so a clone
of this repository is all it needs; run this again when the spec changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.spec.blocks import SPEC, spec_blocks  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    text = Path(argv[0]).read_text()
    SPEC.write_text(text)
    blocks = spec_blocks(text)
    for block in blocks:
        block.compiled()
    print(f"wrote {SPEC.relative_to(ROOT)}: {len(blocks)} Python blocks, each compiles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
