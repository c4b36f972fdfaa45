"""Blind transfer of a caller with REFER (RFC 3515, as RFC 5589 §6 uses it), without I/O.

A :class:`Referral` asks the party of a call we answered — a :class:`ServerCall`, whose dialog we hold as
its UAS — to call someone else in our place. Built, then started (``Referral(ua, call, refer_to).start(now)``,
as uac.py's calls and register.py's bindings); the core feeds it the answers to its REFER and the NOTIFYs
of the caller's dialog (:meth:`UserAgent.serve_in_dialog`), and covers its timers; it tells the
application each step as a :class:`ReferUpdate`.

- **The REFER** goes in the caller's dialog (dialog.py: the next CSeq, the route set, the caller's
  Contact as Request-URI) with ``Refer-To`` (whom to call), ``Referred-By`` (us, as the caller called us:
  the dialog's local URI, RFC 3892) and our ``Contact``. Only a confirmed dialog (our 2xx ACKed) takes one.
- **Its answer**: a 2xx (202 Accepted, usually) means the party is calling the target; a 3xx-6xx refuses
  the transfer with that code. A 401/407 is answered with the credentials given (auth.py's
  :class:`DigestClient`: once per nonce, at most :data:`MAX_REFERS` REFERs in all). No answer within
  Timer F counts as 408, a transport failure as 503 (RFC 3261 §8.1.3.1).
- **The NOTIFYs** (event package ``refer``, RFC 3515 §2.4.4-§2.4.5) are answered 200; the status line of
  each ``message/sipfrag`` body is the target's answer to the party's INVITE: 1xx is progress, 2xx means
  transferred, 3xx-6xx failed with that code. A NOTIFY may overtake the 2xx to the REFER (over UDP they
  travel apart): it counts as the acceptance. The first final status decides; the subscription ends with
  ``Subscription-State: terminated``, which without a final status first is a failure.
- **Bounded waits**: no NOTIFY within :data:`NOTIFY_WAIT` (64*T1, as RFC 6665 §4.1.2.4 waits for a
  subscription's first NOTIFY) of the acceptance fails it ("no NOTIFY"); no final status within
  :data:`TRANSFER_WAIT` fails it too. Only the first :data:`MAX_STATUS_LINE` characters of a body are
  read; a body that holds no status line we can read gives no status (the NOTIFY is still answered 200:
  it is ours, and it may terminate the subscription).
- **Not ours**: a NOTIFY of another event package gets 489 Bad Event; one whose ``id`` names another
  REFER, or that comes once we stopped listening (the subscription terminated, the referral failed or
  was stopped), gets 481 — RFC 6665 §4.1.3: the notifier ends the subscription on it.

What the referral does not do: end the call. Once transferred, the party's own BYE or ours ends it —
whoever uses the referral decides (the ``sip_refer`` method sends ours, docs/methods.md). Not done either:
``norefersub`` (RFC 4488: we always take the implicit subscription), refreshing or ending the subscription
with SUBSCRIBE, REFER outside a dialog, and ``Replaces`` (an attended transfer) beyond passing what
``refer_to`` carries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from swml_engine.transports.sip.auth import AuthError, Credentials, DigestClient, challenge_of
from swml_engine.transports.sip.dialog import DialogError
from swml_engine.transports.sip.message import REASONS, Method, Request, Response
from swml_engine.transports.sip.transaction import ServerTransaction
from swml_engine.transports.sip.uac import UacCore
from swml_engine.transports.sip.uri import NameAddr, Uri, UriError, parse_params, shown
from swml_engine.transports.sip.useragent import (
    Peer,
    RequestHandler,
    ServerCall,
    SipEvent,
    Target,
    UasState,
)

log = logging.getLogger(__name__)

#: REFERs one referral sends (the first, then each answering a new challenge): a server that challenges
#: for ever stops here.
MAX_REFERS = 4
#: After the acceptance, the first NOTIFY must come within 64*T1 (seconds: taken from the core's timing).
#: The final status must come within this (s): the party's INVITE to the target may ring for a while, but
#: the caller waits in silence meanwhile.
TRANSFER_WAIT = 180.0
#: Characters of a sipfrag body read for its status line (a status line is well under 100).
MAX_STATUS_LINE = 256
#: The longest ``refer_to`` taken (it must fit a datagram with the rest of the REFER).
MAX_REFER_TO = 2048
#: Longest reason phrase kept from a sipfrag or a response, for events and logs.
MAX_REASON = 100


class ReferError(ValueError):
    """A referral that cannot be made as asked; the message says which argument and why."""


class ReferCore(UacCore, Protocol):
    """What a referral needs of the user agent core: what an outbound call does, and the caller's dialog."""

    def target(self, uri: Uri, peer: Peer) -> Target: ...

    def serve_in_dialog(self, call: ServerCall, method: str, handler: RequestHandler) -> None: ...

    def unserve_in_dialog(self, call: ServerCall, method: str, handler: RequestHandler) -> None: ...


