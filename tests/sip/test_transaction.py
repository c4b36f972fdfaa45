"""SIP transactions (RFC 3261 §17, RFC 6026) driven by a fake clock: plain floats, no sockets, no sleeps.

Each test drives one machine (or a table) with ``now`` values and reads what it would send
(``take_messages``), what it tells its user (``take_events``) and when it wants the clock next
(``next_timer``), as aioquic's connection tests drive ``QuicConnection``.
"""

from __future__ import annotations

import random

import pytest

from swml_engine.transports.sip.message import Request, Response, parse_message, response_to
from swml_engine.transports.sip.transaction import (
    MAX_KEY_TEXT,
    MAX_PENDING,
    AckReceived,
    AckWait,
    ClientTransaction,
    ResponseReceived,
    ServerTransaction,
    TableFull,
    TimedOut,
    TimerName,
    Timing,
    TransactionTable,
    TransportFailed,
    TwoXxRetransmitter,
    TxState,
    cancel_request,
    client_key,
    invite_key_of_cancel,
    new_branch,
    server_key,
)

CALLER_VIA = "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds"
PROXY_VIA = "SIP/2.0/UDP proxy.atlanta.example.com;branch=z9hG4bKproxy1;received=192.0.2.1"


def request(
    method: str = "INVITE",
    *,
    via: str | None = CALLER_VIA,
    cseq: str | None = None,
    to: str = "Bob <sip:bob@biloxi.example.com>",
    uri: str = "sip:bob@biloxi.example.com",
    extra: str = "",
) -> Request:
    """A request as a caller sends it (parsed from text, as the endpoint would)."""
    lines = [f"{method} {uri} SIP/2.0"]
    if via is not None:
        lines.append(f"Via: {via}")
    lines += [
        "Max-Forwards: 70",
        f"To: {to}",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        f"CSeq: {cseq or f'314159 {method}'}",
        "Contact: <sip:alice@pc33.atlanta.example.com>",
    ]
    if extra:
        lines.append(extra)
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request) and not message.problems
    return message


def answer(req: Request, status: int, tag: str | None = "a6c85cf", method: str | None = None) -> Response:
    """The far end's response to ``req`` (``method`` overrides the CSeq method, for mismatch tests)."""
    response = response_to(req, status, to_tag=tag)
    if method is not None:
        response.headers.set("CSeq", f"{req.cseq.number} {method}")
    return response


def drive(machine: ServerTransaction | ClientTransaction | TwoXxRetransmitter, until: float) -> list[float]:
    """Run the fake clock to ``until``: call handle_timer at each timer the machine asks for. Returns
    the times at which it sent something (one entry per message)."""
    sent: list[float] = []
    while (when := machine.next_timer()) is not None and when <= until:
        machine.handle_timer(when)
        sent += [when] * len(machine.take_messages())
    return sent


def statuses(messages: list[Response]) -> list[int]:
    return [m.status for m in messages]


# --- Timing ------------------------------------------------------------------------------------------------


def test_timing_defaults_and_derived_timers_are_rfc_3261_table_4() -> None:
    t = Timing()
    assert (t.T1, t.T2, t.T4, t.timeout) == (0.5, 4.0, 5.0, 32.0)
    for name in (TimerName.B, TimerName.F, TimerName.H, TimerName.L, TimerName.M):
        assert t.duration(name, reliable=False) == t.duration(name, reliable=True) == 32.0
    assert [t.duration(n, reliable=False) for n in (TimerName.D, TimerName.I, TimerName.J, TimerName.K)] == [
        32,
        5,
        32,
        5,
    ]
    assert [t.duration(n, reliable=True) for n in (TimerName.D, TimerName.I, TimerName.J, TimerName.K)] == [0, 0, 0, 0]
    assert Timing(T1=0.1).timeout == pytest.approx(6.4)


