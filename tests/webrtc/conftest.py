"""tests/webrtc: browser calls, with an aiortc peer in the browser's place (peer.py); ``engine`` starts
``swml serve`` (see interop.peers.engines)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interop.peers import Engine, engines


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    with engines(tmp_path) as start:
        yield start
