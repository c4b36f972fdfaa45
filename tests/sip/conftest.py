"""tests/sip drives the SIP core without sockets, and the service's SIP side with our own hand-written
peer on loopback (``engine`` starts ``swml serve``; the peer is tests/interop/peers.py's ``SipPeer``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interop.peers import Engine, engines


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Start ``swml serve`` with a script text (see interop.peers.engines)."""
    with engines(tmp_path) as start:
        yield start
