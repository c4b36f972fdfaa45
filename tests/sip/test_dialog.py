"""Dialogs on the new message model (transports/sip/dialog.py), as a UAS and as a UAC: route sets,
strict routers, CSeq order, target refresh, glare, ACK for a 2xx, forking. Plain function calls."""

from __future__ import annotations

import random

import pytest

from swml_engine.transports.sip.dialog import (
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    Rejection,
    Role,
    dialog_id_of,
)
from swml_engine.transports.sip.message import MAX_CSEQ, Request, Response, parse_message, parse_via
from swml_engine.transports.sip.uri import parse_name_addr

OUR_VIA = parse_via("SIP/2.0/UDP 198.51.100.1:5060")
OUR_CONTACT = parse_name_addr("<sip:198.51.100.1:5060;transport=tcp>")
CALLER_CONTACT = "<sip:alice@192.0.2.10:5070;transport=tcp>"


def _request(
    method: str,
    *,
    uri: str = "sip:record@198.51.100.1",
    via: str = "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKa1",
    cseq: int = 101,
    from_tag: str | None = "from1",
    to_tag: str | None = None,
    call_id: str = "call-1",
    contact: str | None = CALLER_CONTACT,
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        "From: Alice <sip:alice@example.com>" + (f";tag={from_tag}" if from_tag else ""),
        "To: <sip:record@example.org>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *([f"Contact: {contact}"] if contact else []),
        *extra,
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request) and not message.problems
    return message


def _answer_to(
    request: Request,
    status: int,
    *,
    to_tag: str | None = "bob1",
    contact: str | None = "<sip:bob@203.0.113.5:5080>",
    extra: tuple[str, ...] = (),
) -> Response:
    """The far end's response to a request we sent (read back from bytes, as it would arrive)."""
    to = request.headers.get("to") or ""
    lines = [
        f"SIP/2.0 {status} Whatever",
        *(f"Via: {v}" for v in request.headers.get_all("via")),
        f"From: {request.headers.get('from')}",
        f"To: {to}" + (f";tag={to_tag}" if to_tag and "tag=" not in to else ""),
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.cseq}",
        *([f"Contact: {contact}"] if contact else []),
        *extra,
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Response)
    return message


def _uas(*extra: str, seq_start: int = 1, seed: int = 1) -> tuple[Dialog, Request]:
    invite = _request("INVITE", extra=extra)
    return Dialog.for_uas(invite, "ours1", seq_start, rng=random.Random(seed)), invite


def _in_dialog(method: str, cseq: int, *, contact: str | None = CALLER_CONTACT) -> Request:
    """A request from the caller within the UAS dialog of _uas()."""
    return _request(method, cseq=cseq, to_tag="ours1", contact=contact)


def _routes(request: Request) -> list[str]:
    return [str(r.uri) for r in request.routes()]


# --- UAS -----------------------------------------------------------------------------------------


def test_uas_route_set_is_the_record_route_in_order_and_bye_follows_it() -> None:
    dialog, invite = _uas(
        "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>", "Record-Route: <sip:p3.example.com;lr>"
    )
    assert (dialog.role, dialog.state) == (Role.UAS, DialogState.EARLY)
    assert [str(r.uri) for r in dialog.route_set] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
        "sip:p3.example.com;lr",
    ]
    assert str(dialog.remote_target) == "sip:alice@192.0.2.10:5070;transport=tcp"
    assert (dialog.remote_seq, dialog.remote_tag, dialog.local_tag) == (101, "from1", "ours1")
    assert dialog.local_uri.tag is None and dialog.remote_uri.tag is None

    early = dialog.answer(invite, 183, contact=OUR_CONTACT)
    assert early.headers.get_all("record-route") == invite.headers.get_all("record-route")
    assert dialog.state is DialogState.EARLY
    ok = dialog.answer(invite, 200, contact=OUR_CONTACT)
    assert dialog.state is DialogState.CONFIRMED
    # the 200 copies the Record-Route lines as they came, in order (RFC 3261 §12.1.1)
    assert ok.headers.get_all("record-route") == invite.headers.get_all("record-route")
    assert ok.to.tag == "ours1" and ok.headers.get("contact") == "<sip:198.51.100.1:5060;transport=tcp>"

    bye, next_hop = dialog.request("BYE", via=OUR_VIA)
    assert bye.uri == "sip:alice@192.0.2.10:5070;transport=tcp"
    assert _routes(bye) == ["sip:p1.example.com;lr", "sip:p2.example.com;lr", "sip:p3.example.com;lr"]
    assert str(next_hop) == "sip:p1.example.com;lr"
    assert (bye.from_.tag, bye.to.tag, bye.call_id, str(bye.cseq)) == ("ours1", "from1", "call-1", "1 BYE")
    assert bye.max_forwards == 70 and bye.branch.startswith("z9hG4bK")
    assert dialog.state is DialogState.TERMINATED  # a BYE ends the dialog as it is sent (§15.1.1)


