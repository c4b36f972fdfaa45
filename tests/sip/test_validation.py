"""validation.py: which requests the UAS refuses and with what answer (RFC 3261 §8.2, §18.3), checked
rule by rule (issue 12's table), against RFC 4475's torture messages (tests/sip/torture/), and by a fuzz
of mutated INVITEs. No sockets, no clock."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest

from swml_engine.transports.sip.message import MessageError, Request, Response, parse_message
from swml_engine.transports.sip.validation import (
    ALLOW,
    DROP,
    Rejection,
    allow_header,
    check_request,
    check_response,
)

TORTURE_DIR = Path(__file__).parent / "torture"

SDP = (
    b"v=0\r\no=- 7 7 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
START = "INVITE sip:agent@example.org SIP/2.0"
BASE = (
    ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbase1;rport"),
    ("Max-Forwards", "70"),
    ("From", '"Caller" <sip:caller@example.net>;tag=f1'),
    ("To", "<sip:agent@example.org>"),
    ("Call-ID", "base.1@192.0.2.10"),
    ("CSeq", "1 INVITE"),
    ("Contact", "<sip:caller@192.0.2.10:5060>"),
    ("Content-Type", "application/sdp"),
)


def message(
    start: str = START,
    *,
    without: tuple[str, ...] = (),
    changed: dict[str, str] | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    body: bytes = SDP,
    length: str | None = None,
) -> bytes:
    """A request from the base INVITE: headers removed, changed (by name) or added; Content-Length from
    the body unless ``length`` is given ("" leaves it out)."""
    changed = changed or {}
    headers = [(n, changed.get(n, v)) for n, v in BASE if n not in without] + list(extra)
    if length is None:
        length = str(len(body))
    if length:
        headers.append(("Content-Length", length))
    return (start + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n").encode() + body


def check(data: bytes, **policy: object) -> Rejection | None:
    request = parse_message(data)
    assert isinstance(request, Request)
    options: dict[str, object] = {"transport": "udp", "datagram": True} | policy
    return check_request(request, **options)  # type: ignore[arg-type]


# --- the validation table (issue 12, item 3) ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    data: bytes
    status: int
    reason: str
    header: tuple[str, str] | None = None
    policy: tuple[tuple[str, object], ...] = ()


ALLOWED = ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")
TABLE = {
    # rule 1: no answer can be routed
    "no Via: dropped": Row(message(without=("Via",)), DROP, "without a Via"),
    "top Via unreadable: dropped": Row(message(changed={"Via": "SIP/2.0/UDP"}), DROP, "top Via cannot be read"),
    # rule 2: not readable as a message
    "no blank line after the headers": Row(
        message(length="").removesuffix(b"\r\n\r\n" + SDP), 400, "Bad Request (no blank line after the headers)"
    ),
    "malformed request line": Row(
        message("INVITE sip:agent@example.org;x=a b SIP/2.0"), 400, "Bad Request (malformed request line)"
    ),
    "unreadable header line": Row(message(extra=(("Bad Header", "x"),)), 400, "Bad Request (unreadable header line)"),
    # rule 3
    "SIP version other than 2.0": Row(message("INVITE sip:agent@example.org SIP/3.0"), 505, "Version Not Supported"),
    # rule 4: missing or repeated single-value headers
    **{
        f"missing {name}": Row(message(without=(name,)), 400, f"Bad Request (missing {name})")
        for name in ("Call-ID", "CSeq", "From", "To")
    },
    **{
        f"{name} given twice": Row(
            message(extra=((name, dict(BASE)[name]),)), 400, f"Bad Request ({name} given 2 times)"
        )
        for name in ("Call-ID", "CSeq", "From", "To", "Max-Forwards")
    },
    # rule 5: headers that cannot be read
    "malformed Via": Row(message(extra=(("Via", "SIP/2.0/UDP ;branch=z9hG4bKx"),)), 400, "Bad Request (malformed Via)"),
    "malformed From": Row(message(changed={"From": "<sip:caller@example.net;tag=f1"}), 400, "(malformed From)"),
    "malformed To": Row(message(changed={"To": "Agent, The <sip:agent@example.org>"}), 400, "(malformed To)"),
    "malformed Contact": Row(message(changed={"Contact": "<sip:caller@>"}), 400, "(malformed Contact)"),
    "malformed Record-Route": Row(
        message(extra=(("Record-Route", "<sip:p1.example.net;lr>, sip:p2 .example.net"),)),
        400,
        "(malformed Record-Route)",
    ),
    "malformed Route": Row(message(extra=(("Route", "<sip:p1.example.net;lr"),)), 400, "(malformed Route)"),
    "malformed Call-ID": Row(message(changed={"Call-ID": "two words"}), 400, "(malformed Call-ID)"),
    "a Via of another protocol version": Row(
        message(extra=(("Via", "SIP/3.0/UDP p.example.net;branch=z9hG4bKv3"),)), 400, "(malformed Via)"
    ),
    "Via branch only the magic cookie": Row(
        message(changed={"Via": "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK"}), 400, "(Via branch is only the magic cookie)"
    ),
    # rule 6
    "malformed Request-URI": Row(message("INVITE <sip:agent@example.org> SIP/2.0"), 400, "(malformed Request-URI)"),
    "Request-URI with headers": Row(
        message("INVITE sip:agent@example.org?Subject=hi SIP/2.0"), 400, "(Request-URI with headers)"
    ),
    # rule 7
    "CSeq unreadable": Row(message(changed={"CSeq": "one INVITE"}), 400, "Bad Request (malformed CSeq)"),
    "CSeq number out of range": Row(
        message(changed={"CSeq": "2147483648 INVITE"}), 400, "Bad Request (CSeq number out of range)"
    ),
    # rule 8
    "CSeq method not the request's": Row(
        message(changed={"CSeq": "1 BYE"}), 400, "Bad Request (CSeq method does not match)"
    ),
    # rule 9
    "Content-Length larger than the datagram": Row(
        message(length="900"), 400, "Bad Request (Content-Length larger than the datagram)"
    ),
    "Content-Length negative": Row(message(length="-5"), 400, "Bad Request (Content-Length is not a byte count)"),
    "Content-Length not a number": Row(message(length="12a"), 400, "Bad Request (Content-Length is not a byte count)"),
    "Content-Length twice, same value": Row(
        message(extra=(("Content-Length", str(len(SDP))),)), 400, "Bad Request (Content-Length given 2 times)"
    ),
    "Content-Length twice, other value": Row(
        message(extra=(("l", "0"),)), 400, "Bad Request (Content-Length given 2 times)"
    ),
    # rule 10
    "Max-Forwards not a hop count": Row(message(changed={"Max-Forwards": "300"}), 400, "(malformed Max-Forwards)"),
    # rule 11
    "unknown method": Row(
        message("FROBNICATE sip:agent@example.org SIP/2.0", changed={"CSeq": "1 FROBNICATE"}, body=b""),
        501,
        "Not Implemented",
        ALLOWED,
    ),
    "known method not served": Row(
        message("INFO sip:agent@example.org SIP/2.0", changed={"CSeq": "1 INFO"}, body=b""),
        405,
        "Method Not Allowed",
        ALLOWED,
    ),
    # rule 12
    "unsupported Request-URI scheme": Row(message("INVITE mailto:agent@example.org SIP/2.0"), 416, "Unsupported URI"),
    "sips without TLS": Row(message("INVITE sips:agent@example.org SIP/2.0"), 416, "(sips needs TLS)"),
    # rule 13
    "Require with an unsupported option tag": Row(
        message(extra=(("Require", "100rel, Timer"),)), 420, "Bad Extension", ("Unsupported", "100rel")
    ),
    # rule 14
    "a body type we cannot read": Row(
        message(changed={"Content-Type": "text/plain"}, body=b"hello"),
        415,
        "Unsupported Media Type",
        ("Accept", "application/sdp"),
    ),
    "a multipart body without an SDP part": Row(
        message(changed={"Content-Type": "multipart/mixed;boundary=xyz"}, body=b"--xyz\r\n\r\nv=0\r\n--xyz--\r\n"),
        415,
        "Unsupported Media Type",
        ("Accept", "application/sdp"),
    ),
    "a body without Content-Type": Row(
        message(without=("Content-Type",)), 415, "(a body without Content-Type)", ("Accept", "application/sdp")
    ),
    "a compressed body": Row(
        message(extra=(("Content-Encoding", "gzip"),)), 415, "Unsupported Media Type", ("Accept-Encoding", "identity")
    ),
    # rule 15
    "an Accept that excludes SDP": Row(
        message(extra=(("Accept", "text/html, application/json"),)), 406, "Not Acceptable"
    ),
    "an Accept that refuses SDP by q=0": Row(
        message(extra=(("Accept", "application/sdp;q=0"),)), 406, "Not Acceptable"
    ),
    "an empty Accept": Row(message(extra=(("Accept", ""),)), 406, "Not Acceptable"),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_validation_table(name: str) -> None:
    row = TABLE[name]
    rejection = check(row.data, **dict(row.policy))
    assert rejection is not None, name
    assert rejection.status == row.status
    assert row.reason in rejection.reason
    assert rejection.warning or rejection.drop  # a person reading the answer (or the log) learns why
    if row.header is not None:
        assert row.header in rejection.headers
    assert rejection.drop == (row.status == DROP)


SERVED = {
    "the base INVITE": message(),
    "no Max-Forwards (RFC 2543 peers send none)": message(without=("Max-Forwards",)),
    "Max-Forwards 0 (we are the request's end)": message(changed={"Max-Forwards": "0"}),
    "Max-Forwards with leading zeros": message(changed={"Max-Forwards": "0070"}),
    "CSeq 2**31 - 1": message(changed={"CSeq": "2147483647 INVITE"}),
    "a tel: Request-URI (trunks)": message("INVITE tel:+15555550100 SIP/2.0"),
    "an Accept of */*": message(extra=(("Accept", "*/*"),)),
    "an Accept of application/*": message(extra=(("Accept", "text/plain, application/*;q=0.5"),)),
    "an Accept naming SDP on a later line": message(extra=(("Accept", "text/plain"), ("Accept", "application/sdp"))),
    "an identity Content-Encoding": message(extra=(("Content-Encoding", "identity"),)),
    "a Content-Type with parameters": message(changed={"Content-Type": "Application/SDP; charset=utf-8"}),
    "an INVITE without a body (delayed offer)": message(without=("Content-Type",), body=b""),
    "bytes after the Content-Length (ignored)": message(length=str(len(SDP) - 20)),
    "a Contact of another scheme": message(changed={"Contact": "<tel:+15555550100>"}),
    "Require naming a supported tag": message(extra=(("Require", "Timer"),)),
    "an ACK with Require (exempt)": message(
        "ACK sip:agent@example.org SIP/2.0", changed={"CSeq": "1 ACK"}, extra=(("Require", "100rel"),), body=b""
    ),
    "a CANCEL with Require (exempt)": message(
        "CANCEL sip:agent@example.org SIP/2.0", changed={"CSeq": "1 CANCEL"}, extra=(("Require", "100rel"),), body=b""
    ),
    "an ACK whose body is not SDP (the dialog ends the call)": message(
        "ACK sip:agent@example.org SIP/2.0", changed={"CSeq": "1 ACK", "Content-Type": "text/plain"}, body=b"hi"
    ),
    "a BYE with a body we do not read": message(
        "BYE sip:agent@example.org SIP/2.0", changed={"CSeq": "2 BYE", "Content-Type": "text/plain"}, body=b"bye"
    ),
    "an OPTIONS whose Accept excludes SDP (it gets no SDP)": message(
        "OPTIONS sip:agent@example.org SIP/2.0",
        changed={"CSeq": "3 OPTIONS"},
        extra=(("Accept", "text/plain"),),
        without=("Content-Type",),
        body=b"",
    ),
}


@pytest.mark.parametrize("name", list(SERVED))
def test_valid_requests_are_served(name: str) -> None:
    assert check(SERVED[name], supported=frozenset({"timer"})) is None


def test_sips_is_served_over_tls() -> None:
    assert check(message("INVITE sips:agent@example.org SIP/2.0"), transport="TLS", datagram=False) is None


def test_allowed_methods_are_the_policy() -> None:
    info = message("INFO sip:agent@example.org SIP/2.0", changed={"CSeq": "1 INFO"}, body=b"")
    assert check(info, allowed=ALLOW | {"INFO"}) is None
    rejection = check(message(), allowed=frozenset({"OPTIONS", "BYE"}))
    assert rejection is not None and rejection.status == 405
    assert ("Allow", "BYE, OPTIONS") in rejection.headers


def test_content_length_past_a_stream_message_is_worded_for_the_stream() -> None:
    rejection = check(message(length="900"), transport="tcp", datagram=False)
    assert rejection is not None and rejection.reason == "Bad Request (Content-Length larger than the message)"


def test_a_wrong_ack_is_dropped_never_answered() -> None:
    ack = message("ACK sip:agent@example.org SIP/2.0", changed={"CSeq": "1 INVITE"}, body=b"")
    rejection = check(ack)
    assert rejection is not None and rejection.drop
    assert "ACK" in rejection.reason and "CSeq method does not match" in rejection.reason
    with pytest.raises(ValueError, match="not answered"):
        rejection.answer(parse_message(ack), host="192.0.2.1")  # type: ignore[arg-type]


ORDER = {
    # (what the request has wrong, in two ways) -> the rule that answers
    "no Via beats everything": (message("INVITE sip:a@b SIP/3.0", without=("Via", "Call-ID")), DROP),
    "an unreadable message beats its version": (message("INVITE  sip:a@b  SIP/3.0"), 400),
    "the version beats missing headers": (message("INVITE sip:a@b SIP/3.0", without=("Call-ID",)), 505),
    "a CSeq method mismatch beats an unknown method (issue 12)": (
        message("FROB sip:a@example.org SIP/2.0", body=b""),
        400,
    ),
    "an unknown method beats the URI scheme": (
        message("FROB mailto:a@example.org SIP/2.0", changed={"CSeq": "1 FROB"}),
        501,
    ),
    "the URI scheme beats Require": (message("INVITE mailto:a@example.org SIP/2.0", extra=(("Require", "x"),)), 416),
    "Require beats the body (RFC 3261 §8.2.2.3 before §8.2.3)": (
        message(changed={"Content-Type": "text/plain"}, extra=(("Require", "x"),)),
        420,
    ),
    "the body beats Accept": (
        message(changed={"Content-Type": "text/plain"}, extra=(("Accept", "text/plain"),)),
        415,
    ),
}


@pytest.mark.parametrize("name", list(ORDER))
def test_rules_apply_in_order(name: str) -> None:
    data, status = ORDER[name]
    rejection = check(data)
    assert rejection is not None and rejection.status == status


def test_reason_and_warning_repeat_little_of_the_peers_text() -> None:
    hostile = "X" * 500
    cases = [
        message(changed={"To": f"{hostile} <sip:agent@example.org"}),
        message(f"{hostile} sip:agent@example.org SIP/2.0", changed={"CSeq": f"1 {hostile}"}, body=b""),
        message(changed={"Content-Type": f"text/{hostile}"}),
        message(extra=(("Require", ", ".join([hostile] * 5)),)),
        message(f"INVITE {hostile.lower()}:x SIP/2.0"),
        message(f"INVITE sip:agent@example.org SIP/{'9' * 300}.0"),
        message(changed={"Via": f"SIP/2.0/UDP 192.0.2.10;branch={hostile}", "CSeq": f"1 {hostile}"}, body=b""),
        message(changed={"Call-ID": f"a {hostile}\x07\x00"}),
    ]
    for data in cases:
        rejection = check(data)
        assert rejection is not None
        for text in (rejection.reason, rejection.warning):
            assert "X" * 41 not in text.upper() and "9" * 41 not in text
            assert text.isprintable(), text
        assert len(rejection.reason) < 120


def test_the_answer_carries_warning_and_headers() -> None:
    request = parse_message(message(extra=(("Require", "100rel"),)))
    assert isinstance(request, Request)
    rejection = check_request(request, transport="udp", datagram=True)
    assert rejection is not None
    answer = rejection.answer(request, host="192.0.2.1", to_tag="t9")
    again = parse_message(answer.encode())
    assert isinstance(again, Response)
    assert (again.status, again.reason) == (420, "Bad Extension")
    assert again.headers.get("unsupported") == "100rel"
    assert again.headers.get("warning") == '399 192.0.2.1 "not supported: 100rel"'
    assert again.to.tag == "t9" and again.call_id == "base.1@192.0.2.10"
    assert again.headers.get_all("via") == request.headers.get_all("via")
    assert not again.problems


def test_a_warning_text_is_quoted_safely() -> None:
    rejection = Rejection(400, "Bad Request (x)", 'a "quoted" \\ text')
    assert rejection.warning_header("h.example") == '399 h.example "a \\"quoted\\" \\\\ text"'


def test_allow_lists_methods_in_one_order() -> None:
    assert allow_header() == "INVITE, ACK, CANCEL, BYE, OPTIONS"
    assert allow_header({"OPTIONS", "ZED", "INVITE", "ALPHA"}) == "INVITE, OPTIONS, ALPHA, ZED"


# --- responses (the client side) --------------------------------------------------------------------


def test_responses_that_cannot_be_matched_are_discarded() -> None:
    ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    response = parse_message(ok)
    assert isinstance(response, Response) and check_response(response) is None
    for broken, why in [
        (ok.replace(b"SIP/2.0 200", b"SIP/3.0 200"), "SIP/3.0"),
        (ok.replace(b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr1\r\n", b""), "Via"),
        (ok.replace(b"CSeq: 1 INVITE", b"CSeq: 99999999999 INVITE"), "CSeq"),
        (ok.replace(b"Call-ID: r1\r\n", b"Call-ID: r1\r\ni: r2\r\n"), "Call-ID given 2 times"),
        (ok.replace(b"To: <sip:c@d>", b"To: <sip:c@d"), "To"),
    ]:
        response = parse_message(broken)
        assert isinstance(response, Response)
        reason = check_response(response)
        assert reason is not None and why in reason


# --- RFC 4475's torture messages ------------------------------------------------------------------


def torture(name: str) -> bytes:
    """The bytes of tests/sip/torture/<name>.sip (format: tests/sip/torture/README.md)."""
    text = (TORTURE_DIR / f"{name}.sip").read_text(encoding="utf-8")
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    out = bytearray()
    pos = 0
    for m in re.finditer(r"<hex>([0-9a-fA-F]*)</hex>", text):
        out += text[pos : m.start()].replace("\n", "\r\n").encode()
        out += bytes.fromhex(m.group(1))
        pos = m.end()
    out += text[pos:].replace("\n", "\r\n").encode()
    return bytes(out)


class Outcome(Enum):
    SERVED = "served"  # check_request: None
    REFUSED = "refused"  # check_request: a Rejection with a status
    RESPONSE_READ = "response read"  # a response check_response takes
    RESPONSE_DISCARDED = "response discarded"  # a response check_response discards
    UNREADABLE = "unreadable"  # parse_message raises MessageError: dropped


@dataclass(frozen=True)
class Expect:
    outcome: Outcome
    status: int = 0
    reason: str = ""
    header: tuple[str, str] | None = None


SERVED_ = Expect(Outcome.SERVED)
NOT_SERVED_HERE = Expect(Outcome.REFUSED, 405, "Method Not Allowed", ALLOWED)  # a REGISTER or MESSAGE


def refused(status: int, reason: str, header: tuple[str, str] | None = None) -> Expect:
    return Expect(Outcome.REFUSED, status, reason, header)


#: What a UAS does with each RFC 4475 message: the RFC's expectation, or where it leaves the choice, ours.
TORTURE = {
    # 3.1.1 valid messages: served, or the answer a UAS that does not serve the method gives
    "wsinv": SERVED_,
    "intmeth": refused(501, "Not Implemented", ALLOWED),
    "esc01": SERVED_,
    "escnull": NOT_SERVED_HERE,
    "esc02": refused(501, "Not Implemented", ALLOWED),
    "lwsdisp": SERVED_,
    "longreq": SERVED_,
    "dblreq": NOT_SERVED_HERE,
    "semiuri": SERVED_,
    "transports": SERVED_,
    "mpart01": NOT_SERVED_HERE,
    "unreason": Expect(Outcome.RESPONSE_READ),
    "noreason": Expect(Outcome.RESPONSE_READ),
    # 3.1.2 invalid messages
    "badinv01": refused(400, "(malformed Via)"),
    "clerr": refused(400, "(Content-Length larger than the datagram)"),
    "ncl": refused(400, "(Content-Length is not a byte count)"),
    "scalar02": refused(400, "(CSeq number out of range)"),
    "scalarlg": Expect(Outcome.RESPONSE_DISCARDED, reason="CSeq"),
    "quotbal": refused(400, "(malformed To)"),
    "ltgtruri": refused(400, "(malformed Request-URI)"),
    "lwsruri": refused(400, "(malformed request line)"),
    "lwsstart": refused(400, "(malformed request line)"),  # RFC: may be accepted; we refuse
    "trws": refused(400, "(malformed request line)"),  # RFC: either; we refuse
    "escruri": refused(400, "(Request-URI with headers)"),  # RFC: may ignore them; we refuse
    "baddate": SERVED_,  # RFC: either; we never read Date
    "regbadct": refused(400, "(malformed Contact)"),  # RFC: may infer '<>'; we refuse
    "badaspec": refused(400, "(malformed To)"),  # RFC: may ignore the spaces; we refuse
    "baddn": refused(400, "(malformed From)"),
    "badvers": refused(505, "Version Not Supported"),
    "mismatch01": refused(400, "(CSeq method does not match)"),
    "mismatch02": refused(400, "(CSeq method does not match)"),  # RFC: 501 preferred, 400 allowed
    "bigcode": Expect(Outcome.UNREADABLE),
    # 3.2 transaction layer
    "badbranch": refused(400, "(Via branch is only the magic cookie)"),  # RFC: 400, or RFC 2543 matching
    # 3.3 application layer
    "insuf": refused(400, "(missing Call-ID, From, To)"),
    "unkscm": refused(416, "Unsupported URI Scheme"),
    "novelsc": refused(416, "Unsupported URI Scheme"),
    "unksm2": NOT_SERVED_HERE,  # readable: the schemes are a registrar's business
    "bext01": refused(420, "Bad Extension", ("Unsupported", "neverHeardOfThis, norThisOne")),
    "invut": refused(415, "Unsupported Media Type", ("Accept", "application/sdp")),
    "regaut01": NOT_SERVED_HERE,  # a registrar would challenge it (401)
    "multi01": refused(400, "(Call-ID given 2 times)"),
    "mcl01": refused(400, "(Content-Length given 2 times)"),
    "bcast": Expect(Outcome.RESPONSE_READ),
    "zeromf": SERVED_,
    "cparam01": NOT_SERVED_HERE,
    "cparam02": NOT_SERVED_HERE,
    "regescrt": NOT_SERVED_HERE,
    "sdp01": refused(406, "Not Acceptable"),
    # 3.4 backward compatibility
    "inv2543": SERVED_,
}


def test_every_torture_message_has_an_expectation() -> None:
    assert {p.stem for p in TORTURE_DIR.glob("*.sip")} == set(TORTURE)


@pytest.mark.parametrize("name", list(TORTURE))
def test_torture_message(name: str) -> None:
    expect = TORTURE[name]
    data = torture(name)
    if expect.outcome is Outcome.UNREADABLE:
        with pytest.raises(MessageError):
            parse_message(data)
        return
    message = parse_message(data)
    if expect.outcome in (Outcome.RESPONSE_READ, Outcome.RESPONSE_DISCARDED):
        assert isinstance(message, Response)
        reason = check_response(message)
        if expect.outcome is Outcome.RESPONSE_READ:
            assert reason is None
        else:
            assert reason is not None and expect.reason in reason
        return
    assert isinstance(message, Request)
    rejection = check_request(message, transport="udp", datagram=True)
    if expect.outcome is Outcome.SERVED:
        assert rejection is None, rejection
        return
    assert rejection is not None
    assert (rejection.status, expect.reason in rejection.reason) == (expect.status, True), rejection
    if expect.header is not None:
        assert expect.header in rejection.headers
    answer = parse_message(rejection.answer(message, host="192.0.2.1", to_tag="tt").encode())
    assert isinstance(answer, Response) and answer.status == expect.status and not answer.problems


@pytest.mark.parametrize("name", [n for n, e in TORTURE.items() if e is NOT_SERVED_HERE])
def test_torture_requests_of_other_methods_are_valid_where_the_method_is_served(name: str) -> None:
    request = parse_message(torture(name))
    assert isinstance(request, Request)
    allowed = ALLOW | {"REGISTER", "MESSAGE"}
    assert check_request(request, transport="udp", datagram=True, allowed=allowed) is None


@pytest.mark.parametrize("name", [n for n, e in TORTURE.items() if e.outcome is Outcome.SERVED])
def test_served_torture_messages_frame_their_body_exactly(name: str) -> None:
    request = parse_message(torture(name))
    declared = request.headers.get("content-length")
    assert not request.problems
    if declared is not None:
        assert len(request.body) == int(declared)


def test_wsinv_reads_through_folding_and_odd_spacing() -> None:
    request = parse_message(torture("wsinv"))
    assert isinstance(request, Request)
    assert request.uri == "sip:agent@desk.example.com;unknownparam"
    assert request.to.uri.user == "agent" and request.to.tag == "77aa81"
    assert request.from_.display == 'Dana \\"' and request.from_.tag == "5fz2k"
    assert request.max_forwards == 42
    assert (request.cseq.number, request.cseq.method) == (17, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in request.vias()] == [
        ("UDP", "192.0.2.7", "7hf82k"),
        ("TCP", "relay.example.org", "z9hG4bK.wsinv2"),
        ("UDP", "192.168.1.9", "z9hG4bK.wsinv3"),
    ]
    (contact,) = request.contacts()
    assert contact.display == 'Quote "me"' and contact.params == (("extra", "val"), ("flag", None), ("q", "0.7"))
    assert request.headers.get("subject") == ""
    assert request.headers.get("oddheader") == "first part second part"
    assert request.routes()[0].uri.has_param("lr")
    assert request.body.startswith(b"v=0\r\n")


def test_intmeth_reads_every_valid_character() -> None:
    request = parse_message(torture("intmeth"))
    assert isinstance(request, Request)
    assert request.method == "!odd-Method_0123456789*+`.%yes'~"
    uri = request.to.uri
    assert uri.user == "x_weird.User~(see!this)&that's+it$/fine?,/;;*" and uri.host == "example.org"
    assert request.to.display == "ctl:\x07 nul:\x00 del:\x7f"
    assert request.from_.display == "word1~` word2'+_ word3*%!.-"
    assert request.from_.param("fromP''~+*_!.-%") == '"привет"'
    assert request.call_id == "intmeth.x%ZZ-!.*_+'@host`~)(><:\\/\"][?}{"
    assert request.headers.get("ext-Header-!.%*+_`'~") == "\ufeff你好"


def test_escapes_are_kept_as_written() -> None:
    esc01 = parse_message(torture("esc01"))
    assert isinstance(esc01, Request)
    from swml_engine.transports.sip.uri import parse_uri

    assert parse_uri(esc01.uri).user == "sips%3Ausr%40example.org"
    assert esc01.from_.uri.user == "A%20name%20with%20spaces"
    assert esc01.contacts()[0].uri.params == (("%6C%72", None), ("k%65y", "v%61l%25%34%31"))
    escnull = parse_message(torture("escnull"))
    assert [c.uri.user for c in escnull.contacts()] == ["%00", "%00%00"]
    assert escnull.to.uri.user == "zero-%00-zero"


def test_esc02_percent_is_not_an_escape() -> None:
    request = parse_message(torture("esc02"))
    assert isinstance(request, Request)
    assert request.method == "RE%47IST%45R"
    assert request.to.display == "%Z%45"
    assert [c.uri.user for c in request.contacts()] == ["first", "second"]  # C%6Fntact is another header


def test_semiuri_user_part_holds_the_semicolon() -> None:
    request = parse_message(torture("semiuri"))
    assert isinstance(request, Request)
    from swml_engine.transports.sip.uri import parse_uri

    uri = parse_uri(request.uri)
    assert (uri.user, uri.host, uri.params) == ("usr;par=u%40example.net", "example.org", ())
    assert len(request.headers.values("accept")) == 6


def test_dblreq_reads_only_the_first_message() -> None:
    request = parse_message(torture("dblreq"))
    assert isinstance(request, Request)
    assert (request.method, request.body) == ("REGISTER", b"")


def test_mpart01_frames_a_binary_body_by_content_length() -> None:
    request = parse_message(torture("mpart01"))
    assert len(request.body) == int(request.headers.get("content-length") or -1)
    assert b"\x00\x01\x02\x00\xff\r\n\r\n\x00" in request.body
    assert request.body.endswith(b"--b0undary-7f3a--\r\n")


def test_longreq_keeps_every_via_and_long_value() -> None:
    request = parse_message(torture("longreq"))
    vias = request.vias()
    assert len(vias) == 41 and vias[0].host == "relay40.example.org" and vias[-1].branch.endswith("longlong")
    assert request.from_.tag == "77" + "310" * 40 + "9"


def test_reason_phrases_are_read_as_they_are() -> None:
    unreason = parse_message(torture("unreason"))
    noreason = parse_message(torture("noreason"))
    assert isinstance(unreason, Response) and isinstance(noreason, Response)
    assert unreason.reason == "= 3 * 67 все хорошо"
    assert (noreason.status, noreason.reason) == (100, "")


# --- fuzz ----------------------------------------------------------------------------------------


def _mutations(seed: int, count: int) -> list[bytes]:
    """``count`` mutations of the base INVITE: bytes changed, cut short, lines repeated, dropped, swapped."""
    rng = random.Random(seed)
    base = message(extra=(("Record-Route", "<sip:p1.example.net;lr>, <sip:p2.example.net;lr>"),))
    lines = base.split(b"\r\n")
    specials = b'\x00\r\n\t :;,<>"\\@/%=?[]*'
    out = []
    for _ in range(count):
        kind = rng.randrange(6)
        if kind == 0:  # bytes changed
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.choice(specials) if rng.random() < 0.6 else rng.randrange(256)
            out.append(bytes(data))
        elif kind == 1:  # cut short
            out.append(base[: rng.randrange(len(base))])
        elif kind == 2:  # a line repeated
            i = rng.randrange(len(lines))
            out.append(b"\r\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]))
        elif kind == 3:  # a line dropped
            i = rng.randrange(len(lines))
            out.append(b"\r\n".join(lines[:i] + lines[i + 1 :]))
        elif kind == 4:  # two lines swapped
            shuffled = list(lines)
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
            out.append(b"\r\n".join(shuffled))
        else:  # bytes inserted
            data = bytearray(base)
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.choice(specials) for _ in range(rng.randint(1, 4)))
            out.append(bytes(data))
    return out


def test_mutated_invites_never_raise_anything_but_message_error() -> None:
    outcomes: dict[str, int] = {}
    for data in _mutations(seed=20261129, count=4000):
        try:
            message_ = parse_message(data)
        except MessageError:
            outcomes["unreadable"] = outcomes.get("unreadable", 0) + 1
            continue
        if isinstance(message_, Response):
            check_response(message_)
            continue
        rejection = check_request(message_, transport="udp", datagram=True)
        kind = "served" if rejection is None else "dropped" if rejection.drop else str(rejection.status)
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if rejection is None or rejection.drop:
            continue
        assert rejection.reason.isprintable() and rejection.warning.isprintable()
        answer = rejection.answer(message_, host="192.0.2.1", to_tag="fz")
        # what we send is one well-formed message, whatever came in
        again = parse_message(answer.encode())
        assert isinstance(again, Response) and again.status == rejection.status and not again.problems
    # the mutations reach every kind of outcome (a fuzz that only ever hit one rule would prove little)
    assert {"unreadable", "served", "dropped", "400"} <= set(outcomes), outcomes


def test_a_multipart_body_with_an_sdp_part_is_read_for_it() -> None:
    # RFC 5621, as SIP-I carriers send it: the SDP part is the offer, the ISUP part is left alone.
    body = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + SDP + b"\r\n--b1\r\n"
        b"Content-Type: application/ISUP;version=itu-t92+\r\nContent-Disposition: signal;handling=optional\r\n\r\n"
        b"\x01\x00\x49\x00\r\n--b1--\r\n"
    )
    data = message(changed={"Content-Type": 'multipart/mixed; boundary="b1"'}, body=body)
    assert check(data) is None
    request = parse_message(data)
    assert isinstance(request, Request) and request.sdp == SDP
