"""SIP messages (RFC 3261 §7): read from bytes, built, written back — no I/O.

Reading is liberal where the RFC asks for it (RFC 4475's valid messages: folded header lines, compact
header names, odd whitespace, escaped URIs, unknown parameters, long values) and records what is wrong
instead of failing where an answer is still possible: a request whose headers can be read but whose
framing or values are broken parses into a :class:`Request` with ``problems``, and the policy
(validation.py) answers it 400, 505 ... A message that cannot be read at all (no start line, a header
block past the limits) raises :class:`MessageError` and is dropped.

Headers keep their order and their repeats; names match case-insensitively and in compact form
(``v`` is ``Via``). Values are parsed when asked for (:meth:`Message.vias`, :attr:`Message.cseq` ...),
raising :class:`BadHeader` naming the header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from swml_engine.transports.sip.uri import (
    NameAddr,
    Params,
    UriError,
    format_params,
    parse_name_addr,
    parse_params,
    split_list,
)

#: The largest message read (a UDP datagram's limit; TCP framing uses the same).
MAX_MESSAGE = 65_535
#: Header lines in one message: far above any real one (a few dozen), a bound for hostile ones.
MAX_HEADERS = 256
#: The magic cookie of RFC 3261 branches (§8.1.1.7).
BRANCH_COOKIE = "z9hG4bK"
SIP_VERSION = "SIP/2.0"
#: Largest CSeq number (RFC 3261 §8.1.1.5: less than 2**31).
MAX_CSEQ = 2**31 - 1


class Method(StrEnum):
    """The methods this engine knows by name (others are read as plain text, and answered 501)."""

    INVITE = "INVITE"
    ACK = "ACK"
    CANCEL = "CANCEL"
    BYE = "BYE"
    OPTIONS = "OPTIONS"
    REGISTER = "REGISTER"
    PRACK = "PRACK"
    UPDATE = "UPDATE"
    INFO = "INFO"
    REFER = "REFER"
    MESSAGE = "MESSAGE"
    SUBSCRIBE = "SUBSCRIBE"
    NOTIFY = "NOTIFY"
    PUBLISH = "PUBLISH"


KNOWN_METHODS: frozenset[str] = frozenset(m.value for m in Method)

#: Compact header names (RFC 3261 §7.3.3 and the extensions that define one).
COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}
#: How we write header names (others: each word capitalised).
_SPELLING = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}
#: Headers that hold one value: a message with two of them is malformed (RFC 3261 §20, §8.2 — 400).
SINGLE_VALUED = frozenset(["call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"])

#: Reason phrases for the codes we send (RFC 3261 §21 and extensions).
REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_STATUS_LINE = re.compile(r"SIP/(\d+\.\d+) +(\d{3}) ?(.*)")
_VERSION = re.compile(r"SIP/\d+\.\d+", re.IGNORECASE)


class MessageError(ValueError):
    """Bytes that are not a SIP message we can read, or answer; the message says why."""


class BadHeader(ValueError):
    """A header whose value cannot be read; ``header`` names it (for a 400's reason phrase)."""

    def __init__(self, header: str, why: str) -> None:
        super().__init__(f"{header}: {why}")
        self.header = header
        self.why = why


def header_key(name: str) -> str:
    """The name a header is matched by: lower case, compact forms expanded."""
    low = name.strip().lower()
    return COMPACT.get(low, low)


def header_spelling(name: str) -> str:
    key = header_key(name)
    return _SPELLING.get(key) or "-".join(word.capitalize() for word in key.split("-"))


class Headers:
    """Header lines in order, repeats kept; names case-insensitive and compact forms understood."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._items.append((header_spelling(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` with one (in the first one's place, else at the end)."""
        key = header_key(name)
        for i, (n, _) in enumerate(self._items):
            if header_key(n) == key:
                self._items[i] = (header_spelling(name), value)
                self._items[i + 1 :] = [(n2, v2) for n2, v2 in self._items[i + 1 :] if header_key(n2) != key]
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._items = [(n, v) for n, v in self._items if header_key(n) != key]

    def get(self, name: str) -> str | None:
        """The first line's value (None when absent)."""
        key = header_key(name)
        return next((v for n, v in self._items if header_key(n) == key), None)

    def get_all(self, name: str) -> list[str]:
        """Every line's value, in order."""
        key = header_key(name)
        return [v for n, v in self._items if header_key(n) == key]

    def values(self, name: str) -> list[str]:
        """The items of a list-valued header (Via, Route, Allow ...) over all its lines, commas split."""
        return [item for line in self.get_all(name) for item in split_list(line)]

    def count(self, name: str) -> int:
        return len(self.get_all(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        out = Headers()
        out._items = list(self._items)
        return out


@dataclass
class Via:
    """One Via value (RFC 3261 §20.42)."""

    transport: str  # UDP, TCP ... (upper case)
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = SIP_VERSION

    def param(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.params:
            if key.lower() == low:
                return value if value is not None else ""
        return None

    @property
    def branch(self) -> str:
        return self.param("branch") or ""

    @property
    def sent_by(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((k, v) for k, v in self.params if k.lower() != name.lower())
        return Via(self.transport, self.host, self.port, (*kept, (name, value)), self.protocol)

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


_SENT_BY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?::([0-9]{1,5}))?")


def parse_via(text: str) -> Via:
    proto, _, rest = text.strip().partition(" ")
    # "SIP / 2.0 / UDP" is legal (LWS around the slashes): gather until the third part.
    parts = [p.strip() for p in proto.split("/")]
    rest = rest.strip()
    while len(parts) < 3 or not parts[-1]:
        word, _, rest = rest.partition(" ")
        rest = rest.strip()
        if not word:
            raise BadHeader("Via", f"{_shown(text)!r} has no SIP/2.0/TRANSPORT")
        joined = "/".join(parts) + word
        parts = [p.strip() for p in joined.split("/")]
    if len(parts) != 3 or not all(_TOKEN.fullmatch(p) for p in parts):
        raise BadHeader("Via", f"{_shown(text)!r} has no SIP/2.0/TRANSPORT")
    sent_by, _, param_text = rest.partition(";")
    m = _SENT_BY.fullmatch(sent_by.strip())
    if m is None:
        raise BadHeader("Via", f"{_shown(text)!r}: no host (sent-by) after the transport")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port <= 65535:
        raise BadHeader("Via", f"{_shown(text)!r}: port out of range")
    try:
        params = parse_params(param_text)
    except UriError as e:
        raise BadHeader("Via", str(e)) from None
    return Via(parts[2].upper(), m.group(1).strip("[]").lower(), port, params, f"{parts[0].upper()}/{parts[1]}")


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    number, _, method = text.strip().partition(" ")
    method = method.strip()
    if not number.isascii() or not number.isdigit() or len(number) > 10:
        raise BadHeader("CSeq", f"{_shown(text)!r}: the number must be digits")
    if int(number) > MAX_CSEQ:
        raise BadHeader("CSeq", f"{number} is out of range (at most 2**31 - 1)")
    if not _TOKEN.fullmatch(method):
        raise BadHeader("CSeq", f"{_shown(text)!r}: no method after the number")
    return CSeq(int(number), method)


@dataclass
class Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION
    #: What is wrong with the message as it was read (empty for a message we built): the policy answers
    #: a request with problems 400 (or 505 for the version), the reason phrase saying which.
    problems: list[str] = field(default_factory=list)

    # --- header values ------------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if not value or not value.strip():
            raise BadHeader("Call-ID", "missing")
        return value.strip()

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("cseq")
        if value is None:
            raise BadHeader("CSeq", "missing")
        return parse_cseq(value)

    def vias(self) -> list[Via]:
        values = self.headers.values("via")
        if not values:
            raise BadHeader("Via", "missing")
        return [parse_via(v) for v in values]

    @property
    def top_via(self) -> Via:
        values = self.headers.values("via")
        if not values:
            raise BadHeader("Via", "missing")
        return parse_via(values[0])

    @property
    def branch(self) -> str:
        return self.top_via.branch

    @property
    def from_(self) -> NameAddr:
        return self._address("from")

    @property
    def to(self) -> NameAddr:
        return self._address("to")

    def contacts(self) -> list[NameAddr]:
        """Contact values (``*`` is not one: see :meth:`contact_star`)."""
        out = []
        for item in self.headers.values("contact"):
            if item.strip() == "*":
                continue
            try:
                out.append(parse_name_addr(item))
            except UriError as e:
                raise BadHeader("Contact", str(e)) from None
        return out

    def routes(self, name: str = "route") -> list[NameAddr]:
        """Route (or Record-Route) values in order."""
        out = []
        for item in self.headers.values(name):
            try:
                out.append(parse_name_addr(item))
            except UriError as e:
                raise BadHeader(header_spelling(name), str(e)) from None
        return out

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        if value is None:
            return None
        value = value.strip()
        if not value.isascii() or not value.isdigit() or len(value) > 3 or int(value) > 255:
            raise BadHeader("Max-Forwards", f"{_shown(value)!r} is not a hop count (0-255)")
        return int(value)

    @property
    def content_type(self) -> str:
        """The body's media type, lower case, without parameters ("" when none is given)."""
        value = self.headers.get("content-type") or ""
        return value.split(";")[0].strip().lower()

    def option_tags(self, name: str) -> list[str]:
        """The option tags of Require, Supported, Proxy-Require ... (lower case)."""
        return [tag.strip().lower() for tag in self.headers.values(name) if tag.strip()]

    @property
    def text(self) -> str:
        """The body as text (SDP is UTF-8)."""
        return self.body.decode("utf-8", "replace")

    def _address(self, name: str) -> NameAddr:
        value = self.headers.get(name)
        spelled = header_spelling(name)
        if value is None:
            raise BadHeader(spelled, "missing")
        try:
            return parse_name_addr(value)
        except UriError as e:
            raise BadHeader(spelled, str(e)) from None

    # --- writing ------------------------------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The message on the wire; Content-Length is always written, from the body."""
        lines = [self.start_line()]
        lines += [f"{n}: {v}" for n, v in self.headers if header_key(n) != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Request(Message):
    method: str = ""
    uri: str = ""

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"


@dataclass
class Response(Message):
    status: int = 200
    reason: str = ""

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason or REASONS.get(self.status, '')}".rstrip()

    @property
    def method(self) -> str:
        """The method of the request this answers (from CSeq)."""
        return self.cseq.method


def response_to(
    request: Request,
    status: int,
    reason: str = "",
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6.2): its Vias, From, Call-ID and CSeq; its To, with
    ``to_tag`` added when the To has none (a To that has one keeps it: in a dialog, one tag)."""
    out = Headers()
    for via in request.headers.get_all("via"):
        out.add("Via", via)
    for name in ("from", "to", "call-id", "cseq"):
        value = request.headers.get(name)
        if value is not None:
            out.add(name, value)
    if to_tag:
        to = out.get("to")
        if to is not None:
            try:
                has_tag = parse_name_addr(to).tag is not None
            except UriError:
                has_tag = True  # an unreadable To is sent back as it came
            if not has_tag:
                out.set("To", f"{to};tag={to_tag}")
    for name, value in headers:
        out.add(name, value)
    return Response(headers=out, body=body, status=status, reason=reason or REASONS.get(status, ""))


def parse_message(data: bytes) -> Request | Response:
    """Read one message (a datagram, or one framed from a TCP stream). Raises MessageError when it
    cannot be read at all; recoverable defects go into ``problems`` (see the module docstring)."""
    if len(data) > MAX_MESSAGE:
        raise MessageError(f"a {len(data)}-byte message (at most {MAX_MESSAGE})")
    data = data.lstrip(b"\r\n")  # CRLFs before a message are allowed (RFC 3261 §7.5)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")  # bare LF line ends: read them too
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    if not lines or not lines[0].strip():
        raise MessageError("no start line")
    problems: list[str] = []
    if not sep:
        problems.append("no blank line after the headers")
    message = _start(lines[0].strip(), problems)
    headers, header_problems = _headers(lines[1:])
    problems += header_problems
    message.headers = headers
    message.body = _body(headers, body, problems)
    message.problems = problems
    return message


def _start(line: str, problems: list[str]) -> Request | Response:
    if line.upper().startswith("SIP/"):
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise MessageError(f"a status line that cannot be read: {_shown(line)!r}")
        status = int(m.group(2))
        if not 100 <= status <= 699:
            raise MessageError(f"status {status} is out of range")
        return Response(status=status, reason=m.group(3).strip(), version=f"SIP/{m.group(1)}")
    parts = line.split(" ")
    method = parts[0]
    if not _TOKEN.fullmatch(method):
        raise MessageError(f"a start line that is neither a request nor a response: {_shown(line)!r}")
    words = [p for p in parts[1:] if p]
    if len(words) != 2 or len(parts) != 3:
        # e.g. spaces inside the Request-URI, or two spaces: answerable (Via may be fine), so a problem.
        problems.append("a malformed request line")
        version = words[-1] if words and _VERSION.fullmatch(words[-1]) else SIP_VERSION
        uri = words[0] if words else ""
        return Request(method=method, uri=uri, version=version)
    uri, version = words
    if not _VERSION.fullmatch(version):
        problems.append("a malformed request line")
        version = SIP_VERSION
    return Request(method=method, uri=uri, version=version.upper())


def _headers(lines: list[str]) -> tuple[Headers, list[str]]:
    problems: list[str] = []
    items: list[tuple[str, str]] = []
    for raw in lines:
        if raw[:1] in (" ", "\t") and items:  # a folded line continues the one before (RFC 3261 §7.3.1)
            name, value = items[-1]
            items[-1] = (name, f"{value} {raw.strip()}".strip())
            continue
        if not raw.strip():
            continue
        name, colon, value = raw.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.fullmatch(name):
            problems.append(f"a header line that cannot be read: {_shown(raw)!r}")
            continue
        items.append((name, value.strip()))
        if len(items) > MAX_HEADERS:
            raise MessageError(f"more than {MAX_HEADERS} header lines")
    headers = Headers(items)
    for key in sorted(SINGLE_VALUED):
        if headers.count(key) > 1:
            problems.append(f"{header_spelling(key)} given {headers.count(key)} times")
    return headers, problems


def _body(headers: Headers, body: bytes, problems: list[str]) -> bytes:
    values = headers.get_all("content-length")
    if not values:
        return body  # (UDP: the rest of the datagram; TCP framing made it exact)
    value = values[0].strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        problems.append(f"Content-Length {_shown(value)!r} is not a byte count")
        return body
    declared = int(value)
    if declared > len(body):
        problems.append(f"Content-Length {declared} is more than the {len(body)} bytes that came")
        return body
    return body[:declared]  # bytes past it are not part of the message (RFC 3261 §18.3)


def _shown(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= 60 else one[:57] + "..."