@pytest.mark.parametrize("bad", [{"T1": 0}, {"T1": 5.0, "T2": 4.0}, {"T1": float("nan")}, {"T4": -1}, {"T2": 1e9}])
def test_timing_refuses_values_that_would_spin_or_never_fire(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Timing"):
        Timing(**bad)


# --- INVITE server transaction (§17.2.1, RFC 6026) ------------------------------------------------------


def test_invite_server_sends_100_trying_itself_when_the_tu_is_silent_for_200_ms() -> None:
    invite = request(extra="Timestamp: 54.2")
    tx = ServerTransaction(invite, reliable=False, now=10.0)
    assert tx.state is TxState.PROCEEDING
    assert tx.next_timer() == pytest.approx(10.2)
    tx.handle_timer(10.19)
    assert tx.take_messages() == []
    tx.handle_timer(10.25)
    (trying,) = tx.take_messages()
    assert trying.status == 100 and trying.to.tag is None  # no To tag on a 100 (§8.2.6.1)
    assert trying.headers.get("Timestamp") == "54.2 0.250"  # copied, with the delay we added
    assert trying.headers.get_all("Via") == invite.headers.get_all("Via")
    # A retransmitted INVITE gets the 100 again: it is the last provisional response.
    tx.receive(invite, now=10.5)
    assert statuses(tx.take_messages()) == [100]
    assert tx.take_events() == [] and tx.next_timer() is None


def test_invite_server_sends_no_100_when_the_tu_answers_within_200_ms_or_turns_it_off() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0)
    assert tx.respond(answer(tx.request, 180), now=0.05)
    assert statuses(tx.take_messages()) == [180]
    assert drive(tx, until=5.0) == []
    tx.receive(request(), now=0.5)  # retransmission: the last provisional again
    assert statuses(tx.take_messages()) == [180]

    quiet = ServerTransaction(request(), reliable=False, now=0.0, auto_trying=False)
    assert quiet.next_timer() is None
    quiet.receive(request(), now=0.5)  # nothing was sent yet, so nothing to repeat
    assert quiet.take_messages() == []


def test_invite_server_retransmits_a_final_non_2xx_by_timer_g_until_timer_h() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0, auto_trying=False)
    assert tx.respond(answer(tx.request, 486), now=0.0)
    assert statuses(tx.take_messages()) == [486]
    assert tx.state is TxState.COMPLETED
    sent = drive(tx, until=100.0)
    # G: T1, then doubling, capped at T2 (0.5, 1, 2, 4, 4 ...); H ends it at 64*T1 = 32 s.
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert tx.state is TxState.TERMINATED
    assert tx.take_events() == [TimedOut(TimerName.H)]


def test_invite_server_on_a_reliable_transport_sends_the_final_once_and_still_waits_timer_h() -> None:
    tx = ServerTransaction(request(), reliable=True, now=0.0, auto_trying=False)
    tx.respond(answer(tx.request, 603), now=0.0)
    tx.take_messages()
    assert tx.next_timer() == 32.0  # H only: no G on TCP
    assert drive(tx, until=40.0) == []
    assert tx.take_events() == [TimedOut(TimerName.H)]


def test_invite_server_answers_a_retransmitted_invite_with_its_final_response() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0)
    tx.respond(answer(tx.request, 404), now=0.1)
    tx.take_messages()
    tx.receive(request(), now=0.3)
    assert statuses(tx.take_messages()) == [404]
    assert tx.take_events() == []  # never passed up again


def test_ack_to_a_non_2xx_confirms_stops_retransmissions_and_absorbs_for_timer_i() -> None:
    invite = request()
    tx = ServerTransaction(invite, reliable=False, now=0.0, auto_trying=False)
    final = answer(invite, 486)
    tx.respond(final, now=0.0)
    tx.take_messages()
    ack = request("ACK", cseq="314159 ACK", to=final.headers.get("To") or "")
    tx.receive(ack, now=0.7)
    assert tx.state is TxState.CONFIRMED
    assert tx.next_timer() == pytest.approx(0.7 + 5.0)  # Timer I = T4; G and H stopped
    tx.receive(ack, now=1.0)  # retransmitted ACK and INVITE: absorbed
    tx.receive(invite, now=1.1)
    assert tx.take_messages() == [] and tx.take_events() == []
    assert drive(tx, until=10.0) == []
    assert tx.state is TxState.TERMINATED and tx.take_events() == []

    tcp = ServerTransaction(invite, reliable=True, now=0.0, auto_trying=False)
    tcp.respond(answer(invite, 486), now=0.0)
    tcp.receive(ack, now=0.1)
    assert tcp.state is TxState.TERMINATED  # Timer I is 0 on reliable transports


