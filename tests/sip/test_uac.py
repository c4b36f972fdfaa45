"""Calls we place (uac.py), without sockets: the far end's answers are built by hand from the requests
the core sent and fed back as bytes, and time moves only when a test moves it."""

from __future__ import annotations

import random
from typing import Any, TypeVar

import pytest

from swml_engine.transports.sip.auth import Credentials, DigestChallenge, Verdict
from swml_engine.transports.sip.message import Headers, Request, Response, response_to
from swml_engine.transports.sip.transaction import TransactionTable
from swml_engine.transports.sip.uac import (
    Answered,
    CallState,
    ChallengeReceived,
    Failed,
    Hangup,
    HangupCause,
    OutboundCall,
    Provisional,
    ReInviteAcked,
    ReInviteDone,
    ReInviteReceived,
    UacError,
)
from swml_engine.transports.sip.uri import parse_name_addr, parse_uri
from swml_engine.transports.sip.useragent import Datagram, Peer, SipEvent, Target, Transport

from .fake_clock import Driver

US = ("192.0.2.1", 5060)
FAR = Peer(Transport.UDP, "192.0.2.20", 5080, local=US)
TARGET = Target(Transport.UDP, "192.0.2.20", 5080)
FAR_CONTACT = "<sip:bob@192.0.2.20:5080>"
OFFER = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
HOLD = OFFER.replace(b"o=- 1 1", b"o=- 1 2") + b"a=sendonly\r\n"
ANSWER = b"v=0\r\no=- 9 9 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
RINGBACK = ANSWER.replace(b"6000", b"6002")

E = TypeVar("E", bound=SipEvent)


class Run(Driver):
    """A user agent on a fake clock placing calls, and what it sent and told."""

    def place(self, **given: Any) -> OutboundCall:
        args: dict[str, Any] = {
            "target": TARGET,
            "local": US,
            "request_uri": parse_uri("sip:bob@192.0.2.20:5080"),
            "from_": parse_name_addr('"Engine" <sip:engine@192.0.2.1>'),
            "to": parse_name_addr("<sip:bob@example.org>"),
            "sdp": OFFER,
        }
        now = given.pop("now", self.now)
        call = OutboundCall(self.ua, **(args | given))
        call.start(now)
        self.collect()
        return call

    def feed(self, message: Request | Response, peer: Peer = FAR) -> None:
        self.receive(message.encode(), peer)

    def requests(self, method: str) -> list[Request]:
        self.collect()  # (what the application's own actions sent or told too)
        return [m for m, _ in self.sent if isinstance(m, Request) and m.method == method]

    def sent_to(self, method: str) -> list[Datagram]:
        self.collect()
        return [d for m, d in self.sent if isinstance(m, Request) and m.method == method]

    def responses(self, method: str) -> list[Response]:
        self.collect()
        return [m for m, _ in self.sent if isinstance(m, Response) and m.cseq.method == method]

    def told(self, kind: type[E]) -> list[E]:
        self.collect()
        return [e for e in self.events if isinstance(e, kind)]


