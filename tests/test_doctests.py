"""Every example in the package's docstrings runs and shows what it says it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import earnorm

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(earnorm.__path__, "earnorm.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_package_has_examples_to_run() -> None:
    finder = doctest.DocTestFinder()
    attempted = sum(
        len(test.examples) for name in MODULES
        for test in finder.find(importlib.import_module(name))
    )
    assert attempted >= 20, attempted