def test_rfc_6026_invite_server_accepted_absorbs_retransmitted_invites_until_timer_l() -> None:
    invite = request()
    tx = ServerTransaction(invite, reliable=False, now=0.0)
    ok = answer(invite, 200)
    assert tx.respond(ok, now=0.1)
    assert tx.take_messages() == [ok]
    assert tx.state is TxState.ACCEPTED
    for t in (0.5, 1.5, 3.5):
        tx.receive(invite, now=t)
    assert tx.take_messages() == [] and tx.take_events() == []  # absorbed: not a new call, no 200 from here
    assert tx.respond(ok, now=0.6)  # the TU's (dialog's) own retransmission goes out through it
    assert tx.take_messages() == [ok]
    assert not tx.respond(answer(invite, 500), now=0.7)  # nothing but 2xx after a 2xx
    ack = request("ACK", cseq="314159 ACK", to=ok.headers.get("To") or "")
    tx.receive(ack, now=0.8)  # an ACK that matched goes up (RFC 6026 §8.7)
    assert tx.take_events() == [AckReceived(ack)]
    assert tx.next_timer() == pytest.approx(0.1 + 32.0)
    drive(tx, until=40.0)
    assert tx.state is TxState.TERMINATED and tx.take_events() == []


def test_server_transaction_ignores_responses_after_its_final_one() -> None:
    tx = ServerTransaction(request(), reliable=False, now=0.0)
    assert tx.respond(answer(tx.request, 486), now=0.0)
    assert not tx.respond(answer(tx.request, 200), now=0.1)
    assert not tx.respond(answer(tx.request, 180), now=0.1)
    assert not tx.respond(answer(tx.request, 99), now=0.1)
    assert statuses(tx.take_messages()) == [486]


def test_server_transport_error_tells_the_tu_and_ends_the_transaction() -> None:
    tx = ServerTransaction(request(), reliable=True, now=0.0)
    tx.respond(answer(tx.request, 180), now=0.0)
    tx.transport_error(now=0.1, reason="connection reset")
    assert tx.state is TxState.TERMINATED
    assert tx.take_events() == [TransportFailed("connection reset")]
    assert tx.next_timer() is None
    tx.transport_error(now=0.2)  # once only
    assert tx.take_events() == []


def test_server_transaction_refuses_an_ack_and_a_request_it_cannot_key() -> None:
    with pytest.raises(ValueError, match="ACK creates no transaction"):
        ServerTransaction(request("ACK"), reliable=False, now=0.0)
    with pytest.raises(ValueError, match="server_key"):
        ServerTransaction(request(via=None), reliable=False, now=0.0)


# --- non-INVITE server transaction (§17.2.2) ------------------------------------------------------------


def test_non_invite_server_absorbs_in_trying_repeats_provisional_then_final_until_timer_j() -> None:
    bye = request("BYE", to="Bob <sip:bob@biloxi.example.com>;tag=a6c85cf")
    tx = ServerTransaction(bye, reliable=False, now=0.0)
    assert tx.state is TxState.TRYING and tx.next_timer() is None  # no 100 of its own
    tx.receive(bye, now=0.5)
    assert tx.take_messages() == []  # Trying: absorbed
    tx.respond(answer(bye, 183), now=0.6)
    assert tx.state is TxState.PROCEEDING
    tx.receive(bye, now=1.5)
    assert statuses(tx.take_messages()) == [183, 183]
    tx.respond(answer(bye, 200), now=2.0)
    assert tx.state is TxState.COMPLETED
    assert not tx.respond(answer(bye, 500), now=2.1)  # a second final is discarded
    tx.receive(bye, now=3.5)
    assert statuses(tx.take_messages()) == [200, 200]
    assert tx.next_timer() == pytest.approx(2.0 + 32.0)  # Timer J = 64*T1
    assert drive(tx, until=40.0) == []
    assert tx.state is TxState.TERMINATED and tx.take_events() == []


def test_non_invite_server_on_a_reliable_transport_ends_with_its_final_response() -> None:
    tx = ServerTransaction(request("OPTIONS"), reliable=True, now=0.0)
    tx.respond(answer(tx.request, 200), now=0.0)
    assert tx.state is TxState.TERMINATED  # Timer J is 0
    assert statuses(tx.take_messages()) == [200]


# --- INVITE client transaction (§17.1.1, RFC 6026) ------------------------------------------------------


def our_invite(*, two_vias: bool = False) -> Request:
    """An INVITE of ours with a Route set (and, to prove 'top Via only', a second Via)."""
    vias = f"{CALLER_VIA}\r\nVia: {PROXY_VIA}" if two_vias else CALLER_VIA
    return request(
        via=vias, extra="Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\nRoute: <sip:p3.example.com;lr>"
    )


def test_invite_client_retransmits_by_timer_a_and_gives_up_at_timer_b() -> None:
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    assert tx.state is TxState.CALLING
    assert tx.take_messages() == [tx.request]  # sent on creation
    sent = drive(tx, until=100.0)
    assert sent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles without a cap; B at 32 s
    assert tx.state is TxState.TERMINATED
    assert tx.take_events() == [TimedOut(TimerName.B)]


