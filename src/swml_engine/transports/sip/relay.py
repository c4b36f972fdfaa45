"""Datagrams of the shared SIP port handed from one ``--workers`` process to another.

The kernel picks the worker that reads a datagram on the shared UDP port by a hash of its source, and
that pick moves when a worker is restarted (the restarted one's socket joins the group in another
place) or when a peer's source port changes mid-call. The core tells which worker a datagram is for by
its tags (useragent.py, "Workers"); this module carries it there:

- :class:`RelayGroup`: made by the supervising process before it forks the workers — one UDP socket on
  loopback per worker slot, and a random key. The supervisor keeps them open, so a worker started again
  in a slot inherits that slot's very socket and port, and what was sent to it meanwhile waits there.
- :class:`RelaySlot`: one worker's share — its own socket, every slot's address, the key.
- :func:`seal` / :func:`unseal`: the envelope — the datagram as it came, its source host and port, and
  the slot it is for, under an HMAC-SHA256 of the key. A worker takes only envelopes with the right MAC
  from loopback: another local process cannot make a worker take SIP from a source address it claims.

What this does not do: decide anything about SIP (the core does), or carry TCP (a connection stays with
the process that accepted it).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
from dataclasses import dataclass

MAGIC = b"SWR1"
#: Bytes of the MAC (HMAC-SHA256) and of the key.
MAC_SIZE = KEY_SIZE = 32
#: The largest envelope: a loopback IPv4 UDP datagram's payload.
MAX_ENVELOPE = 65_507
#: The longest source host an envelope carries (an IPv6 address as text, with room to spare).
MAX_HOST = 64
#: The relay sockets' receive buffer: room for a burst while a worker is busy or being restarted.
RECEIVE_BUFFER = 4 * 1024 * 1024
_HEAD = len(MAGIC) + MAC_SIZE


class RelayError(ValueError):
    """A datagram that cannot be sealed (too long to carry) or an envelope that is not ours."""


def seal(key: bytes, slot: int, host: str, port: int, data: bytes) -> bytes:
    """``data`` from ``host``:``port`` as an envelope for worker ``slot``."""
    raw_host = host.encode("ascii", "replace")
    if len(raw_host) > MAX_HOST or not 0 <= port < 65536 or not 0 <= slot < 256:
        raise RelayError(f"relay: cannot carry a source {host[:MAX_HOST]}:{port} to worker {slot}")
    body = bytes((slot, len(raw_host))) + raw_host + port.to_bytes(2, "big") + data
    if _HEAD + len(body) > MAX_ENVELOPE:
        raise RelayError(f"relay: a {len(data)}-byte datagram is too long to hand on")
    return MAGIC + hmac.digest(key, body, hashlib.sha256) + body


def unseal(key: bytes, slot: int, envelope: bytes) -> tuple[str, int, bytes]:
    """(source host, source port, datagram) of an envelope for worker ``slot``; RelayError when it is
    not one sealed with ``key`` for that slot."""
    if len(envelope) < _HEAD + 4 or not envelope.startswith(MAGIC):
        raise RelayError("not a relay envelope")
    body = envelope[_HEAD:]
    if not hmac.compare_digest(envelope[len(MAGIC) : _HEAD], hmac.digest(key, body, hashlib.sha256)):
        raise RelayError("wrong key")
    target, size = body[0], body[1]
    if target != slot or len(body) < 4 + size:
        raise RelayError(f"for worker {target}, not {slot}" if target != slot else "truncated")
    host = body[2 : 2 + size].decode("ascii", "replace")
    port = int.from_bytes(body[2 + size : 4 + size], "big")
    return host, port, body[4 + size :]


@dataclass(frozen=True)
class RelaySlot:
    """What worker ``index`` relays with: its own socket (which it reads), every slot's address (where it
    sends; its own among them), and the group's key."""

    index: int
    sock: socket.socket
    addresses: tuple[tuple[str, int], ...]
    key: bytes

    @property
    def count(self) -> int:
        return len(self.addresses)


class RelayGroup:
    """The relay sockets of ``count`` worker slots and their key (see the module docstring); OSError when
    loopback has no UDP port to give."""

    def __init__(self, count: int) -> None:
        self.key = os.urandom(KEY_SIZE)
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.sockets.append(sock)
                with contextlib.suppress(OSError):  # (the system's limit applies when lower)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                sock.bind(("127.0.0.1", 0))
        except OSError:
            self.close()
            raise
        self.addresses = tuple((str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self.sockets)

    def slot(self, index: int) -> RelaySlot:
        """Worker ``index``'s share. Called in the worker once forked: the other slots' sockets are closed
        there (each is read by its own worker only), the supervisor's copies stay open."""
        for i, sock in enumerate(self.sockets):
            if i != index:
                sock.close()
        return RelaySlot(index, self.sockets[index], self.addresses, self.key)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@dataclass
class RelayFigures:
    """What one worker's relay did (its /health shows them): datagrams handed on to other workers
    (``sent``), taken from them (``received``), envelopes refused (not from loopback, a wrong key or slot),
    and datagrams that could not be handed on (``dropped``: too long, no such worker)."""

    sent: int = 0
    received: int = 0
    refused: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "refused": self.refused, "dropped": self.dropped}


def worth_logging(count: int, every: int) -> bool:
    """Whether the ``count``-th occurrence of something is logged: the first, then every ``every``-th."""
    return count == 1 or count % every == 0
