"""Blind transfer with REFER (refer.py), without sockets: a caller we answered is asked to call someone
else; its answers and NOTIFYs are built by hand and fed back as bytes, and time moves only when a test
moves it. Also: a REFER the caller sends us is refused 405 with our Allow, logged once."""

from __future__ import annotations

import logging

import pytest

from swml_engine.transports.sip.auth import Credentials, DigestChallenge
from swml_engine.transports.sip.message import Request, Response, response_to
from swml_engine.transports.sip.refer import (
    MAX_STATUS_LINE,
    ReferError,
    Referral,
    ReferState,
    ReferUpdate,
    read_sipfrag,
)
from swml_engine.transports.sip.uri import parse_uri
from swml_engine.transports.sip.useragent import ServerCall

from .test_useragent import Caller, Run, answered, invited

TARGET = "sip:bob@example.com"


class Transfer(Run):
    """A user agent on a fake clock with one answered call, whose caller we transfer."""

    def __init__(self) -> None:
        super().__init__()
        self.caller = Caller()
        self.call = answered(self, self.caller)
        self.clear()
        self.events.clear()

    def refer(self, to: str = TARGET, **given: object) -> Referral:
        referral = Referral(self.ua, self.call, parse_uri(to), **given)  # type: ignore[arg-type]
        referral.start(self.now)
        self.collect()
        return referral

    def refers(self) -> list[Request]:
        return [m for m, _ in self.requests("REFER")]

    def answer(self, status: int, *, headers: tuple[tuple[str, str], ...] = (), refer: Request | None = None) -> None:
        """The caller answers our (last) REFER."""
        request = refer or self.refers()[-1]
        self.feed(response_to(request, status, headers=headers).encode(), self.caller.peer)

    def notify(
        self,
        frag: bytes | None,
        state: str = "active;expires=60",
        *,
        event: str = "refer",
        content_type: str = "message/sipfrag;version=2.0",
    ) -> Response:
        """The caller's NOTIFY of the transfer's progress (the next CSeq of its side); our answer to it."""
        self.caller.cseq += 1
        headers = [f"Event: {event}", f"Subscription-State: {state}"]
        body = frag or b""
        if body:
            headers.append(f"Content-Type: {content_type}")
        data, _ = self.caller.request("NOTIFY", headers=headers)
        data = data.replace(b"Content-Length: 0\r\n\r\n", f"Content-Length: {len(body)}\r\n\r\n".encode()) + body
        self.feed(data, self.caller.peer)
        return self.responses("NOTIFY")[-1]

    def updates(self) -> list[tuple[ReferState, int | None, int | None]]:
        return [(e.state, e.refer_code, e.notify_code) for e in self.events if isinstance(e, ReferUpdate)]

    def last(self) -> ReferUpdate:
        return [e for e in self.events if isinstance(e, ReferUpdate)][-1]


def test_the_refer_goes_in_the_callers_dialog_naming_the_target_and_us() -> None:
    run = Transfer()
    run.refer()
    [(refer, datagram)] = run.requests("REFER")
    caller, call = run.caller, run.call
    # RFC 3261 §12.2.1.1: to the caller's Contact, with its tags the other way round and our next CSeq
    assert refer.uri == f"sip:alice@{caller.host}:{caller.port}"
    assert refer.call_id == caller.call_id
    assert refer.from_.tag == call.local_tag and refer.to.tag == caller.from_tag
    assert (refer.cseq.number, refer.cseq.method) == (1, "REFER")
    assert refer.headers.get("refer-to") == f"<{TARGET}>"
    assert refer.headers.get("referred-by") == "<sip:engine@192.0.2.1>"  # as the caller called us
    assert [str(c.uri) for c in refer.contacts()] == ["sip:192.0.2.1:5060"]
    assert refer.top_via.param("rport") is not None
    assert (datagram.to.host, datagram.to.port) == (caller.host, caller.port)