class ReferState(StrEnum):
    """Where a referral is."""

    SENT = "sent"  # the REFER is out (or out again, with credentials): no final answer yet
    ACCEPTED = "accepted"  # a 2xx, or a first NOTIFY: the party is calling the target
    TRANSFERRED = "transferred"  # a NOTIFY told the target's 2xx: the party is talking to the target
    FAILED = "failed"  # refused, failed, or no answer in time: the caller is still ours


#: The states a referral may move to from each (anything else is a bug of this module).
_NEXT: dict[ReferState, frozenset[ReferState]] = {
    ReferState.SENT: frozenset({ReferState.SENT, ReferState.ACCEPTED, ReferState.TRANSFERRED, ReferState.FAILED}),
    ReferState.ACCEPTED: frozenset({ReferState.ACCEPTED, ReferState.TRANSFERRED, ReferState.FAILED}),
    ReferState.TRANSFERRED: frozenset(),
    ReferState.FAILED: frozenset(),
}


@dataclass(frozen=True, eq=False)
class ReferUpdate(SipEvent):
    """A referral moved (accepted, a NOTIFY's progress, transferred, failed), or told another status in the
    state it is in. ``refer_code``: the answer to the REFER (None until one came); ``notify_code``: the
    last status a NOTIFY told (None until one did); ``reason``: that status's phrase, or why it failed."""

    referral: Referral
    state: ReferState
    refer_code: int | None
    notify_code: int | None
    reason: str = ""

    @property
    def call(self) -> ServerCall:
        return self.referral.call

    @property
    def done(self) -> bool:
        return self.state in (ReferState.TRANSFERRED, ReferState.FAILED)


@dataclass(frozen=True)
class Sipfrag:
    """The status line of a NOTIFY's ``message/sipfrag`` body (RFC 3420)."""

    status: int
    reason: str


def read_sipfrag(body: bytes) -> Sipfrag | None:
    """The status line a sipfrag body starts with (``SIP/2.0 180 Ringing``), or None when it holds none we
    can read. Only the first :data:`MAX_STATUS_LINE` characters are looked at."""
    head = body[:MAX_STATUS_LINE].decode("utf-8", "replace")
    line = head.split("\n", 1)[0].strip()
    words = line.split(" ", 2)
    if len(words) < 2 or words[0].upper() != "SIP/2.0" or not (len(words[1]) == 3 and words[1].isdigit()):
        return None
    status = int(words[1])
    if not 100 <= status <= 699:
        return None
    reason = shown(words[2])[:MAX_REASON] if len(words) > 2 else REASONS.get(status, "")
    return Sipfrag(status, reason)