def reply(
    request: Request,
    status: int,
    *,
    tag: str | None = "far1",
    sdp: bytes = b"",
    contact: str | None = FAR_CONTACT,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """The far end's answer to ``request``: its To tag, its Contact in a 101-299, ``sdp`` as the body."""
    extra = list(headers)
    if contact and 100 < status < 300:
        extra.append(("Contact", contact))
    if sdp:
        extra.append(("Content-Type", "application/sdp"))
    return response_to(request, status, to_tag=tag, headers=extra, body=sdp)


def far_request(
    call: OutboundCall,
    method: str,
    cseq: int,
    *,
    tag: str = "far1",
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    """A request the far end sends in the call's dialog (to our Contact)."""
    lines = Headers(
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.20:5080;branch=z9hG4bK-far-{method}-{cseq};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:bob@example.org>;tag={tag}"),
            ("To", str(call.from_)),
            ("Call-ID", call.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", FAR_CONTACT),
            *headers,
        ]
    )
    if body:
        lines.add("Content-Type", "application/sdp")
    return Request(method=method, uri="sip:engine@192.0.2.1:5060", headers=lines, body=body)


def sent_invites(run: Run) -> list[int]:
    """The CSeq numbers of the INVITEs sent (retransmissions counted once)."""
    return sorted({r.cseq.number for r in run.requests("INVITE")})


def answered(run: Run, **given: Any) -> tuple[OutboundCall, Request]:
    """A call placed and answered by far1 (200 with ANSWER); returns it and its INVITE."""
    answer_headers = given.pop("answer_headers", ())
    call = run.place(**given)
    inv = run.requests("INVITE")[-1]
    run.feed(reply(inv, 200, sdp=ANSWER, headers=answer_headers))
    assert call.state is CallState.CONFIRMED
    return call, inv


# --- the INVITE ----------------------------------------------------------------------------------------


def test_the_invite_offers_our_sdp_from_a_fresh_call_id_and_tag_to_the_target() -> None:
    run = Run()
    first = run.place(headers=[("X-Account", "42")])
    second = run.place()
    inv, other = run.requests("INVITE")
    assert inv.uri == "sip:bob@192.0.2.20:5080" and inv.body == OFFER and inv.content_type == "application/sdp"
    assert inv.max_forwards == 70 and inv.cseq.number == 1 and inv.call_id == first.call_id
    assert inv.from_.tag == first.local_tag and inv.from_.display == "Engine" and inv.to.tag is None
    assert [str(c.uri) for c in inv.contacts()] == ["sip:engine@192.0.2.1:5060"]
    assert inv.top_via.branch.startswith("z9hG4bK") and inv.top_via.param("rport") is not None
    assert inv.headers.get("x-account") == "42" and "INVITE" in (inv.headers.get("allow") or "")
    assert "session-expires" not in inv.headers  # not asked for
    assert run.sent_to("INVITE")[0].to == TARGET
    # each call its own Call-ID, tag and branch, from the user agent's random source
    assert (other.call_id, other.from_.tag) == (second.call_id, second.local_tag)
    assert other.call_id != inv.call_id and other.from_.tag != inv.from_.tag and other.branch != inv.branch


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"headers": [("Call-ID", "mine")]}, "written by the SIP core"),
        ({"headers": [("i", "mine")]}, "written by the SIP core"),  # Call-ID's compact form
        ({"headers": [("X-Note", "a\r\nVia: SIP/2.0/UDP evil")]}, "printable, on one line"),
        ({"headers": [("X Note", "a")]}, "not a header name"),
        ({"to": parse_name_addr("<sip:bob@example.org>;tag=x")}, "has no tag"),
        ({"request_uri": parse_uri("tel:+15550100")}, "sip: or sips:"),
        ({"session_expires": 30}, "session_expires=30"),
        ({"sdp": b""}, "SDP offer"),
    ],
)
def test_an_invite_that_cannot_be_sent_as_asked_is_refused_by_name(given: dict[str, Any], says: str) -> None:
    run = Run()
    with pytest.raises(UacError, match=says):
        run.place(**given)
    assert run.sent == []


# --- 1xx -------------------------------------------------------------------------------------------------


def test_provisionals_are_told_with_sdp_and_tag_and_each_fork_keeps_an_early_dialog() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 100, tag=None))
    assert call.state is CallState.PROCEEDING and run.events == []  # 100 Trying is hop by hop: not told
    run.feed(reply(inv, 180, tag=None))
    run.feed(reply(inv, 180, tag="far1"))
    run.feed(reply(inv, 183, tag="far2", sdp=RINGBACK))
    run.feed(reply(inv, 183, tag="far1", sdp=ANSWER))
    told = [(p.status, p.tag, p.sdp, p.early_media) for p in run.told(Provisional)]
    assert told == [
        (180, None, b"", False),
        (180, "far1", b"", False),
        (183, "far2", RINGBACK, True),  # the first SDP: the caller hears this one
        (183, "far1", ANSWER, False),
    ]
    assert call.early_dialogs == ["far1", "far2"] and call.early_media_tag == "far2"
    assert run.requests("ACK") == [] and run.requests("CANCEL") == []


# --- 2xx -------------------------------------------------------------------------------------------------


def test_the_answer_is_acked_along_its_dialog_and_each_retransmission_gets_the_same_ack() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180))
    ok = reply(
        inv,
        200,
        sdp=ANSWER,
        contact="<sip:bob@192.0.2.30:5090>",
        headers=(("Record-Route", "<sip:edge.example.org;lr>"), ("Record-Route", "<sip:core.example.org;lr>")),
    )
    run.feed(ok)
    [answer] = run.told(Answered)
    assert (answer.sdp, answer.tag, call.state) == (ANSWER, "far1", CallState.CONFIRMED)
    [ack] = run.requests("ACK")
    assert ack.uri == "sip:bob@192.0.2.30:5090" and ack.cseq.number == 1 and ack.to.tag == "far1"
    assert [str(r.uri) for r in ack.routes()] == ["sip:core.example.org;lr", "sip:edge.example.org;lr"]
    assert ack.branch != inv.branch  # the ACK of a 2xx is a transaction of its own
    assert run.sent_to("ACK") == [Datagram(ack.encode(), Target(Transport.UDP, "core.example.org", 5060))]
    run.feed(ok)  # the 2xx again (our ACK was lost)
    run.advance(40)  # past Timer M: the INVITE's transaction is gone ...
    run.feed(ok)  # ... and the 2xx comes again still
    first, *again = run.sent_to("ACK")
    assert again == [first, first]  # the same ACK each time
    assert len(run.told(Answered)) == 1


