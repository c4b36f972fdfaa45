"""Our SIP layer on a real loopback socket: what a flood of INVITEs that are never ACKed leaves behind
(its timers on a clock the test moves, so a busy machine changes nothing)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import socket
import time
from collections import Counter
from collections.abc import Callable

from aiosipua.incoming_call import IncomingCall

from swml_engine.transports.sip.signalling import ReplyCache, SipServer, UdpTransport


def invite(n: int, port: int) -> bytes:
    body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"
    head = (
        f"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-f{n};rport\r\n"
        f"From: <sip:f@127.0.0.1>;tag=f{n}\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: flood-{n}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:f@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


def stray_ack(n: int, port: int) -> bytes:
    return (
        f"ACK sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-a{n}\r\n"
        f"From: <sip:f@127.0.0.1>;tag=a{n}\r\nTo: <sip:x@127.0.0.1>;tag=zz\r\nCall-ID: ack-{n}\r\n"
        "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def options(n: int, port: int) -> bytes:
    return (
        f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-o{n}\r\n"
        f"From: <sip:f@127.0.0.1>;tag=o{n}\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: opt-{n}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def flood_left(replies: ReplyCache) -> list[str]:
    """Call-IDs of the flood (not the sweeping OPTIONS) still in the reply cache."""
    return [k[0] for k in [*replies.sources, *replies.responses] if not k[0].startswith("opt-")]


#: How far the clock moves between windows of the flood (their timers then fire window by window).
STEP = 0.01


class HandClock:
    """SIP timers on a clock the test moves (SipTimers): Timer G and H fire when the test says, so what
    they do is checked without racing a busy machine."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._order), fut))
        await fut

    async def advance_to(self, end: float) -> None:
        """Move time on to ``end``, waking each timer due on the way at its own time."""
        while self._sleepers and self._sleepers[0][0] <= end:
            due, _, fut = heapq.heappop(self._sleepers)
            self.t = max(self.t, due)
            if not fut.done():
                fut.set_result(None)
                for _ in range(5):  # let it run up to its next sleep
                    await asyncio.sleep(0)
        self.t = end


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``predicate`` while the server runs; the deadline is generous: only a hang trips it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Peer:
    """The flooding UAC: a UDP socket in the test, read without blocking the server's loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        #: 486 answers received, by Call-ID.
        self.busy: Counter[str] = Counter()

    def read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            m = re.search(rb"(?m)^Call-ID: (\S+)", data)
            if data.startswith(b"SIP/2.0 486") and m:
                self.busy[m.group(1).decode()] += 1


def test_unacked_rejections_and_stray_acks_leave_nothing_behind() -> None:
    asyncio.run(_flood())


async def _flood(n_calls: int = 300, window: int = 25) -> None:
    clock = HandClock()
    server = SipServer(UdpTransport(("127.0.0.1", 0)), user_agent="test", timers=clock)
    server.timer_h = 0.8  # one retransmission (at 0.5 s), then Timer H
    replies = server.sip_transport.replies
    replies.ttl, replies.sweep_every = 0.3, 0.0

    def reject(call: IncomingCall) -> None:
        call.reject(486, "Busy Here")

    server.on_invite = reject
    await server.start()
    dest = ("127.0.0.1", int(server.transport.local_addr[1]))
    peer = Peer()
    try:
        # INVITEs (each with an ACK for no transaction beside it) in windows a socket buffer holds, the
        # clock moved on a little after each window so that their retransmissions come window by window
        # too; an INVITE whose 486 does not come is sent again, as a UDP client does (Timer A).
        windows = [[f"flood-{n}" for n in range(first, first + window)] for first in range(0, n_calls, window)]
        for batch in windows:
            for call_id in batch:
                peer.sock.sendto(stray_ack(int(call_id.split("-")[1]), peer.port), dest)
            sent_at = -1.0
            while not all(peer.busy[c] for c in batch):
                if time.monotonic() - sent_at > 1.0:
                    for call_id in batch:
                        if not peer.busy[call_id]:
                            peer.sock.sendto(invite(int(call_id.split("-")[1]), peer.port), dest)
                    sent_at = time.monotonic()
                await asyncio.sleep(0.01)
                peer.read()
            await clock.advance_to(clock.now() + STEP)
        calls = [c for batch in windows for c in batch]
        # each rejected call waits for its ACK, its 486 kept for retransmission (Timer G); the stray
        # ACKs matched nothing and started nothing
        assert sorted(server._calls) == sorted(calls)
        assert len(server._unacked) == n_calls
        # Timer G: 0.5 s after it went out, every 486 goes out again, unasked
        before = {c: peer.busy[c] for c in calls}
        for k, batch in enumerate(windows):
            await clock.advance_to(0.5 + k * STEP + STEP / 2)
            await wait_until(lambda b=batch: (peer.read(), all(peer.busy[c] > before[c] for c in b))[1])
        # Timer H: then nothing is left of them
        await clock.advance_to(clock.now() + 1.0)
        await wait_until(lambda: not server._calls and not server._unacked)
        assert not server.transactions.server_transactions
        peer.sock.sendto(options(0, peer.port), dest)  # a request sweeps the caches
        await wait_until(lambda: not flood_left(replies))
    finally:
        peer.sock.close()
        await server.stop()
