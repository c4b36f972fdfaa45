"""Session timers (RFC 4028) in the calls we answer, on the user agent core without sockets: the caller's
``Require: timer`` is taken, our 2xx agrees the interval and who refreshes, a refresh (re-INVITE or
UPDATE) restarts it, and a session nobody refreshes is ended with a BYE; when we are the refresher, our
UPDATE or re-INVITE goes at half the interval. Time is the fake clock's (seconds from 0)."""

from __future__ import annotations

from swml_engine.transports.sip.message import Response, response_to
from swml_engine.transports.sip.useragent import CallGone, InviteReceived, ReInvite, ServerCall, UasState

from .test_useragent import SDP, Caller, Run, invited

TIMER = ["Supported: timer", "Require: timer", "Session-Expires: 1800", "Min-SE: 90"]
#: A caller's refresh: it keeps refreshing.
REFRESH = ["Supported: timer", "Session-Expires: 1800;refresher=uac"]


def answered_with(run: Run, caller: Caller, headers: list[str]) -> tuple[ServerCall, Response]:
    """A call whose INVITE carries ``headers``, answered and ACKed: the call, and our 200."""
    caller.extra = headers
    call = invited(run, caller)
    run.ua.answer(call, SDP, run.now)
    run.act()
    [ok] = [r for r in run.responses("INVITE") if r.status == 200]
    caller.to_tag = ok.to.tag
    caller.extra = []
    run.feed(caller.request("ACK", cseq=1)[0], caller.peer)
    return call, ok


def byes(run: Run) -> list[str]:
    return [request.headers.get("reason") or "" for request, _ in run.requests("BYE")]


def test_a_caller_requiring_timers_is_answered_with_the_interval_and_must_refresh() -> None:
    run, caller = Run(), Caller()
    call, ok = answered_with(run, caller, TIMER)
    assert ok.headers.get("session-expires") == "1800;refresher=uac"
    assert "timer" in ok.option_tags("require") and "timer" in ok.option_tags("supported")
    # no refresh by 1768 s (the interval less 32 s, so our BYE goes before the caller's own timer): BYE
    run.advance(1767.9)
    assert byes(run) == [] and not call.ended
    run.advance(0.2)
    assert len(byes(run)) == 1 and "session expired" in byes(run)[0]
    [gone] = [e for e in run.events if isinstance(e, CallGone)]
    assert gone.why == "session_expired" and call.ended


def test_a_refresh_by_re_invite_or_update_restarts_the_session() -> None:
    run, caller = Run(), Caller()
    call, _ = answered_with(run, caller, TIMER)
    run.advance(900)  # the caller refreshes at half the interval, with a re-INVITE ...
    caller.cseq = 2
    run.feed(caller.request("INVITE", body=SDP, headers=REFRESH)[0], caller.peer)
    assert len([e for e in run.events if isinstance(e, ReInvite)]) == 1
    run.ua.answer_reinvite(call, 200, run.now, SDP)
    run.act()
    [ok] = [r for r in run.responses("INVITE") if r.status == 200 and r.cseq.number == 2]
    assert ok.headers.get("session-expires") == "1800;refresher=uac"
    run.feed(caller.request("ACK", cseq=2)[0], caller.peer)
    run.advance(900)  # ... then with an UPDATE (no body), 1800 s after the first 200
    caller.cseq = 3
    run.feed(caller.request("UPDATE", headers=REFRESH)[0], caller.peer)
    [updated] = run.responses("UPDATE")
    assert updated.status == 200 and updated.headers.get("session-expires") == "1800;refresher=uac"
    run.advance(1767.9)
    assert byes(run) == [] and call.state is UasState.CONFIRMED
    run.advance(0.2)
    assert len(byes(run)) == 1


def test_an_update_with_a_new_session_description_gets_488_and_the_call_goes_on() -> None:
    run, caller = Run(), Caller()
    call, _ = answered_with(run, caller, TIMER)
    caller.cseq = 2
    run.feed(caller.request("UPDATE", body=SDP)[0], caller.peer)
    assert run.statuses("UPDATE") == [488] and call.state is UasState.CONFIRMED


def test_an_interval_below_our_minimum_gets_422_with_it_and_no_call() -> None:
    run, caller = Run(), Caller(extra=["Supported: timer", "Session-Expires: 60", "Min-SE: 60"])
    run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)
    [refused] = [r for r in run.responses("INVITE") if r.status >= 200]
    assert refused.status == 422 and refused.headers.get("min-se") == "90"
    assert not [e for e in run.events if isinstance(e, InviteReceived)]
    # an unreadable Session-Expires is a 400 naming it
    run2, bad = Run(), Caller(extra=["Session-Expires: soon"])
    run2.feed(bad.request("INVITE", body=SDP)[0], bad.peer)
    [refused] = [r for r in run2.responses("INVITE") if r.status >= 200]
    assert refused.status == 400 and "Session-Expires" in refused.reason


def test_no_session_expires_means_no_timer_and_no_bye() -> None:
    run, caller = Run(), Caller()
    call, ok = answered_with(run, caller, ["Supported: timer"])
    assert ok.headers.get("session-expires") is None and "timer" not in ok.option_tags("require")
    run.advance(4 * 3600)
    assert byes(run) == [] and call.state is UasState.CONFIRMED


