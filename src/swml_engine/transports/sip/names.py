"""Name lookups (A/AAAA through the system's resolver) for SIP: next hops, a registrar, the host names
an SDP may give as a media address; and the pool the DNS queries of locate.py (RFC 3263) run on.

A caller controls its SDP, so it chooses the names looked up — one that never answers holds a thread in
``getaddrinfo`` until the system resolver gives up (which may be never). The lookups therefore run on
threads of their own (:data:`NAME_POOL`), not the event loop's default executor that TTS, decoding and
downloads share; each has a deadline (:data:`LOOKUP_TIMEOUT`); and at most :data:`MAX_LOOKUPS` may be
unfinished at once, counting those given up on whose threads are still stuck: past that a lookup fails
at once, and the call goes on without it (a media address that is a name waits for the caller's packets).
DNS answers are parsed on those threads too (:func:`off_loop`): a hostile server's 64 KB answer takes
a parse of a few hundred milliseconds, which on the event loop would stall every call's media.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

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
T = TypeVar("T")


def is_address(host: str) -> bool:
    """Whether ``host`` is an IP address (v4 or v6) rather than a name to look up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    return await off_loop(lambda: resolver(host, port, family, type), repr(host), timeout)


async def off_loop(lookup: Callable[[], T], what: str, timeout: float = LOOKUP_TIMEOUT) -> T:
    """``lookup()`` on a thread of :data:`NAME_POOL`, bounded as the module says; OSError naming ``what``
    when there is no answer in ``timeout`` or too many lookups are unfinished (what ``lookup`` raises,
    as it raised it)."""
    if not _UNFINISHED.take():
        raise OSError(f"cannot look up {what} now: {MAX_LOOKUPS} lookups unfinished (a resolver that does not answer?)")
    job = NAME_POOL.submit(lookup)
    job.add_done_callback(lambda _: _UNFINISHED.done())  # returned, failed, or dropped before it ran
    try:
        return await asyncio.wait_for(asyncio.wrap_future(job), timeout)
    except TimeoutError:
        raise OSError(f"no answer for {what} from the resolver in {timeout:g} s") from None
