"""Our SIP layer on a real loopback socket: what a flood of INVITEs that are never ACKed leaves behind."""

from __future__ import annotations

import asyncio
import socket

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


def test_unacked_rejections_and_stray_acks_leave_nothing_behind() -> None:
    asyncio.run(_flood())


def options(n: int, port: int) -> bytes:
    return (
        f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-o{n}\r\n"
        f"From: <sip:f@127.0.0.1>;tag=o{n}\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: opt-{n}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def flood_left(replies: ReplyCache) -> list[str]:
    """Call-IDs of the flood (not the sweeping OPTIONS) still in the reply cache."""
    return [k[0] for k in [*replies.sources, *replies.responses] if not k[0].startswith("opt-")]


async def _flood() -> None:
    server = SipServer(UdpTransport(("127.0.0.1", 0)), user_agent="test")
    server.timer_h = 0.8
    replies = server.sip_transport.replies
    replies.ttl, replies.sweep_every = 0.3, 0.0

    def reject(call: IncomingCall) -> None:
        call.reject(486, "Busy Here")

    server.on_invite = reject
    await server.start()
    port = int(server.transport.local_addr[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        me = peer.getsockname()[1]
        try:
            for n in range(300):
                peer.sendto(invite(n, me), ("127.0.0.1", port))
                peer.sendto(stray_ack(n, me), ("127.0.0.1", port))
                if n % 50 == 0:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert len(server._calls) > 100  # waiting for their ACKs, the 486 retransmitted (Timer G)
            # after Timer H (and a margin for a loaded machine) nothing is left of them
            for n in range(50):
                await asyncio.sleep(0.1)
                peer.sendto(options(n, me), ("127.0.0.1", port))  # a request sweeps the caches
                if not server._calls and not server._unacked and not flood_left(replies):
                    break
            assert not server._calls and not server.transactions.server_transactions and not server._unacked
            assert not flood_left(replies)  # only the last OPTIONS' own entries
            # the 486 went out more than once per INVITE: retransmitted until Timer H
            finals = 0
            peer.setblocking(False)
            while True:
                try:
                    finals += b"SIP/2.0 486" in peer.recv(65535)
                except BlockingIOError:
                    break
            assert finals > 300  # at once, and again 0.5 s later (a few may be lost in the flood)
        finally:
            await server.stop()