def test_invite_client_on_a_reliable_transport_sends_once_and_times_out_at_b() -> None:
    tx = ClientTransaction(our_invite(), reliable=True, now=0.0)
    tx.take_messages()
    assert tx.next_timer() == 32.0
    assert drive(tx, until=100.0) == []
    assert tx.take_events() == [TimedOut(TimerName.B)]


def test_invite_client_passes_each_1xx_up_and_stops_retransmitting_in_proceeding() -> None:
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    tx.take_messages()
    trying, ringing = answer(tx.request, 100, tag=None), answer(tx.request, 180)
    tx.receive(trying, now=0.1)
    tx.receive(ringing, now=0.2)
    tx.receive(ringing, now=0.3)
    assert tx.state is TxState.PROCEEDING
    assert tx.take_events() == [ResponseReceived(trying), ResponseReceived(ringing), ResponseReceived(ringing)]
    assert tx.next_timer() is None  # no A, no B: the TU decides when to CANCEL
    assert drive(tx, until=100.0) == []


def test_invite_client_acks_a_non_2xx_with_the_headers_of_rfc_3261_17_1_1_3() -> None:
    invite = our_invite(two_vias=True)
    tx = ClientTransaction(invite, reliable=False, now=0.0)
    tx.take_messages()
    busy = answer(invite, 486, tag="xyz")
    tx.receive(busy, now=0.2)
    assert tx.state is TxState.COMPLETED
    assert tx.take_events() == [ResponseReceived(busy)]
    (ack,) = tx.take_messages()
    assert ack is tx.ack
    assert (ack.method, ack.uri) == ("ACK", invite.uri)
    assert ack.headers.get_all("Via") == [CALLER_VIA]  # one Via: the INVITE's top one, same branch
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    assert ack.headers.get("To") == busy.headers.get("To") and ack.to.tag == "xyz"
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.call_id == invite.call_id
    assert ack.headers.get("CSeq") == "314159 ACK"
    assert ack.max_forwards == 70 and ack.body == b""
    assert parse_message(ack.encode()).problems == []
    # The final is passed up once; its retransmissions are ACKed again and absorbed.
    tx.receive(busy, now=0.9)
    assert [m.encode() for m in tx.take_messages()] == [ack.encode()] and tx.take_events() == []
    assert drive(tx, until=100.0) == []  # nothing retransmitted in Completed
    assert tx.state is TxState.TERMINATED  # Timer D (32 s)


def test_invite_client_timer_d_is_32_s_unreliable_and_zero_reliable() -> None:
    udp = ClientTransaction(our_invite(), reliable=False, now=0.0)
    udp.receive(answer(udp.request, 503), now=1.0)
    assert udp.next_timer() == pytest.approx(33.0)
    tcp = ClientTransaction(our_invite(), reliable=True, now=0.0)
    tcp.receive(answer(tcp.request, 503), now=1.0)
    assert tcp.state is TxState.TERMINATED
    assert [m.method for m in tcp.take_messages()] == ["INVITE", "ACK"]


def test_rfc_6026_invite_client_accepted_passes_every_2xx_up_for_the_tu_to_ack() -> None:
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    tx.take_messages()
    ok = answer(tx.request, 200, tag="fork1")
    tx.receive(ok, now=0.3)
    assert tx.state is TxState.ACCEPTED
    other_fork = answer(tx.request, 200, tag="fork2")
    tx.receive(ok, now=0.8)  # retransmitted: the TU's ACK was lost
    tx.receive(other_fork, now=0.9)
    tx.receive(answer(tx.request, 180), now=1.0)  # late 1xx and non-2xx: absorbed
    tx.receive(answer(tx.request, 486, tag="fork3"), now=1.1)
    assert tx.take_events() == [ResponseReceived(ok), ResponseReceived(ok), ResponseReceived(other_fork)]
    assert tx.take_messages() == []  # the transaction never ACKs a 2xx, nor retransmits the INVITE
    assert tx.next_timer() == pytest.approx(0.3 + 32.0)  # Timer M
    assert drive(tx, until=40.0) == []
    assert tx.state is TxState.TERMINATED and tx.take_events() == []


def test_invite_client_passes_up_a_2xx_that_follows_another_forks_refusal() -> None:
    # Not a retransmission of the final: the TU must see it to ACK it and hang it up.
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    tx.receive(answer(tx.request, 486, tag="fork1"), now=0.1)
    late = answer(tx.request, 200, tag="fork2")
    tx.receive(late, now=0.2)
    assert tx.take_events()[-1] == ResponseReceived(late)
    assert [m.method for m in tx.take_messages()] == ["INVITE", "ACK"]  # the 2xx is not ACKed here