def test_a_second_fork_answering_is_acked_and_hung_up_at_once() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180, tag="far1"))
    run.feed(reply(inv, 180, tag="far2", contact="<sip:carol@192.0.2.40>"))
    run.feed(reply(inv, 200, tag="far1", sdp=ANSWER))
    late = reply(inv, 200, tag="far2", sdp=RINGBACK, contact="<sip:carol@192.0.2.40>")
    run.feed(late)
    run.feed(late)  # retransmitted: ACKed again, no second BYE
    assert [a.to.tag for a in run.requests("ACK")] == ["far1", "far2", "far2"]
    [bye] = run.requests("BYE")
    assert bye.to.tag == "far2" and bye.uri == "sip:carol@192.0.2.40" and bye.call_id == call.call_id
    assert run.sent_to("BYE")[0].to == Target(Transport.UDP, "192.0.2.40", 5060)
    assert [a.tag for a in run.told(Answered)] == ["far1"]
    assert call.dialog is not None and call.dialog.remote_tag == "far1" and call.state is CallState.CONFIRMED


def test_a_fork_answering_after_the_invite_transaction_ended_is_still_acked_and_hung_up() -> None:
    run = Run()
    call, inv = answered(run)
    run.advance(40)  # Timer M: the INVITE's client transaction is over
    run.feed(reply(inv, 200, tag="far9", sdp=ANSWER, contact="<sip:dave@192.0.2.50>"))
    assert [a.to.tag for a in run.requests("ACK")] == ["far1", "far9"]
    assert [b.to.tag for b in run.requests("BYE")] == ["far9"]
    assert call.state is CallState.CONFIRMED


def test_an_answer_without_sdp_is_read_from_its_dialogs_183_and_one_without_a_tag_fails() -> None:
    run = Run()
    run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 183, sdp=RINGBACK))
    run.feed(reply(inv, 200))  # the answer only in the 183: read liberally
    assert [a.sdp for a in run.told(Answered)] == [RINGBACK]
    other = Run()
    call = other.place()
    other.feed(reply(other.requests("INVITE")[0], 200, tag=None, sdp=ANSWER))
    assert [(f.status, f.reason) for f in other.told(Failed)] == [(502, "an answer without a To tag")]
    assert other.requests("ACK") == [] and call.ended


def test_a_call_ringing_for_ever_is_cancelled_after_ten_minutes() -> None:
    run = Run()
    run.place()
    run.feed(reply(run.requests("INVITE")[0], 180))
    run.advance(599.9)
    assert run.requests("CANCEL") == []
    run.advance(0.2)
    [cancel] = run.requests("CANCEL")
    assert "no answer" in (cancel.headers.get("reason") or "")


# --- 3xx-6xx ---------------------------------------------------------------------------------------------


def test_a_redirect_is_not_followed_it_fails_with_its_contacts_best_first() -> None:
    run = Run()
    run.place()
    [inv] = run.requests("INVITE")
    contacts = (("Contact", "<sip:a@192.0.2.61>;q=0.5, <sip:b@192.0.2.62>;q=0.9"), ("Contact", "sip:c@192.0.2.63"))
    run.feed(reply(inv, 302, headers=contacts))
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason) == (302, "Moved Temporarily")
    assert [str(u) for u in failed.contacts] == ["sip:c@192.0.2.63", "sip:b@192.0.2.62", "sip:a@192.0.2.61"]
    [ack] = run.requests("ACK")
    assert ack.branch == inv.branch  # the transaction's ACK for a non-2xx
    assert len(run.requests("INVITE")) == 1  # nothing followed


def test_a_final_error_is_acked_and_fails_the_call_which_is_then_forgotten() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180))
    run.feed(reply(inv, 486))
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason, failed.contacts) == (486, "Busy Here", ())
    assert [a.branch for a in run.requests("ACK")] == [inv.branch]
    assert call.ended and call.early_dialogs == ["far1"]
    run.advance(40)
    assert run.ua.get_timer() is None  # nothing of the call is left to wake
    run.feed(far_request(call, "BYE", 1))
    assert [r.status for r in run.responses("BYE")] == [481]


