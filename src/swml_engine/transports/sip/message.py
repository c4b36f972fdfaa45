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
from functools import lru_cache

from swml_engine.transports.sip.uri import (
    TOKEN,
    NameAddr,
    Params,
    UriError,
    format_params,
    param_value,
    parse_name_addr,
    parse_params,
    shown,
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
#: The body type of a session description (RFC 3264's offers and answers).
SDP_TYPE = "application/sdp"
#: Parts of a multipart body looked through for the SDP (RFC 5621; a SIP-I carrier sends two: SDP, ISUP).
MAX_PARTS = 8


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

_STATUS_LINE = re.compile(r"SIP/(\d+\.\d+) +(\d{3})(?: (.*))?")
_VERSION = re.compile(r"SIP/\d+\.\d+", re.IGNORECASE)


class MessageError(ValueError):
    """Bytes that are not a SIP message we can read, or answer; the message says why."""


class Defect(StrEnum):
    """What kind of thing is wrong with a message as it was read (see :class:`Problem`)."""

    #: The head is not closed by a blank line (a cut datagram).
    FRAMING = "framing"
    #: The request line is not `METHOD SP Request-URI SP SIP-Version` (extra spaces, spaces in the URI).
    REQUEST_LINE = "request line"
    #: A header line with no colon, or whose name is not a token.
    HEADER_LINE = "header line"
    #: A header that holds one value given more than once (:data:`SINGLE_VALUED`).
    REPEATED = "repeated"
    #: Content-Length is not a byte count (letters, a sign: "-999").
    BAD_LENGTH = "bad length"
    #: Content-Length says more than the bytes that came (a cut datagram, RFC 4475 §3.1.2.2).
    SHORT_BODY = "short body"


class Problem(str):
    """One entry of :attr:`Message.problems`: the text says what is wrong (a person reads it, the peer
    sees it in a reason phrase: at most :data:`~swml_engine.transports.sip.uri.SHOWN` characters of its
    own text are repeated), ``kind`` says which rule it breaks (the policy picks its answer by it)."""

    kind: Defect

    def __new__(cls, kind: Defect, text: str) -> Problem:
        made = super().__new__(cls, text)
        made.kind = kind
        return made


class BadHeader(ValueError):
    """A header whose value cannot be read; ``header`` names it (for a 400's reason phrase)."""

    def __init__(self, header: str, why: str) -> None:
        super().__init__(f"{header}: {why}")
        self.header = header
        self.why = why


#: Characters no text we put in a header may hold: controls (line breaks above all), line and paragraph
#: separators, surrogates, and the bidirectional overrides that make a log line read other than it is.
#: Anything else a display name or a header value may hold (RFC 3261 takes UTF-8 there): a no-break space,
#: accents, other scripts.
_UNFIT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def unfit_for_a_header(text: str) -> bool:
    """Whether ``text`` holds a character no header value or display name we write may hold
    (:data:`_UNFIT`): the same rule where a document is checked and where the INVITE is written."""
    return _UNFIT.search(text) is not None


@lru_cache(maxsize=1024)  # the same few dozen names come in every message
def header_key(name: str) -> str:
    """The name a header is matched by: lower case, compact forms expanded."""
    low = name.strip().lower()
    return COMPACT.get(low, low)


def header_spelling(name: str) -> str:
    return _spelled(header_key(name))


def _spelled(key: str) -> str:
    return _SPELLING.get(key) or "-".join(word.capitalize() for word in key.split("-"))


class Headers:
    """Header lines in order, repeats kept; names case-insensitive and compact forms understood."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        #: (match key, name as written by us, value), in order; and the values by key, so that a look-up
        #: does not walk the lines (a message is looked up a few dozen times on its way through the core).
        self._items: list[tuple[str, str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        key = header_key(name)
        self._items.append((key, _spelled(key), value))
        self._index.setdefault(key, []).append(value)

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` with one (in the first one's place, else at the end)."""
        key = header_key(name)
        for i, (k, _, _) in enumerate(self._items):
            if k == key:
                self._items[i] = (key, _spelled(key), value)
                self._items[i + 1 :] = [item for item in self._items[i + 1 :] if item[0] != key]
                self._index[key] = [value]
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._items = [item for item in self._items if item[0] != key]
        self._index.pop(key, None)

    def get(self, name: str) -> str | None:
        """The first line's value (None when absent)."""
        values = self._index.get(header_key(name))
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every line's value, in order."""
        return list(self._index.get(header_key(name), ()))

    def values(self, name: str) -> list[str]:
        """The items of a list-valued header (Via, Route, Allow ...) over all its lines, commas split."""
        return [item for line in self.get_all(name) for item in split_list(line)]

    def count(self, name: str) -> int:
        return len(self._index.get(header_key(name), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter([(n, v) for _, n, v in self._items])

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        out = Headers()
        out._items = list(self._items)
        out._index = {key: list(values) for key, values in self._index.items()}
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
        return param_value(self.params, name)

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


_SENT_BY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?:\s*:\s*([0-9]{1,5}))?")
#: sent-protocol then sent-by; LWS is allowed around the slashes ("SIP  /   2.0 / UDP", RFC 4475 §3.1.1.1).
_T = TOKEN.pattern
_VIA = re.compile(rf"\s*({_T})\s*/\s*({_T})\s*/\s*({_T})\s+([^;]*)(.*)", re.DOTALL)


def parse_via(text: str) -> Via:
    m = _VIA.fullmatch(text)
    if m is None:
        raise BadHeader("Via", f"{shown(text)!r} has no SIP/2.0/TRANSPORT host")
    name, version, transport, sent_by, param_text = m.groups()
    host = _SENT_BY.fullmatch(sent_by.strip())
    if host is None:
        raise BadHeader("Via", f"{shown(sent_by)!r} is not a host[:port] (sent-by)")
    port = int(host.group(2)) if host.group(2) else None
    if port is not None and not 0 < port <= 65535:
        raise BadHeader("Via", f"port {port} is out of range")
    try:
        params = parse_params(param_text)
    except UriError as e:
        raise BadHeader("Via", str(e)) from None
    return Via(transport.upper(), host.group(1).strip("[]").lower(), port, params, f"{name.upper()}/{version}")


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    words = text.split()
    if len(words) != 2 or not TOKEN.fullmatch(words[1]):
        raise BadHeader("CSeq", f"{shown(text)!r} is not a number and a method")
    value = read_number(words[0], most=MAX_CSEQ)
    if value is None:
        raise BadHeader("CSeq", f"{shown(words[0])!r} is not a number")
    if value > MAX_CSEQ:
        raise BadHeader("CSeq", f"number {shown(words[0])} is out of range (at most 2**31 - 1)")
    return CSeq(value, words[1])


def read_number(text: str, *, most: int) -> int | None:
    """``text`` as a count (ASCII digits, leading zeros allowed): None when it is not one, ``most + 1``
    for any value above ``most`` — never a huge int from hostile digits (int() of 5000 digits raises)."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip("0") or "0"
    if len(significant) > len(str(most)):
        return most + 1
    return min(int(significant), most + 1)


@dataclass
class Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION
    #: What is wrong with the message as it was read (empty for a message we built), as :class:`Problem`
    #: texts with their :class:`Defect`: the policy (validation.py) answers such a request 400, saying which.
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
        hops = read_number(value, most=255)  # leading zeros are allowed ("0068", RFC 4475 §3.1.1.1)
        if hops is None or hops > 255:
            raise BadHeader("Max-Forwards", f"{shown(value)!r} is not a hop count (0-255)")
        return hops

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

    @property
    def sdp(self) -> bytes:
        """The session description the body carries (b"" when none): the body when it is SDP, or the SDP
        part of a ``multipart/mixed`` body (RFC 5621: SIP-I and SIP-T carriers send theirs beside ISUP)."""
        kind = self.content_type
        if kind == SDP_TYPE:
            return self.body
        if kind == "multipart/mixed":
            return sdp_part(self.body, _parameter(self.headers.get("content-type") or "", "boundary"))
        return b""

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
        problems.append(Problem(Defect.FRAMING, "no blank line after the headers"))
    message = _start(lines[0].rstrip("\r"), problems)
    headers, header_problems = _headers(lines[1:])
    problems += header_problems
    message.headers = headers
    message.body = _body(headers, body, problems)
    message.problems = problems
    return message


def _start(line: str, problems: list[str]) -> Request | Response:
    if line.upper().startswith("SIP/"):
        line = line.strip()  # a status line's trailing space is the empty reason phrase's (RFC 4475 §3.1.1.13)
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise MessageError(f"a status line that cannot be read: {shown(line)!r}")
        status = int(m.group(2))
        if not 100 <= status <= 699:
            raise MessageError(f"status {status} is out of range")
        return Response(status=status, reason=(m.group(3) or "").strip(), version=f"SIP/{m.group(1)}")
    parts = line.split(" ")
    method = parts[0]
    if not TOKEN.fullmatch(method):
        raise MessageError(f"a start line that is neither a request nor a response: {shown(line)!r}")
    words = [p for p in parts[1:] if p]
    if len(words) != 2 or len(parts) != 3:
        # Spaces inside the Request-URI, two spaces, or spaces at the end (RFC 4475 §3.1.2.8-10): the
        # request is still answerable (its Via may be fine), so a problem rather than a failure.
        problems.append(Problem(Defect.REQUEST_LINE, _request_line_fault(line, words)))
        version = words[-1].upper() if words and _VERSION.fullmatch(words[-1]) else SIP_VERSION
        uri = words[0] if words else ""
        return Request(method=method, uri=uri, version=version)
    uri, version = words
    if not _VERSION.fullmatch(version):
        problems.append(Problem(Defect.REQUEST_LINE, f"{shown(version)!r} is not a SIP version"))
        version = SIP_VERSION
    return Request(method=method, uri=uri, version=version.upper())


def _request_line_fault(line: str, words: list[str]) -> str:
    """What is wrong with a request line that is not three parts split by single spaces."""
    if line != line.rstrip():
        return "spaces after the SIP version in the request line"
    if len(words) > 2:
        return "spaces inside the Request-URI"
    if len(words) < 2:
        return "a request line without Request-URI or SIP version"
    return "more than one space between the parts of the request line"


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
        if not colon or not TOKEN.fullmatch(name):
            problems.append(Problem(Defect.HEADER_LINE, f"a header line that cannot be read: {shown(raw)!r}"))
            continue
        if "\r" in raw:  # a CR alone is no line end, and may not be in a value (it would be sent back)
            problems.append(Problem(Defect.HEADER_LINE, f"a CR alone in the {shown(name)} header line"))
            continue
        items.append((name, value.strip()))
        if len(items) > MAX_HEADERS:
            raise MessageError(f"more than {MAX_HEADERS} header lines")
    headers = Headers(items)
    for key in sorted(SINGLE_VALUED):
        if headers.count(key) > 1:
            problems.append(Problem(Defect.REPEATED, f"{header_spelling(key)} given {headers.count(key)} times"))
    return headers, problems


def _body(headers: Headers, body: bytes, problems: list[str]) -> bytes:
    values = headers.get_all("content-length")
    if not values:
        return body  # (UDP: the rest of the datagram; TCP framing made it exact)
    declared = read_number(values[0], most=MAX_MESSAGE)
    if declared is None:
        text = f"Content-Length {shown(values[0])!r} is not a byte count"
        problems.append(Problem(Defect.BAD_LENGTH, text))
        return body
    if declared > len(body):
        text = f"Content-Length {shown(values[0])} is more than the {len(body)} bytes that came"
        problems.append(Problem(Defect.SHORT_BODY, text))
        return body
    return body[:declared]  # bytes past it are not part of the message (RFC 3261 §18.3)


def _parameter(value: str, name: str) -> str:
    """A parameter of a header value such as ``multipart/mixed; boundary="b1"`` ("" when not given)."""
    try:
        found = param_value(parse_params(value.partition(";")[2]), name)
    except UriError:
        return ""
    return (found or "").strip('"')


def sdp_part(body: bytes, boundary: str) -> bytes:
    """The content of the first ``application/sdp`` part of a multipart body (RFC 2046: parts between
    ``--boundary`` lines, each its headers, a blank line, its content); b"" when there is none."""
    if not boundary or len(boundary) > 70:  # (RFC 2046's longest)
        return b""
    delimiter = b"--" + boundary.encode("ascii", "replace")
    for part in body.split(delimiter)[1 : MAX_PARTS + 1]:  # (what is before the first one is a preamble)
        if part.startswith(b"--"):
            break  # the close delimiter
        head, blank, content = part.lstrip(b" \t").removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not blank:
            head, blank, content = part.lstrip(b" \t").removeprefix(b"\n").partition(b"\n\n")
        kinds = [
            line.partition(b":")[2].split(b";")[0].strip().lower()
            for line in head.splitlines()
            if line.partition(b":")[0].strip().lower() == b"content-type"
        ]
        if blank and kinds == [SDP_TYPE.encode()]:
            # The line break before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            return content[:-2] if content.endswith(b"\r\n") else content.removesuffix(b"\n")
    return b""
