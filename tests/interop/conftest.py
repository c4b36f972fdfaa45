from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .peers import Engine, engines, have


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Start ``swml serve`` with a script text (see peers.engines)."""
    with engines(tmp_path) as start:
        yield start


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(pytest.mark.interop)
            if not have("sipp"):
                item.add_marker(pytest.mark.skip(reason="sipp (Debian sip-tester) not installed: run make test"))