def test_no_answer_at_all_fails_408_at_timer_b() -> None:
    run = Run()
    run.place()
    run.advance(31.9)
    assert run.told(Failed) == []
    run.advance(0.2)
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason) == (408, "no answer")


def test_an_answer_after_we_gave_up_is_acked_and_hung_up() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.advance(33)  # Timer B: Failed(408), the transaction is gone
    run.feed(reply(inv, 200, sdp=ANSWER))
    assert [a.to.tag for a in run.requests("ACK")] == ["far1"]
    assert [b.to.tag for b in run.requests("BYE")] == ["far1"]
    assert [f.status for f in run.told(Failed)] == [408] and run.told(Answered) == [] and call.ended


def test_a_transport_failure_fails_the_call_503() -> None:
    run = Run()
    run.place()
    [datagram] = run.sent_to("INVITE")
    run.ua.send_failed(datagram, "connection refused", run.now)
    [failed] = run.told(Failed)
    assert failed.status == 503 and "connection refused" in failed.reason


def test_an_invite_that_cannot_be_sent_fails_503() -> None:
    run = Run()
    run.ua.table = TransactionTable(max_client=1)
    run.place()
    run.place()
    [failed] = run.told(Failed)
    assert failed.status == 503 and failed.reason.startswith("not sent")


# --- digest challenges ---------------------------------------------------------------------------------


def test_a_challenge_is_answered_once_per_nonce_with_the_same_call_id_and_tag() -> None:
    run = Run()
    server = DigestChallenge("far.example.org", rng=random.Random(3))
    call = run.place(credentials=Credentials("alice", "s3cret"))
    [inv] = run.requests("INVITE")
    challenge = server.headers(run.now)
    run.feed(reply(inv, 401, headers=tuple(challenge)))
    [told] = run.told(ChallengeReceived)
    assert (told.realm, told.proxy) == ("far.example.org", False)
    first, second = run.requests("INVITE")
    assert (second.call_id, second.from_.tag, second.cseq.number) == (first.call_id, first.from_.tag, 2)
    assert second.branch != first.branch and second.body == OFFER
    assert server.verify(second, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    run.feed(reply(second, 401, headers=tuple(challenge)))  # the same nonce again: the password is wrong
    [failed] = run.told(Failed)
    assert failed.status == 401 and "refused" in failed.reason
    assert len(run.requests("INVITE")) == 2 and call.ended


def test_a_proxy_challenge_then_the_far_ends_are_both_answered() -> None:
    run = Run()
    proxy = DigestChallenge("proxy.example.org", rng=random.Random(4), proxy=True)
    far = DigestChallenge("far.example.org", rng=random.Random(5))
    run.place(credentials=Credentials("alice", "s3cret"))
    run.feed(reply(run.requests("INVITE")[-1], 407, headers=tuple(proxy.headers(run.now))))
    run.feed(reply(run.requests("INVITE")[-1], 401, headers=tuple(far.headers(run.now))))
    third = run.requests("INVITE")[-1]
    assert third.cseq.number == 3
    assert proxy.verify(third, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    assert far.verify(third, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    assert [(c.realm, c.proxy) for c in run.told(ChallengeReceived)] == [
        ("proxy.example.org", True),
        ("far.example.org", False),
    ]
    run.feed(reply(third, 200, sdp=ANSWER))
    [ack] = [a for a in run.requests("ACK") if a.cseq.number == 3]
    assert ack.headers.get("proxy-authorization") and ack.headers.get("authorization")  # §13.2.2.4


def test_a_challenge_without_credentials_is_told_and_fails_the_call() -> None:
    run = Run()
    run.place()
    challenge = DigestChallenge("far.example.org", rng=random.Random(3), proxy=True).headers(run.now)
    run.feed(reply(run.requests("INVITE")[0], 407, headers=tuple(challenge)))
    assert [c.realm for c in run.told(ChallengeReceived)] == ["far.example.org"]
    [failed] = run.told(Failed)
    assert failed.status == 407 and "no credentials" in failed.reason
    assert len(run.requests("INVITE")) == 1


# --- CANCEL ----------------------------------------------------------------------------------------------


def test_cancel_waits_for_a_provisional_and_the_487_fails_the_call_cancelled() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    call.cancel(run.now, "answered elsewhere")
    assert run.requests("CANCEL") == []  # RFC 3261 §9.1: not before a provisional
    run.feed(reply(inv, 180))
    [cancel] = run.requests("CANCEL")
    assert (cancel.uri, cancel.branch, cancel.call_id) == (inv.uri, inv.branch, inv.call_id)
    assert cancel.cseq.number == 1 and cancel.to.tag is None
    # RFC 3326: cause 200 in a CANCEL is "completed elsewhere" — phones then log no missed call
    assert cancel.headers.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    assert run.sent_to("CANCEL")[0].to == TARGET
    assert run.told(Provisional) == []  # a call being cancelled tells no more ringing
    run.feed(reply(cancel, 200))
    run.feed(reply(inv, 487))
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason) == (487, "cancelled") and call.ended
    assert [a.branch for a in run.requests("ACK")] == [inv.branch]


@pytest.mark.parametrize("why", ["cancelled", "no answer", "the caller hung up"])
def test_a_cancel_for_any_other_reason_does_not_say_the_call_was_completed_elsewhere(why: str) -> None:
    # A CANCEL with "Reason: SIP;cause=200" tells the far phone another took the call (RFC 3326): it logs
    # no missed call. An agent whose phone rang out, or whose caller hung up first, must see one.
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180))
    call.cancel(run.now, why)
    [cancel] = run.requests("CANCEL")
    assert cancel.headers.get("reason") == f'SIP;cause=487;text="{why}"'