def test_uas_without_route_set_sends_to_the_contact_over_its_transport() -> None:
    dialog, invite = _uas(seq_start=7000)
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    bye, next_hop = dialog.request("BYE", via=OUR_VIA, headers=[("Reason", 'SIP;cause=200;text="hangup"')])
    assert bye.routes() == [] and str(next_hop) == "sip:alice@192.0.2.10:5070;transport=tcp"
    assert next_hop.transport == "tcp" and str(bye.cseq) == "7000 BYE"
    assert bye.headers.get("reason") == 'SIP;cause=200;text="hangup"'


def test_a_strict_router_gets_its_uri_as_request_uri_and_the_target_as_last_route() -> None:
    dialog, invite = _uas("Record-Route: <sip:strict.example.com;method=INVITE>, <sip:p2.example.com;lr>")
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    bye, next_hop = dialog.request("BYE", via=OUR_VIA)
    assert bye.uri == "sip:strict.example.com"  # a Request-URI carries no method parameter (§19.1.1)
    assert _routes(bye) == ["sip:p2.example.com;lr", "sip:alice@192.0.2.10:5070;transport=tcp"]
    assert str(next_hop) == "sip:strict.example.com;method=INVITE"


def test_in_dialog_answers_carry_one_to_tag() -> None:
    dialog, invite = _uas()
    assert dialog.answer(invite, 180, contact=OUR_CONTACT).to.tag == "ours1"
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    options = _in_dialog("OPTIONS", 102)
    assert dialog.receive_request(options) is None
    answer = dialog.answer(options, 200)
    assert (answer.headers.get("to") or "").count("tag=") == 1 and answer.to.tag == "ours1"
    assert answer.headers.get_all("record-route") == []  # only answers that establish the dialog copy it


def test_a_request_with_a_lower_cseq_is_refused_500_and_equal_or_higher_taken() -> None:
    dialog, invite = _uas()
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    old = dialog.receive_request(_in_dialog("OPTIONS", 100))
    assert old is not None and old.status == 500 and "lower than 101" in old.reason
    assert dialog.remote_seq == 101
    assert dialog.receive_request(_in_dialog("INFO", 101)) is None  # equal: retransmissions are not ours
    assert dialog.receive_request(_in_dialog("INFO", 150)) is None and dialog.remote_seq == 150
    assert dialog.receive_request(_in_dialog("ACK", 3)) is None and dialog.remote_seq == 150  # never answered


def test_a_request_of_another_dialog_gets_481_and_so_does_one_after_bye() -> None:
    dialog, invite = _uas()
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    strangers = [
        _request("BYE", cseq=102, to_tag="ours1", from_tag="other"),
        _request("BYE", cseq=102, to_tag="ours1", call_id="call-2"),
        _request("BYE", cseq=102, to_tag="not-ours"),
    ]
    for stranger in strangers:
        assert not dialog.matches(stranger)
        assert dialog.receive_request(stranger) == Rejection(481, "Call/Transaction Does Not Exist")
    bye = _in_dialog("BYE", 102)
    assert dialog.matches(bye) and dialog.receive_request(bye) is None
    assert dialog.state is DialogState.TERMINATED
    late = dialog.receive_request(_in_dialog("INFO", 103))
    assert late is not None and late.status == 481
    with pytest.raises(DialogError, match="is over"):
        dialog.request("BYE", via=OUR_VIA)


def test_a_reinvite_refreshes_the_target_only_when_answered_2xx() -> None:
    dialog, invite = _uas()
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    moved = _in_dialog("INVITE", 102, contact="<sip:alice@192.0.2.99:5099>")
    assert dialog.receive_request(moved) is None
    dialog.answer(moved, 488)
    assert str(dialog.remote_target) == "sip:alice@192.0.2.10:5070;transport=tcp"
    again = _in_dialog("INVITE", 103, contact="<sip:alice@192.0.2.99:5099>")
    assert dialog.receive_request(again) is None
    dialog.answer(again, 200, contact=OUR_CONTACT)
    assert str(dialog.remote_target) == "sip:alice@192.0.2.99:5099"
    update = _in_dialog("UPDATE", 104, contact="<sip:alice@192.0.2.77>")
    assert dialog.receive_request(update) is None
    dialog.answer(update, 200, contact=OUR_CONTACT)
    assert str(dialog.remote_target) == "sip:alice@192.0.2.77"
    info = _in_dialog("INFO", 105, contact="<sip:alice@192.0.2.66>")
    dialog.receive_request(info)
    dialog.answer(info, 200)
    assert str(dialog.remote_target) == "sip:alice@192.0.2.77"  # INFO refreshes nothing
    with pytest.raises(DialogError, match="needs our Contact"):
        dialog.answer(_in_dialog("INVITE", 106), 200)


