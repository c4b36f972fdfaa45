"""message.py: reading SIP messages from bytes (liberal where RFC 3261 allows, defects recorded as
problems with their kind), header access, Via/CSeq/Max-Forwards values, writing messages back."""

from __future__ import annotations

import pytest

from swml_engine.transports.sip.message import (
    BadHeader,
    CSeq,
    Defect,
    Headers,
    MessageError,
    Problem,
    Request,
    Response,
    Via,
    parse_message,
    parse_via,
    read_number,
    response_to,
)

INVITE = (
    b"INVITE sip:agent@example.org SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKm1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Caller" <sip:caller@example.net>;tag=f1\r\n'
    b"To: <sip:agent@example.org>\r\n"
    b"Call-ID: m1@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 5\r\n"
    b"\r\nv=0\r\n"
)


def kinds(message: Request | Response) -> list[Defect]:
    return [p.kind for p in message.problems if isinstance(p, Problem)]


def test_a_request_is_read() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    assert (request.method, request.uri, request.version) == ("INVITE", "sip:agent@example.org", "SIP/2.0")
    assert request.call_id == "m1@192.0.2.10" and request.cseq == CSeq(1, "INVITE")
    assert request.top_via.sent_by == "192.0.2.10:5060" and request.branch == "z9hG4bKm1"
    assert request.from_.tag == "f1" and request.to.tag is None
    assert request.max_forwards == 70 and request.content_type == "application/sdp"
    assert request.body == b"v=0\r\n" and request.problems == []


def test_headers_match_by_any_case_and_compact_name_and_keep_their_order() -> None:
    headers = Headers([("v", "a"), ("VIA", "b"), ("i", "c1"), ("x-custom", "1"), ("Via", "c, d")])
    assert headers.get_all("Via") == ["a", "b", "c, d"] and headers.values("v") == ["a", "b", "c", "d"]
    assert headers.get("CALL-ID") == "c1" and "call-id" in headers and "route" not in headers
    assert list(headers)[:3] == [("Via", "a"), ("Via", "b"), ("Call-ID", "c1")]
    copy = headers.copy()
    headers.set("via", "z")
    assert headers.get_all("via") == ["z"] and next(iter(headers)) == ("Via", "z")
    headers.remove("x-custom")
    assert "x-custom" not in headers and headers.count("via") == 1 and len(headers) == 2
    assert copy.count("via") == 3 and copy.get("x-custom") == "1"  # a copy is its own
    headers.set("Route", "<sip:p>")
    assert list(headers)[-1] == ("Route", "<sip:p>")


def test_folded_lines_and_odd_spacing_are_read() -> None:
    data = INVITE.replace(b"CSeq: 1 INVITE\r\n", b"cseq :  0001\r\n \t INVITE\r\n").replace(
        b"Max-Forwards: 70", b"max-forwards:0070"
    )
    request = parse_message(data)
    assert request.cseq == CSeq(1, "INVITE") and request.max_forwards == 70 and not request.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SIP/2.0/UDP host.example.org", Via("UDP", "host.example.org")),
        (
            "SIP / 2.0 / tcp\thost.example.org : 5070 ; branch = z9hG4bKx",
            Via("TCP", "host.example.org", 5070, (("branch", "z9hG4bKx"),)),
        ),
        (
            "SIP/2.0/TLS [2001:DB8::9]:5061;received=192.0.2.1",
            Via("TLS", "2001:db8::9", 5061, (("received", "192.0.2.1"),)),
        ),
        ("SIP/2.0/NEW h;;branch=z9hG4bK1;;", Via("NEW", "h", None, (("branch", "z9hG4bK1"),))),
    ],
)
def test_via_values_are_read(text: str, expected: Via) -> None:
    assert parse_via(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        ";",
        "SIP/2.0/UDP host:0",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP ho st",
        "SIP/2.0/U<P h",
    ],
)
def test_unreadable_via_values_are_refused(text: str) -> None:
    with pytest.raises(BadHeader, match="Via"):
        parse_via(text)


def test_cseq_and_max_forwards_values() -> None:
    def request(cseq: str, max_forwards: str = "70") -> Request:
        message = parse_message(
            INVITE.replace(b"1 INVITE", cseq.encode()).replace(b": 70", f": {max_forwards}".encode())
        )
        assert isinstance(message, Request)
        return message

    assert request("2147483647 INVITE").cseq.number == 2**31 - 1
    for bad, why in [
        ("2147483648 INVITE", "out of range"),
        ("9" * 5000 + " INVITE", "out of range"),
        ("x INVITE", "not a number"),
        ("1", "number and a method"),
        ("1 IN VITE", "number and a method"),
        ("²2 INVITE", "not a number"),
    ]:
        with pytest.raises(BadHeader, match=why):
            request(bad).cseq  # noqa: B018
    assert request("1 INVITE", "0").max_forwards == 0
    assert request("1 INVITE", "0" * 3000 + "7").max_forwards == 7
    for bad in ("256", "-1", "7a", "9" * 5000):
        with pytest.raises(BadHeader, match="Max-Forwards"):
            request("1 INVITE", bad).max_forwards  # noqa: B018


def test_read_number_never_builds_a_huge_int() -> None:
    assert read_number("0042", most=255) == 42
    assert read_number("9" * 100_000, most=255) == 256
    assert (
        read_number("-1", most=255) is None and read_number("", most=255) is None and read_number("٣", most=9) is None
    )


