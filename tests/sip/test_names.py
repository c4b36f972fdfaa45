"""Name lookups are bounded: a resolver that never answers (a caller's SDP may name any host) costs a
lookup its deadline, never the threads other work runs on, and past a cap lookups fail at once.

The system resolver cannot be made to hang on this machine: the hanging one here is a function that
waits on an event, given in its place — what is tested is the bounding around it."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from typing import Any

import pytest

from swml_engine.media.clock import run_io
from swml_engine.transports.sip import names


def test_a_name_is_looked_up() -> None:
    infos = asyncio.run(names.getaddrinfo("localhost", 5060, family=socket.AF_INET, type=socket.SOCK_DGRAM))
    assert infos and infos[0][4] == ("127.0.0.1", 5060)


def test_a_resolver_that_never_answers_costs_its_deadline_and_holds_up_nothing_else() -> None:
    release = threading.Event()

    def hangs(*args: Any) -> names.AddrInfo:
        release.wait(30)
        return socket.getaddrinfo("localhost", 5060, socket.AF_INET, socket.SOCK_DGRAM)

    async def main() -> None:
        stuck = [
            asyncio.ensure_future(names.getaddrinfo(f"h{i}.invalid", 5060, timeout=30, resolver=hangs))
            for i in range(names.MAX_LOOKUPS)
        ]
        await asyncio.sleep(0.2)
        # Past the cap: refused at once, saying why.
        with pytest.raises(OSError, match="lookups unfinished"):
            await names.getaddrinfo("one-more.invalid", 5060, resolver=hangs)
        # Every name thread is stuck: other blocking work still runs at once on its own threads.
        assert await asyncio.wait_for(run_io(lambda: 42), 5) == 42
        release.set()
        assert all(infos for infos in await asyncio.gather(*stuck))
        # All returned: lookups go on; one that does not answer in its deadline fails saying so.
        release.clear()
        with pytest.raises(OSError, match=re.escape("no answer for 'slow.invalid' from the resolver in 0.2 s")):
            await names.getaddrinfo("slow.invalid", 5060, timeout=0.2, resolver=hangs)
        release.set()
        assert await names.getaddrinfo("localhost", 5060, family=socket.AF_INET)

    asyncio.run(main())