def test_reinvite_glare_gets_491_and_a_second_invite_500_with_retry_after() -> None:
    dialog, invite = _uas(seed=5)
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    ours, _ = dialog.request("INVITE", via=OUR_VIA, contact=OUR_CONTACT)
    crossing = dialog.receive_request(_in_dialog("INVITE", 102))
    assert crossing is not None and crossing.status == 491
    dialog.receive_response(_answer_to(ours, 200, to_tag=None, contact=CALLER_CONTACT))
    assert dialog.invite_out is None

    theirs = _in_dialog("INVITE", 103)
    assert dialog.receive_request(theirs) is None
    with pytest.raises(DialogError, match="still in progress"):
        dialog.request("INVITE", via=OUR_VIA, contact=OUR_CONTACT)
    assert dialog.receive_request(_in_dialog("INVITE", 103)) is None  # a retransmission is not a second one
    second = dialog.receive_request(_in_dialog("INVITE", 104))
    assert second is not None and second.status == 500
    (name, value), *_ = second.headers
    assert name == "Retry-After" and 0 <= int(value) <= 10

    def second_invite(seed: int) -> Rejection | None:
        dialog, invite = _uas(seed=seed)
        dialog.answer(invite, 200, contact=OUR_CONTACT)
        dialog.receive_request(_in_dialog("INVITE", 103))
        return dialog.receive_request(_in_dialog("INVITE", 104))

    assert second_invite(7) == second_invite(7)  # the wait comes from the given random source
    waits = {int(rejection.headers[0][1]) for seed in range(40) if (rejection := second_invite(seed))}
    assert len(waits) > 1 and waits <= set(range(11))
    dialog.answer(theirs, 200, contact=OUR_CONTACT)
    assert dialog.invite_in is None
    dialog.request("INVITE", via=OUR_VIA, contact=OUR_CONTACT)


def test_uas_early_dialog_ends_by_a_final_answer_not_a_bye() -> None:
    dialog, invite = _uas()
    dialog.answer(invite, 183, contact=OUR_CONTACT)
    with pytest.raises(DialogError, match="not a BYE"):
        dialog.request("BYE", via=OUR_VIA)
    dialog.answer(invite, 486)
    assert dialog.state is DialogState.TERMINATED


def test_what_makes_no_uas_dialog_is_refused_with_the_reason() -> None:
    with pytest.raises(DialogError, match="To tag"):
        Dialog.for_uas(_request("INVITE", to_tag="x"), "ours1", 1)
    with pytest.raises(DialogError, match="0 Contacts"):
        Dialog.for_uas(_request("INVITE", contact=None), "ours1", 1)
    with pytest.raises(DialogError, match="only an INVITE"):
        Dialog.for_uas(_request("OPTIONS"), "ours1", 1)
    with pytest.raises(DialogError, match="local_seq_start"):
        Dialog.for_uas(_request("INVITE"), "ours1", 0)
    broken = _request("INVITE")
    broken.headers.set("From", "<sip:>")
    with pytest.raises(DialogError, match="cannot make a dialog"):
        Dialog.for_uas(broken, "ours1", 1)


def test_requests_the_dialog_cannot_send_are_refused() -> None:
    dialog, invite = _uas(seq_start=MAX_CSEQ)
    dialog.answer(invite, 200, contact=OUR_CONTACT)
    for method in ("ACK", "CANCEL"):
        with pytest.raises(DialogError, match="not built here"):
            dialog.request(method, via=OUR_VIA)
    with pytest.raises(DialogError, match="give our Contact"):
        dialog.request("UPDATE", via=OUR_VIA)
    info, _ = dialog.request("INFO", via=OUR_VIA)
    assert info.cseq.number == MAX_CSEQ
    with pytest.raises(DialogError, match="no further request fits"):
        dialog.request("INFO", via=OUR_VIA)