def answer_refresh(run: Run, caller: Caller, method: str, session_expires: str) -> None:
    """The caller answers our refresh of ``method`` (the last one sent) with 200 and ``session_expires``."""
    request, _ = run.requests(method)[-1]
    headers = [("Session-Expires", session_expires), ("Require", "timer")]
    ok = response_to(request, 200, to_tag=caller.from_tag, headers=headers)
    run.feed(ok.encode(), caller.peer)


def test_we_refresh_with_update_when_the_caller_asks_us_to_and_allows_it() -> None:
    run, caller = Run(), Caller()
    asks = ["Supported: timer", "Session-Expires: 600;refresher=uas", "Allow: INVITE, ACK, BYE, CANCEL, UPDATE"]
    call, ok = answered_with(run, caller, asks)
    assert ok.headers.get("session-expires") == "600;refresher=uas"
    run.advance(299.9)
    assert run.requests("UPDATE") == []
    run.advance(0.2)  # half the interval
    [(update, datagram)] = run.requests("UPDATE")
    assert update.headers.get("session-expires") == "600;refresher=uac" and not update.body
    assert update.from_.tag == call.local_tag and (datagram.to.host, datagram.to.port) == (caller.host, caller.port)
    answer_refresh(run, caller, "UPDATE", "600;refresher=uac")
    run.advance(299.8)
    assert len(run.requests("UPDATE")) == 1
    run.advance(0.2)
    assert len(run.requests("UPDATE")) == 2 and byes(run) == []


def test_we_refresh_with_a_re_invite_of_our_sdp_and_ack_its_2xx_when_update_is_not_allowed() -> None:
    run, caller = Run(), Caller()
    # a proxy asked for the timer for a caller that does not do timers: we refresh, and say so
    call, ok = answered_with(run, caller, ["Session-Expires: 600"])
    assert ok.headers.get("session-expires") == "600;refresher=uas" and "timer" not in ok.option_tags("require")
    run.advance(300.1)
    [(reinvite, _)] = run.requests("INVITE")
    assert reinvite.body == SDP and reinvite.cseq.number == 1  # our first request in the dialog
    answer_refresh(run, caller, "INVITE", "600;refresher=uac")
    [(ack, _)] = run.requests("ACK")
    assert ack.cseq.number == reinvite.cseq.number
    run.advance(300.1)
    assert len(run.requests("INVITE")) == 2 and call.state is UasState.CONFIRMED


def test_a_refresh_answered_481_ends_the_call() -> None:
    run, caller = Run(), Caller()
    call, _ = answered_with(run, caller, ["Supported: timer", "Session-Expires: 600;refresher=uas"])
    run.advance(300.1)
    [(reinvite, _)] = run.requests("INVITE")
    run.feed(response_to(reinvite, 481, to_tag=caller.from_tag).encode(), caller.peer)
    [gone] = [e for e in run.events if isinstance(e, CallGone)]
    assert gone.why == "session_refresh_failed" and call.ended
    assert run.requests("BYE") == []  # (the dialog is gone: nothing to end)


def test_a_refresh_refused_otherwise_is_tried_again_before_the_session_expires() -> None:
    run, caller = Run(), Caller()
    call, _ = answered_with(run, caller, ["Supported: timer", "Session-Expires: 600;refresher=uas"])
    run.advance(300.1)
    [(reinvite, _)] = run.requests("INVITE")
    run.feed(response_to(reinvite, 500, to_tag=caller.from_tag).encode(), caller.peer)
    run.advance(133.8)  # halfway to the expiry (568 s): at 434.05 s
    assert {r.cseq.number for r, _ in run.requests("INVITE")} == {1}
    run.advance(0.2)
    assert {r.cseq.number for r, _ in run.requests("INVITE")} == {1, 2} and not call.ended
    # that one unanswered (its transaction times out): the dialog is taken for gone, with a BYE
    run.advance(32.1)
    [gone] = [e for e in run.events if isinstance(e, CallGone)]
    assert gone.why == "session_refresh_failed" and call.ended and len(byes(run)) == 1


def test_re_invites_crossing_get_491_and_ours_goes_again_within_2_s() -> None:
    run, caller = Run(), Caller()
    call, _ = answered_with(run, caller, ["Supported: timer", "Session-Expires: 600;refresher=uas"])
    run.advance(300.1)
    [(ours, _)] = run.requests("INVITE")
    caller.cseq = 2  # the caller's own re-INVITE crosses ours: it gets 491 (RFC 3261 §14.2) ...
    run.feed(caller.request("INVITE", body=SDP)[0], caller.peer)
    assert [r.status for r in run.responses("INVITE") if r.cseq.number == 2] == [491]
    assert not [e for e in run.events if isinstance(e, ReInvite)]
    # ... and ours gets 491 from the caller: sent again after 0 to 2 s (we do not own the Call-ID)
    run.feed(response_to(ours, 491, to_tag=caller.from_tag).encode(), caller.peer)
    run.advance(2.01)
    assert {r.cseq.number for r, _ in run.requests("INVITE")} == {1, 2} and call.state is UasState.CONFIRMED
