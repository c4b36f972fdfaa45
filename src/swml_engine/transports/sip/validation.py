"""Which requests the UAS refuses, and with what answer (RFC 3261 §8.2 and §18.3, RFC 4475) — no I/O.

:func:`check_request` looks at a request :func:`~swml_engine.transports.sip.message.parse_message` could
read and gives back ``None`` (serve it) or a :class:`Rejection`: the status, a reason phrase a person can
read, the text of a ``Warning: 399`` and the headers the answer must carry (``Allow``, ``Accept``,
``Unsupported`` ...). A request no answer can reach (no readable top Via), and any ACK found wrong (an ACK
is never answered, RFC 3261 §17.1.1.3), is a *drop*: status 0 and a reason to log. :func:`check_response`
says which responses the client side discards (they are never answered either).

The rules run in this order, the first that applies answers:

1. no Via, or a top Via that cannot be read → drop (a response is routed by it, RFC 3261 §18.2.2);
2. a message that cannot be read as one: no blank line, a malformed request line (extra or trailing
   spaces, spaces in the Request-URI), an unreadable header line → 400;
3. a SIP version other than 2.0 → 505;
4. Call-ID, CSeq, From or To missing, or one of them (or Max-Forwards, Content-Type) given twice → 400.
   A missing Max-Forwards is *not* refused: RFC 3261 §8.2 does not ask a UAS for it, and RFC 2543 peers
   (RFC 4475 §3.4.1) do not send it;
5. a Via, From, To, Contact, Route or Record-Route that cannot be read, or a top Via branch that is just
   the magic cookie (RFC 4475 §3.1.3.1) → 400;
6. a Request-URI that cannot be read, or that carries ``?headers`` (RFC 3261 §19.1.1) → 400;
7. a CSeq that cannot be read, or whose number is above 2**31 - 1 → 400;
8. a CSeq method other than the request's (an ACK's is ACK, a CANCEL's CANCEL) → 400;
9. Content-Length given twice (same value or not), not a byte count (``-999``), or more than the bytes
   that came → 400 (over TCP the framer closes the connection first: a stream cannot be re-framed). A
   missing Content-Length is not refused: over UDP the body is the rest of the datagram (RFC 2543
   peers), over TCP the framer has read it as no body (docs/serve.md);
10. a Max-Forwards that is not 0-255 → 400. Max-Forwards 0 is served: we are the request's end, not a
    proxy that would forward it (RFC 3261 §16.3 step 3, RFC 4475 §3.3.11);
11. a method we do not know → 501, one we know but do not serve (``allowed``) → 405, both with Allow;
12. a Request-URI scheme we do not serve → 416: ``sip`` and ``tel`` are served (trunks send ``tel:``; the
    script answers whatever the number), ``sips`` only over TLS, which we do not offer today;
13. a Require naming an option tag we do not support → 420 with Unsupported (ACK and CANCEL exempt,
    RFC 3261 §8.2.2.3);
14. an INVITE whose body we cannot read → 415 with ``Accept: application/sdp``: any type but
    application/sdp and a multipart/mixed holding an application/sdp part (RFC 5621: SIP-I/SIP-T
    carriers send SDP beside ISUP; the SDP part is read, the others ignored), a body without
    Content-Type, or a Content-Encoding other than identity (then with ``Accept-Encoding: identity``);
15. an INVITE whose Accept excludes application/sdp → 406 (our answer must carry SDP).

Syntax comes before semantics (a request we cannot read is not looked at further), and among the
semantic checks RFC 3261 §8.2's order holds: method, then Request-URI, then Require, then the body.
What is not here: 481 and 482 (the dialog and transaction layers own them), authentication, and an ACK's
body, which the dialog reads (an unusable answer ends the call with BYE, as docs/serve.md says).

Reason phrases and warnings repeat at most :data:`~swml_engine.transports.sip.uri.SHOWN` (40) characters
of the peer's own text, printable and on one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from swml_engine.transports.sip.message import (
    BRANCH_COOKIE,
    KNOWN_METHODS,
    MAX_CSEQ,
    REASONS,
    SIP_VERSION,
    BadHeader,
    Defect,
    Method,
    Problem,
    Request,
    Response,
    parse_cseq,
    parse_via,
    read_number,
    response_to,
)
from swml_engine.transports.sip.uri import UriError, parse_uri, shown

#: The methods the UAS serves today (Allow in 405, 501 and OPTIONS answers).
ALLOW: frozenset[str] = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"})
#: Option tags a Require may name (RFC 3261 §8.2.2.3): session timers (RFC 4028); not 100rel.
SUPPORTED: frozenset[str] = frozenset({"timer"})
#: The one body type we read.
SDP = "application/sdp"
#: The status of a drop: no answer is sent.
DROP = 0

#: Request-URI schemes served on every transport; ``sips`` needs TLS.
_SCHEMES = frozenset({"sip", "tel"})
#: Headers that must be present exactly once in every request (RFC 3261 §8.1.1; Via is checked apart).
_REQUIRED = ("Call-ID", "CSeq", "From", "To")
#: Headers that may be absent but not repeated (Content-Length has a rule of its own, 9).
_AT_MOST_ONCE = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Type")
#: Address lists read later by the dialog (RFC 3261 §12), besides From and To: refused here if unreadable,
#: so that it can rely on them.
_ADDRESS_LISTS = ("Contact", "Record-Route", "Route")
#: The kinds of problem that mean the message cannot be read as one (rule 2), with the short reason.
_UNREADABLE = {
    Defect.FRAMING: "no blank line after the headers",
    Defect.REQUEST_LINE: "malformed request line",
    Defect.HEADER_LINE: "unreadable header line",
}


@dataclass(frozen=True)
class Rejection:
    """How a request is refused: ``status`` (0: dropped, nothing is sent), ``reason`` (the reason phrase,
    or for a drop the line to log), ``warning`` (the text of a ``Warning: 399 <host> "..."``) and
    ``headers`` the answer must carry."""

    status: int
    reason: str
    warning: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def drop(self) -> bool:
        """Whether no answer is to be sent (the request is logged and forgotten)."""
        return self.status == DROP

    def warning_header(self, host: str) -> str:
        """The value of the Warning header (RFC 3261 §20.43: code 399, our host, the text quoted)."""
        text = self.warning.replace("\\", "\\\\").replace('"', '\\"')
        return f'399 {host} "{text}"'

    def answer(self, request: Request, *, host: str, to_tag: str | None = None) -> Response:
        """The response that refuses ``request`` (not for a drop)."""
        if self.drop:
            raise ValueError(f"a dropped request is not answered ({self.reason}); log it instead")
        headers = [*self.headers, ("Warning", self.warning_header(host))]
        return response_to(request, self.status, self.reason, to_tag=to_tag, headers=headers)


def check_request(
    request: Request,
    *,
    transport: str,
    datagram: bool,
    allowed: frozenset[str] = ALLOW,
    supported: frozenset[str] = SUPPORTED,
) -> Rejection | None:
    """None when ``request`` is to be served, else how it is refused (see the module docstring for the
    rules and their order). ``transport`` is the one it came on (``udp``, ``tcp``, ``tls``);
    ``datagram`` says whether its bytes were one datagram (so that a Content-Length beyond them means
    a cut message); ``allowed`` are the methods served, ``supported`` the option tags a Require may name.
    Nothing is logged here: the caller logs drops and refusals, rate-limited per source."""
    policy = _Policy(transport.lower(), datagram, allowed, supported)
    unroutable = _unroutable(request)
    if unroutable is not None:
        return unroutable
    for rule in _RULES:
        found = rule(request, policy)
        if found is not None:
            if request.method == Method.ACK:
                return _drop(f"an ACK that is not answered: {found.reason}; {found.warning}")
            return found
    return None


def check_response(response: Response) -> str | None:
    """None when ``response`` can be matched to its transaction and read, else why it is discarded
    (a response is never answered: RFC 3261 §18.1.2; RFC 4475 §3.1.2.5 — a CSeq past 2**31 - 1)."""
    if response.problems:
        return f"a response that cannot be read as one: {response.problems[0]}"
    if response.version != SIP_VERSION:
        return f"a {shown(response.version)} response (only {SIP_VERSION} is read)"
    try:
        response.top_via  # noqa: B018 (each is read for its check)
        response.call_id  # noqa: B018
        response.cseq  # noqa: B018
        response.from_  # noqa: B018
        response.to  # noqa: B018
    except BadHeader as e:
        return f"a {response.status} response with an unreadable {e.header} ({e.why})"
    return None


def allow_header(allowed: Iterable[str] = ALLOW) -> str:
    """The Allow value for ``allowed``: the methods in a fixed order (RFC 3261's first), so it never varies."""
    allowed = set(allowed)
    known = [m.value for m in Method if m.value in allowed]
    return ", ".join(known + sorted(allowed - set(known)))


# --- the rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Policy:
    transport: str
    datagram: bool
    allowed: frozenset[str]
    supported: frozenset[str]


def _drop(reason: str) -> Rejection:
    return Rejection(DROP, reason, "")


def _bad(short: str, warning: str = "") -> Rejection:
    """400 with ``short`` in the reason phrase (our words) and ``warning`` (may quote the peer)."""
    return Rejection(400, f"{REASONS[400]} ({short})", warning or short)


def _unroutable(request: Request) -> Rejection | None:
    vias = request.headers.values("via")
    if not vias:
        return _drop(f"{request.method[:20]} without a Via: no answer can be routed")
    try:
        parse_via(vias[0])
    except BadHeader as e:
        return _drop(f"{request.method[:20]} whose top Via cannot be read ({e.why}): no answer can be routed")
    return None


def _unreadable(request: Request, policy: _Policy) -> Rejection | None:
    for problem in request.problems:
        if isinstance(problem, Problem) and problem.kind in _UNREADABLE:
            return _bad(_UNREADABLE[problem.kind], str(problem))
    return None


def _version(request: Request, policy: _Policy) -> Rejection | None:
    if request.version == SIP_VERSION:
        return None
    return Rejection(505, REASONS[505], f"only {SIP_VERSION} is served, not {shown(request.version)}")


def _single_values(request: Request, policy: _Policy) -> Rejection | None:
    missing = [name for name in _REQUIRED if not (request.headers.get(name) or "").strip()]
    if missing:
        return _bad(f"missing {', '.join(missing)}", f"a request needs {', '.join(_REQUIRED)} and Via")
    for name in _AT_MOST_ONCE:
        count = request.headers.count(name)
        if count > 1:
            return _bad(f"{name} given {count} times", f"{name} holds one value")
    if len(request.call_id.split()) != 1:
        return _bad("malformed Call-ID", f"Call-ID {shown(request.call_id)!r} holds spaces")
    return None


def _headers(request: Request, policy: _Policy) -> Rejection | None:
    try:
        vias = request.vias()
        request.from_  # noqa: B018 (read for its check)
        request.to  # noqa: B018
        for name in _ADDRESS_LISTS:
            request.routes(name.lower())  # (Contact's '*' is skipped: only a REGISTER would mean it)
    except BadHeader as e:
        return _bad(f"malformed {e.header}", f"{e.header}: {e.why}")
    if vias[0].branch == BRANCH_COOKIE:
        # RFC 4475 §3.1.3.1: says it is RFC 3261's branch, but no transaction can be told by it
        return _bad("Via branch is only the magic cookie", f"branch={BRANCH_COOKIE} names no transaction")
    for via in vias:
        if via.protocol != SIP_VERSION:
            return _bad("malformed Via", f"Via protocol {shown(via.protocol)} is not {SIP_VERSION}")
    return None


def _request_uri_syntax(request: Request, policy: _Policy) -> Rejection | None:
    try:
        uri = parse_uri(request.uri)
    except UriError as e:
        return _bad("malformed Request-URI", str(e))
    if uri.is_sip and uri.headers:
        # RFC 4475 §3.1.2.11: headers (?Route=...) are not allowed in a Request-URI (RFC 3261 §19.1.1)
        return _bad("Request-URI with headers", "a Request-URI may not hold ?headers")
    return None


def _cseq(request: Request, policy: _Policy) -> Rejection | None:
    text = request.headers.get("cseq") or ""
    number = text.split()[0] if text.split() else ""
    value = read_number(number, most=MAX_CSEQ)
    if value is not None and value > MAX_CSEQ:
        return _bad("CSeq number out of range", f"CSeq {shown(number)} is above 2**31 - 1")
    try:
        cseq = parse_cseq(text)
    except BadHeader as e:
        return _bad("malformed CSeq", e.why)
    if cseq.method != request.method:
        return _bad(
            "CSeq method does not match",
            f"CSeq method {shown(cseq.method)[:20]} is not the request's {shown(request.method)[:20]}",
        )
    return None


def _content_length(request: Request, policy: _Policy) -> Rejection | None:
    count = request.headers.count("content-length")
    if count > 1:
        return _bad(f"Content-Length given {count} times", "Content-Length holds one value")
    for problem in request.problems:
        if not isinstance(problem, Problem):
            continue
        if problem.kind == Defect.BAD_LENGTH:
            return _bad("Content-Length is not a byte count", str(problem))
        if problem.kind == Defect.SHORT_BODY:
            where = "the datagram" if policy.datagram else "the message"
            return _bad(f"Content-Length larger than {where}", str(problem))
    return None


def _max_forwards(request: Request, policy: _Policy) -> Rejection | None:
    try:
        request.max_forwards  # noqa: B018 (read for its check)
    except BadHeader as e:
        return _bad("malformed Max-Forwards", e.why)
    return None


def _method(request: Request, policy: _Policy) -> Rejection | None:
    if request.method in policy.allowed:
        return None
    allow = (("Allow", allow_header(policy.allowed)),)
    method = shown(request.method)
    if request.method in KNOWN_METHODS:
        return Rejection(405, REASONS[405], f"{method} is not served here", allow)
    return Rejection(501, REASONS[501], f"{method} is not a method we know", allow)


def _request_uri_scheme(request: Request, policy: _Policy) -> Rejection | None:
    scheme = request.uri.partition(":")[0].lower()  # (the URI was read by rule 6)
    if scheme in _SCHEMES or (scheme == "sips" and policy.transport == "tls"):
        return None
    if scheme == "sips":
        return Rejection(416, f"{REASONS[416]} (sips needs TLS)", "sips: URIs are served over TLS only")
    return Rejection(416, REASONS[416], f"{shown(scheme)}: URIs are not served (sip: and tel: are)")


def _require(request: Request, policy: _Policy) -> Rejection | None:
    if request.method in (Method.ACK, Method.CANCEL):
        return None
    # compared without case, but listed as the peer wrote them
    tags = [tag.strip() for tag in request.headers.values("require") if tag.strip()]
    unsupported = [tag for tag in tags if tag.lower() not in policy.supported]
    if not unsupported:
        return None
    listed = ", ".join(dict.fromkeys(unsupported))  # (a repeated tag once)
    return Rejection(420, REASONS[420], f"not supported: {shown(listed)}", (("Unsupported", listed),))


def _body(request: Request, policy: _Policy) -> Rejection | None:
    if request.method != Method.INVITE or not request.body.strip():
        return None
    encodings = [e.lower() for e in request.option_tags("content-encoding")]
    if any(e != "identity" for e in encodings):
        warning = f"Content-Encoding {shown(', '.join(encodings))} is not read here"
        return Rejection(415, REASONS[415], warning, (("Accept", SDP), ("Accept-Encoding", "identity")))
    content_type = request.content_type
    if content_type == SDP or (content_type == "multipart/mixed" and request.sdp):
        return None
    if content_type == "multipart/mixed":
        warning = f"a multipart/mixed body is read for its {SDP} part, and this one has none"
        return Rejection(415, REASONS[415], warning, (("Accept", SDP),))
    if not content_type:
        return Rejection(
            415, f"{REASONS[415]} (a body without Content-Type)", f"only {SDP} is read", (("Accept", SDP),)
        )
    return Rejection(415, REASONS[415], f"{shown(content_type)} is not read here, only {SDP}", (("Accept", SDP),))


def _accept(request: Request, policy: _Policy) -> Rejection | None:
    if request.method != Method.INVITE or "accept" not in request.headers:
        return None
    ranges = request.headers.values("accept")  # an empty Accept accepts nothing (RFC 3261 §20.1)
    if any(_accepts_sdp(item) for item in ranges):
        return None
    return Rejection(406, REASONS[406], f"our answer is {SDP}, which the Accept header excludes")


def _accepts_sdp(media_range: str) -> bool:
    """Whether one Accept item (``application/sdp``, ``application/*;q=0.5``, ``*/*``) takes SDP."""
    kind, *params = (part.strip().lower() for part in media_range.split(";"))
    if kind not in (SDP, "application/*", "*/*"):
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                return float(value) > 0
            except ValueError:
                return True  # an unreadable q is not a refusal
    return True


_Rule = Callable[[Request, _Policy], Rejection | None]
#: The rules after routability, in the order of the module docstring (2 to 15).
_RULES: tuple[_Rule, ...] = (
    _unreadable,
    _version,
    _single_values,
    _headers,
    _request_uri_syntax,
    _cseq,
    _content_length,
    _max_forwards,
    _method,
    _request_uri_scheme,
    _require,
    _body,
    _accept,
)