def test_a_cancel_before_any_provisional_gives_up_at_timer_b_without_sending_one() -> None:
    run = Run()
    call = run.place()
    call.cancel(run.now)
    run.advance(33)
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason) == (487, "cancelled")
    assert run.requests("CANCEL") == []


def test_a_cancelled_invite_with_no_final_answer_ends_64_t1_after_the_cancel() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180))
    run.advance(100)  # ringing, no timer runs in Proceeding
    call.cancel(run.now)
    run.feed(reply(run.requests("CANCEL")[0], 200))
    run.advance(31.9)
    assert run.told(Failed) == []
    run.advance(0.2)
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason) == (487, "cancelled")
    assert run.ua.table.client_count <= 1  # the INVITE's transaction is gone (the CANCEL's absorbs)


def test_a_200_crossing_our_cancel_is_acked_and_hung_up_and_the_call_reported_cancelled() -> None:
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180))
    call.cancel(run.now, "caller hung up")
    run.feed(reply(inv, 200, sdp=ANSWER))
    [ack] = run.requests("ACK")
    [bye] = run.requests("BYE")
    assert ack.to.tag == bye.to.tag == "far1" and bye.cseq.number == 2
    assert "caller hung up" in (bye.headers.get("reason") or "")
    assert run.told(Answered) == []
    [failed] = run.told(Failed)
    assert (failed.status, failed.reason) == (487, "cancelled") and call.ended


# --- BYE -------------------------------------------------------------------------------------------------


def test_our_bye_goes_along_the_dialog_with_a_reason() -> None:
    run = Run()
    call, _ = answered(run)
    call.bye(run.now, 'done "now"')
    [bye] = run.requests("BYE")
    assert bye.uri == "sip:bob@192.0.2.20:5080" and bye.cseq.number == 2 and bye.to.tag == "far1"
    assert bye.headers.get("reason") == 'SIP;cause=200;text="done  now "'
    assert call.ended and run.told(Hangup) == []  # the application knows: it hung up
    run.feed(reply(bye, 200))
    call.bye(run.now)
    assert len(run.requests("BYE")) == 1


@pytest.mark.parametrize(
    ("dialled", "contact", "sent_to"),
    [
        # a phone behind NAT, dialled at the public address its NAT forwards: its Contact names its own
        # private address, which we cannot reach — the ACK and BYE go where the INVITE went
        ("203.0.114.20", "192.168.1.20:5060", ("203.0.114.20", 5080)),
        # a private network, or a public Contact: the Contact as it is
        ("192.0.2.20", "192.168.1.20:5060", ("192.168.1.20", 5060)),
        ("203.0.114.20", "203.0.114.21:5060", ("203.0.114.21", 5060)),
    ],
)
def test_the_ack_and_bye_to_a_far_end_behind_nat_go_where_the_invite_went(
    dialled: str, contact: str, sent_to: tuple[str, int]
) -> None:
    run = Run()
    call = run.place(target=Target(Transport.UDP, dialled, 5080))
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 200, sdp=ANSWER, contact=f"<sip:bob@{contact}>"), Peer(Transport.UDP, dialled, 5080, local=US))
    call.bye(run.now)
    [ack], [bye] = run.requests("ACK"), run.requests("BYE")
    assert ack.uri == bye.uri == f"sip:bob@{contact}"  # the Request-URI stays the Contact
    assert [(d.to.host, d.to.port) for d in run.sent_to("ACK") + run.sent_to("BYE")] == [sent_to, sent_to]