def test_invite_client_after_a_cancel_gives_up_64_t1_later_without_a_final() -> None:
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    tx.receive(answer(tx.request, 180), now=0.1)
    tx.take_events()
    tx.cancel_sent(now=5.0)
    tx.cancel_sent(now=6.0)  # a second CANCEL does not push the deadline
    assert tx.next_timer() == pytest.approx(37.0)
    drive(tx, until=40.0)
    assert tx.take_events() == [TimedOut(TimerName.CANCELLED)]

    answered = ClientTransaction(our_invite(), reliable=True, now=0.0)
    answered.receive(answer(answered.request, 180), now=0.1)
    answered.cancel_sent(now=1.0)
    answered.receive(answer(answered.request, 487), now=1.2)
    assert answered.state is TxState.TERMINATED
    assert [type(e) for e in answered.take_events()] == [ResponseReceived, ResponseReceived]


def test_client_transaction_ignores_responses_of_another_method_or_branch() -> None:
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    tx.receive(answer(tx.request, 200, method="CANCEL"), now=0.1)  # the CANCEL's 200, not the INVITE's
    other = request(via="SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKother")
    tx.receive(answer(other, 486), now=0.2)
    assert tx.state is TxState.CALLING and tx.take_events() == []


def test_client_transport_error_tells_the_tu_and_ends_the_transaction() -> None:
    tx = ClientTransaction(our_invite(), reliable=True, now=0.0)
    tx.transport_error(now=0.0, reason="no route to host")
    assert tx.state is TxState.TERMINATED
    assert tx.take_events() == [TransportFailed("no route to host")]


def test_client_transaction_needs_our_own_branch_and_no_ack() -> None:
    with pytest.raises(ValueError, match="new_branch"):
        ClientTransaction(request(via="SIP/2.0/UDP host;branch=1234"), reliable=False, now=0.0)
    with pytest.raises(ValueError, match="ACK has no transaction"):
        ClientTransaction(request("ACK"), reliable=False, now=0.0)


def test_a_late_timer_call_sends_one_retransmission_not_every_one_it_missed() -> None:
    tx = ClientTransaction(our_invite(), reliable=False, now=0.0)
    tx.take_messages()
    tx.handle_timer(10.0)  # the owner was busy: A was due at 0.5
    assert len(tx.take_messages()) == 1
    assert tx.next_timer() == pytest.approx(11.0)


# --- non-INVITE client transaction (§17.1.2) ------------------------------------------------------------


def test_non_invite_client_timer_e_doubles_to_t2_and_timer_f_gives_up() -> None:
    tx = ClientTransaction(request("OPTIONS"), reliable=False, now=0.0)
    assert tx.state is TxState.TRYING
    tx.take_messages()
    sent = drive(tx, until=100.0)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert tx.take_events() == [TimedOut(TimerName.F)]
    assert tx.state is TxState.TERMINATED


def test_non_invite_client_in_proceeding_retransmits_every_t2() -> None:
    tx = ClientTransaction(request("BYE"), reliable=False, now=0.0)
    tx.take_messages()
    trying = answer(tx.request, 100)
    tx.receive(trying, now=0.2)
    assert tx.state is TxState.PROCEEDING
    assert tx.take_events() == [ResponseReceived(trying)]
    assert drive(tx, until=12.0) == [0.5, 4.5, 8.5]  # E was running; from Proceeding on, every T2


def test_non_invite_client_final_completes_absorbs_retransmissions_until_timer_k() -> None:
    tx = ClientTransaction(request("BYE"), reliable=False, now=0.0)
    tx.take_messages()
    ok = answer(tx.request, 200)
    tx.receive(ok, now=0.2)
    tx.receive(ok, now=0.7)
    assert tx.take_events() == [ResponseReceived(ok)]
    assert tx.state is TxState.COMPLETED
    assert tx.next_timer() == pytest.approx(0.2 + 5.0)  # K = T4
    assert drive(tx, until=10.0) == []
    assert tx.state is TxState.TERMINATED

    tcp = ClientTransaction(request("BYE"), reliable=True, now=0.0)
    tcp.receive(answer(tcp.request, 200), now=0.1)
    assert tcp.state is TxState.TERMINATED  # K is 0 on reliable transports


