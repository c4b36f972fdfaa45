"""The core's side of --workers on one shared UDP port, without sockets: our tags name the worker, and a
request, ACK or response whose tag of ours names another worker becomes a Relay event (the datagram as
it came, and its source) instead of a 481 or a drop; one that names no other worker is answered here as
before (see useragent.py, "Workers")."""

from __future__ import annotations

import random

import pytest

from swml_engine.transports.sip.useragent import (
    ByeReceived,
    Peer,
    Policy,
    Relay,
    Transport,
    UserAgent,
    WorkerSlot,
    worker_of_tag,
)

from .test_useragent import SDP, US, Caller, Run, answered

#: A tag worker 0 would have given (this user agent is worker 1 of 2).
OTHERS = "w0-0123456789ab"


def worker(index: int = 1, count: int = 2, *, relay: bool = True) -> Run:
    policy = Policy(worker=WorkerSlot(index, count))
    return Run(ua=UserAgent(policy, rng=random.Random(7), relay=relay))


def relays(run: Run) -> list[Relay]:
    return [e for e in run.events if isinstance(e, Relay)]


def test_the_tags_of_a_worker_name_it_and_plain_ones_name_none() -> None:
    run = worker(1, 2)
    call = answered(run, Caller())
    assert call.local_tag.startswith("w1-") and worker_of_tag(call.local_tag) == 1
    assert run.ua.new_tag().startswith("w1-")
    single = Run()  # one process: tags as before
    assert worker_of_tag(answered(single, Caller()).local_tag) is None
    assert [worker_of_tag(t) for t in ("w12-0123456789ab", "w1-xyz", "0123456789ab", None)] == [12, None, None, None]
    with pytest.raises(ValueError, match="index 2 of 2"):
        WorkerSlot(2, 2)


@pytest.mark.parametrize("method", ["BYE", "ACK", "INFO", "INVITE"])
def test_an_in_dialog_request_for_another_workers_dialog_is_relayed_not_answered(method: str) -> None:
    run, caller = worker(), Caller(to_tag=OTHERS)
    data, _ = caller.request(method, cseq=2, body=SDP if method == "INVITE" else b"")
    run.feed(data, caller.peer)
    assert run.sent == []  # no 481: the worker whose dialog it is answers
    [relay] = relays(run)
    assert (relay.worker, relay.data, relay.peer) == (0, data, caller.peer)
    assert sum(run.ua.counts.requests_in.values()) == 0  # counted by the worker that takes it


def test_a_response_to_another_workers_request_is_relayed() -> None:
    run = worker()
    response = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKdead;rport\r\n"
        f"From: <sip:engine@192.0.2.1>;tag={OTHERS}\r\nTo: <sip:alice@192.0.2.10>;tag=caller-tag\r\n"
        "Call-ID: call-9\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    peer = Peer(Transport.UDP, "192.0.2.10", 5070, local=US)
    run.feed(response, peer)
    [relay] = relays(run)
    assert (relay.worker, relay.data, relay.peer) == (0, response, peer)


def test_the_relayed_request_is_served_by_the_worker_whose_dialog_it_is() -> None:
    # Worker 0 answered the call; its BYE reached worker 1, which relayed it: worker 0 says 200.
    owner, caller = worker(0, 2), Caller()
    answered(owner, caller)
    other = worker(1, 2)
    bye, _ = caller.request("BYE", cseq=2)
    other.feed(bye, caller.peer)
    [relay] = relays(other)
    owner.ua.receive(relay.data, relay.peer, owner.now, relayed=True)
    owner.collect()
    assert owner.statuses("BYE") == [200]
    assert any(isinstance(e, ByeReceived) for e in owner.events)


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        ("w1-0123456789ab", "our own prefix, a dialog we do not have"),
        ("0123456789ab", "no worker's tag"),
        ("w7-0123456789ab", "a worker beyond the count"),
    ],
)
def test_a_request_for_no_other_worker_still_gets_481(tag: str, why: str) -> None:
    run, caller = worker(), Caller(to_tag=tag)
    data, _ = caller.request("BYE", cseq=2)
    run.feed(data, caller.peer)
    assert run.statuses("BYE") == [481], why
    assert relays(run) == []


def test_no_relay_when_relayed_already_over_tcp_or_on_a_port_of_the_workers_own() -> None:
    relayed, caller = worker(), Caller(to_tag=OTHERS)
    data, _ = caller.request("BYE", cseq=2)
    relayed.ua.receive(data, caller.peer, 0.0, relayed=True)  # never handed on twice: no loop
    relayed.collect()
    assert relayed.statuses("BYE") == [481] and relays(relayed) == []

    tcp = Caller(to_tag=OTHERS, transport=Transport.TCP)  # a connection stays with its process
    run = worker()
    run.feed(tcp.request("BYE", cseq=2)[0], tcp.peer)
    assert run.statuses("BYE") == [481] and relays(run) == []

    own_port = worker(relay=False)  # the port a worker places its calls from is its alone
    own_port.feed(data, caller.peer)
    assert own_port.statuses("BYE") == [481] and relays(own_port) == []