class Referral:
    """One transfer of ``call``'s party to ``refer_to`` (a ``sip:``/``sips:`` URI). See the module docstring.

    ``credentials``: for a 401/407 to the REFER. ``transfer_wait``: seconds the final status may take after
    the acceptance. Raises ReferError for a ``refer_to`` that cannot go in a Refer-To."""

    def __init__(
        self,
        ua: ReferCore,
        call: ServerCall,
        refer_to: Uri,
        *,
        credentials: Credentials | None = None,
        transfer_wait: float = TRANSFER_WAIT,
    ) -> None:
        if not refer_to.is_sip:
            raise ReferError(f"Referral(refer_to={shown(str(refer_to))}): give a sip: or sips: URI")
        written = str(NameAddr(uri=refer_to))
        if len(written) > MAX_REFER_TO or any(not c.isprintable() for c in written):
            raise ReferError(f"Referral(refer_to=...): at most {MAX_REFER_TO} printable characters")
        if not 0 < transfer_wait <= 3600:
            raise ReferError(f"Referral(transfer_wait={transfer_wait}): give 0 to 3600 seconds")
        self.ua = ua
        self.call = call
        self.refer_to = refer_to
        self.transfer_wait = transfer_wait
        self.state = ReferState.SENT
        #: The answer to the REFER (202, 403 ...); None until a final one came.
        self.refer_code: int | None = None
        #: The last status a NOTIFY told (100, 180, 200, 486 ...); None until one did.
        self.notify_code: int | None = None
        self._auth = DigestClient(credentials, ua.rng)
        self._refers = 0
        #: The CSeq number of the REFER in flight or accepted: a NOTIFY's ``id`` names it.
        self._cseq: int | None = None
        #: The transaction of the REFER whose answers count (a challenged one's successor replaces it).
        self._owner: _Answers | None = None
        #: Whether NOTIFYs of our subscription are still taken (until terminated, failed or stopped).
        self._listening = False
        self._notified = False
        self._notify_by: float | None = None
        self._final_by: float | None = None

    # --- what the application does ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send the REFER (once)."""
        if self._refers:
            return
        call = self.call
        if call.state is not UasState.CONFIRMED:
            self._refers = 1
            self._fail(f"the call is {call.state.value}: a REFER goes only in an answered call whose ACK came", now)
            return
        self.ua.serve_in_dialog(call, Method.NOTIFY, self)
        self.ua.add_timed(self)
        self._listening = True
        self._send(now)

    def stop(self, now: float) -> None:
        """Stop listening (the call ended, or nobody waits for the result any more): later NOTIFYs get
        481, and a referral not done yet fails ("stopped")."""
        if not self.done:
            self._fail("stopped", now)
        self._forget()

    @property
    def done(self) -> bool:
        return self.state in (ReferState.TRANSFERRED, ReferState.FAILED)

    # --- the core's hooks (RequestHandler, Timed) ------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [t for t in (self._notify_by, self._final_by) if t is not None]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        if self._notify_by is not None and now >= self._notify_by:
            self._fail(f"no NOTIFY within {self.ua.timing.timeout:.0f} s of the acceptance", now)
        elif self._final_by is not None and now >= self._final_by:
            self._fail(f"no final NOTIFY within {self.transfer_wait:.0f} s", now)

    def on_request(self, request: Request, tx: ServerTransaction, peer: Peer, now: float) -> None:
        """A NOTIFY in the caller's dialog (the core checked it belongs to the dialog, and its CSeq)."""
        ours = self._ours(request)
        if ours is not None:
            status, reason = ours
            self.ua.respond(tx, self.call.dialog.answer(request, status, reason), now)
            return
        self.ua.respond(tx, self.call.dialog.answer(request, 200), now)
        self._notified = True
        self._notify_by = None
        frag = read_sipfrag(request.body) if _sipfrag_type(request) else None
        terminated = _terminated(request)
        if frag is None:
            log.info("call %s: a NOTIFY of our REFER without a status line we can read", self.call.call_id)
        elif not self.done:
            self._notified_status(frag, now)
        if terminated:
            if not self.done:
                self._fail("the subscription terminated without a final status", now)
            self._forget()

    # --- the REFER and its answers ------------------------------------------------------------------------

    def _send(self, now: float) -> None:
        self._refers += 1
        call = self.call
        peer = call.peer
        headers = [
            ("Refer-To", str(NameAddr(uri=self.refer_to))),
            ("Referred-By", str(NameAddr(uri=call.dialog.local_uri.uri))),
            ("User-Agent", self.ua.policy.user_agent),
        ]
        try:
            request, next_hop = call.dialog.request(
                Method.REFER,
                via=self.ua.via(peer.local, peer.transport),
                contact=self.ua.contact(peer.local, peer.transport),
                headers=headers,
            )
            for name, value in self._auth.headers(Method.REFER, request.uri):
                request.headers.add(name, value)
        except (DialogError, AuthError) as e:
            self._fail(f"no REFER sent: {e}", now)
            return
        self._cseq = call.dialog.local_seq
        owner = _Answers(self)
        self._owner = owner
        self.ua.send_request(request, self.ua.target(next_hop, peer), now, owner)

    def _answered(self, owner: _Answers, response: Response, now: float) -> None:
        status = response.status
        if owner is not self._owner or status < 200:
            return  # a replaced REFER's late answer, or a provisional
        self._owner = None
        if 200 <= status < 300:
            self.refer_code = status
            if not self.done:  # (a NOTIFY that overtook it may have told the end already)
                self._accepted(now)
            return
        if self.done:
            return
        if status in (401, 407) and self._challenge_taken(response):
            self._send(now)
            return
        self.refer_code = status
        self._fail(f"the REFER was refused: {status} {shown(response.reason or REASONS.get(status, ''))}", now)

    def _unanswered(self, owner: _Answers, why: str, now: float) -> None:
        if owner is not self._owner or self.done:
            return
        self._owner = None
        self.refer_code = 408 if why == "no answer" else 503  # RFC 3261 §8.1.3.1
        self._fail(f"the REFER got no answer ({why})", now)

    def _challenge_taken(self, response: Response) -> bool:
        """Whether a 401/407 can be answered: readable, a nonce not refused before, REFERs left."""
        try:
            challenge = challenge_of(response)
        except AuthError as e:
            log.info("call %s: a challenge to our REFER cannot be read: %s", self.call.call_id, e)
            return False
        return self._refers < MAX_REFERS and self._auth.take(challenge) is None

    def _accepted(self, now: float) -> None:
        """The REFER was taken (its 2xx, or a NOTIFY that overtook it): the waits for NOTIFYs start."""
        if self.state is ReferState.SENT:
            if not self._notified:
                self._notify_by = now + self.ua.timing.timeout
            self._final_by = now + self.transfer_wait
        self._move(ReferState.ACCEPTED, "")

    # --- NOTIFYs ------------------------------------------------------------------------------------------

    def _ours(self, request: Request) -> tuple[int, str] | None:
        """None when ``request`` is a NOTIFY of our subscription, else the answer that refuses it."""
        event = (request.headers.get("event") or "").strip()
        package, _, rest = event.partition(";")
        if package.strip().lower() != "refer":
            return 489, "Bad Event"  # RFC 6665 §8.2.1: not a package we subscribed to here
        try:
            named = dict(parse_params(rest)).get("id")
        except UriError:
            named = None
        if not self._listening or (named is not None and named != str(self._cseq)):
            return 481, "Subscription Does Not Exist"
        return None

    def _notified_status(self, frag: Sipfrag, now: float) -> None:
        self.notify_code = frag.status
        if self.state is ReferState.SENT:  # the NOTIFY overtook the 2xx: the REFER was taken
            self._final_by = now + self.transfer_wait
        if frag.status < 200:
            self._move(ReferState.ACCEPTED, frag.reason)
        elif frag.status < 300:
            self._move(ReferState.TRANSFERRED, frag.reason)
        else:
            self._fail(f"the target answered {frag.status} {frag.reason}", now)

    # --- ending ---------------------------------------------------------------------------------------------

    def _fail(self, why: str, now: float) -> None:
        self._move(ReferState.FAILED, why)
        self._listening = False

    def _move(self, state: ReferState, reason: str) -> None:
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"call {self.call.call_id}: a referral cannot go from {self.state} to {state}")
        self.state = state
        if self.done:
            self._notify_by = self._final_by = None
        self.ua.emit(ReferUpdate(self, state, self.refer_code, self.notify_code, reason))

    def _forget(self) -> None:
        self._listening = False
        self._notify_by = self._final_by = None
        self.ua.remove_timed(self)


class _Answers:
    """The answers to one REFER of a referral: they count while it is the latest one sent."""

    def __init__(self, referral: Referral) -> None:
        self.referral = referral

    def on_response(self, response: Response, now: float) -> None:
        self.referral._answered(self, response, now)

    def on_timeout(self, why: str, now: float) -> None:
        self.referral._unanswered(self, why, now)


def _sipfrag_type(request: Request) -> bool:
    """A body given as message/sipfrag (RFC 3515 §2.4.5), or given with no type at all (read liberally)."""
    return request.content_type in ("message/sipfrag", "")


def _terminated(request: Request) -> bool:
    """Whether the NOTIFY ends the subscription (``Subscription-State: terminated``, RFC 6665 §4.1.3)."""
    state = request.headers.get("subscription-state") or ""
    return state.split(";")[0].strip().lower() == "terminated"