# --- CANCEL and branches ----------------------------------------------------------------------------------


def test_cancel_request_has_the_headers_of_rfc_3261_9_1() -> None:
    invite = our_invite(two_vias=True)
    cancel = cancel_request(invite)
    assert (cancel.method, cancel.uri) == ("CANCEL", invite.uri)
    assert cancel.headers.get_all("Via") == [CALLER_VIA]
    assert cancel.headers.get_all("Route") == invite.headers.get_all("Route")
    for name in ("To", "From", "Call-ID"):
        assert cancel.headers.get(name) == invite.headers.get(name)
    assert cancel.headers.get("CSeq") == "314159 CANCEL"
    assert cancel.max_forwards == 70
    assert invite_key_of_cancel(cancel) == server_key(invite)  # the far end finds the INVITE by it
    assert client_key(cancel) != client_key(invite)  # and it runs on a client transaction of its own
    with pytest.raises(ValueError, match="only an INVITE"):
        cancel_request(request("BYE"))


def test_new_branch_carries_the_cookie_and_only_the_bytes_it_is_given() -> None:
    rng = random.Random(7)
    branch = new_branch(rng.randbytes(12))
    assert branch.startswith("z9hG4bK") and branch == new_branch(random.Random(7).randbytes(12))
    assert new_branch(b"\x00" * 8) == "z9hG4bK" + "00" * 8
    for size in (0, 7, 33):
        with pytest.raises(ValueError, match="random bytes"):
            new_branch(b"x" * size)


# --- keys (§17.2.3, §17.1.3) ------------------------------------------------------------------------------


def test_server_keys_match_retransmissions_acks_and_keep_cancel_apart() -> None:
    invite = request()
    key = server_key(invite)
    assert key is not None and key.branch == "z9hG4bK776asdhds" and key.sent_by == "pc33.atlanta.example.com:5060"
    assert server_key(request()) == key
    assert server_key(request("ACK", cseq="314159 ACK")) == key  # the ACK of a non-2xx: the INVITE's
    assert server_key(request("CANCEL", cseq="314159 CANCEL")) != key
    other_host = request(via="SIP/2.0/UDP evil.example.com:5060;branch=z9hG4bK776asdhds")
    assert server_key(other_host) != key  # same branch from another sent-by: another transaction
    bye = request("BYE", cseq="314160 BYE")
    assert server_key(bye) != key


@pytest.mark.parametrize(
    "via",
    [
        None,  # no Via at all
        "garbage",
        "SIP/2.0/UDP ;branch=z9hG4bKx",  # no host
        "SIP/2.0/UDP host:99999;branch=z9hG4bKx",  # port out of range
    ],
)
def test_hostile_vias_give_no_key_and_no_exception(via: str | None) -> None:
    req = request(via=via) if via is None else _unchecked(f"Via: {via}")
    assert server_key(req) is None
    assert client_key(req) is None
    assert invite_key_of_cancel(req) is None


def test_mangled_requests_never_raise_while_being_keyed() -> None:
    # Seeded byte mutations of a valid INVITE: every one that parses is keyed (or refused with None),
    # and every keyed one makes a transaction, without an exception.
    rng = random.Random(12)
    original = bytearray(request(extra="Route: <sip:p1.example.com;lr>").encode())
    for _ in range(1500):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.choice(b';:<>@= ,"\r\nz9xX\x00\xff')
        try:
            message = parse_message(bytes(data))
        except ValueError:
            continue  # unreadable: dropped before any key is made
        if isinstance(message, Request):
            invite_key_of_cancel(message)
            client_key(message)
            if server_key(message) is not None and message.method != "ACK":
                ServerTransaction(message, reliable=False, now=0.0).handle_timer(1.0)
        else:
            client_key(message)


def _unchecked(via_line: str, *, more: str = "") -> Request:
    """A request as a hostile peer might send it (parse problems allowed)."""
    text = f"INVITE sip:bob@b.example SIP/2.0\r\n{via_line}\r\n{more}CSeq: 1 INVITE\r\n\r\n"
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def test_rfc_2543_requests_without_the_cookie_match_by_their_headers() -> None:
    old_via = "SIP/2.0/UDP old.example.com:5060"
    invite = request(via=old_via)
    key = server_key(invite)
    assert key is not None and key.legacy is not None and key.branch == ""
    assert server_key(request(via=old_via)) == key  # a retransmission
    assert server_key(request(via=old_via, cseq="314160 INVITE")) != key  # a new request
    assert server_key(request(via=old_via, uri="sip:carol@biloxi.example.com")) != key
    assert server_key(request(via="SIP/2.0/UDP old.example.com:5060;branch=1")) != key  # a branch, no cookie
    # Without the cookie a missing Call-ID, From or CSeq leaves nothing to match on.
    assert server_key(_unchecked(f"Via: {old_via}", more="From: <sip:a@a.example>;tag=1\r\n")) is None