def test_the_secure_flag_needs_sips_over_tls() -> None:
    tls = _request("INVITE", uri="sips:record@example.org", via="SIP/2.0/TLS 192.0.2.10;branch=z9hG4bKs")
    assert Dialog.for_uas(tls, "t", 1).secure
    udp = _request("INVITE", uri="sips:record@example.org")
    assert not Dialog.for_uas(udp, "t", 1).secure
    assert not Dialog.for_uas(_request("INVITE"), "t", 1).secure


# --- UAC -----------------------------------------------------------------------------------------


def _our_invite(*extra: str) -> Request:
    """An INVITE we send (outbound leg): From tag ours, no To tag."""
    return _request(
        "INVITE",
        uri="sip:bob@example.net",
        via="SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKinv1",
        from_tag="ourtag",
        cseq=20,
        contact="<sip:198.51.100.1:5060>",
        extra=extra,
    )


def test_uac_route_set_is_the_record_route_reversed_and_fixed_at_confirmation() -> None:
    invite = _our_invite()
    ringing = _answer_to(invite, 180, extra=("Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>",))
    dialog = Dialog.for_uac(invite, ringing, rng=random.Random(2))
    assert (dialog.role, dialog.state, dialog.invite_out) == (Role.UAC, DialogState.EARLY, 20)
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert (dialog.local_tag, dialog.remote_tag, dialog.local_seq, dialog.remote_seq) == ("ourtag", "bob1", 20, None)
    assert str(dialog.remote_uri.uri) == "sip:record@example.org" and dialog.remote_uri.tag is None

    ok = _answer_to(
        invite,
        200,
        contact="<sip:bob@203.0.113.9>",
        extra=("Record-Route: <sip:p3.example.com;lr>", "Record-Route: <sip:p1.example.com;lr>"),
    )
    dialog.receive_response(ok)
    assert dialog.state is DialogState.CONFIRMED and dialog.invite_out is None
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example.com;lr", "sip:p3.example.com;lr"]
    assert str(dialog.remote_target) == "sip:bob@203.0.113.9"

    reinvite, next_hop = dialog.request("INVITE", via=OUR_VIA, contact=OUR_CONTACT)
    assert str(reinvite.cseq) == "21 INVITE" and reinvite.uri == "sip:bob@203.0.113.9"
    assert _routes(reinvite) == ["sip:p1.example.com;lr", "sip:p3.example.com;lr"]
    assert str(next_hop) == "sip:p1.example.com;lr"
    moved = _answer_to(
        reinvite, 200, contact="<sip:bob@203.0.113.10>", extra=("Record-Route: <sip:elsewhere.example.com;lr>",)
    )
    dialog.receive_response(moved)
    assert str(dialog.remote_target) == "sip:bob@203.0.113.10"  # target refreshed
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example.com;lr", "sip:p3.example.com;lr"]  # fixed


def test_ack_for_a_2xx_has_the_invite_cseq_a_new_branch_and_its_credentials() -> None:
    invite = _our_invite(
        'Authorization: Digest username="u", realm="r", nonce="n", uri="sip:bob@example.net", response="x"',
        'Proxy-Authorization: Digest username="u", realm="p", nonce="m", uri="sip:bob@example.net", response="y"',
    )
    ok = _answer_to(invite, 200, extra=("Record-Route: <sip:p1.example.com;lr>",))
    dialog = Dialog.for_uac(invite, ok, rng=random.Random(3))
    assert dialog.state is DialogState.CONFIRMED
    ack, next_hop = dialog.ack(invite, ok, via=OUR_VIA, headers=[("Content-Type", "application/sdp")], body=b"v=0\r\n")
    assert ack.method == "ACK" and str(ack.cseq) == "20 ACK"
    assert ack.branch.startswith("z9hG4bK") and ack.branch != invite.branch
    assert ack.headers.get("authorization") == invite.headers.get("authorization")
    assert ack.headers.get("proxy-authorization") == invite.headers.get("proxy-authorization")
    assert ack.uri == "sip:bob@203.0.113.5:5080" and _routes(ack) == ["sip:p1.example.com;lr"]
    assert str(next_hop) == "sip:p1.example.com;lr"
    assert (ack.to.tag, ack.from_.tag, ack.body) == ("bob1", "ourtag", b"v=0\r\n")
    again, _ = dialog.ack(invite, ok, via=OUR_VIA)
    assert again.branch != ack.branch  # a retransmitted 2xx is ACKed by the same rules: a new transaction
    bye, _ = dialog.request("BYE", via=OUR_VIA)
    assert str(bye.cseq) == "21 BYE"  # ACKs did not use up a CSeq number
    assert dialog.ack(invite, ok, via=OUR_VIA)[0].method == "ACK"  # a 2xx after our BYE is still ACKed
    with pytest.raises(DialogError, match="INVITE transaction"):
        dialog.ack(invite, _answer_to(invite, 486), via=OUR_VIA)
    with pytest.raises(DialogError, match="does not answer this INVITE"):
        dialog.ack(invite, _answer_to(invite, 200, to_tag="someone-else"), via=OUR_VIA)


