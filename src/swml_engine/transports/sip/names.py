"""Name lookups (A/AAAA through the system's resolver) for SIP: next hops, a registrar, the host names
an SDP may give as a media address.

A caller controls its SDP, so it chooses the names looked up — one that never answers holds a thread in
``getaddrinfo`` until the system resolver gives up (which may be never). The lookups therefore run on
threads of their own (:data:`NAME_POOL`), not the event loop's default executor that TTS, decoding and
downloads share; each has a deadline (:data:`LOOKUP_TIMEOUT`); and at most :data:`MAX_LOOKUPS` may be
unfinished at once, counting those given up on whose threads are still stuck: past that a lookup fails
at once, and the call goes on without it (a media address that is a name waits for the caller's packets).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

from swml_engine.media.clock import IoPool

#: Seconds a lookup may take (the system resolver's own retries included).
LOOKUP_TIMEOUT = 5.0
#: Threads for lookups, per process.
NAME_POOL = IoPool("swml-names", 8)
#: Lookups unfinished at once, per process (a thread stuck in one counts until it returns).
MAX_LOOKUPS = 32

#: What ``getaddrinfo`` returns.
AddrInfo = list[tuple[Any, ...]]
Resolver = Callable[..., AddrInfo]


class _Unfinished:
    """How many lookups have not returned; thread-safe (a lookup ends on its pool's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def take(self) -> bool:
        with self._lock:
            if self.count >= MAX_LOOKUPS:
                return False
            self.count += 1
            return True

    def done(self) -> None:
        with self._lock:
            self.count -= 1


_UNFINISHED = _Unfinished()


async def getaddrinfo(
    host: str,
    port: int,
    *,
    family: int = 0,
    type: int = 0,
    timeout: float = LOOKUP_TIMEOUT,
    resolver: Resolver = socket.getaddrinfo,
) -> AddrInfo:
    """``socket.getaddrinfo(host, port, family, type)`` off the event loop, bounded as the module says;
    OSError saying why when there is no answer (none in ``timeout``, or too many lookups unfinished)."""
    if not _UNFINISHED.take():
        raise OSError(
            f"cannot look up {host!r} now: {MAX_LOOKUPS} lookups unfinished (a resolver that does not answer?)"
        )
    job = NAME_POOL.submit(resolver, host, port, family, type)
    job.add_done_callback(lambda _: _UNFINISHED.done())  # returned, failed, or dropped before it ran
    try:
        return await asyncio.wait_for(asyncio.wrap_future(job), timeout)
    except TimeoutError:
        raise OSError(f"no answer for {host!r} from the resolver in {timeout:g} s") from None