def test_rfc_2543_ack_matches_only_with_the_to_tag_of_our_final_response() -> None:
    old_via = "SIP/2.0/UDP old.example.com:5060"
    table = TransactionTable()
    invite = request(via=old_via)
    tx = ServerTransaction(invite, reliable=False, now=0.0, auto_trying=False)
    table.add_server(tx)
    tx.respond(answer(invite, 486, tag="ours"), now=0.0)
    base = "Bob <sip:bob@biloxi.example.com>"
    assert table.server_for(request("ACK", via=old_via, cseq="314159 ACK", to=f"{base};tag=ours")) is tx
    assert table.server_for(request("ACK", via=old_via, cseq="314159 ACK", to=f"{base};tag=theirs")) is None
    assert table.server_for(request(via=old_via)) is tx  # and the INVITE's retransmission
    cancel = request("CANCEL", via=old_via, cseq="314159 CANCEL")
    assert table.invite_for(cancel) is tx


def test_client_keys_are_branch_and_cseq_method() -> None:
    invite = our_invite()
    key = client_key(invite)
    assert key is not None and key.sent_by == "" and key.method == "INVITE"
    assert client_key(answer(invite, 180)) == key
    assert client_key(answer(invite, 200, method="CANCEL")) != key
    no_branch = answer(request(via="SIP/2.0/UDP a.example.com"), 200)
    assert client_key(no_branch) is None


def test_keys_stay_small_for_hostile_long_values() -> None:
    long_branch = "z9hG4bK" + "x" * 40_000
    key = server_key(request(via=f"SIP/2.0/UDP a.example.com;branch={long_branch}"))
    assert key is not None and len(key.branch) <= MAX_KEY_TEXT
    assert key == server_key(request(via=f"SIP/2.0/UDP a.example.com;branch={long_branch}"))
    assert key != server_key(request(via=f"SIP/2.0/UDP a.example.com;branch={long_branch}y"))
    legacy = server_key(request(via="SIP/2.0/UDP a.example.com", uri="sip:" + "b" * 30_000 + "@x.example"))
    assert legacy is not None and legacy.legacy is not None and len(legacy.legacy.request_uri) <= MAX_KEY_TEXT


# --- the UAS core's 2xx retransmission (§13.3.1.4) --------------------------------------------------------


def test_2xx_retransmitter_doubles_to_t2_until_the_ack() -> None:
    ok = answer(request(), 200)
    r = TwoXxRetransmitter(ok, now=0.0)
    assert drive(r, until=8.0) == [0.5, 1.5, 3.5, 7.5]
    r.ack_received(now=8.0)
    assert r.state is AckWait.ACKED and r.next_timer() is None
    assert drive(r, until=100.0) == [] and r.take_events() == []


def test_2xx_retransmitter_gives_up_at_64_t1_with_an_event() -> None:
    r = TwoXxRetransmitter(answer(request(), 200), now=0.0, timing=Timing(T1=0.1, T2=1.0))
    sent = drive(r, until=100.0)
    assert sent[:4] == pytest.approx([0.1, 0.3, 0.7, 1.5])
    assert max(sent) < 6.4
    assert r.state is AckWait.GAVE_UP
    assert r.take_events() == [TimedOut(TimerName.NO_ACK)]
    r.ack_received(now=7.0)  # too late: stays given up
    assert r.state is AckWait.GAVE_UP


# --- the table ----------------------------------------------------------------------------------------------


def branch_invite(n: int) -> Request:
    return request(via=f"SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKcall{n}")


def test_table_is_bounded_and_frees_room_as_transactions_end() -> None:
    table = TransactionTable(max_server=3)
    txs = [ServerTransaction(branch_invite(n), reliable=True, now=0.0) for n in range(3)]
    for tx in txs:
        table.add_server(tx)
    assert table.full and table.server_count == 3
    with pytest.raises(TableFull, match=r"check \.full"):
        table.add_server(ServerTransaction(branch_invite(9), reliable=True, now=0.0))
    assert table.server_for(branch_invite(1)) is txs[1]  # retransmissions still match when full
    txs[1].respond(answer(txs[1].request, 486), now=0.1)
    txs[1].receive(request("ACK", via=txs[1].request.headers.get("Via"), cseq="314159 ACK"), now=0.2)
    assert txs[1].state is TxState.TERMINATED  # TCP: Timer I is 0
    assert not table.full and table.server_for(branch_invite(1)) is None
    with pytest.raises(ValueError, match="is live"):
        table.add_server(ServerTransaction(branch_invite(0), reliable=True, now=0.0))