@pytest.mark.parametrize(
    ("line", "fault"),
    [
        (b"INVITE  sip:a@example.org SIP/2.0", "more than one space"),  # RFC 4475 §3.1.2.9
        (b"INVITE sip:a@example.org SIP/2.0  ", "spaces after the SIP version"),  # §3.1.2.10
        (b"INVITE sip:a@example.org; lr SIP/2.0", "spaces inside the Request-URI"),  # §3.1.2.8
        (b"INVITE sip:a@example.org", "without Request-URI or SIP version"),
        (b"INVITE sip:a@example.org HTTP/1.1", "not a SIP version"),
    ],
)
def test_malformed_request_lines_are_problems_not_failures(line: bytes, fault: str) -> None:
    request = parse_message(INVITE.replace(b"INVITE sip:agent@example.org SIP/2.0", line))
    assert isinstance(request, Request) and request.method == "INVITE"
    assert kinds(request) == [Defect.REQUEST_LINE] and fault in request.problems[0]


def test_the_version_is_kept_as_given() -> None:
    request = parse_message(INVITE.replace(b" SIP/2.0\r\n", b" sip/7.1\r\n", 1))
    assert isinstance(request, Request) and request.version == "SIP/7.1" and not request.problems


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (INVITE.replace(b"Content-Length: 5\r\n\r\nv=0\r\n", b"Content-Length: 0\r\n"), Defect.FRAMING),
        (INVITE.replace(b"Max-Forwards: 70", b"Max Forwards: 70"), Defect.HEADER_LINE),
        (INVITE.replace(b"Max-Forwards: 70", b"no colon here"), Defect.HEADER_LINE),
        (INVITE.replace(b"Call-ID: m1@192.0.2.10", b"Call-ID: m1\r@192.0.2.10"), Defect.HEADER_LINE),
        (INVITE.replace(b"CSeq: 1 INVITE\r\n", b"CSeq: 1 INVITE\r\nCSeq: 1 INVITE\r\n"), Defect.REPEATED),
        (INVITE.replace(b"Content-Length: 5", b"Content-Length: 6"), Defect.SHORT_BODY),
        (INVITE.replace(b"Content-Length: 5", b"Content-Length: 99999999999"), Defect.SHORT_BODY),
        (INVITE.replace(b"Content-Length: 5", b"Content-Length: -5"), Defect.BAD_LENGTH),
        (INVITE.replace(b"Content-Length: 5", b"Content-Length: five"), Defect.BAD_LENGTH),
    ],
)
def test_defects_are_recorded_with_their_kind(data: bytes, kind: Defect) -> None:
    message = parse_message(data)
    assert kinds(message) == [kind]
    assert all(isinstance(p, str) for p in message.problems)  # problems read as text, as before


def test_bytes_past_content_length_are_not_the_message() -> None:
    request = parse_message(INVITE + b"INVITE sip:x SIP/2.0\r\n\r\n")
    assert request.body == b"v=0\r\n" and not request.problems


def test_without_content_length_the_body_is_the_rest() -> None:
    request = parse_message(INVITE.replace(b"Content-Length: 5\r\n", b""))
    assert request.body == b"v=0\r\n"


def test_leading_crlfs_and_bare_lf_line_ends_are_read() -> None:
    request = parse_message(b"\r\n\r\n" + INVITE.replace(b"\r\n", b"\n"))
    assert isinstance(request, Request) and request.call_id == "m1@192.0.2.10"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b" \r\n\r\n",
        b"SIP/2.0 8589934597 big\r\n\r\n",  # RFC 4475 §3.1.2.19
        b"SIP/2.0 099 low\r\n\r\n",
        b"SIP/2.0 700 high\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
        b"<INVITE> sip:a@b SIP/2.0\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n",
        b"x" * 70_000,
    ],
)
def test_what_cannot_be_read_at_all_raises_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        parse_message(data)


def test_status_lines() -> None:
    response = parse_message(b"SIP/2.0 183 Session Progress\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(response, Response) and (response.status, response.reason) == (183, "Session Progress")
    assert parse_message(b"SIP/2.0 100 \r\n\r\n").reason == ""  # type: ignore[union-attr]


def test_a_message_is_written_and_read_back() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    again = parse_message(request.encode())
    assert isinstance(again, Request)
    assert list(again.headers) == list(request.headers) and again.body == request.body
    assert request.encode().count(b"Content-Length") == 1


def test_response_to_copies_what_rfc_3261_says_and_adds_one_to_tag() -> None:
    request = parse_message(INVITE.replace(b"Via: ", b"Via: SIP/2.0/TCP p.example.org;branch=z9hG4bKp\r\nVia: ", 1))
    assert isinstance(request, Request)
    response = response_to(request, 486, to_tag="t1", headers=[("Retry-After", "5")])
    assert (response.status, response.reason) == (486, "Busy Here")
    assert response.headers.get_all("via") == request.headers.get_all("via")
    assert response.to.tag == "t1" and response.from_.tag == "f1" and response.cseq == request.cseq
    assert response.headers.get("retry-after") == "5"
    in_dialog = parse_message(INVITE.replace(b"To: <sip:agent@example.org>", b"To: <sip:agent@example.org>;tag=a7"))
    assert isinstance(in_dialog, Request)
    assert response_to(in_dialog, 200, to_tag="other").to.tag == "a7"  # a To with a tag keeps its one tag