def test_a_bye_in_the_far_ends_last_early_dialog_cancels_the_invite_and_fails_the_call() -> None:
    # RFC 3261 §15 has a callee never send BYE before it answers; one that does anyway (a gateway ending
    # its early-media announcement so) has ended that fork: with no fork left ringing the call is over,
    # not left ringing until the dial plan's timeout
    run = Run()
    call = run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 180, tag="far1"))
    run.feed(reply(inv, 183, tag="far2", sdp=RINGBACK))
    run.feed(far_request(call, "BYE", 1, tag="far2"))
    assert [r.status for r in run.responses("BYE")] == [200]
    assert run.told(Failed) == [] and run.requests("CANCEL") == []  # far1 still rings
    run.feed(far_request(call, "BYE", 2, tag="far1"))
    assert [r.status for r in run.responses("BYE")] == [200, 200]
    [failed] = run.told(Failed)
    assert failed.status == 487 and "hung up before answering" in failed.reason and call.ended
    [cancel] = run.requests("CANCEL")
    assert cancel.branch == inv.branch  # the INVITE's transaction is ended too
    run.feed(reply(inv, 487, tag="far1"))
    assert len(run.requests("ACK")) == 1 and len(run.told(Failed)) == 1


def test_their_bye_is_answered_200_and_told_then_the_dialog_is_gone() -> None:
    run = Run()
    call, _ = answered(run)
    run.feed(far_request(call, "BYE", 1, headers=(("Reason", 'Q.850;cause=16;text="Normal"'),)))
    [ok] = run.responses("BYE")
    assert ok.status == 200 and ok.to.tag == call.local_tag
    [hangup] = run.told(Hangup)
    assert (hangup.cause, hangup.reason) == (HangupCause.BYE, 'Q.850;cause=16;text="Normal"')
    assert call.ended
    run.feed(far_request(call, "BYE", 2))
    assert [r.status for r in run.responses("BYE")] == [200, 481]


def test_their_bye_while_their_reinvite_waits_answers_it_487() -> None:
    run = Run()
    call, _ = answered(run)
    run.feed(far_request(call, "INVITE", 1, body=RINGBACK))
    run.feed(far_request(call, "BYE", 2))
    assert [r.status for r in run.responses("INVITE")] == [100, 487]  # RFC 3261 §15.1.2
    assert [r.status for r in run.responses("BYE")] == [200]
    call.answer_reinvite(200, run.now, OFFER)  # too late: nothing more is sent
    assert [r.status for r in run.responses("INVITE")] == [100, 487]


def test_options_in_the_dialog_gets_200_and_requests_for_another_tag_481() -> None:
    run = Run()
    call, _ = answered(run)
    run.feed(far_request(call, "OPTIONS", 1))
    run.feed(far_request(call, "BYE", 2, tag="stranger"))
    assert [r.status for r in run.responses("OPTIONS")] == [200]
    assert [r.status for r in run.responses("BYE")] == [481]
    assert not call.ended


# --- re-INVITE -------------------------------------------------------------------------------------------


def test_our_reinvite_gets_its_answer_and_is_acked() -> None:
    run = Run()
    call, _ = answered(run)
    assert call.reinvite(HOLD, run.now)
    [reinvite] = run.requests("INVITE")[1:]
    assert reinvite.body == HOLD and reinvite.cseq.number == 2 and reinvite.to.tag == "far1"
    assert [str(c.uri) for c in reinvite.contacts()] == ["sip:engine@192.0.2.1:5060"]
    held = ANSWER + b"a=recvonly\r\n"
    run.feed(reply(reinvite, 200, sdp=held))
    assert [(d.status, d.sdp) for d in run.told(ReInviteDone)] == [(200, held)]
    assert [a.cseq.number for a in run.requests("ACK")] == [1, 2]
    assert call.sdp == HOLD and call.remote_sdp == held


def test_a_reinvite_refused_leaves_the_session_as_it_was() -> None:
    run = Run()
    call, _ = answered(run)
    call.reinvite(HOLD, run.now)
    run.feed(reply(run.requests("INVITE")[-1], 488))
    assert [(d.status, d.sdp) for d in run.told(ReInviteDone)] == [(488, b"")]
    assert call.sdp == OFFER and call.remote_sdp == ANSWER and call.state is CallState.CONFIRMED


