"""The project passes its tests from its own files: nothing in it reads or points outside the
repository (CI also runs the suite in a clone in an empty folder, .ci/run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([
    r"\.\./" + "shared",
    r"parents\[\d+\]\s*/\s*\"" + "shared",
    "celery-wire/" + "SPEC",
    "SPEC" + r"\.md",
]))


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return [ROOT / name for name in listed if not name.startswith("tests/interop/samples/")]


def test_no_file_reads_or_points_outside_the_repository() -> None:
    files = tracked_files()
    assert len(files) > 50
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files if path.suffix in {".py", ".md", ".sh", ".toml", ".ini", ""}
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_every_path_a_test_resolves_stays_inside_the_repository() -> None:
    climbing = re.compile(r"parents\[(\d+)\]")
    for path in (ROOT / "tests").rglob("*.py"):
        depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] is the root
        for match in climbing.finditer(path.read_text()):
            assert int(match.group(1)) <= depth, f"{path.relative_to(ROOT)} climbs above the root"


def test_the_captured_samples_are_in_the_repository() -> None:
    samples = ROOT / "tests" / "interop" / "samples"
    assert len(list(samples.glob("*.raw.json"))) >= 27
    assert (samples / "handcrafted_variants.json").is_file()
    assert (ROOT / "scripts" / "capture_celery_wire.py").is_file()
