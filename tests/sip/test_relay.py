"""The relay between --workers (transports/sip/relay.py): the envelope takes only its own key and slot,
and an endpoint on real loopback sockets answers a datagram another worker handed on to the source it
came from, out of the shared SIP socket, while an envelope from a process without the key is refused."""

from __future__ import annotations

import asyncio
import socket

import pytest

from swml_engine.transports.sip.endpoint import Endpoint
from swml_engine.transports.sip.relay import MAX_ENVELOPE, RelayError, RelayGroup, seal, unseal
from swml_engine.transports.sip.useragent import Policy, UserAgent, WorkerSlot

KEY, OTHER_KEY = b"k" * 32, b"x" * 32


def test_an_envelope_opens_with_its_key_and_slot_only() -> None:
    envelope = seal(KEY, 1, "203.0.113.9", 5062, b"BYE sip:x SIP/2.0\r\n\r\n")
    assert unseal(KEY, 1, envelope) == ("203.0.113.9", 5062, b"BYE sip:x SIP/2.0\r\n\r\n")
    for key, slot, data, why in [
        (OTHER_KEY, 1, envelope, "wrong key"),
        (KEY, 0, envelope, "for worker 1, not 0"),
        (KEY, 1, envelope[:-1] + b"?", "wrong key"),  # the datagram changed on the way
        (KEY, 1, b"SIP/2.0 200 OK\r\n", "not a relay envelope"),
    ]:
        with pytest.raises(RelayError, match=why):
            unseal(key, slot, data)
    with pytest.raises(RelayError, match="too long"):
        seal(KEY, 1, "203.0.113.9", 5062, b"x" * MAX_ENVELOPE)


def bye(port: int) -> bytes:
    return (
        "BYE sip:engine@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-relay-1;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:engine@127.0.0.1>;tag=w1-0123456789ab\r\n"
        "Call-ID: relay-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_handed_on_datagram_is_answered_to_its_source_and_a_forged_one_is_refused() -> None:
    asyncio.run(handed_on_and_forged())


async def handed_on_and_forged() -> None:
    group = RelayGroup(2)
    slot = group.slot(1)  # (closes slot 0's socket here: this test is worker 1)
    ua = UserAgent(Policy(worker=WorkerSlot(1, 2)), relay=True)
    endpoint = Endpoint(ua, ("127.0.0.1", 0), on_event=lambda event: None, relay=slot)
    await endpoint.start()
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(5)
    try:
        source = caller.getsockname()
        forger.sendto(seal(OTHER_KEY, 1, *source, bye(source[1])), slot.addresses[1])
        forger.sendto(seal(slot.key, 1, *source, bye(source[1])), slot.addresses[1])  # as worker 0 would
        answer, sent_from = await asyncio.to_thread(caller.recvfrom, 4096)
        assert answer.startswith(b"SIP/2.0 481 "), answer  # worker 1 has no such dialog: it says so
        assert sent_from == endpoint.local_addr  # from the shared SIP port, not the relay socket
        assert endpoint.relays.as_dict() == {"sent": 0, "received": 1, "refused": 1, "dropped": 0}
        assert sum(ua.counts.requests_in.values()) == 1
    finally:
        caller.close()
        forger.close()
        await endpoint.stop()
        group.close()