def test_glare_one_reinvite_at_a_time_a_491_is_retried_after_2_1_to_4_s() -> None:
    run = Run()
    call, _ = answered(run)
    assert call.reinvite(HOLD, run.now)
    assert not call.reinvite(OFFER, run.now)  # one at a time (§14.1)
    run.feed(far_request(call, "INVITE", 1, body=ANSWER))  # theirs crosses ours
    assert [r.status for r in run.responses("INVITE")] == [491]
    assert run.told(ReInviteReceived) == []
    run.feed(reply(run.requests("INVITE")[-1], 491))
    assert run.told(ReInviteDone) == []
    run.advance(2.09)
    assert sent_invites(run) == [1, 2]  # not before 2.1 s: we own the Call-ID
    run.advance(4.0 - 2.09)
    assert sent_invites(run) == [1, 2, 3]
    again = run.requests("INVITE")[-1]
    assert again.cseq.number == 3 and again.body == HOLD
    run.feed(reply(again, 200, sdp=ANSWER))
    assert [d.status for d in run.told(ReInviteDone)] == [200]
    assert call.reinvite(OFFER, run.now)  # the next one may go now


def test_their_reinvite_is_told_and_our_2xx_is_resent_until_the_ack() -> None:
    run = Run()
    call, _ = answered(run)
    run.feed(far_request(call, "INVITE", 1, body=RINGBACK))
    [told] = run.told(ReInviteReceived)
    assert told.sdp == RINGBACK
    assert [r.status for r in run.responses("INVITE")] == [100]
    call.answer_reinvite(200, run.now, HOLD)
    run.advance(0.51)  # T1: the 2xx again
    oks = [r for r in run.responses("INVITE") if r.status == 200]
    assert len(oks) == 2 and oks[0].body == HOLD and oks[0].contacts()
    run.feed(far_request(call, "ACK", 1))
    [acked] = run.told(ReInviteAcked)
    assert acked.sdp == b""
    run.advance(40)
    assert len([r for r in run.responses("INVITE") if r.status == 200]) == 2
    assert call.sdp == HOLD and call.state is CallState.CONFIRMED


def test_our_2xx_to_their_reinvite_never_acked_ends_the_call_with_a_bye() -> None:
    run = Run()
    call, _ = answered(run)
    run.feed(far_request(call, "INVITE", 1, body=RINGBACK))
    call.answer_reinvite(200, run.now, OFFER)
    run.advance(32.1)
    [bye] = run.requests("BYE")
    assert "no ACK" in (bye.headers.get("reason") or "")
    assert [h.cause for h in run.told(Hangup)] == [HangupCause.NO_ACK] and call.ended


def test_their_reinvite_left_unanswered_gets_500_after_64_t1() -> None:
    run = Run()
    call, _ = answered(run)
    run.feed(far_request(call, "INVITE", 1, body=RINGBACK))
    run.advance(32.1)
    assert [r.status for r in run.responses("INVITE")] == [100, 500]
    assert call.state is CallState.CONFIRMED and call.reinvite(HOLD, run.now)


def test_a_reinvite_answered_481_means_the_far_end_lost_the_call() -> None:
    run = Run()
    call, _ = answered(run)
    call.reinvite(HOLD, run.now)
    run.feed(reply(run.requests("INVITE")[-1], 481))
    [hangup] = run.told(Hangup)
    assert hangup.cause is HangupCause.DIALOG_GONE and call.ended


# --- session timers (RFC 4028) ---------------------------------------------------------------------------


def test_asked_for_session_timers_are_offered_and_we_refresh_at_half_the_interval() -> None:
    run = Run()
    timer_2xx = (("Session-Expires", "1800;refresher=uac"), ("Require", "timer"))
    call, inv = answered(run, session_expires=1800, answer_headers=timer_2xx)
    assert inv.headers.get("supported") == "timer" and inv.headers.get("session-expires") == "1800"
    assert inv.headers.get("min-se") == "90"
    run.advance(899.9)
    assert len(run.requests("INVITE")) == 1
    run.advance(0.2)
    refresh = run.requests("INVITE")[-1]
    assert refresh.cseq.number == 2 and refresh.body == OFFER  # our SDP, unchanged
    assert refresh.headers.get("session-expires") == "1800;refresher=uac"
    run.feed(reply(refresh, 200, sdp=ANSWER, headers=timer_2xx))
    assert run.told(ReInviteDone) == []  # a refresh is not the application's
    run.advance(899.8)
    assert len(run.requests("INVITE")) == 2
    run.advance(0.2)
    assert len(run.requests("INVITE")) == 3 and not call.ended


