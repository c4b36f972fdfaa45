"""What the SIP core does for the legs connect places, beyond test_uac.py, without sockets: whose the
status of a failure is (the far end's answer, or ours), the far end's refreshes requiring session timers
in a call we placed, and a TCP connection kept open while a placed call uses it."""

from __future__ import annotations

from swml_engine.transports.sip.message import Headers, Request
from swml_engine.transports.sip.uac import Failed, ReInviteReceived
from swml_engine.transports.sip.useragent import InviteReceived, Target, Transport

from .test_uac import ANSWER, FAR, Run, answered, far_request, reply


def test_a_far_ends_final_answer_is_its_own_and_silence_or_a_dead_transport_is_ours() -> None:
    run = Run()
    run.place()
    [inv] = run.requests("INVITE")
    run.feed(reply(inv, 408))  # the far end's own 408 Request Timeout
    run.place()
    run.advance(33)  # Timer B: nothing came at all
    run.place()
    [datagram] = run.sent_to("INVITE")[-1:]
    run.ua.send_failed(datagram, "connection refused", run.now)
    told = [(f.status, f.local) for f in run.told(Failed)]
    assert told == [(408, False), (408, True), (503, True)]


def test_their_refresh_requiring_timer_is_taken_in_our_call_and_so_is_a_new_call_requiring_it() -> None:
    run = Run()
    call, _ = answered(run, session_expires=1800, answer_headers=(("Session-Expires", "1800;refresher=uas"),))
    timer = (("Supported", "timer"), ("Require", "timer"), ("Session-Expires", "1800;refresher=uac"))
    run.feed(far_request(call, "INVITE", 1, body=ANSWER, headers=timer))
    assert len(run.told(ReInviteReceived)) == 1
    assert 420 not in [r.status for r in run.responses("INVITE")]
    # an INVITE of a new call (no dialog of ours) with the same Require is still refused
    fresh = Request(
        method="INVITE",
        uri="sip:engine@192.0.2.1:5060",
        headers=Headers(
            [
                ("Via", "SIP/2.0/UDP 192.0.2.20:5080;branch=z9hG4bK-new-1"),
                ("Max-Forwards", "70"),
                ("From", "<sip:bob@example.org>;tag=new"),
                ("To", "<sip:engine@192.0.2.1>"),
                ("Call-ID", "another-call"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:bob@192.0.2.20:5080>"),
                *timer,
            ]
        ),
    )
    run.feed(fresh)  # (the calls we answer run session timers too: tests/sip/test_uas_session_timer.py)
    assert [r.status for r in run.responses("INVITE") if r.call_id == "another-call"] == [100]
    assert len(run.told(InviteReceived)) == 1


def test_a_tcp_connection_is_in_use_while_a_call_we_placed_sends_over_it() -> None:
    run = Run()
    tcp = Target(Transport.TCP, "192.0.2.20", 5080)
    call, _ = answered(run, target=tcp)
    far = ("192.0.2.20", 5080)
    assert run.ua.flow_in_use(7, far)
    assert not run.ua.flow_in_use(7, ("192.0.2.21", 5080)) and not run.ua.flow_in_use(7)
    call.bye(run.now)
    assert not run.ua.flow_in_use(7, far)


def test_a_udp_call_we_placed_keeps_no_tcp_connection() -> None:
    run = Run()
    answered(run)
    assert not run.ua.flow_in_use(3, (FAR.host, FAR.port))
