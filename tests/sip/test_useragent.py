"""The user agent core, without sockets: bytes in with a peer and a time, datagrams and events out.

Each test plays a caller by hand (:class:`Caller` builds its requests) against a :class:`UserAgent` and
moves time itself, so every RFC timer is checked exactly and nothing depends on the machine's speed.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field

import pytest

from swml_engine.transports.sip.message import Request, Response
from swml_engine.transports.sip.transaction import TransactionTable
from swml_engine.transports.sip.useragent import (
    AckReceived,
    ByeReceived,
    CallGone,
    CancelReceived,
    Datagram,
    InviteReceived,
    Peer,
    ReInvite,
    RequestFailed,
    ServerCall,
    Target,
    Transport,
    UasState,
)

from .fake_clock import Driver

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
US = ("192.0.2.1", 5060)


@dataclass
class Caller:
    """A SIP phone at 192.0.2.10:5070 (UDP unless told), building its side of one call."""

    host: str = "192.0.2.10"
    port: int = 5070
    transport: Transport = Transport.UDP
    call_id: str = "call-1@192.0.2.10"
    from_tag: str = "caller-tag"
    cseq: int = 1
    branches: int = 0
    to_tag: str | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def peer(self) -> Peer:
        return Peer(self.transport, self.host, self.port, flow=7 if self.transport is Transport.TCP else 0, local=US)

    def branch(self) -> str:
        self.branches += 1
        return f"z9hG4bK-{self.call_id}-{self.branches}"

    def request(
        self,
        method: str,
        *,
        branch: str | None = None,
        cseq: int | None = None,
        body: bytes = b"",
        to_tag: str | None = None,
        headers: list[str] | None = None,
        cseq_method: str | None = None,
    ) -> tuple[bytes, str]:
        branch = branch or self.branch()
        tag = to_tag if to_tag is not None else self.to_tag
        lines = [
            f"{method} sip:engine@{US[0]}:{US[1]} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.value.upper()} {self.host}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:alice@{self.host}>;tag={self.from_tag}",
            f"To: <sip:engine@{US[0]}>" + (f";tag={tag}" if tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq if cseq is not None else self.cseq} {cseq_method or method}",
            f"Contact: <sip:alice@{self.host}:{self.port}>",
            *self.extra,
            *(headers or []),
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        text = "\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n"
        return text.encode() + body, branch


class Run(Driver):
    """A user agent on a fake clock, and what it sent and told."""

    def feed(self, data: bytes, peer: Peer) -> None:
        self.receive(data, peer)

    def act(self) -> None:
        self.collect()

    def responses(self, method: str | None = None) -> list[Response]:
        return [m for m, _ in self.sent if isinstance(m, Response) and (method is None or m.cseq.method == method)]

    def statuses(self, method: str | None = None) -> list[int]:
        return [r.status for r in self.responses(method)]

    def requests(self, method: str) -> list[tuple[Request, Datagram]]:
        return [(m, d) for m, d in self.sent if isinstance(m, Request) and m.method == method]

    def call(self) -> ServerCall:
        [event] = [e for e in self.events if isinstance(e, InviteReceived)]
        return event.call

    def clear(self) -> None:
        self.sent.clear()


def invited(run: Run, caller: Caller, *, body: bytes = SDP) -> ServerCall:
    data, _ = caller.request("INVITE", body=body)
    run.feed(data, caller.peer)
    return run.call()


def answered(run: Run, caller: Caller) -> ServerCall:
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    [ok] = [r for r in run.responses("INVITE") if r.status == 200]
    caller.to_tag = ok.to.tag
    data, _ = caller.request("ACK", cseq=caller.cseq)
    run.feed(data, caller.peer)
    return call


def test_an_invite_gets_100_at_once_and_becomes_a_call() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    assert run.statuses() == [100]
    assert call.state is UasState.PROCEEDING and call.call_id == caller.call_id
    [trying] = run.responses()
    assert trying.to.tag is None or trying.to.tag == call.local_tag
    # responses go where the Via's rport says: the request's source
    [(_, datagram)] = run.sent
    assert datagram.to == caller.peer


def test_ringing_answer_and_ack_carry_one_to_tag_contact_and_the_sdp() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.provisional(call, 180, run.now)
    run.ua.answer(call, SDP, run.now)
    run.act()
    ringing, ok = run.responses()[1:]
    assert (ringing.status, ok.status) == (180, 200)
    assert ringing.to.tag == ok.to.tag == call.local_tag
    assert [str(c.uri) for c in ok.contacts()] == ["sip:192.0.2.1:5060"]
    assert ok.body == SDP and ok.content_type == "application/sdp"
    assert "INVITE" in (ok.headers.get("allow") or "")
    caller.to_tag = ok.to.tag
    run.feed(caller.request("ACK", cseq=1)[0], caller.peer)
    assert isinstance(run.events[-1], AckReceived) and call.state is UasState.CONFIRMED


def test_our_2xx_is_retransmitted_until_the_ack_then_never_again() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    run.clear()
    run.advance(0.5 + 1.0 + 0.01)  # T1, then 2*T1
    assert run.statuses() == [200, 200]
    caller.to_tag = call.local_tag
    run.feed(caller.request("ACK", cseq=1)[0], caller.peer)
    run.clear()
    run.advance(40)
    assert run.sent == []
    assert [type(e) for e in run.events] == [InviteReceived, AckReceived]


def test_a_2xx_never_acked_ends_the_call_after_64_t1_with_a_bye() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    run.advance(31.9)
    assert not any(isinstance(e, CallGone) for e in run.events)
    assert run.requests("BYE") == []
    run.advance(0.2)
    [gone] = [e for e in run.events if isinstance(e, CallGone)]
    assert gone.call is call and gone.why == "no_ack" and call.ended
    # RFC 3261 §13.3.1.4: the session is ended with a BYE — the caller's ACK may be what got lost (a proxy
    # or NAT that drops it), and its phone would otherwise stay in a call nobody is on
    [(bye, datagram)] = run.requests("BYE")
    assert bye.from_.tag == call.local_tag and bye.to.tag == caller.from_tag and bye.call_id == caller.call_id
    assert "no ACK" in (bye.headers.get("reason") or "")
    assert (datagram.to.host, datagram.to.port) == (caller.host, caller.port)


@pytest.mark.parametrize("contact", ["<tel:+15551234567>", "<mailto:alice@example.com>"])
def test_an_invite_whose_contact_is_not_a_sip_uri_gets_400_not_a_call(contact: str) -> None:
    # RFC 3261 §8.1.1.8: the Contact of an INVITE is a SIP URI — the one our BYE and re-INVITEs go to.
    # Answered, such a call could never be hung up from our side.
    run, caller = Run(), Caller(extra=[])
    data, _ = caller.request("INVITE", body=SDP)
    data = data.replace(f"Contact: <sip:alice@{caller.host}:{caller.port}>".encode(), f"Contact: {contact}".encode())
    run.feed(data, caller.peer)
    [refusal] = run.responses()
    assert refusal.status == 400
    assert "Contact" in (refusal.headers.get("warning") or "")
    assert not any(isinstance(e, InviteReceived) for e in run.events)


def test_a_retransmitted_invite_gets_the_same_answer_and_no_second_call() -> None:
    run, caller = Run(), Caller()
    data, _ = caller.request("INVITE", body=SDP)
    run.feed(data, caller.peer)
    run.ua.provisional(run.call(), 180, run.now)
    run.act()
    run.feed(data, caller.peer)
    assert run.statuses() == [100, 180, 180]
    assert len([e for e in run.events if isinstance(e, InviteReceived)]) == 1


def test_a_merged_invite_by_another_path_gets_482() -> None:
    run, caller = Run(), Caller()
    invited(run, caller)
    run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)  # same Call-ID, From tag, CSeq; new branch
    assert run.statuses() == [100, 482]
    assert len([e for e in run.events if isinstance(e, InviteReceived)]) == 1


def test_cancel_gets_200_and_the_invite_487_until_its_ack() -> None:
    run, caller = Run(), Caller()
    data, branch = caller.request("INVITE", body=SDP)
    run.feed(data, caller.peer)
    call = run.call()
    run.feed(caller.request("CANCEL", branch=branch)[0], caller.peer)
    assert run.statuses("CANCEL") == [200]
    assert run.statuses("INVITE") == [100, 487]
    # RFC 3261 §9.2: the CANCEL's 200 carries the To tag of the INVITE's answers
    assert [r.to.tag for r in run.responses() if r.status > 100] == [call.local_tag, call.local_tag]
    assert isinstance(run.events[-1], CancelReceived) and call.ended
    run.ua.reject(call, 486, run.now)  # the application's late answer goes nowhere: one final answer
    run.act()
    run.advance(0.6)  # Timer G: the 487 again, until the ACK
    assert run.statuses("INVITE") == [100, 487, 487]
    caller.to_tag = call.local_tag
    run.feed(caller.request("ACK", branch=branch, cseq=1)[0], caller.peer)
    run.clear()
    run.advance(40)
    assert run.sent == []


def test_cancel_for_nothing_gets_481() -> None:
    run, caller = Run(), Caller()
    run.feed(caller.request("CANCEL")[0], caller.peer)
    assert run.statuses() == [481]


def test_a_final_error_is_repeated_by_timer_g_until_timer_h_then_forgotten() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.reject(call, 486, run.now)
    run.act()
    run.advance(32.1)
    assert run.statuses() == [100, 486, 486, 486, 486, 486, 486, 486, 486, 486, 486, 486]
    assert run.ua.calls == 0 and run.ua.get_timer() is None and len(run.ua.table) == 0


def test_over_tcp_errors_go_once_back_on_the_connection() -> None:
    run, caller = Run(), Caller(transport=Transport.TCP)
    call = invited(run, caller)
    run.ua.reject(call, 603, run.now)
    run.act()
    run.advance(40)
    assert run.statuses() == [100, 603]
    assert all(d.to == caller.peer and d.to.flow == 7 for _, d in run.sent)


def test_bye_ends_the_call_and_is_answered_200() -> None:
    run, caller = Run(), Caller()
    call = answered(run, caller)
    caller.cseq = 2
    run.feed(caller.request("BYE")[0], caller.peer)
    assert run.statuses("BYE") == [200]
    assert isinstance(run.events[-1], ByeReceived) and call.ended
    # the BYE's answer keeps the dialog's one To tag
    [ok] = run.responses("BYE")
    assert (ok.headers.get("to") or "").count("tag=") == 1


def test_requests_for_an_unknown_dialog_get_481() -> None:
    run, caller = Run(), Caller()
    for method in ("BYE", "INVITE", "OPTIONS"):
        run.feed(
            caller.request(method, to_tag="no-such-dialog", body=SDP if method == "INVITE" else b"")[0], caller.peer
        )
    assert run.statuses() == [481, 481, 481]
    run.clear()
    run.feed(caller.request("INFO", to_tag="no-such-dialog")[0], caller.peer)  # a method we do not serve: first
    assert run.statuses() == [405]
    run.clear()
    run.feed(caller.request("BYE")[0], caller.peer)  # a BYE without a To tag: no dialog either
    assert run.statuses() == [481]


def test_our_bye_follows_the_route_set_and_is_retransmitted_until_answered() -> None:
    run = Run()
    caller = Caller(extra=["Record-Route: <sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>"])
    call = answered(run, caller)
    run.clear()
    run.ua.bye(call, run.now, reason="hangup")
    run.act()
    [(bye, datagram)] = run.requests("BYE")
    assert datagram.to == Target(Transport.UDP, "proxy1.example.com", 5060)
    assert [str(r.uri) for r in bye.routes()] == ["sip:proxy1.example.com;lr", "sip:proxy2.example.com;lr"]
    assert bye.uri == f"sip:alice@{caller.host}:{caller.port}"
    assert 'text="hangup"' in (bye.headers.get("reason") or "")
    assert bye.from_.tag == call.local_tag and bye.to.tag == caller.from_tag
    run.advance(0.5 + 1 + 0.01)
    assert len(run.requests("BYE")) == 3
    answer = Response(status=200, headers=bye.headers.copy())
    run.feed(answer.encode(), caller.peer)
    run.clear()
    run.advance(40)
    assert run.requests("BYE") == []
    assert not any(isinstance(e, RequestFailed) for e in run.events)


@pytest.mark.parametrize(
    ("source", "contact", "sent_to"),
    [
        # a softphone at home calling us directly: its Contact names its private address, which the NAT in
        # front of it keeps us from reaching; its INVITE came from the NAT's public address and port
        ("203.0.114.7", "192.168.1.10:5060", ("203.0.114.7", 5070)),
        # on a private network the Contact is reached as it is (a public source with a public Contact too)
        ("192.0.2.10", "192.168.1.10:5060", ("192.168.1.10", 5060)),
        ("203.0.114.7", "203.0.114.9:5060", ("203.0.114.9", 5060)),
    ],
)
def test_our_bye_to_a_caller_behind_nat_goes_where_its_requests_came_from(
    source: str, contact: str, sent_to: tuple[str, int]
) -> None:
    run, caller = Run(), Caller(host=source)
    data, _ = caller.request("INVITE", body=SDP)
    run.feed(data.replace(f"<sip:alice@{source}:5070>".encode(), f"<sip:alice@{contact}>".encode()), caller.peer)
    call = run.call()
    run.ua.answer(call, SDP, run.now)
    run.act()
    caller.to_tag = call.local_tag
    run.feed(caller.request("ACK", cseq=1)[0], caller.peer)
    run.ua.bye(call, run.now)
    run.act()
    [(bye, datagram)] = run.requests("BYE")
    assert bye.uri == f"sip:alice@{contact}"  # the Request-URI stays the Contact (RFC 3261 §12.2.1.1)
    assert (datagram.to.host, datagram.to.port) == sent_to


def test_an_unanswered_bye_is_reported_once_after_timer_f() -> None:
    run, caller = Run(), Caller()
    call = answered(run, caller)
    run.ua.bye(call, run.now)
    run.act()
    run.advance(40)
    [failed] = [e for e in run.events if isinstance(e, RequestFailed)]
    assert failed.method == "BYE" and failed.why == "no answer"


def _ended_before_its_ack(run: Run, caller: Caller, how: str) -> ServerCall:
    """A call whose 2xx still waits for its ACK when it ends: ``how`` it ends."""
    run.events.clear()  # (the events name the calls: the application lets them go once handled)
    run.clear()
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    caller.to_tag = call.local_tag
    if how == "we hang up":  # a script that answers and hangs up at once: the ACK is still on its way
        run.ua.bye(call, run.now)
        run.act()
        assert run.requests("BYE") == []  # (held until the ACK: RFC 3261 §15)
        run.feed(caller.request("ACK", cseq=1)[0], caller.peer)
        [(bye, _)] = run.requests("BYE")
        run.feed(Response(status=200, headers=bye.headers.copy()).encode(), caller.peer)
    elif how == "the caller hangs up":  # its ACK lost, its BYE comes
        caller.cseq = 2
        run.feed(caller.request("BYE")[0], caller.peer)
    else:  # a re-INVITE answered while the first 2xx waits for its ACK, then the caller's BYE
        caller.cseq = 2
        run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)
        run.ua.answer_reinvite(call, 200, run.now, SDP)
        run.act()
        run.feed(caller.request("ACK", cseq=2)[0], caller.peer)
        caller.cseq = 3
        run.feed(caller.request("BYE")[0], caller.peer)
    run.feed(caller.request("ACK", cseq=1)[0], caller.peer)  # late, or never: either way the call is over
    assert call.ended
    return call


def test_our_bye_waits_for_the_ack_of_our_2xx_which_goes_on_meanwhile() -> None:
    """RFC 3261 §15: no BYE before the ACK of our 2xx — a script that answers and hangs up at once sent
    its BYE 0.2 s after its 200, and if that 200 was lost the caller got a BYE while still ringing."""
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    run.ua.bye(call, run.now, "script ended")
    run.act()
    assert run.requests("BYE") == [] and run.ua.pending("BYE") == 1 and not call.ended
    run.clear()
    run.advance(0.51)  # our 200 is still sent again (T1): the caller may not have it yet
    assert run.statuses("INVITE") == [200]
    caller.to_tag = call.local_tag
    run.feed(caller.request("ACK", cseq=1)[0], caller.peer)
    [(bye, _)] = run.requests("BYE")
    assert "script ended" in (bye.headers.get("reason") or "")
    assert not any(isinstance(e, AckReceived) for e in run.events)  # (the application ended the call)
    run.clear()
    run.advance(10)
    assert run.statuses("INVITE") == []  # no 200 after the ACK


def test_a_bye_held_for_an_ack_that_never_comes_goes_when_our_2xx_gives_up() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    run.ua.bye(call, run.now, "script ended")
    run.advance(31.9)
    assert run.requests("BYE") == []
    run.advance(0.2)  # 64*T1
    [(bye, _)] = run.requests("BYE")
    assert "script ended" in (bye.headers.get("reason") or "")
    assert not any(isinstance(e, CallGone) for e in run.events) and call.ended


def test_a_callers_bye_crossing_our_held_one_ends_the_call_without_ours() -> None:
    run, caller = Run(), Caller()
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    run.ua.bye(call, run.now)
    caller.to_tag, caller.cseq = call.local_tag, 2
    run.feed(caller.request("BYE")[0], caller.peer)
    assert run.statuses("BYE") == [200] and call.ended and run.ua.pending("BYE") == 0
    run.advance(40)
    assert run.requests("BYE") == [] and not any(isinstance(e, ByeReceived) for e in run.events)


@pytest.mark.parametrize("how", ["we hang up", "the caller hangs up", "a re-INVITE before the ACK"])
def test_a_call_ended_before_its_ack_leaves_nothing_behind(how: str) -> None:
    """Each call ended while our 2xx waited for its ACK — a script that hangs up at once, a connect
    that fails at once, a caller whose ACK was lost — once kept its call (the INVITE, the dialog, the
    2xx) in the core for the life of the process: a service up for days grew with every such call."""
    run = Run()
    calls = [
        weakref.ref(_ended_before_its_ack(run, Caller(call_id=f"early-{n}", port=6000 + n), how)) for n in range(3)
    ]
    run.events.clear()
    run.advance(64)  # every transaction over: the BYEs' and the INVITEs'
    gc.collect()
    assert [call() for call in calls] == [None, None, None]
    assert run.ua.calls == 0 and len(run.ua.table) == 0 and run.ua.get_timer() is None


def test_reinvite_waits_for_the_application_and_its_2xx_waits_for_the_ack() -> None:
    run, caller = Run(), Caller()
    call = answered(run, caller)
    caller.cseq = 2
    run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)
    [reinvite] = [e for e in run.events if isinstance(e, ReInvite)]
    assert reinvite.call is call
    run.clear()
    run.ua.answer_reinvite(call, 200, run.now, SDP)
    run.act()
    [ok] = run.responses("INVITE")
    assert ok.status == 200 and ok.to.tag == call.local_tag
    run.feed(caller.request("ACK", cseq=2)[0], caller.peer)
    assert isinstance(run.events[-1], AckReceived) and call.state is UasState.CONFIRMED


def test_options_names_what_we_take_and_503_while_refusing_calls() -> None:
    run, caller = Run(), Caller()
    run.feed(caller.request("OPTIONS")[0], caller.peer)
    [ok] = run.responses()
    assert ok.status == 200 and ok.headers.get("allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS"
    run.ua.policy.accepting = False
    run.feed(caller.request("OPTIONS", cseq=2)[0], caller.peer)
    caller.call_id = "call-2"
    run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)
    assert run.statuses() == [200, 503, 503]
    assert run.responses()[-1].headers.get("retry-after") == "5"


def test_options_gets_503_while_the_application_is_busy_and_200_again_after() -> None:
    run, caller = Run(), Caller()
    busy: list[str] = []
    run.ua.policy.busy = lambda: busy[0] if busy else None
    run.feed(caller.request("OPTIONS")[0], caller.peer)
    busy.append("1 calls, the --max-calls limit")
    run.feed(caller.request("OPTIONS", cseq=2)[0], caller.peer)
    caller.call_id = "call-2"
    run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)  # the application's to refuse
    assert isinstance(run.events[-1], InviteReceived)
    busy.clear()
    caller.call_id = "call-3"
    run.feed(caller.request("OPTIONS")[0], caller.peer)
    assert [s for s in run.statuses() if s != 100] == [200, 503, 200]


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda t: t.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (lambda t: t.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), 400),
        (lambda t: t.replace(b"INVITE sip:", b"FOOBAR sip:", 1).replace(b"1 INVITE", b"1 FOOBAR"), 501),
        (lambda t: t.replace(b"INVITE sip:", b"REGISTER sip:", 1).replace(b"1 INVITE", b"1 REGISTER"), 405),
        (lambda t: t.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nRequire: 100rel\r\n"), 420),
    ],
)
def test_invalid_requests_are_refused_before_anything_else(
    mutate: object, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    run, caller = Run(), Caller()
    with caplog.at_level("INFO", logger="swml_engine.transports.sip.useragent"):
        for n in range(3):  # three requests (each a transaction of its own) from one source
            caller.call_id = f"bad-{n}"
            data, _ = caller.request("INVITE", body=SDP)
            run.feed(mutate(data), caller.peer)  # type: ignore[operator]
    assert run.statuses() == [status] * 3
    assert not run.events and run.ua.invalid == 3
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]  # once per source
    assert f"refused {status}" in line and caller.host in line
    [answer] = run.responses()[:1]
    assert (answer.headers.get("warning") or "").startswith("399 ")  # a reason a person can read


def test_junk_is_counted_and_dropped_and_a_request_with_no_via_is_not_answered() -> None:
    run, caller = Run(), Caller()
    run.feed(b"\x00\xffnot sip at all", caller.peer)
    data, _ = caller.request("INVITE", body=SDP)
    run.feed(b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Via")), caller.peer)
    assert run.sent == [] and run.events == [] and run.ua.malformed == 2


def test_the_top_via_learns_received_and_rport() -> None:
    run, caller = Run(), Caller()
    data, _ = caller.request("INVITE", body=SDP)
    nat = Peer(Transport.UDP, "203.0.113.9", 40000, local=US)
    run.feed(data, nat)
    [(trying, datagram)] = run.sent
    assert isinstance(trying, Response)
    assert trying.top_via.param("received") == "203.0.113.9" and trying.top_via.param("rport") == "40000"
    assert datagram.to == nat


#: A transaction table small enough for a flood to fill it quickly.
SMALL_TABLE = 200


@pytest.mark.parametrize("method", ["OPTIONS", "INFO", "BYE"])
def test_a_flood_of_requests_refused_outside_any_call_leaves_room_for_calls(method: str) -> None:
    """Requests answered at once outside any call — OPTIONS probes, methods we do not serve, BYEs for no
    dialog — from anyone, with forged sources if they like: each answer once held a server transaction
    for Timer J (32 s, to absorb retransmissions), so 320 datagrams a second filled the table (MAX_SERVER_TRANSACTIONS) and every
    new call got 503 for as long as the flood went on. Past half the table they are answered statelessly
    (each still answered, retransmissions too); calls keep the other half."""
    run = Run()
    run.ua.table = TransactionTable(max_server=SMALL_TABLE)  # (a service's holds MAX_SERVER_TRANSACTIONS)
    for n in range(SMALL_TABLE):
        flooder = Caller(call_id=f"flood-{n}", host=f"198.51.100.{n % 250}", port=1024 + n)
        run.feed(flooder.request(method)[0], flooder.peer)
        run.clear()
    flooder = Caller(call_id="flood-again", host="198.51.100.1", port=1024)
    run.feed(flooder.request(method)[0], flooder.peer)
    assert len(run.statuses(method)) == 1  # answered still, past the half
    run.clear()
    call = invited(run, Caller())
    assert run.statuses("INVITE") == [100] and call.state is UasState.PROCEEDING
    run.ua.reject(call, 486, run.now)
    run.advance(64)  # and every transaction ends in its time
    assert len(run.ua.table) == 0


def test_calls_refused_for_want_of_room_are_said_in_the_log_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Over max_calls, new calls get 503 — they did without a word in the log, so an operator saw only
    callers failing. One warning says what ran out, then none for a minute, whatever the rate."""
    run = Run()
    run.ua.max_calls = 2
    for n in range(2):
        up = Caller(call_id=f"up-{n}", port=6000 + n)
        run.feed(up.request("INVITE", body=SDP)[0], up.peer)
    assert len([e for e in run.events if isinstance(e, InviteReceived)]) == 2
    with caplog.at_level("WARNING", logger="swml_engine.transports.sip.useragent"):
        for n in range(5):
            run.feed(
                Caller(call_id=f"more-{n}", port=7000 + n).request("INVITE", body=SDP)[0], Caller(port=7000 + n).peer
            )
        run.advance(60)
        run.feed(Caller(call_id="later", port=7100).request("INVITE", body=SDP)[0], Caller(port=7100).peer)
    finals = {r.call_id: r.status for r in run.responses("INVITE") if r.status >= 200}  # (503s resent: no ACK)
    assert len(finals) == 6 and set(finals.values()) == {503}
    said = [r.getMessage() for r in caplog.records if "new calls refused 503" in r.getMessage()]
    assert len(said) == 2 and "2 calls" in said[0], said