def test_a_refused_refresh_is_tried_again_before_the_session_expires() -> None:
    run = Run()
    timer_2xx = (("Session-Expires", "600;refresher=uac"),)
    call, _ = answered(run, session_expires=600, answer_headers=timer_2xx)
    run.advance(300.1)
    run.feed(reply(run.requests("INVITE")[-1], 500))
    assert sent_invites(run) == [1, 2]
    run.advance(134.5)  # halfway from 300 to the expiry at 568 (600 - 32)
    assert sent_invites(run) == [1, 2, 3]
    run.feed(reply(run.requests("INVITE")[-1], 200, sdp=ANSWER, headers=timer_2xx))
    run.advance(299.8)
    assert sent_invites(run) == [1, 2, 3] and not call.ended
    run.advance(0.2)
    assert sent_invites(run) == [1, 2, 3, 4]


def test_an_offer_made_during_a_refresh_goes_after_it() -> None:
    run = Run()
    timer_2xx = (("Session-Expires", "600;refresher=uac"),)
    call, _ = answered(run, session_expires=600, answer_headers=timer_2xx)
    run.advance(300.1)
    assert sent_invites(run) == [1, 2]  # the refresh
    assert call.reinvite(HOLD, run.now)  # waits for the refresh
    assert not call.reinvite(OFFER, run.now)  # one waits at most
    run.feed(reply(run.requests("INVITE")[-1], 200, sdp=ANSWER, headers=timer_2xx))
    held = run.requests("INVITE")[-1]
    assert sent_invites(run) == [1, 2, 3] and held.body == HOLD
    assert held.headers.get("session-expires") == "600;refresher=uac"  # it refreshes too
    run.feed(reply(held, 200, sdp=ANSWER, headers=timer_2xx))
    assert [d.status for d in run.told(ReInviteDone)] == [200]


def test_a_peer_that_allows_update_is_refreshed_with_update() -> None:
    run = Run()
    headers = (("Session-Expires", "600;refresher=uac"), ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"))
    answered(run, session_expires=600, answer_headers=headers)
    run.advance(300.1)
    [update] = run.requests("UPDATE")
    assert update.body == b"" and update.headers.get("session-expires") == "600;refresher=uac" and update.contacts()
    assert len(run.requests("INVITE")) == 1


def test_when_they_refresh_a_refresh_pushes_the_expiry_and_none_ends_the_call_with_a_bye() -> None:
    run = Run()
    call, _ = answered(run, session_expires=1800, answer_headers=(("Session-Expires", "1800;refresher=uas"),))
    run.advance(1000)
    timer = (("Supported", "timer"), ("Session-Expires", "1800;refresher=uac"))
    refresh = far_request(call, "INVITE", 1, body=ANSWER, headers=timer)
    run.feed(refresh)
    [told] = run.told(ReInviteReceived)
    call.answer_reinvite(200, run.now, OFFER)
    [ok] = [r for r in run.responses("INVITE") if r.status == 200]
    assert ok.headers.get("session-expires") == "1800;refresher=uac" and ok.headers.get("require") == "timer"
    run.feed(far_request(call, "ACK", 1))
    run.advance(1767.9)  # 1800 - 32 after their refresh
    assert run.requests("BYE") == [] and not call.ended
    run.advance(0.2)
    [bye] = run.requests("BYE")
    assert "session expired" in (bye.headers.get("reason") or "")
    assert [h.cause for h in run.told(Hangup)] == [HangupCause.SESSION_EXPIRED] and call.ended
    assert told.request.cseq.number == 1


def test_a_422_is_retried_once_with_the_min_se_asked_then_fails() -> None:
    run = Run()
    run.place(session_expires=90)
    run.feed(reply(run.requests("INVITE")[0], 422, headers=(("Min-SE", "1800"),)))
    retry = run.requests("INVITE")[-1]
    assert retry.cseq.number == 2 and retry.headers.get("session-expires") == "1800"
    assert retry.headers.get("min-se") == "1800"
    run.feed(reply(retry, 422, headers=(("Min-SE", "1800"),)))
    [failed] = run.told(Failed)
    assert failed.status == 422 and len(run.requests("INVITE")) == 2


def test_a_peer_without_session_timers_gets_no_refresh_and_no_expiry() -> None:
    run = Run()
    call, _ = answered(run, session_expires=600)
    run.advance(10_000)
    assert len(run.requests("INVITE")) == 1 and run.requests("BYE") == [] and not call.ended