def test_forking_gives_one_dialog_per_to_tag() -> None:
    invite = _our_invite()
    first = _answer_to(invite, 180, to_tag="b1", contact="<sip:bob@phone1.example.net>")
    second = _answer_to(invite, 183, to_tag="b2", contact="<sip:bob@phone2.example.net>")
    assert dialog_id_of(first) == DialogId("call-1", "ourtag", "b1")
    assert dialog_id_of(first) != dialog_id_of(second)
    dialogs = {dialog_id_of(r): Dialog.for_uac(invite, r) for r in (first, second)}
    assert {str(d.remote_target) for d in dialogs.values()} == {
        "sip:bob@phone1.example.net",
        "sip:bob@phone2.example.net",
    }
    one, two = dialogs[dialog_id_of(first)], dialogs[dialog_id_of(second)]
    answered = _answer_to(invite, 200, to_tag="b2", contact="<sip:bob@phone2.example.net>")
    with pytest.raises(DialogError, match="forking proxy"):
        one.receive_response(answered)
    dialogs[dialog_id_of(answered)].receive_response(answered)
    assert (one.state, two.state) == (DialogState.EARLY, DialogState.CONFIRMED)
    # the request side of the id: a request the peer sends names our tag in To
    bye = _request("BYE", to_tag="ourtag", from_tag="b2", cseq=1)
    assert dialog_id_of(bye) == two.id and two.matches(bye) and not one.matches(bye)


def test_uac_dialog_ends_on_an_error_to_the_invite_or_408_481_to_any_request() -> None:
    invite = _our_invite()
    early = Dialog.for_uac(invite, _answer_to(invite, 180))
    early.receive_response(_answer_to(invite, 180))  # a provisional again changes nothing
    assert early.state is DialogState.EARLY
    early.receive_response(_answer_to(invite, 486))
    assert early.state is DialogState.TERMINATED
    for status in (408, 481):
        dialog = Dialog.for_uac(invite, _answer_to(invite, 200))
        info, _ = dialog.request("INFO", via=OUR_VIA)
        dialog.receive_response(_answer_to(info, 404))
        assert dialog.state is DialogState.CONFIRMED  # other errors leave the dialog alone
        dialog.receive_response(_answer_to(info, status))
        assert dialog.state is DialogState.TERMINATED


def test_a_uac_may_bye_an_early_dialog() -> None:
    invite = _our_invite()
    dialog = Dialog.for_uac(invite, _answer_to(invite, 180))
    bye, _ = dialog.request("BYE", via=OUR_VIA)
    assert str(bye.cseq) == "21 BYE" and dialog.state is DialogState.TERMINATED
    dialog.receive_response(_answer_to(bye, 200))  # its answer, after the end, is no error


def test_what_makes_no_uac_dialog_is_refused_with_the_reason() -> None:
    invite = _our_invite()
    with pytest.raises(DialogError, match="a 100 makes no dialog"):
        Dialog.for_uac(invite, _answer_to(invite, 100))
    with pytest.raises(DialogError, match="without a To tag"):
        Dialog.for_uac(invite, _answer_to(invite, 180, to_tag=None))
    with pytest.raises(DialogError, match="without a Contact"):
        Dialog.for_uac(invite, _answer_to(invite, 200, contact=None))
    with pytest.raises(DialogError, match="does not answer this INVITE"):
        Dialog.for_uac(invite, _answer_to(_request("INVITE", call_id="other", from_tag="ourtag", cseq=20), 200))
    early = Dialog.for_uac(invite, _answer_to(invite, 180, contact=None))
    assert str(early.remote_target) == "sip:bob@example.net"  # until the 2xx names one


def test_branches_come_from_the_given_random_source() -> None:
    def bye(seed: int) -> bytes:
        dialog, invite = _uas(seed=seed)
        dialog.answer(invite, 200, contact=OUR_CONTACT)
        return dialog.request("BYE", via=OUR_VIA)[0].encode()

    assert bye(1) == bye(1) and bye(1) != bye(2)