def test_a_callers_flood_of_requests_in_its_own_call_leaves_room_for_other_calls() -> None:
    """A caller may send requests in its call (OPTIONS, INFO, re-INVITEs), each held 32 s by its
    transaction: 500 a second filled the table, and every other caller got 503. Past
    MAX_CALL_TRANSACTIONS live in one call, its requests get 503 statelessly — its BYE still ends it."""
    run = Run()
    run.ua.table = TransactionTable(max_server=SMALL_TABLE)
    flooder = Caller(call_id="flooder")
    call = answered(run, flooder)
    for cseq in range(2, SMALL_TABLE + 2):
        flooder.cseq = cseq
        run.feed(flooder.request("OPTIONS")[0], flooder.peer)
    statuses = run.statuses("OPTIONS")
    assert len(statuses) == SMALL_TABLE and set(statuses) == {200, 503}  # every one answered
    run.clear()
    run.events.clear()
    other = invited(run, Caller(call_id="another-caller", port=5080))
    assert run.statuses("INVITE") == [100] and other.state is UasState.PROCEEDING
    flooder.cseq = SMALL_TABLE + 2
    run.feed(flooder.request("BYE")[0], flooder.peer)
    assert run.statuses("BYE") == [200] and call.ended


def test_a_flood_of_invites_never_acked_and_stray_acks_leave_nothing_behind() -> None:
    """300 INVITEs refused 486 whose ACKs never come, each with a stray ACK for no transaction beside
    it: every 486 is repeated by Timer G, and after Timer H nothing of them is left (memory bounded
    under an INVITE flood). Was a socket test that counted answers against wall time."""
    run = Run()
    callers = [Caller(call_id=f"flood-{n}", port=6000 + n) for n in range(300)]
    for caller in callers:
        run.feed(caller.request("ACK", to_tag="stray", cseq=1)[0], caller.peer)
        run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)
    calls = [e.call for e in run.events if isinstance(e, InviteReceived)]
    assert len(calls) == 300 and run.ua.calls == 300  # the stray ACKs started nothing
    for call in calls:
        run.ua.reject(call, 486, run.now)
    run.act()
    assert run.statuses().count(486) == 300
    run.advance(0.51)  # Timer G: every 486 again, unasked
    assert run.statuses().count(486) == 600
    run.advance(32)  # Timer H
    assert run.ua.calls == 0 and len(run.ua.table) == 0 and run.ua.get_timer() is None