def test_202_then_notifies_100_180_200_transfer_the_caller() -> None:
    run = Transfer()
    referral = run.refer()
    run.answer(202)
    assert run.updates() == [(ReferState.ACCEPTED, 202, None)]
    for frag in (b"SIP/2.0 100 Trying\r\n", b"SIP/2.0 180 Ringing\r\n"):
        ok = run.notify(frag)
        assert ok.status == 200 and ok.to.tag == run.call.local_tag  # answered in the dialog
    assert run.notify(b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource").status == 200
    assert run.updates() == [
        (ReferState.ACCEPTED, 202, None),
        (ReferState.ACCEPTED, 202, 100),
        (ReferState.ACCEPTED, 202, 180),
        (ReferState.TRANSFERRED, 202, 200),
    ]
    assert run.last().reason == "OK" and run.last().done and referral.state is ReferState.TRANSFERRED
    # the subscription is over: a NOTIFY after it is refused, which ends it at the notifier too
    assert run.notify(b"SIP/2.0 200 OK\r\n", "terminated").status == 481
    assert len(run.updates()) == 4
    assert referral.next_timer() is None  # no wait of ours is left


def test_a_final_sipfrag_decides_even_while_the_subscription_stays_active() -> None:
    run = Transfer()
    run.refer()
    run.answer(202)
    run.notify(b"SIP/2.0 200 OK\r\n")  # active: a later NOTIFY will terminate it
    assert run.last().state is ReferState.TRANSFERRED
    assert run.notify(b"SIP/2.0 200 OK\r\n", "terminated").status == 200  # still ours, answered
    assert len(run.updates()) == 2


@pytest.mark.parametrize(("frag", "code"), [(b"SIP/2.0 486 Busy Here\r\n", 486), (b"SIP/2.0 603 Decline", 603)])
def test_the_target_refusing_fails_the_transfer_with_its_code(frag: bytes, code: int) -> None:
    run = Transfer()
    referral = run.refer()
    run.answer(202)
    run.notify(b"SIP/2.0 100 Trying\r\n")
    run.notify(frag, "terminated;reason=noresource")
    assert run.last().state is ReferState.FAILED and (run.last().refer_code, run.last().notify_code) == (202, code)
    assert str(code) in run.last().reason
    assert referral.notify_code == code


@pytest.mark.parametrize("status", [403, 405, 501, 603])
def test_a_refused_refer_fails_with_that_code_and_no_notify_is_taken(status: int) -> None:
    run = Transfer()
    run.refer()
    run.answer(status)
    assert run.updates() == [(ReferState.FAILED, status, None)]
    assert "refused" in run.last().reason
    assert run.notify(b"SIP/2.0 200 OK\r\n").status == 481
    assert run.updates() == [(ReferState.FAILED, status, None)]


def test_a_challenge_is_answered_once_with_the_credentials() -> None:
    run = Transfer()
    challenge = DigestChallenge(realm="pbx", proxy=True)
    run.refer(credentials=Credentials("agent", "secret"))
    run.answer(407, headers=tuple(challenge.headers(run.now)))
    first, second = run.refers()
    assert "proxy-authorization" not in first.headers
    assert second.cseq.number == first.cseq.number + 1  # a new REFER in the dialog
    assert challenge.verify(second, "agent", "secret", run.now).value == "accepted"
    run.answer(202)
    run.notify(b"SIP/2.0 200 OK\r\n", "terminated")
    assert run.last().state is ReferState.TRANSFERRED
    assert [u[0] for u in run.updates()] == [ReferState.ACCEPTED, ReferState.TRANSFERRED]


def test_a_challenge_repeated_means_the_credentials_are_refused() -> None:
    run = Transfer()
    challenge = DigestChallenge(realm="pbx")
    run.refer(credentials=Credentials("agent", "wrong"))
    headers = tuple(challenge.headers(run.now))
    run.answer(401, headers=headers)
    run.answer(401, headers=headers)  # the same nonce again: refused
    assert len(run.refers()) == 2
    assert run.updates() == [(ReferState.FAILED, 401, None)]


def test_a_challenge_without_credentials_fails_401() -> None:
    run = Transfer()
    run.refer()
    run.answer(401, headers=tuple(DigestChallenge().headers(run.now)))
    assert len(run.refers()) == 1 and run.updates() == [(ReferState.FAILED, 401, None)]


def test_no_answer_to_the_refer_is_408_after_timer_f() -> None:
    run = Transfer()
    run.refer()
    run.advance(31.9)
    assert run.updates() == []
    assert len(run.refers()) > 1  # retransmitted over UDP meanwhile
    run.advance(0.2)
    assert run.updates() == [(ReferState.FAILED, 408, None)]


def test_no_notify_within_64_t1_of_the_acceptance_fails_it() -> None:
    run = Transfer()
    run.refer()
    run.advance(1)
    run.answer(202)
    run.advance(31.9)
    assert run.updates() == [(ReferState.ACCEPTED, 202, None)]
    run.advance(0.2)
    assert run.last().state is ReferState.FAILED and "no NOTIFY" in run.last().reason
    assert run.notify(b"SIP/2.0 200 OK\r\n").status == 481  # too late: we stopped listening


def test_no_final_status_within_the_transfer_wait_fails_it() -> None:
    run = Transfer()
    run.refer(transfer_wait=60)
    run.answer(202)
    run.notify(b"SIP/2.0 100 Trying\r\n")
    run.advance(30)
    run.notify(b"SIP/2.0 180 Ringing\r\n")
    run.advance(29.9)
    assert run.last().state is ReferState.ACCEPTED
    run.advance(0.2)
    assert run.last().state is ReferState.FAILED and "no final NOTIFY within 60 s" in run.last().reason
    assert run.last().notify_code == 180


def test_a_notify_that_overtakes_the_202_counts_as_the_acceptance() -> None:
    run = Transfer()
    referral = run.refer()
    run.notify(b"SIP/2.0 100 Trying\r\n")
    assert run.updates() == [(ReferState.ACCEPTED, None, 100)]
    run.answer(202)
    assert run.updates()[-1] == (ReferState.ACCEPTED, 202, 100)
    run.notify(b"SIP/2.0 200 OK\r\n", "terminated")
    assert run.last().state is ReferState.TRANSFERRED and referral.refer_code == 202
    run.advance(40)  # the first NOTIFY came: no "no NOTIFY" failure later
    assert run.last().state is ReferState.TRANSFERRED


def test_a_subscription_terminated_without_a_final_status_fails() -> None:
    run = Transfer()
    run.refer()
    run.answer(202)
    run.notify(b"SIP/2.0 100 Trying\r\n")
    assert run.notify(None, "terminated;reason=timeout").status == 200
    assert run.last().state is ReferState.FAILED and "terminated without a final status" in run.last().reason


def test_notifies_that_are_not_ours_are_refused() -> None:
    run = Transfer()
    run.refer()
    run.answer(202)
    assert run.notify(b"SIP/2.0 200 OK\r\n", event="presence").status == 489
    assert run.notify(b"SIP/2.0 200 OK\r\n", event="refer;id=99").status == 481  # another REFER's
    assert run.updates() == [(ReferState.ACCEPTED, 202, None)]
    assert run.notify(b"SIP/2.0 180 Ringing\r\n", event="refer;id=1").status == 200  # ours names CSeq 1
    assert run.last().notify_code == 180


def test_a_sipfrag_is_read_only_as_far_as_its_status_line() -> None:
    run = Transfer()
    run.refer()
    run.answer(202)
    # a sipfrag with headers after the status line, a large one: the status line is all that is read
    assert run.notify(b"SIP/2.0 180 Ringing\r\nContact: <sip:bob@x>\r\n" + b"X" * 5000).status == 200
    assert run.last().notify_code == 180
    for junk in (b"hello", b"SIP/2.0 99 Low\r\n", b"SIP/2.0 2000 OK\r\n", b"SIP/2.0 " + b" " * 300 + b"200 OK"):
        assert run.notify(junk).status == 200  # ours, but it tells no status
    assert run.last().notify_code == 180 and run.last().state is ReferState.ACCEPTED
    assert run.notify(b"SIP/2.0 200 OK\r\n", content_type="text/plain").status == 200  # not a sipfrag
    assert run.last().state is ReferState.ACCEPTED


def test_read_sipfrag() -> None:
    assert read_sipfrag(b"SIP/2.0 180 Ringing\r\nTo: <sip:x@y>\r\n") is not None
    frag = read_sipfrag(b"SIP/2.0 503\r\n")
    assert frag is not None and (frag.status, frag.reason) == (503, "Service Unavailable")
    frag = read_sipfrag(b"SIP/2.0 404 \x00\x1b[31mgone" + b"!" * 400)
    assert frag is not None and frag.status == 404 and frag.reason.isprintable() and len(frag.reason) <= 40
    assert read_sipfrag(b" " * MAX_STATUS_LINE + b"SIP/2.0 200 OK") is None
    assert read_sipfrag(b"") is None and read_sipfrag(b"SIP/3.0 200 OK") is None


def test_stopping_the_referral_fails_it_and_refuses_later_notifies() -> None:
    run = Transfer()
    referral = run.refer()
    run.answer(202)
    referral.stop(run.now)
    run.collect()
    assert run.last().state is ReferState.FAILED and run.last().reason == "stopped"
    assert run.notify(b"SIP/2.0 200 OK\r\n").status == 481
    assert referral.next_timer() is None


def test_a_call_not_confirmed_sends_no_refer() -> None:
    run = Run()
    call: ServerCall = invited(run, Caller())
    referral = Referral(run.ua, call, parse_uri(TARGET))
    referral.start(run.now)
    run.collect()
    assert run.requests("REFER") == []
    [update] = [e for e in run.events if isinstance(e, ReferUpdate)]
    assert update.state is ReferState.FAILED and "proceeding" in update.reason


@pytest.mark.parametrize("to", ["tel:+15551234567", "http://example.com/"])
def test_only_a_sip_uri_can_be_referred_to(to: str) -> None:
    run = Transfer()
    with pytest.raises(ReferError, match="sip: or sips:"):
        Referral(run.ua, run.call, parse_uri(to))


def test_without_a_referral_a_notify_in_the_dialog_is_still_405() -> None:
    run = Transfer()
    response = run.notify(b"SIP/2.0 200 OK\r\n")
    assert response.status == 405 and response.headers.get("allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS"


def test_a_refer_from_the_caller_is_refused_405_with_allow_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    run = Transfer()
    caller = run.caller
    caplog.set_level(logging.INFO, logger="swml_engine.transports.sip.useragent")
    for cseq in (2, 3):
        data, _ = caller.request("REFER", cseq=cseq, headers=["Refer-To: <sip:carol@example.com>"])
        run.feed(data, caller.peer)
    answers = run.responses("REFER")
    assert [r.status for r in answers] == [405, 405]
    assert all(r.headers.get("allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS" for r in answers)
    assert all(r.to.tag == run.call.local_tag for r in answers)  # answered in the dialog
    lines = [r.getMessage() for r in caplog.records if "REFER" in r.getMessage()]
    assert len(lines) == 1 and "405" in lines[0], lines
    assert not run.call.ended  # the call goes on