def test_table_bounds_client_transactions_and_refuses_a_reused_branch() -> None:
    table = TransactionTable(max_client=2)
    first = ClientTransaction(our_invite(), reliable=True, now=0.0)
    table.add_client(first)
    with pytest.raises(ValueError, match="draw a new branch"):
        table.add_client(ClientTransaction(our_invite(), reliable=True, now=0.0))
    table.add_client(ClientTransaction(request("OPTIONS"), reliable=True, now=0.0))
    assert table.client_full
    with pytest.raises(TableFull, match="client transactions"):
        table.add_client(ClientTransaction(request("BYE"), reliable=True, now=0.0))
    first.transport_error(now=0.1)
    assert not table.client_full  # room again: the first ended


def test_table_runs_the_earliest_timers_and_drops_what_terminates() -> None:
    table = TransactionTable()
    server = ServerTransaction(branch_invite(1), reliable=False, now=0.0)
    client = ClientTransaction(
        request("OPTIONS", via=f"SIP/2.0/UDP us.example;branch={new_branch(b'1' * 8)}"), reliable=False, now=0.0
    )
    table.add_server(server)
    table.add_client(client)
    client.take_messages()
    assert table.next_timer() == pytest.approx(0.2)  # the server's 100 Trying comes first
    assert table.handle_timer(0.2) == [server]
    assert statuses(server.take_messages()) == [100]
    assert table.next_timer() == pytest.approx(0.5)  # client's Timer E
    assert table.handle_timer(0.5) == [client]
    assert len(client.take_messages()) == 1
    response = answer(client.request, 200)
    assert table.client_for(response) is client
    client.receive(response, now=0.6)
    assert table.next_timer() == pytest.approx(5.6)  # Timer K moved the client's timer
    assert table.handle_timer(5.6) == [client]
    assert table.client_count == 0 and table.client_for(response) is None
    server.transport_error(now=6.0)
    assert len(table) == 0 and table.next_timer() is None


def test_table_holds_2xx_retransmitters_until_acked() -> None:
    table = TransactionTable()
    r = TwoXxRetransmitter(answer(request(), 200), now=0.0)
    table.add_retransmitter(r)
    assert table.next_timer() == 0.5
    assert table.handle_timer(0.5) == [r] and len(r.take_messages()) == 1
    r.ack_received(now=0.7)
    assert len(table) == 0 and table.next_timer() is None


def test_table_timer_queue_stays_bounded_under_a_retransmission_flood() -> None:
    table = TransactionTable()
    tx = ServerTransaction(branch_invite(1), reliable=False, now=0.0)
    table.add_server(tx)
    tx.respond(answer(tx.request, 180), now=0.0)
    for i in range(10_000):  # every retransmission is a change the table hears of
        tx.receive(tx.request, now=i * 0.001)
    assert len(table._heap) <= 2 * len(table) + 65  # stale entries are compacted away
    assert len(tx.take_messages()) == MAX_PENDING  # an owner that never drains holds a bounded outbox
    accepted = ServerTransaction(branch_invite(2), reliable=False, now=0.0)
    accepted.respond(answer(accepted.request, 200), now=0.0)
    for i in range(1000):
        accepted.receive(request("ACK", via=accepted.request.headers.get("Via")), now=i * 0.001)
    assert len(accepted.take_events()) == MAX_PENDING  # and bounded events


def test_table_drains_a_full_table_by_timers_alone() -> None:
    # A full table of refused calls whose ACKs never come: Timer G resends, Timer H ends every one.
    table = TransactionTable(max_server=500)
    txs = [ServerTransaction(branch_invite(n), reliable=False, now=0.0, auto_trying=False) for n in range(500)]
    for tx in txs:
        table.add_server(tx)
    assert table.full
    for tx in txs:
        tx.respond(answer(tx.request, 486), now=0.0)
        tx.take_messages()
    now = 0.0
    while (when := table.next_timer()) is not None:
        now = when
        for fired in table.handle_timer(now):
            fired.take_messages()
    assert now == pytest.approx(32.0) and len(table) == 0
    assert {type(e) for tx in txs for e in tx.take_events()} == {TimedOut}
