"""Calls we place (the UAC side of RFC 3261 §13-§15), on the user agent core, without I/O.

:class:`OutboundCall` sends an INVITE with our SDP offer through the core (:class:`UacCore`) once
started (``OutboundCall(ua, target=..., ...).start(now)``, as register.py's ``Binding``). The core feeds
the call what comes back (its transactions' answers, requests in its dialogs, late answers no transaction
holds any more) and covers its timers with its one timer; the call tells the application through events
(:class:`Provisional`, :class:`Answered`, :class:`Failed`, :class:`ChallengeReceived`, :class:`Hangup`,
:class:`ReInviteReceived`, :class:`ReInviteDone`, :class:`ReInviteAcked`), and the application acts
through the call's methods (``cancel``, ``bye``, ``reinvite``, ``answer_reinvite``), each taking ``now``
in seconds. Nothing here reads a clock, opens a socket or resolves a name.

What it does, by answer:

- **1xx**: each 101-199 is told (:class:`Provisional`, with its SDP and To tag); each To tag is an early
  dialog of its own (a forking proxy gives several); the first provisional with SDP is the one whose media
  the caller should hear (``early_media``). 100 Trying only allows a CANCEL.
- **2xx**: ACKed along the dialog (RFC 3261 §13.2.2.4), the same ACK again for each retransmission (even
  after the INVITE's transaction ended); the first answers the call. A 2xx from another fork, or one that
  crossed our CANCEL, or came after we gave up, is ACKed and sent a BYE at once: the call is not taken twice.
- **3xx: not followed.** The call fails with the Contacts the redirect gave (:attr:`Failed.contacts`,
  best ``q`` first). Whoever placed the call owns the dial plan: its per-leg timeout, which destinations
  are allowed, serial or parallel — and following a redirect here would send our credentials and our SDP
  wherever a far end names, which a dial plan must decide, not the protocol layer.
- **401/407**: with credentials, answered once per new nonce (a new INVITE: CSeq + 1, same Call-ID and From
  tag); a challenge repeating a nonce we answered means the credentials are refused. Without credentials,
  or refused, the call fails. :class:`ChallengeReceived` is told for each challenge we can read. Credentials learnt are
  also given, pre-emptively (RFC 3261 §22.3), to our later requests in the call.
- **422** (session interval too small): retried once with the Min-SE asked (RFC 4028 §7.3).
- **other 3xx-6xx**: the transaction ACKs it; the call fails (:class:`Failed`). No answer at all (Timer B):
  ``Failed(408, "no answer")``; the transport failing: ``Failed(503, ...)``.

CANCEL (:meth:`OutboundCall.cancel`) goes only once a provisional came (§9.1); before, it waits for one —
Timer B bounds the wait. Whatever final answer follows, the call fails ``487 cancelled``.

In the call: BYE from either side; the peer's re-INVITE is told (:class:`ReInviteReceived`) and answered
by the application, its 2xx resent until the ACK (no ACK: BYE); our re-INVITE (:meth:`OutboundCall.reinvite`)
one at a time, a 491 (glare) retried after 2.1-4 s — we made the Call-ID, so we wait the longer (§14.1).

Session timers (RFC 4028) when asked for: offered in the INVITE; the 2xx decides the interval and who
refreshes; we refresh at half the interval (UPDATE when the peer allows it, else a re-INVITE with our
current SDP), and when the session expires without a refresh — theirs or ours — we send BYE.

Not done: following redirects (see above); 100rel/PRACK (reliable provisionals); the peer's UPDATE (it is
not in our Allow, so the core refuses it 405); a CANCEL of the peer's re-INVITE (the core answers the CANCEL
200, the re-INVITE waits for the application's answer); a BYE of ours challenged is not retried (it
carries the credentials learnt already); auth-int (auth.py).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from swml_engine.transports.sip.auth import AuthError, Credentials, DigestClient, challenge_of
from swml_engine.transports.sip.dialog import MAX_FORWARDS, Dialog, DialogError, DialogState
from swml_engine.transports.sip.message import (
    REASONS,
    BadHeader,
    Headers,
    Method,
    Request,
    Response,
    Via,
    header_key,
    response_to,
    unfit_for_a_header,
)
from swml_engine.transports.sip.session_timer import (
    MIN_SE,
    Agreed,
    SessionClock,
    SessionTimer,
    SessionTimerError,
    TimerOffer,
    TooSmall,
    answer_request,
)
from swml_engine.transports.sip.transaction import (
    AckWait,
    ClientTransaction,
    ServerTransaction,
    TableFull,
    TimedOut,
    TimerName,
    Timing,
    TwoXxRetransmitter,
    cancel_request,
)
from swml_engine.transports.sip.uri import TOKEN, NameAddr, Uri, UriError, parse_name_addr
from swml_engine.transports.sip.useragent import (
    ClientOwner,
    Destination,
    DialogOwner,
    Peer,
    Policy,
    SipEvent,
    Target,
    Timed,
    Transport,
    behind_nat,
)
from swml_engine.transports.sip.validation import allow_header

log = logging.getLogger(__name__)

#: Dialogs one call keeps (early ones from forks, the confirmed one): past it new forks' provisionals
#: make none (their 2xx still does, evicting the oldest early one, so it can be ACKed and sent a BYE).
MAX_DIALOGS = 16
#: ACKs kept for retransmitted 2xx (one per To tag and INVITE answered; the oldest go first).
MAX_ACKS = 32
#: INVITEs one call sends before its answer (challenges, a 422): a server that challenges for ever stops here.
MAX_INVITES = 5
#: Tries of one re-INVITE of ours (glare, challenges, a 422) before we give up and say so.
MAX_REINVITE_TRIES = 4
#: Headers the application may add to the INVITE, and the longest value.
MAX_EXTRA_HEADERS = 32
MAX_HEADER_VALUE = 1024
#: Largest SDP we send (it must fit a UDP datagram with the headers).
MAX_SDP = 16_384
#: Contacts of a redirect given back (the best first).
MAX_CONTACTS = 16
#: A call neither answered nor refused this long after its INVITE is cancelled (a far end that rings
#: for ever; a dial plan's own timeout is normally far shorter).
MAX_SETUP = 600.0
#: RFC 3261 §14.1: after a 491, the owner of the Call-ID (us, for calls we place) waits 2.1 to 4 s, in
#: units of 10 ms.
GLARE_WAIT = (210, 400)
#: Longest Reason text we write, and the longest Reason we pass up from a BYE.
MAX_REASON = 100
MAX_REASON_IN = 200
#: Headers we write ourselves: the application may not add them (they would contradict ours).
_OURS = frozenset(
    {
        "via",
        "max-forwards",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "content-length",
        "content-type",
        "allow",
        "supported",
        "require",
        "session-expires",
        "min-se",
        "authorization",
        "proxy-authorization",
        "record-route",
    }
)


class UacError(ValueError):
    """An outbound call that cannot be placed as asked; the message says which argument and why."""


# --- what the core gives us -------------------------------------------------------------------------------


class UacCore(Protocol):
    """What an outbound call needs of the user agent core."""

    rng: random.Random
    timing: Timing
    policy: Policy

    def send_request(
        self, request: Request, target: Target, now: float, owner: ClientOwner
    ) -> ClientTransaction | None: ...

    def send_stateless(self, message: Request | Response, to: Destination) -> None: ...

    def emit(self, event: SipEvent) -> None: ...

    def add_timed(self, timed: Timed) -> None: ...

    def remove_timed(self, timed: Timed) -> None: ...

    def new_tag(self) -> str: ...

    def new_branch(self) -> str: ...

    def via(self, local: tuple[str, int], transport: Transport) -> Via: ...

    def contact(self, local: tuple[str, int], transport: Transport, user: str | None = None) -> NameAddr: ...

    def own_dialogs(self, call_id: str, local_tag: str, owner: DialogOwner) -> None: ...

    def disown_dialogs(self, call_id: str, local_tag: str) -> None: ...

    def respond(self, tx: ServerTransaction, response: Response, now: float) -> None: ...

    def reply_destination(self, request: Request, peer: Peer) -> Destination: ...


# --- events ---------------------------------------------------------------------------------------------


class HangupCause(StrEnum):
    """Why an answered call ended without the application ending it."""

    BYE = "bye"  # the far end sent BYE
    SESSION_EXPIRED = "session_expired"  # no session refresh in time (RFC 4028): we sent BYE
    NO_ACK = "no_ack"  # our 2xx to their re-INVITE was never ACKed: we sent BYE (§13.3.1.4)
    DIALOG_GONE = "dialog_gone"  # our re-INVITE got 408/481 or no answer (§12.2.1.2, §14.1)


@dataclass(frozen=True, eq=False)
class Provisional(SipEvent):
    """A 101-199 to our INVITE. ``tag``: the far end's To tag (its early dialog; None when it gave
    none); ``sdp``: its body when SDP; ``early_media``: this is the first provisional with SDP, whose
    media the caller should hear (later forks' SDP is told, not chosen)."""

    call: OutboundCall
    status: int
    reason: str
    sdp: bytes
    tag: str | None
    early_media: bool = False


@dataclass(frozen=True, eq=False)
class Answered(SipEvent):
    """The far end answered (2xx, ACKed): ``sdp`` is its answer to our offer, ``tag`` its dialog."""

    call: OutboundCall
    sdp: bytes
    tag: str


@dataclass(frozen=True, eq=False)
class Failed(SipEvent):
    """The call was not answered: the final status and reason (the far end's, or ours: 408 "no answer"
    for Timer B, 503 for a transport failure, 487 "cancelled" after :meth:`OutboundCall.cancel`). A 3xx
    gives its Contacts, best first, for the dial plan to try. ``local``: no final answer came from the
    far end — the status is ours (Timer B, a transport failure, a challenge we could not answer, a 2xx
    we could not take)."""

    call: OutboundCall
    status: int
    reason: str
    contacts: tuple[Uri, ...] = ()
    local: bool = False


@dataclass(frozen=True, eq=False)
class ChallengeReceived(SipEvent):
    """A 401 (``proxy`` False) or 407 challenged our request for ``realm``: answered when we have
    credentials and have not answered this nonce yet, else the request fails."""

    call: OutboundCall
    realm: str
    proxy: bool


@dataclass(frozen=True, eq=False)
class Hangup(SipEvent):
    """The answered call is over without the application ending it. ``reason``: the BYE's Reason
    header as it came (cause BYE), or what we wrote in ours."""

    call: OutboundCall
    cause: HangupCause
    reason: str = ""


@dataclass(frozen=True, eq=False)
class ReInviteReceived(SipEvent):
    """The far end sent a re-INVITE (hold, new media, a session refresh): answer it with
    :meth:`OutboundCall.answer_reinvite` (within 64*T1, or it gets 500). ``sdp``: its offer, or empty
    (then our 2xx carries an offer and the answer comes in :class:`ReInviteAcked`)."""

    call: OutboundCall
    request: Request
    sdp: bytes


@dataclass(frozen=True, eq=False)
class ReInviteAcked(SipEvent):
    """The ACK for our 2xx to their re-INVITE came; ``sdp`` is their answer when our 2xx made the offer."""

    call: OutboundCall
    sdp: bytes


@dataclass(frozen=True, eq=False)
class ReInviteDone(SipEvent):
    """The final answer to our re-INVITE (:meth:`OutboundCall.reinvite`): a 2xx with the far end's
    answer (``sdp``), or an error — then the session is as it was (§14.1)."""

    call: OutboundCall
    status: int
    sdp: bytes


# --- states ---------------------------------------------------------------------------------------------


class CallState(StrEnum):
    """Where a call we place is, as SIP sees it."""

    CALLING = "calling"  # INVITE sent, no provisional yet: a CANCEL may not go (§9.1)
    PROCEEDING = "proceeding"  # a provisional came
    CANCEL_WAITING = "cancel_waiting"  # cancelled before any provisional: the CANCEL waits for one
    CANCELLING = "cancelling"  # CANCEL sent: waiting for the INVITE's final answer
    CONFIRMED = "confirmed"  # answered and ACKed: the call is up
    ENDED = "ended"


_SETTING_UP = (CallState.CALLING, CallState.PROCEEDING)
_CANCELLED = (CallState.CANCEL_WAITING, CallState.CANCELLING)


class Purpose(StrEnum):
    """What a re-INVITE (or UPDATE) of ours is for."""

    OFFER = "offer"  # the application's new SDP (:meth:`OutboundCall.reinvite`)
    REFRESH = "refresh"  # a session refresh (RFC 4028)


class OutState(StrEnum):
    SENT = "sent"  # waiting for its final answer
    GLARE_WAIT = "glare_wait"  # got 491: sent again at ``retry_at``


@dataclass
class _Outgoing:
    """Our re-INVITE or UPDATE in progress (one at a time, §14.1)."""

    purpose: Purpose
    method: str
    sdp: bytes
    state: OutState = OutState.SENT
    tries: int = 0
    retry_at: float | None = None
    timer_offer: TimerOffer | None = None


@dataclass
class _Incoming:
    """Their re-INVITE waiting for the application's answer."""

    request: Request
    tx: ServerTransaction
    peer: Peer
    dialog: Dialog
    deadline: float
    #: The session timer our 2xx agrees (none when their request asks for none).
    timer: Agreed


@dataclass
class _Resending:
    """Our 2xx to their re-INVITE, resent until its ACK (§13.3.1.4)."""

    machine: TwoXxRetransmitter
    to: Destination
    cseq: int


# --- helpers --------------------------------------------------------------------------------------------


class _Answers:
    """A client transaction's answers, passed to two callables (one request, one handler)."""

    def __init__(self, response: Callable[[Response, float], None], timeout: Callable[[str, float], None]) -> None:
        self._response = response
        self._timeout = timeout

    def on_response(self, response: Response, now: float) -> None:
        self._response(response, now)

    def on_timeout(self, why: str, now: float) -> None:
        self._timeout(why, now)


def _ignore_timeout(why: str, now: float) -> None:
    log.debug("a request of an outbound call got no answer: %s", why)


def _number(message: Request | Response) -> int | None:
    try:
        return message.cseq.number
    except BadHeader:
        return None


def _to_tag(message: Request | Response) -> str | None:
    try:
        return message.to.tag
    except BadHeader:
        return None


def _sdp_of(message: Request | Response) -> bytes:
    """The message's SDP (its body, or a multipart body's SDP part), else nothing."""
    return message.sdp


def _reason_header(text: str, cause: int = 200) -> str:
    """A Reason header (RFC 3326) a person can read: quotes, backslashes and control characters out."""
    clean = "".join(c if c.isprintable() and c not in '"\\' else " " for c in text)[:MAX_REASON]
    return f'SIP;cause={cause};text="{clean}"'


#: What cancel() is given when another leg took the call (a parallel dial's winner).
ANSWERED_ELSEWHERE = "answered elsewhere"


def _cancel_reason_header(reason: str) -> str:
    """Our CANCEL's Reason. Cause 200 there says another took the call ("Call completed elsewhere",
    RFC 3326): phones then log no missed call, so it is said only when so; else 487, as the INVITE ends."""
    if reason == ANSWERED_ELSEWHERE:
        return _reason_header("Call completed elsewhere")
    return _reason_header(reason, cause=487)


def _reason_of(response: Response) -> str:
    return response.reason or REASONS.get(response.status, "")


def _redirect_contacts(response: Response) -> tuple[Uri, ...]:
    """A 3xx's Contacts, the highest ``q`` first (unreadable ones skipped), at most MAX_CONTACTS."""
    found: list[tuple[float, int, Uri]] = []
    for i, value in enumerate(response.headers.values("contact")[: MAX_CONTACTS * 4]):
        try:
            address = parse_name_addr(value)
        except UriError:
            continue
        try:
            q = float(address.param("q") or "1")
        except ValueError:
            q = 0.0
        found.append((-q, i, address.uri))
    return tuple(uri for _, _, uri in sorted(found)[:MAX_CONTACTS])


def checked_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Extra headers for an INVITE as given, or UacError naming the first one that cannot go: too many,
    not a header name, one the core writes itself, a value not on one printable line or too long."""
    out = tuple(headers)
    if len(out) > MAX_EXTRA_HEADERS:
        raise UacError(f"OutboundCall(headers=...): {len(out)} headers, at most {MAX_EXTRA_HEADERS}")
    for name, value in out:
        if not TOKEN.fullmatch(name):
            raise UacError(f"OutboundCall(headers=...): {name[:40]!r} is not a header name (letters, digits, '-')")
        if header_key(name) in _OURS:
            raise UacError(f"OutboundCall(headers=...): {name} is written by the SIP core itself; leave it out")
        if len(value) > MAX_HEADER_VALUE or unfit_for_a_header(value):
            raise UacError(
                f"OutboundCall(headers=...): the {name} value must be printable, on one line, at most"
                f" {MAX_HEADER_VALUE} characters"
            )
    return out


# --- the call -------------------------------------------------------------------------------------------


class OutboundCall:
    """One call we place: built, then :meth:`start` sends the INVITE; driven by the core, acted on by
    the application. See the module docstring for what it does with each answer.

    ``target``: the next hop (the far end, a proxy or a trunk, for the endpoint to resolve); ``local``:
    our address as the target reaches us (Via and Contact); ``request_uri``: whom we call; ``from_``,
    ``to``: the addresses (our tag is added); ``sdp``: our offer; ``headers``: added as given (not those
    the core writes); ``credentials``: for 401/407; ``session_expires`` (seconds, at least 90): ask for
    RFC 4028 session timers. Raises UacError for arguments that cannot make an INVITE."""

    def __init__(
        self,
        ua: UacCore,
        *,
        target: Target,
        local: tuple[str, int],
        request_uri: Uri,
        from_: NameAddr,
        to: NameAddr,
        sdp: bytes,
        headers: Iterable[tuple[str, str]] = (),
        credentials: Credentials | None = None,
        session_expires: int | None = None,
        max_forwards: int | None = None,
    ) -> None:
        if not request_uri.is_sip:
            raise UacError(f"OutboundCall(request_uri={request_uri}): give a sip: or sips: URI")
        if to.tag is not None:
            raise UacError("OutboundCall(to=...): a new call's To has no tag (the far end adds one)")
        if not sdp or len(sdp) > MAX_SDP:
            raise UacError(f"OutboundCall(sdp=...): give our SDP offer, 1 to {MAX_SDP} bytes (got {len(sdp)})")
        try:
            self._timer_offer = TimerOffer(interval=session_expires) if session_expires is not None else None
        except SessionTimerError as e:
            raise UacError(f"OutboundCall(session_expires={session_expires}): {e}") from None
        if max_forwards is not None and max_forwards < 0:
            raise UacError(f"OutboundCall(max_forwards={max_forwards}): a hop count is 0 or more")
        self.ua = ua
        self.target = target
        self.local = local
        self.request_uri = request_uri
        #: The INVITE's Max-Forwards: what the call that places it has left, at most the usual 70.
        self.max_forwards = MAX_FORWARDS if max_forwards is None else min(MAX_FORWARDS, max_forwards)
        self.extra = checked_headers(headers)
        self.call_id = f"{ua.rng.getrandbits(128):032x}"
        self.local_tag = ua.new_tag()
        self.from_ = from_.with_param("tag", self.local_tag)
        self.to = to
        #: Our SDP as the far end last accepted it (the offer; then each re-INVITE's that got a 2xx).
        self.sdp = sdp
        self.state = CallState.CALLING
        #: The answered dialog (None before the answer).
        self.dialog: Dialog | None = None
        #: The far end's answer (its 2xx's SDP).
        self.remote_sdp = b""
        #: The To tag of the provisional whose SDP is the early media (see :class:`Provisional`).
        self.early_media_tag: str | None = None
        #: Any response to our INVITE came (100 Trying, a challenge...): the far end is there.
        self.responded = False
        self._early_media = False
        self._dialogs: dict[str, Dialog] = {}
        self._early_sdp: dict[str, bytes] = {}
        self._acks: dict[tuple[str, int], tuple[Request, Target]] = {}
        self._auth = DigestClient(credentials, ua.rng)
        self._invite: Request | None = None
        self._invite_tx: ClientTransaction | None = None
        self._invites_sent = 0
        self._setup_deadline: float | None = None
        self._cancel_reason = ""
        self._peer_allows_update = False
        #: The running session timer (RFC 4028), once a 2xx agreed one.
        self._session: SessionClock | None = None
        self._out: _Outgoing | None = None
        self._queued_offer: bytes | None = None
        self._in: _Incoming | None = None
        self._resending: _Resending | None = None
        self._forget_at: float | None = None

    # --- what the application reads ----------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        return self.target.transport

    @property
    def early_dialogs(self) -> list[str]:
        """The To tags of the early dialogs (one per fork that sent a provisional with a tag)."""
        return [tag for tag, dialog in self._dialogs.items() if dialog.state is DialogState.EARLY]

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    def reaches(self, transport: Transport, host: str, port: int) -> bool:
        """Whether the call, not over, sends its requests to ``host``:``port`` over ``transport`` (the
        endpoint keeps such a TCP connection open however long it is idle)."""
        target = self.target
        return not self.ended and target.transport is transport and target.host == host and target.port == port

    # --- what the application does ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send the INVITE (once)."""
        if self._invite is not None:
            return
        try:
            self.ua.own_dialogs(self.call_id, self.local_tag, self)
        except TableFull as e:
            self._fail(503, f"not sent: {e}", now, local=True)
            return
        self.ua.add_timed(self)
        self._setup_deadline = now + MAX_SETUP
        self._send_invite(now)

    def cancel(self, now: float, reason: str = "") -> None:
        """Give up a call not answered yet (RFC 3261 §9.1): a CANCEL once a provisional came, else as
        soon as one comes. The call then fails ``487 cancelled`` (whatever final answer comes; a 2xx
        that crossed the CANCEL is ACKed and sent a BYE). Once answered, :meth:`bye` instead."""
        if self.state not in _SETTING_UP:
            return
        self._cancel_reason = reason
        if self.state is CallState.CALLING:
            self.state = CallState.CANCEL_WAITING  # Timer B bounds the wait for a provisional
        else:
            self._send_cancel(now)

    def bye(self, now: float, reason: str = "") -> None:
        """End the call: BYE once answered (``reason`` in a Reason header), CANCEL before."""
        if self.state in (CallState.CALLING, CallState.PROCEEDING):
            self.cancel(now, reason)
            return
        if self.state is not CallState.CONFIRMED or self.dialog is None:
            return
        self._bye(self.dialog, now, reason)
        self._end(now)

    def reinvite(self, sdp: bytes, now: float) -> bool:
        """Offer new media (hold, resume, another codec) in a re-INVITE; the answer comes as
        :class:`ReInviteDone`. One at a time (§14.1): False while one of the application's is in progress
        (a session refresh in progress makes this one wait for it)."""
        if self.state is not CallState.CONFIRMED or not sdp or len(sdp) > MAX_SDP:
            return False
        if self._out is None:
            self._send_out(_Outgoing(Purpose.OFFER, Method.INVITE, sdp), now)
            return True
        if self._out.purpose is Purpose.REFRESH and self._queued_offer is None:
            self._queued_offer = sdp
            return True
        return False

    def answer_reinvite(self, status: int, now: float, sdp: bytes = b"") -> None:
        """Answer their re-INVITE (:class:`ReInviteReceived`): 200 with our SDP, or 488 and the like."""
        pending = self._in
        if pending is None or not 200 <= status <= 699:
            return
        self._in = None
        headers: list[tuple[str, str]] = [("User-Agent", self.ua.policy.user_agent)]
        ok = status < 300
        if ok:
            headers.append(("Allow", allow_header(self.ua.policy.allowed)))
            headers += pending.timer.headers()
            if sdp:
                headers.append(("Content-Type", "application/sdp"))
        response = pending.dialog.answer(
            pending.request,
            status,
            contact=self._contact() if ok else None,
            headers=headers,
            body=sdp if ok else b"",
        )
        self.ua.respond(pending.tx, response, now)
        if not ok:
            return
        if sdp:
            self.sdp = sdp
        self._set_session(pending.timer.timer, now)  # each re-INVITE agrees the timer anew (RFC 4028 §9)
        cseq = _number(pending.request) or 0
        machine = TwoXxRetransmitter(response, now=now, timing=self.ua.timing)
        self._resending = _Resending(machine, self.ua.reply_destination(pending.request, pending.peer), cseq)

    # --- the core's hooks (Timed, DialogOwner) -------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [self._forget_at, self._session.next_timer() if self._session is not None else None]
        if self.state in _SETTING_UP:  # (each time given here is cleared by handle_timer when due)
            times.append(self._setup_deadline)
        if self._out is not None:
            times.append(self._out.retry_at)
        if self._in is not None:
            times.append(self._in.deadline)
        if self._resending is not None:
            times.append(self._resending.machine.next_timer())
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        if self._forget_at is not None:
            if now >= self._forget_at:
                self._forget()
            return
        if self._resending is not None:
            self._resend_2xx(now)
        if self._in is not None and now >= self._in.deadline:
            log.info("call %s: their re-INVITE was not answered in time: 500", self.call_id)
            self.answer_reinvite(500, now)
        if self.state in _SETTING_UP and self._setup_deadline is not None and now >= self._setup_deadline:
            self.cancel(now, "no answer")
        out = self._out
        if out is not None and out.retry_at is not None and now >= out.retry_at:
            out.retry_at = None
            out.state = OutState.SENT
            self._send_out(out, now)
        due = self._session.due(now) if self._session is not None else None
        if due == "expire":
            self._expired(now)
        elif due == "refresh":
            self._refresh(now)

    def on_request(self, request: Request, tx: ServerTransaction, peer: Peer, now: float) -> None:
        try:
            dialog = self._dialogs.get(request.from_.tag or "")
        except BadHeader:
            dialog = None
        if dialog is None or dialog.state is DialogState.TERMINATED:
            self.ua.respond(tx, response_to(request, 481), now)  # RFC 3261 §12.2.2
            return
        rejection = dialog.receive_request(request)
        if rejection is not None:
            response = dialog.answer(request, rejection.status, rejection.reason, headers=rejection.headers)
            self.ua.respond(tx, response, now)
            return
        method = request.method
        if method == Method.BYE:
            self.ua.respond(tx, dialog.answer(request, 200), now)
            if dialog is self.dialog and self.state is CallState.CONFIRMED:
                reason = (request.headers.get("reason") or "")[:MAX_REASON_IN]
                self._end(now)
                self.ua.emit(Hangup(self, HangupCause.BYE, reason))
            elif self.state is CallState.PROCEEDING and self.early_dialogs == []:
                self._early_bye(now)
        elif method == Method.INVITE:
            self._their_reinvite(request, tx, peer, dialog, now)
        elif method == Method.OPTIONS:
            headers = [("Allow", allow_header(self.ua.policy.allowed)), ("Accept", "application/sdp")]
            self.ua.respond(tx, dialog.answer(request, 200, headers=headers), now)
        else:
            headers = [("Allow", allow_header(self.ua.policy.allowed))]
            self.ua.respond(tx, dialog.answer(request, 405, headers=headers), now)

    def on_ack(self, ack: Request, now: float) -> None:
        resending = self._resending
        if resending is None or _number(ack) != resending.cseq:
            return  # a retransmitted ACK, or one for an earlier 2xx
        resending.machine.ack_received(now)
        self._resending = None
        self.ua.emit(ReInviteAcked(self, _sdp_of(ack)))

    def on_stray_response(self, response: Response, now: float) -> None:
        try:
            invite = response.cseq.method == Method.INVITE
        except BadHeader:
            return
        if invite and 200 <= response.status < 300:
            self._on_invite_2xx(response, now)

    # --- the INVITE --------------------------------------------------------------------------------------

    def _send_invite(self, now: float) -> None:
        self._invites_sent += 1
        try:
            invite = self._build_invite(self._invites_sent)
        except AuthError as e:
            self._fail(401, f"cannot answer the challenge: {e}", now, local=True)
            return
        self._invite = invite
        answers = _Answers(self._on_invite_response, self._on_invite_timeout)
        self._invite_tx = self.ua.send_request(invite, self.target, now, answers)

    def _build_invite(self, cseq: int) -> Request:
        via = self.ua.via(self.local, self.transport).with_param("branch", self.ua.new_branch())
        uri = str(self.request_uri)
        h = Headers()
        h.add("Via", str(via))
        h.add("Max-Forwards", str(self.max_forwards))
        h.add("From", str(self.from_))
        h.add("To", str(self.to))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} INVITE")
        h.add("Contact", str(self._contact()))
        h.add("Allow", allow_header(self.ua.policy.allowed))
        for name, value in self._timer_offer.headers() if self._timer_offer else ():
            h.add(name, value)
        for name, value in self._auth.headers(Method.INVITE, uri):
            h.add(name, value)
        for name, value in self.extra:
            h.add(name, value)
        if "user-agent" not in h:
            h.add("User-Agent", self.ua.policy.user_agent)
        h.add("Content-Type", "application/sdp")
        return Request(method=Method.INVITE.value, uri=uri, headers=h, body=self.sdp)

    def _on_invite_response(self, response: Response, now: float) -> None:
        self.responded = True
        status = response.status
        if 200 <= status < 300:
            self._on_invite_2xx(response, now)
            return
        if self._invite is None or _number(response) != _number(self._invite):
            return  # an earlier INVITE's (before a challenge): its successor speaks for the call
        if self.state not in (*_SETTING_UP, *_CANCELLED):
            return
        if status < 200:
            self._on_provisional(response, now)
        elif self.state in _CANCELLED:
            self._fail(487, "cancelled", now)
        elif status in (401, 407):
            self._on_challenge(response, now)
        elif status == 422 and self._retry_422(response, now):
            return
        else:
            contacts = _redirect_contacts(response) if 300 <= status < 400 else ()
            self._fail(status, _reason_of(response), now, contacts)

    def _on_invite_timeout(self, why: str, now: float) -> None:
        if self.state in _CANCELLED:
            self._fail(487, "cancelled", now)
        elif self.state in _SETTING_UP:
            status = 408 if why == "no answer" else 503
            self._fail(status, why, now, local=True)

    def _on_provisional(self, response: Response, now: float) -> None:
        if self.state is CallState.CALLING:
            self.state = CallState.PROCEEDING
        elif self.state is CallState.CANCEL_WAITING:
            self._send_cancel(now)  # a provisional came: the CANCEL may go now (§9.1)
            return
        if response.status == 100 or self.state is not CallState.PROCEEDING:
            return
        tag = _to_tag(response)
        if tag is not None and tag not in self._dialogs and len(self._dialogs) < MAX_DIALOGS:
            assert self._invite is not None
            try:
                self._dialogs[tag] = Dialog.for_uac(self._invite, response, rng=self.ua.rng)
            except DialogError as e:
                log.info("call %s: a %d makes no early dialog: %s", self.call_id, response.status, e)
        sdp = _sdp_of(response)
        first = bool(sdp) and not self._early_media
        if sdp and tag is not None and tag in self._dialogs:
            self._early_sdp.setdefault(tag, sdp)
        if first:
            self._early_media = True
            self.early_media_tag = tag
        self.ua.emit(Provisional(self, response.status, _reason_of(response), sdp, tag, first))

    def _on_challenge(self, response: Response, now: float) -> None:
        try:
            challenge = challenge_of(response)
        except AuthError as e:
            self._fail(response.status, f"{_reason_of(response)} ({e})", now)
            return
        self.ua.emit(ChallengeReceived(self, challenge.realm, challenge.proxy))
        refused = self._auth.take(challenge)
        if refused is None and self._invites_sent >= MAX_INVITES:
            refused = f"challenged again after {MAX_INVITES} INVITEs"
        if refused is not None:
            self._fail(response.status, f"{_reason_of(response)} ({refused})", now)
            return
        self._send_invite(now)

    def _retry_422(self, response: Response, now: float) -> bool:
        if self._timer_offer is None or self._invites_sent >= MAX_INVITES:
            return False
        try:
            self._timer_offer = self._timer_offer.after_422(response)
        except SessionTimerError as e:
            log.info("call %s: %s", self.call_id, e)
            return False
        self._send_invite(now)
        return True

    def _on_invite_2xx(self, response: Response, now: float) -> None:
        tag, number = _to_tag(response), _number(response)
        if tag is None or number is None:
            log.info("call %s: a 2xx without a To tag cannot be ACKed", self.call_id)
            if self.state in _SETTING_UP and self._invite is not None and number == _number(self._invite):
                self._fail(502, "an answer without a To tag", now, local=True)
            return
        cached = self._acks.get((tag, number))
        if cached is not None:
            self.ua.send_stateless(*cached)  # a retransmission: the same ACK again
            return
        invite = self._invite
        if invite is None or number != _number(invite):
            return  # a 2xx to an INVITE we replaced (after a challenge) or to a re-INVITE we forgot
        dialog = self._confirm(tag, invite, response)
        if dialog is None:
            if self.state in _SETTING_UP:
                self._fail(502, "an answer that makes no dialog", now, local=True)
            return
        self._send_ack(dialog, invite, response)
        if self.state in _SETTING_UP:
            self._answered(dialog, response, now)
            return
        # another fork answered after the first, or the answer crossed our CANCEL, or came after we gave
        # up: take it down at once (RFC 3261 §13.2.2.4)
        self._bye(dialog, now, self._cancel_reason or ANSWERED_ELSEWHERE)
        if self.state in _CANCELLED:
            self._fail(487, "cancelled", now)

    def _confirm(self, tag: str, invite: Request, response: Response) -> Dialog | None:
        """The dialog a 2xx confirms: the fork's early one, or a new one."""
        dialog = self._dialogs.get(tag)
        try:
            if dialog is None:
                dialog = Dialog.for_uac(invite, response, rng=self.ua.rng)
                early = [t for t, d in self._dialogs.items() if d.state is DialogState.EARLY]
                if len(self._dialogs) >= MAX_DIALOGS and early:
                    del self._dialogs[early[0]]
                self._dialogs[tag] = dialog
            else:
                dialog.receive_response(response)
        except DialogError as e:
            log.info("call %s: %s", self.call_id, e)
            return None
        return dialog

    def _send_ack(self, dialog: Dialog, invite: Request, response: Response) -> None:
        key = (dialog.remote_tag or "", _number(response) or 0)
        cached = self._acks.get(key)
        if cached is None:
            via = self.ua.via(self.local, self.transport)
            try:
                ack, next_hop = dialog.ack(invite, response, via=via)
            except DialogError as e:
                log.info("call %s: no ACK: %s", self.call_id, e)
                return
            cached = (ack, self._target_of(next_hop))
            self._acks[key] = cached
            while len(self._acks) > MAX_ACKS:
                del self._acks[next(iter(self._acks))]
        self.ua.send_stateless(*cached)

    def _answered(self, dialog: Dialog, response: Response, now: float) -> None:
        self.state = CallState.CONFIRMED
        self.dialog = dialog
        tag = dialog.remote_tag or ""
        # the answer is in the 2xx (RFC 3264); a far end that sent it only in its 183 is read liberally
        self.remote_sdp = _sdp_of(response) or self._early_sdp.get(tag, b"")
        self._peer_allows_update = "UPDATE" in (v.upper() for v in response.headers.values("allow"))
        if self._timer_offer is not None:
            self._agreed(self._timer_offer, response, now)
        self.ua.emit(Answered(self, self.remote_sdp, tag))

    def _early_bye(self, now: float) -> None:
        """The far end's BYE ended its last early dialog (RFC 3261 §15 has a callee never do so, yet
        gateways end an announcement that way): nothing rings any more, so the INVITE is cancelled
        and the call fails at once (the 487, or a 200 crossing the CANCEL, is dealt with as after any
        give-up)."""
        self._cancel_reason = "the far end hung up"
        self._send_cancel(now)
        self._fail(487, "the far end hung up before answering (a BYE in its early dialog)", now)

    def _send_cancel(self, now: float) -> None:
        self.state = CallState.CANCELLING
        if self._invite is None:
            return
        cancel = cancel_request(self._invite)
        if self._cancel_reason:
            cancel.headers.add("Reason", _cancel_reason_header(self._cancel_reason))
        self.ua.send_request(cancel, self.target, now, _Answers(lambda r, n: None, _ignore_timeout))
        if self._invite_tx is not None:
            self._invite_tx.cancel_sent(now)  # no final answer in 64*T1: the INVITE gives up

    # --- our requests in the dialog -----------------------------------------------------------------------

    def _bye(self, dialog: Dialog, now: float, reason: str) -> None:
        headers = [("User-Agent", self.ua.policy.user_agent)]
        if reason:
            headers.append(("Reason", _reason_header(reason)))
        try:
            request, next_hop = dialog.request(Method.BYE, via=self._via(), headers=headers)
            self._sign(request)
        except (DialogError, AuthError) as e:
            log.info("call %s: no BYE sent: %s", self.call_id, e)
            return
        self._send_bye(request, self._target_of(next_hop), now, challenged=False)

    def _send_bye(self, request: Request, target: Target, now: float, *, challenged: bool) -> None:
        def answered(response: Response, now: float) -> None:
            # A far end may challenge the BYE too (RFC 3261 §22.1): unanswered, it would keep its side of
            # the call up. Sent again once with the credentials, on a fresh nonce only (DigestClient).
            if response.status in (401, 407) and not challenged and self._challenge_taken(response):
                try:
                    again = self._resubmitted(request)
                except AuthError as e:
                    log.info("call %s: our BYE is not sent again: %s", self.call_id, e)
                    return
                self._send_bye(again, target, now, challenged=True)
            elif response.status >= 300:
                log.info("call %s: our BYE got %d %s", self.call_id, response.status, _reason_of(response))

        self.ua.send_request(request, target, now, _Answers(answered, _ignore_timeout))

    def _resubmitted(self, request: Request) -> Request:
        """``request`` sent again with our credentials after a challenge (RFC 3261 §22.2): the next CSeq
        number, a new branch. (A BYE ended its dialog as it was sent: the dialog builds no other.)"""
        headers = request.headers.copy()
        headers.set("Via", str(self._via().with_param("branch", self.ua.new_branch())))
        headers.set("CSeq", f"{request.cseq.number + 1} {request.method}")
        headers.remove("Authorization")
        headers.remove("Proxy-Authorization")
        again = Request(method=request.method, uri=request.uri, headers=headers, body=request.body)
        self._sign(again)
        return again

    def _send_out(self, out: _Outgoing, now: float) -> None:
        """Send (or send again) our re-INVITE or UPDATE, with the session timer's headers when one runs."""
        dialog = self.dialog
        if dialog is None or self.state is not CallState.CONFIRMED:
            return
        self._out = out
        out.tries += 1
        headers = [("Allow", allow_header(self.ua.policy.allowed)), ("User-Agent", self.ua.policy.user_agent)]
        if out.timer_offer is None and self._session is not None:
            out.timer_offer = self._session.timer.refresh_offer()
        if out.timer_offer is not None:
            headers += out.timer_offer.headers()
        if out.sdp:
            headers.append(("Content-Type", "application/sdp"))
        try:
            request, next_hop = dialog.request(
                out.method, via=self._via(), contact=self._contact(), headers=headers, body=out.sdp
            )
            self._sign(request)
        except (DialogError, AuthError) as e:
            log.info("call %s: no %s sent: %s", self.call_id, out.method, e)
            self._out_done(out, 500, b"", now)
            return

        def on_response(response: Response, now: float) -> None:
            self._on_out_response(out, request, response, now)

        def on_timeout(why: str, now: float) -> None:
            self._on_out_timeout(out, why, now)

        self.ua.send_request(request, self._target_of(next_hop), now, _Answers(on_response, on_timeout))

    def _on_out_response(self, out: _Outgoing, request: Request, response: Response, now: float) -> None:
        status = response.status
        dialog = self.dialog
        if status < 200 or dialog is None:
            return
        if 200 <= status < 300 and out.method == Method.INVITE:
            self._send_ack(dialog, request, response)  # every 2xx to an INVITE is ACKed, call over or not
        if self._out is not out:
            return  # a retransmitted 2xx (ACKed above)
        try:
            dialog.receive_response(response)
        except DialogError as e:
            log.info("call %s: %s", self.call_id, e)
            return
        if self.state is not CallState.CONFIRMED:
            return
        if status < 300:
            if out.timer_offer is not None:
                self._agreed(out.timer_offer, response, now)
            if out.purpose is Purpose.OFFER:
                self.sdp = out.sdp
                self.remote_sdp = _sdp_of(response) or self.remote_sdp
            self._out_done(out, status, _sdp_of(response), now)
        elif dialog.state is DialogState.TERMINATED:  # 408 or 481 (§12.2.1.2)
            self._gone(now, f"{out.method} got {status}")
        elif out.tries >= MAX_REINVITE_TRIES:
            self._out_done(out, status, b"", now)
        elif status == 491:
            wait = self.ua.rng.randint(*GLARE_WAIT) / 100  # §14.1: we own the Call-ID, so 2.1-4 s
            out.state = OutState.GLARE_WAIT
            out.retry_at = now + wait
        elif self._may_retry(out, response):
            self._send_out(out, now)
        else:
            self._out_done(out, status, b"", now)

    def _may_retry(self, out: _Outgoing, response: Response) -> bool:
        """Whether a refused re-INVITE or UPDATE may go again: a challenge we can answer, or a 422 whose
        Min-SE we can take (RFC 4028 §7.4)."""
        if response.status in (401, 407):
            return self._challenge_taken(response)
        return response.status == 422 and out.timer_offer is not None and self._retried_422(out, response)

    def _challenge_taken(self, response: Response) -> bool:
        try:
            challenge = challenge_of(response)
        except AuthError as e:
            log.info("call %s: %s", self.call_id, e)
            return False
        self.ua.emit(ChallengeReceived(self, challenge.realm, challenge.proxy))
        return self._auth.take(challenge) is None

    def _retried_422(self, out: _Outgoing, response: Response) -> bool:
        assert out.timer_offer is not None
        try:
            out.timer_offer = out.timer_offer.after_422(response)
        except SessionTimerError as e:
            log.info("call %s: %s", self.call_id, e)
            return False
        return True

    def _on_out_timeout(self, out: _Outgoing, why: str, now: float) -> None:
        if self._out is out and self.state is CallState.CONFIRMED:
            self._gone(now, f"{out.method}: {why}")  # no answer to a request in the dialog (§14.1)

    def _out_done(self, out: _Outgoing, status: int, sdp: bytes, now: float) -> None:
        self._out = None
        if out.purpose is Purpose.OFFER:
            self.ua.emit(ReInviteDone(self, status, sdp))
        elif status >= 300 and self._session is not None:
            self._session.refresh_failed(now)  # tried again halfway to the expiry (a few times at most)
            log.info("call %s: session refresh got %d: tried again before the session expires", self.call_id, status)
        queued, self._queued_offer = self._queued_offer, None
        if queued is not None and self.state is CallState.CONFIRMED:
            self.reinvite(queued, now)

    # --- their re-INVITE --------------------------------------------------------------------------------

    def _their_reinvite(self, request: Request, tx: ServerTransaction, peer: Peer, dialog: Dialog, now: float) -> None:
        if dialog is not self.dialog or self.state is not CallState.CONFIRMED:
            self.ua.respond(tx, dialog.answer(request, 491), now)  # not our call's dialog (yet)
            return
        try:
            agreed = answer_request(request, min_se=MIN_SE)
        except BadHeader as e:
            text = str(e)[:MAX_REASON]
            self.ua.respond(tx, dialog.answer(request, 400, f"Bad Session-Expires: {text}"), now)
            return
        if isinstance(agreed, TooSmall):
            self.ua.respond(tx, dialog.answer(request, 422, headers=agreed.headers()), now)
            return
        self.ua.respond(tx, dialog.answer(request, 100), now)  # stops their retransmissions at once
        deadline = now + self.ua.timing.timeout
        self._in = _Incoming(request, tx, peer, dialog, deadline, agreed)
        self.ua.emit(ReInviteReceived(self, request, _sdp_of(request)))

    def _resend_2xx(self, now: float) -> None:
        resending = self._resending
        assert resending is not None
        machine = resending.machine
        due = machine.next_timer()
        if due is not None and due <= now:
            machine.handle_timer(now)
        for message in machine.take_messages():
            self.ua.send_stateless(message, resending.to)
        if any(isinstance(e, TimedOut) and e.timer is TimerName.NO_ACK for e in machine.take_events()):
            self._resending = None
            if self.dialog is not None and self.state is CallState.CONFIRMED:
                self._bye(self.dialog, now, "no ACK")
                self._end(now)
                self.ua.emit(Hangup(self, HangupCause.NO_ACK, "no ACK"))
        elif machine.state is not AckWait.RETRANSMITTING:
            self._resending = None

    # --- session timers ---------------------------------------------------------------------------------

    def _agreed(self, offer: TimerOffer, response: Response, now: float) -> None:
        try:
            timer = offer.agreed(response)
        except SessionTimerError as e:
            log.info("call %s: %s: no session timer", self.call_id, e)
            timer = None
        self._set_session(timer, now)

    def _set_session(self, timer: SessionTimer | None, now: float) -> None:
        if timer is None:
            self._session = None
        elif self._session is None:
            self._session = SessionClock(timer, now)
        else:
            self._session.restart(timer, now)

    def _refresh(self, now: float) -> None:
        if self._out is not None:
            return  # a re-INVITE of ours is in progress: its 2xx refreshes the session
        method = Method.UPDATE if self._peer_allows_update else Method.INVITE
        sdp = b"" if method == Method.UPDATE else self.sdp  # a re-INVITE offers our SDP, unchanged
        self._send_out(_Outgoing(Purpose.REFRESH, method, sdp), now)

    def _expired(self, now: float) -> None:
        self._session = None
        if self.dialog is None or self.state is not CallState.CONFIRMED:
            return
        self._bye(self.dialog, now, "session expired")
        self._end(now)
        self.ua.emit(Hangup(self, HangupCause.SESSION_EXPIRED, "session expired"))

    # --- ending -----------------------------------------------------------------------------------------

    def _gone(self, now: float, why: str) -> None:
        if self.dialog is not None:
            self.dialog.terminate()
        self._end(now)
        self.ua.emit(Hangup(self, HangupCause.DIALOG_GONE, why))

    def _fail(
        self, status: int, reason: str, now: float, contacts: tuple[Uri, ...] = (), *, local: bool = False
    ) -> None:
        self._end(now)
        self.ua.emit(Failed(self, status, reason, contacts, local))

    def _end(self, now: float) -> None:
        """The call is over; it keeps listening for 64*T1 (late 2xx get their ACK and a BYE, late
        requests a 481), then the core forgets it."""
        self.state = CallState.ENDED
        if self._in is not None:
            self.answer_reinvite(487, now)  # RFC 3261 §15.1.2: pending requests of the dialog get 487
        self._out = None
        self._queued_offer = None
        self._session = None
        self._resending = None
        self._forget_at = now + self.ua.timing.timeout

    def _forget(self) -> None:
        self._forget_at = None
        self.ua.disown_dialogs(self.call_id, self.local_tag)
        self.ua.remove_timed(self)

    # --- small things -----------------------------------------------------------------------------------

    def _via(self) -> Via:
        return self.ua.via(self.local, self.transport)

    def _contact(self) -> NameAddr:
        return self.ua.contact(self.local, self.transport, self.from_.uri.user)

    def _sign(self, request: Request) -> None:
        for name, value in self._auth.headers(request.method, request.uri):
            request.headers.add(name, value)

    def _target_of(self, uri: Uri) -> Target:
        """Where a request to ``uri`` goes: the INVITE's own next hop when it names the same place (its
        connection is kept), else its host and port (5060 when none) over the transport it names or ours.
        Over UDP, a private address given by a far end we dialled at a public one (a phone behind NAT, its
        Contact naming its own address) is the INVITE's next hop too: that is the way in its NAT forwards."""
        named = uri.transport
        transport = Transport.TCP if named == "tcp" else Transport.UDP if named == "udp" else self.transport
        target = Target(transport, uri.host, uri.port or 5060)
        if replace(self.target, flow=0) == target:
            return self.target
        udp = transport is Transport.UDP and self.target.transport is Transport.UDP
        if udp and behind_nat(uri.host, self.target.host):
            return self.target
        return target
