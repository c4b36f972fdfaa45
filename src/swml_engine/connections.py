"""How many TCP connections the service accepts, from whom, and the file descriptors kept for calls.

Anyone on the network can open TCP connections to the SIP and HTTP ports and leave them idle. Each holds
a file descriptor, and a call needs descriptors too (its RTP socket, its recording files, its event log):
a process that runs out of them fails every new call. So each listener admits a connection only while

* it holds fewer than ``max_total`` connections, and fewer than ``max_per_source`` from that address, and
* the process keeps ``reserve`` descriptors free below its limit (``RLIMIT_NOFILE``) for calls.

A refused connection is closed at once; the listener logs why (the first refusal, then every hundredth).
The time limits (a request's headers must arrive within ``header_timeout``; a connection with nothing to
do is closed after ``idle_timeout``; an open WebSocket must answer pings) are applied by each listener,
which knows what a request is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

try:
    import resource
except ImportError:  # not on this platform: no limit is known, only the connection caps apply
    resource = None  # type: ignore[assignment]


def descriptor_limit() -> int | None:
    """The process's soft limit on open files, or None when it is unknown or unlimited."""
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def descriptors_in_use() -> int | None:
    """Open file descriptors of this process (None where the system does not say)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(where)) - 1  # listing the directory opens one
    return None


def raise_descriptor_limit() -> int | None:
    """Lift the soft limit on open files to the hard one (the default 1024 is far below what a service
    with hundreds of calls needs); returns the limit now in force."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return descriptor_limit()


def descriptors_short(reserve: int) -> str | None:
    """Why a new connection would eat into the descriptors kept for calls, if it would."""
    limit = descriptor_limit()
    used = descriptors_in_use()
    if limit is None or used is None:
        return None
    if used + reserve >= limit:
        return f"{used} of {limit} file descriptors in use ({reserve} are kept for calls' media and recordings)"
    return None


def source_of(host: str) -> str:
    """Whom a remote address counts as, for the per-source limits: an IPv4 address itself (as is an
    IPv4-mapped IPv6 one), an IPv6 address its /64 — one host or site holds a whole /64 (2**64
    addresses), so counted one by one it would never reach a limit. Anything else as it is."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class ConnectionLimits:
    #: Connections one listener holds at once.
    max_total: int = 1000
    #: Connections one remote address holds at once on one listener.
    max_per_source: int = 64
    #: Descriptors kept free for calls (RTP sockets, recording files, event logs).
    reserve: int = 256
    #: Seconds in which a request's header block (or a SIP message) must arrive once it has begun.
    header_timeout: float = 10.0
    #: Seconds a connection may sit with nothing to do before it is closed.
    idle_timeout: float = 120.0
    #: Seconds between pings on an open WebSocket (HTTP), and how long its pong may take. The idle
    #: timeout cannot find a peer that went away without closing (a laptop's lid shut, a NAT that forgot
    #: it): a call's WebSocket is quiet for as long as the call lasts. With these, its connection and
    #: its call end within 40 s, while a live browser answers in milliseconds.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0


@dataclass
class ConnectionGate:
    """Counts one listener's connections and admits new ones within :class:`ConnectionLimits`."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    by_source: Counter[str] = field(default_factory=Counter)
    total: int = 0
    refused: int = 0

    def admit(self, host: str) -> str | None:
        """Take a connection from ``host``; or say why not (the caller closes it then)."""
        lim, source = self.limits, source_of(host)
        reason: str | None = None
        if self.total >= lim.max_total:
            reason = f"{self.total} connections open, the limit"
        elif self.by_source[source] >= lim.max_per_source:
            reason = f"{self.by_source[source]} connections open from {source}, the per-address limit"
        else:
            reason = descriptors_short(lim.reserve)
        if reason is not None:
            self.refused += 1
            return reason
        self.total += 1
        self.by_source[source] += 1
        return None

    def release(self, host: str) -> None:
        """A connection admitted by :meth:`admit` closed."""
        source = source_of(host)
        self.total = max(0, self.total - 1)
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]

    def should_log(self) -> bool:
        """Log the first refusal, then every hundredth (a flood must not flood the log)."""
        return self.refused == 1 or self.refused % 100 == 0


class GuessLimiter:
    """At most ``failures`` wrong guesses of a secret (the API token, a caller's SIP password) per client
    address per ``window`` seconds, in this worker (with --workers N an address gets at most N times as
    many tries: still a handful a minute). The table is bounded: beyond ``addresses`` the oldest entry is
    forgotten."""

    def __init__(self, failures: int = 10, window: float = 60.0, addresses: int = 10_000) -> None:
        self.failures = failures
        self.window = window
        self.addresses = addresses
        #: address → (when its window began, wrong tries in it)
        self._tries: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def wait(self, host: str, now: float) -> float:
        """Seconds before ``host`` (its source: :func:`source_of`) may try again (0: now)."""
        source = source_of(host)
        began, count = self._tries.get(source, (now, 0))
        if now - began >= self.window:
            self._tries.pop(source, None)
            return 0.0
        return began + self.window - now if count >= self.failures else 0.0

    def failed(self, host: str, now: float) -> None:
        host = source_of(host)
        began, count = self._tries.pop(host, (now, 0))
        if now - began >= self.window:
            began, count = now, 0
        self._tries[host] = (began, count + 1)
        while len(self._tries) > self.addresses:
            self._tries.popitem(last=False)
