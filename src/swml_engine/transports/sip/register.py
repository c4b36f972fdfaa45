"""Keeping a binding at a registrar (RFC 3261 §10, ``swml serve --register``), without I/O.

A :class:`Binding` registers one address of record (AOR) at one registrar and keeps it registered:

- every REGISTER of the binding's life carries the same Call-ID and From tag and the next CSeq (§10.2);
  To and From are the AOR, the Request-URI is the AOR's domain (``sip:host[:port]``), ``Expires`` and
  our Contact's ``;expires`` ask for the interval;
- a 401/407 is answered with digest credentials (auth.py) at once; a nonce refused a second time, or more
  than :data:`MAX_CHALLENGES` challenges for one REGISTER, means the credentials are wrong. A stale nonce
  (``stale=true``) is a new nonce and is answered. Once answered, a challenge is reused for the refreshes
  (RFC 3261 §22.3, with the nonce count rising) until the registrar challenges again;
- a 423 Interval Too Brief is answered with its ``Min-Expires``, when that is more than we asked and
  no more than :data:`MAX_EXPIRES`; the raised interval is kept for the binding's life;
- a 2xx makes the binding registered for the interval granted: our Contact's ``;expires`` in the 2xx,
  else its ``Expires`` header, else what we asked. It is refreshed at :func:`refresh_delay` of it, counted
  from when that REGISTER went out (so the binding never lapses at the registrar before we count it);
- any other answer, or none within Timer F (64*T1, 32 s), is a failure: :class:`RegistrationFailed`, then
  another REGISTER after :data:`RETRY_FIRST`, doubling up to :data:`RETRY_MAX` (or the registrar's
  ``Retry-After``, up to :data:`MAX_RETRY_AFTER`), for as long as the binding is kept. A binding whose
  interval runs out before a refresh succeeds says so (:class:`RegistrationExpired`);
- :meth:`Binding.unregister` removes our Contact (``Expires: 0``, a challenge answered) and stops.

Time comes in as ``now`` (seconds, the core's clock); the binding's timers are the user agent's
(:meth:`UserAgent.add_timed`); what happens is told as events (:meth:`UserAgent.emit`). Name resolution,
the choice of our reachable address, logging and the wait at shutdown are the endpoint's.

Not done: 3xx redirects (a failure like any other), ``Contact: *``, outbound (RFC 5626), GRUU, several
Contacts per binding, Path and Service-Route.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from swml_engine.transports.sip.auth import AuthError, Credentials, DigestClient, challenge_of
from swml_engine.transports.sip.message import REASONS, BadHeader, Headers, Method, Request, Response
from swml_engine.transports.sip.uri import NameAddr, Uri, UriError, parse_uri, shown
from swml_engine.transports.sip.useragent import SipEvent, Target, UserAgent

#: The longest interval asked for, and the most a 423's Min-Expires may raise it to (a day).
MAX_EXPIRES = 86_400
#: After a refusal or silence, the next REGISTER waits this long (s), doubling up to RETRY_MAX.
RETRY_FIRST = 10.0
RETRY_MAX = 300.0
#: A registrar's Retry-After (on 503, 500, 404 ...) is honoured up to this (s) when longer than the backoff.
MAX_RETRY_AFTER = 3600.0
#: A binding is refreshed at this share of the interval granted ...
REFRESH_SHARE = 0.9
#: ... but at least this long (s) before it ends, room for a REGISTER's retransmissions over UDP.
REFRESH_MARGIN = 5.0
#: Challenges answered for one REGISTER (a proxy's 407 then the registrar's 401, then a stale nonce):
#: past that, the registrar is refusing the credentials by challenging again.
MAX_CHALLENGES = 3
#: REGISTERs sent for one binding attempt, counting the answers to challenges and to 423s.
MAX_SENDS = 6
#: delta-seconds are at most 32 bits (RFC 3261 §25.1).
MAX_DELTA = 2**32 - 1
MAX_FORWARDS = "70"


def refresh_delay(granted: int) -> float:
    """When a binding granted for ``granted`` seconds is refreshed, counted from its REGISTER: at 90 % of
    it (300 s: after 270 s), at least :data:`REFRESH_MARGIN` before its end (30 s: after 25 s), and never
    before half of it (an 8 s binding: after 4 s)."""
    return max(min(REFRESH_SHARE * granted, granted - REFRESH_MARGIN), granted / 2)


# --- what the binding tells the application -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Registered(SipEvent):
    """The registrar holds our binding (first registration or a refresh) for ``expires`` seconds."""

    binding: Binding
    expires: int


@dataclass(frozen=True, eq=False)
class RegistrationFailed(SipEvent):
    """A REGISTER was refused (``status``), unanswered (408) or could not be sent (503); ``detail`` says
    what happened and is what a log line or /health shows. Another REGISTER follows after a backoff."""

    binding: Binding
    status: int
    detail: str


@dataclass(frozen=True, eq=False)
class RegistrationExpired(SipEvent):
    """The interval granted ran out before a refresh succeeded: the registrar no longer routes to us."""

    binding: Binding


@dataclass(frozen=True, eq=False)
class Unregistered(SipEvent):
    """The binding is over after :meth:`Binding.unregister`: ``removed`` when the registrar confirmed
    it, else ``detail`` says why not (refused, no answer, nothing was registered)."""

    binding: Binding
    removed: bool
    detail: str


# --- the binding --------------------------------------------------------------------------------------


class BindingState(StrEnum):
    """Where a binding is, as /health shows it."""

    STARTING = "starting"  # made, not started
    REGISTERING = "registering"  # a REGISTER is out and the registrar holds nothing of ours yet
    REGISTERED = "registered"  # the registrar holds our binding (a refresh may be out)
    FAILED = "failed"  # the last REGISTER was refused or unanswered; another follows
    EXPIRED = "expired"  # the binding ran out without a refresh; another REGISTER follows
    UNREGISTERING = "unregistering"  # the REGISTER with Expires: 0 is out
    UNREGISTERED = "unregistered"  # over: nothing more is sent


_S = BindingState
#: The transitions a binding may make (anything else is a bug of this module).
_NEXT: dict[BindingState, frozenset[BindingState]] = {
    _S.STARTING: frozenset({_S.REGISTERING, _S.UNREGISTERED}),
    _S.REGISTERING: frozenset({_S.REGISTERED, _S.FAILED, _S.EXPIRED, _S.UNREGISTERING, _S.UNREGISTERED}),
    _S.REGISTERED: frozenset({_S.REGISTERED, _S.FAILED, _S.EXPIRED, _S.UNREGISTERING}),
    _S.FAILED: frozenset({_S.REGISTERING, _S.FAILED, _S.EXPIRED, _S.UNREGISTERING, _S.UNREGISTERED}),
    _S.EXPIRED: frozenset({_S.REGISTERING, _S.REGISTERED, _S.FAILED, _S.UNREGISTERING, _S.UNREGISTERED}),
    _S.UNREGISTERING: frozenset({_S.UNREGISTERED}),
    _S.UNREGISTERED: frozenset(),
}


@dataclass(eq=False)
class _Sent:
    """One REGISTER of ours in flight; its answers reach the binding while it is the latest one sent."""

    binding: Binding
    expires: int
    sent_at: float

    def on_response(self, response: Response, now: float) -> None:
        self.binding._answered(self, response, now)

    def on_timeout(self, why: str, now: float) -> None:
        self.binding._unanswered(self, why, now)


class Binding:
    """One AOR kept registered at one registrar. See the module docstring.

    ``registrar``: where REGISTERs go (the endpoint resolves its name). ``local``: our address as the
    registrar reaches it (Via and Contact: ``<sip:USER@host:port>``, ``;transport=tcp`` over TCP) — an
    address, not a wildcard. ``expires``: the interval asked for (1 to :data:`MAX_EXPIRES` s).
    """

    def __init__(
        self,
        ua: UserAgent,
        aor: str,
        registrar: Target,
        local: tuple[str, int],
        *,
        expires: int = 300,
        credentials: Credentials | None = None,
        user_agent: str = "swml-engine",
    ) -> None:
        try:
            parsed = parse_uri(aor)
        except UriError as e:
            raise ValueError(f"register: the address of record {aor!r}: {e}") from None
        if not parsed.is_sip or not parsed.user or not parsed.host:
            raise ValueError(f"register: the address of record {aor!r}: expected sip:USER@HOST[:PORT]")
        if not 1 <= expires <= MAX_EXPIRES:
            raise ValueError(f"register: expires {expires}: expected 1 to {MAX_EXPIRES} seconds")
        host, port = local
        if host in ("", "0.0.0.0", "::") or not 0 < port <= 65535:
            raise ValueError(
                f"register: our address {host!r}:{port} is not one the registrar can reach: give the local "
                "address that reaches it (or the public one behind NAT) and the SIP port"
            )
        for what, text in (("user agent", user_agent), ("user name", credentials and credentials.username)):
            if text and any(ord(c) < 0x20 or c == "\x7f" for c in text):
                raise ValueError(f"register: the {what} {text!r} holds control characters")
        self.ua = ua
        self.aor = Uri(parsed.scheme, host=parsed.host, user=parsed.user, port=parsed.port)
        self.registrar = registrar
        self.local = local
        self.expires = expires
        self.credentials = credentials
        self.user_agent = user_agent
        #: The Request-URI: the AOR's domain (RFC 3261 §10.2: no user part).
        self.request_uri = Uri(parsed.scheme, host=parsed.host, port=parsed.port)
        self.contact = ua.contact(local, registrar.transport, user=parsed.user)
        self.call_id = f"{ua.rng.getrandbits(96):024x}@{host}"
        self.from_tag = ua.new_tag()
        self.state = BindingState.STARTING
        self.detail = ""
        #: The interval the registrar granted last (0 while it holds nothing of ours).
        self.granted = 0
        self._cseq = 0
        #: The REGISTER whose answers count (an earlier one's late answers are ignored).
        self._out: _Sent | None = None
        #: When the next REGISTER goes (a refresh or a retry), and when the binding held runs out.
        self._send_at: float | None = None
        self._expires_at: float | None = None
        self._backoff = RETRY_FIRST
        #: Challenges answered, reused for the refreshes; a nonce refused twice in one attempt means the
        #: credentials are wrong.
        self._auth = DigestClient(credentials, ua.rng)
        #: REGISTERs sent for the current attempt.
        self._sends = 0

    # --- what the application does ----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send the first REGISTER and keep the binding from now on."""
        if self.state is not BindingState.STARTING:
            return
        self.ua.add_timed(self)
        self._enter(BindingState.REGISTERING)
        self._attempt(self.expires, now)

    def unregister(self, now: float) -> None:
        """Remove our binding (``Expires: 0``) and stop; :class:`Unregistered` says when it is done. With
        nothing registered and no REGISTER out, it is done at once."""
        if self.state in (BindingState.UNREGISTERING, BindingState.UNREGISTERED):
            return
        held = self._expires_at is not None or self._out is not None
        self._send_at = self._expires_at = None
        if not held:
            self._finish(False, "nothing was registered")
            return
        self._enter(BindingState.UNREGISTERING)
        self._attempt(0, now)

    def status(self) -> dict[str, object]:
        """For /health: the AOR, the state, what happened last, and the interval granted while registered."""
        return {
            "aor": str(self.aor),
            "state": self.state.value,
            "detail": self.detail,
            "expires": self.granted if self.state is BindingState.REGISTERED else 0,
        }

    # --- timers (the user agent's one timer covers them) -------------------------------------------

    def next_timer(self) -> float | None:
        due = [t for t in (self._send_at, self._expires_at) if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        if self._expires_at is not None and self._expires_at <= now:
            self._expires_at = None
            self._expired()
        if self._send_at is not None and self._send_at <= now:
            self._send_at = None
            if self.state is not BindingState.REGISTERED:
                self._enter(BindingState.REGISTERING)
            self._attempt(self.expires, now)

    # --- sending ---------------------------------------------------------------------------------------

    def _attempt(self, expires: int, now: float) -> None:
        """A new attempt (first REGISTER, refresh, retry, unregister): challenge counts start again."""
        self._sends = 0
        self._auth.new_attempt()
        self._send(expires, now)

    def _send(self, expires: int, now: float) -> None:
        self._sends += 1
        request = self._request(expires)
        sent = _Sent(self, expires, now)
        self._out = sent  # before sending: a request that cannot go is reported back at once
        self.ua.send_request(request, self.registrar, now, sent)

    def _request(self, expires: int) -> Request:
        self._cseq += 1
        via = self.ua.via(self.local, self.registrar.transport).with_param("branch", self.ua.new_branch())
        headers = Headers(
            [
                ("Via", str(via)),
                ("Max-Forwards", MAX_FORWARDS),
                ("From", f"{NameAddr(self.aor)};tag={self.from_tag}"),
                ("To", str(NameAddr(self.aor))),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self._cseq} {Method.REGISTER}"),
                ("Contact", str(self.contact.with_param("expires", str(expires)))),
                ("Expires", str(expires)),
                ("User-Agent", self.user_agent),
            ]
        )
        # (The user name was checked for control characters above; the method and URI are ours.)
        for name, value in self._auth.headers(Method.REGISTER, str(self.request_uri)):
            headers.add(name, value)
        return Request(headers=headers, method=Method.REGISTER, uri=str(self.request_uri))

    # --- answers ---------------------------------------------------------------------------------------

    def _answered(self, sent: _Sent, response: Response, now: float) -> None:
        if sent is not self._out or response.status < 200:
            return  # an earlier REGISTER's late answer, or a provisional one
        self._out = None
        status = response.status
        if status < 300:
            self._accepted(sent, response, now)
        elif status in (401, 407):
            self._challenged(sent, response, now)
        elif status == 423 and sent.expires:
            self._too_brief(sent, response, now)
        else:
            self._failed(sent, status, _status_text(response), now, _retry_after(response))

    def _unanswered(self, sent: _Sent, why: str, now: float) -> None:
        if sent is not self._out:
            return
        self._out = None
        if why == "no answer":  # Timer F: RFC 3261 §8.1.3.1 counts it a 408
            self._failed(sent, 408, f"no answer from the registrar within {self.ua.timing.timeout:.0f} s", now)
        else:  # the transport failed (a TCP connection refused ...): §8.1.3.1 counts it a 503
            self._failed(sent, 503, why, now)

    def _accepted(self, sent: _Sent, response: Response, now: float) -> None:
        if not sent.expires:
            self._finish(True, "removed")
            return
        granted = self._granted(response, sent.expires)
        if granted <= 0:
            self._failed(sent, response.status, f"{_status_text(response)} but no time granted (expires 0)", now)
            return
        self._backoff = RETRY_FIRST
        self.granted = granted
        self._expires_at = sent.sent_at + granted
        self._send_at = max(now, sent.sent_at + refresh_delay(granted))
        self._enter(BindingState.REGISTERED, f"for {granted} s")
        self.ua.emit(Registered(self, granted))

    def _granted(self, response: Response, asked: int) -> int:
        """The interval granted (RFC 3261 §10.2.4): our Contact's ``expires`` in the answer, else its
        Expires header, else what we asked. A registrar that rewrote our Contact (behind NAT) and lists
        that one alone is taken to mean ours."""
        try:
            contacts = response.contacts()
        except BadHeader:
            contacts = []
        ours = [c for c in contacts if _same_contact(c.uri, self.contact.uri)]
        if not ours and len(contacts) == 1:
            ours = contacts
        for contact in ours:
            value = _delta(contact.param("expires"))
            if value is not None:
                return value
        value = _delta(response.headers.get("expires"))
        return value if value is not None else asked

    def _challenged(self, sent: _Sent, response: Response, now: float) -> None:
        text = _status_text(response)
        if self.credentials is None:
            self._failed(sent, response.status, f"{text}: the registrar asks for a password and none was given", now)
            return
        try:
            challenge = challenge_of(response)
        except AuthError as e:
            self._failed(sent, response.status, f"{text}: {e}", now)
            return
        too_many = self._auth.answered >= MAX_CHALLENGES or self._sends >= MAX_SENDS
        if too_many or self._auth.take(challenge) is not None:
            self._auth.forget(challenge)
            why = f"wrong credentials for realm {shown(challenge.realm)!r}"
            self._failed(sent, response.status, f"{text}: {why}", now)
            return
        self._send(sent.expires, now)

    def _too_brief(self, sent: _Sent, response: Response, now: float) -> None:
        text = _status_text(response)
        minimum = _delta(response.headers.get("min-expires"))
        if minimum is None:
            why = "without a Min-Expires to retry with"
        elif minimum <= sent.expires:
            why = f"asking for at least {minimum} s, and we asked {sent.expires} s"
        elif minimum > MAX_EXPIRES:
            why = f"asking for at least {minimum} s, more than the {MAX_EXPIRES} s we ask at most"
        elif self._sends >= MAX_SENDS:
            why = f"asking for more again after {self._sends} REGISTERs"
        else:
            self.expires = minimum  # the registrar's floor holds for the binding's life
            self._send(minimum, now)
            return
        self._failed(sent, response.status, f"{text}, {why}", now)

    def _failed(self, sent: _Sent, status: int, detail: str, now: float, retry_after: float | None = None) -> None:
        if not sent.expires:
            self._finish(False, f"not removed: {detail}")
            return
        wait = self._backoff
        self._backoff = min(2 * self._backoff, RETRY_MAX)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
        self._send_at = now + wait
        self._enter(BindingState.FAILED, detail)
        self.ua.emit(RegistrationFailed(self, status, detail))

    def _expired(self) -> None:
        self.granted = 0
        self._enter(BindingState.EXPIRED, "the binding ran out without a refresh")
        self.ua.emit(RegistrationExpired(self))

    def _finish(self, removed: bool, detail: str) -> None:
        self._out = None
        self._send_at = self._expires_at = None
        self.granted = 0
        self.ua.remove_timed(self)
        self._enter(BindingState.UNREGISTERED, detail)
        self.ua.emit(Unregistered(self, removed, detail))

    def _enter(self, state: BindingState, detail: str = "") -> None:
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"register.py: a binding cannot go from {self.state} to {state} (a bug)")
        self.state = state
        self.detail = detail


# --- helpers ------------------------------------------------------------------------------------------------


def _status_text(response: Response) -> str:
    return f"{response.status} {shown(response.reason or REASONS.get(response.status, ''))}".rstrip()


def _delta(text: str | None) -> int | None:
    """delta-seconds (``Expires``, ``;expires``, ``Min-Expires``), None when absent or unreadable."""
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    return min(int(text), MAX_DELTA)


def _retry_after(response: Response) -> float | None:
    """Retry-After's seconds (``120 (maintenance);duration=60``: 120), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    return _delta(value.split("(")[0].split(";")[0])


def _same_contact(a: Uri, b: Uri) -> bool:
    """Whether two Contact URIs name the same place (RFC 3261 §19.1.4, as far as a registrar echoing our
    own Contact needs: user, host, port and transport; a missing port and transport are the defaults)."""
    if not (a.is_sip and b.is_sip) or a.scheme != b.scheme:
        return False
    default = 5061 if a.scheme == "sips" else 5060
    return (
        a.user == b.user
        and a.host.lower() == b.host.lower()
        and (a.port or default) == (b.port or default)
        and (a.transport or "udp") == (b.transport or "udp")
    )
