"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state) — no I/O, no clock.

A transaction is one request and its responses, kept reliable over an unreliable transport by
retransmission timers. This module holds the four machines of §17 (client and server, INVITE and
non-INVITE), how messages are matched to them (§17.1.3, §17.2.3, and RFC 2543's fallback for branches
without the magic cookie), the ACK a client transaction sends for a non-2xx final response
(§17.1.1.3), the CANCEL for an INVITE (§9.1), the UAS core's 2xx retransmission (§13.3.1.4, which
RFC 3261 leaves to the dialog, not the transaction) and a bounded table of live transactions.

Every machine is driven the same way, like aioquic's ``QuicConnection``: ``receive``/``respond``/
``handle_timer(now)`` with ``now`` in seconds from any clock the owner keeps; it answers through
:meth:`take_messages` (what to send now), :meth:`take_events` (what the transaction user must know) and
:meth:`next_timer` (when to call ``handle_timer`` next). Nothing here reads a clock, a socket or a random
source: the owner gives the time, sends the messages (to the peer it knows) and makes the branches
(:func:`new_branch` from bytes it draws).

RFC 6026 is followed where it corrects RFC 3261: an INVITE server transaction that sent a 2xx stays in
Accepted for 64*T1 to absorb the INVITE's retransmissions (they would otherwise look like new calls),
and an INVITE client transaction that got a 2xx stays in Accepted for 64*T1 passing every further 2xx
up, so the transaction user acknowledges each (forked answers included).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Generic, TypeVar

from swml_engine.transports.sip.message import (
    BRANCH_COOKIE,
    BadHeader,
    Headers,
    Method,
    Request,
    Response,
    Via,
    response_to,
)

#: Key fields longer than this are kept as a digest: a hostile 60 KB Call-ID costs 71 bytes per key.
MAX_KEY_TEXT = 256
#: Messages or events a machine holds for its owner: more means the owner stopped draining them
#: (a flood of retransmissions answered into nowhere); the oldest are dropped.
MAX_PENDING = 64
#: Live server transactions a table holds by default; past it the owner refuses new requests (503).
MAX_SERVER_TRANSACTIONS = 10_000
#: Live client transactions a table holds by default (calls and requests this engine places).
MAX_CLIENT_TRANSACTIONS = 10_000
#: Random bytes in a branch: 8 at least (64 bits: no two of ours collide), 32 at most (a short Via).
BRANCH_BYTES = (8, 32)


class TxState(StrEnum):
    """The states of RFC 3261 §17 (figures 5-8) and RFC 6026's Accepted."""

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class TimerName(StrEnum):
    """The timers of RFC 3261 §17 (table 4), RFC 6026 (L, M), and three of our own names for timers
    the RFCs ask for without naming them."""

    A = "A"  # INVITE client: retransmit the request (unreliable transports)
    B = "B"  # INVITE client: give up waiting for any response
    D = "D"  # INVITE client, Completed: absorb retransmitted finals
    E = "E"  # non-INVITE client: retransmit the request (unreliable transports)
    F = "F"  # non-INVITE client: give up waiting for a final response
    G = "G"  # INVITE server, Completed: retransmit the final non-2xx (unreliable transports)
    H = "H"  # INVITE server, Completed: give up waiting for the ACK
    I = "I"  # INVITE server, Confirmed: absorb retransmitted ACKs  # noqa: E741
    J = "J"  # non-INVITE server, Completed: absorb retransmitted requests
    K = "K"  # non-INVITE client, Completed: absorb retransmitted finals
    L = "L"  # INVITE server, Accepted: absorb retransmitted INVITEs (RFC 6026)
    M = "M"  # INVITE client, Accepted: pass retransmitted 2xx up (RFC 6026)
    TRYING = "trying"  # INVITE server: send 100 Trying if the TU has not answered (§17.2.1)
    CANCELLED = "cancelled"  # INVITE client: no final response 64*T1 after our CANCEL (§9.1)
    RETRANSMIT_2XX = "2xx"  # UAS core: resend the 2xx until the ACK (§13.3.1.4)
    NO_ACK = "no-ack"  # UAS core: the ACK for the 2xx never came (§13.3.1.4)


@dataclass(frozen=True)
class Timing:
    """RFC 3261's timer base values in seconds (§17.1.1.1, table 4) and the timers derived from them."""

    T1: float = 0.5  # round-trip estimate
    T2: float = 4.0  # the longest retransmission interval of non-INVITE requests and INVITE responses
    T4: float = 5.0  # how long a message may remain in the network
    #: Timer D on unreliable transports ("at least 32 seconds", §17.1.1.2).
    D_unreliable: float = 32.0
    #: The INVITE server's 100 Trying goes out if the TU has not answered within this (§17.2.1).
    trying_after: float = 0.2

    def __post_init__(self) -> None:
        # "not (a <= b)" rather than "a > b": NaN fails every comparison and must be refused too.
        if not (0 < self.T1 <= self.T2 <= 600):
            raise ValueError(f"Timing: need 0 < T1 <= T2 <= 600 s (got T1={self.T1}, T2={self.T2}; RFC: 0.5, 4)")
        if not (0 <= self.T4 <= 600 and 0 <= self.D_unreliable <= 600 and 0 <= self.trying_after <= 600):
            raise ValueError("Timing: T4, D_unreliable and trying_after must be 0 to 600 s (RFC: 5, 32, 0.2)")

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, L, M, the wait after a CANCEL and the 2xx's wait for its ACK."""
        return 64 * self.T1

    def duration(self, timer: TimerName, *, reliable: bool) -> float:
        """How long ``timer`` runs when it starts (A, E, G, 2xx: their first interval). The absorbing
        timers D, I, J, K are 0 on reliable transports, where nothing is retransmitted."""
        if timer in (TimerName.A, TimerName.E, TimerName.G, TimerName.RETRANSMIT_2XX):
            return self.T1
        if timer is TimerName.D:
            return 0.0 if reliable else self.D_unreliable
        if timer in (TimerName.I, TimerName.K):
            return 0.0 if reliable else self.T4
        if timer is TimerName.J:
            return 0.0 if reliable else self.timeout
        if timer is TimerName.TRYING:
            return self.trying_after
        return self.timeout  # B, F, H, L, M, CANCELLED, NO_ACK


# --- events the transaction user reads ---------------------------------------------------------------


@dataclass(frozen=True)
class ResponseReceived:
    """Client: a response the TU must see (each 1xx; the final once; in Accepted, every 2xx)."""

    response: Response


@dataclass(frozen=True)
class AckReceived:
    """Server in Accepted: an ACK that matched the INVITE's transaction goes to the TU (RFC 6026 §8.7)."""

    request: Request


@dataclass(frozen=True)
class TimedOut:
    """The peer did not answer in time: B/F (the client TU answers itself 408), H (no ACK for our
    non-2xx), CANCELLED (no final after our CANCEL), NO_ACK (no ACK for our 2xx: end the call)."""

    timer: TimerName


@dataclass(frozen=True)
class TransportFailed:
    """The owner reported that sending failed (ICMP unreachable, TCP connection lost)."""

    reason: str = ""


TxEvent = ResponseReceived | AckReceived | TimedOut | TransportFailed


# --- keys -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LegacyId:
    """What identifies a request whose branch lacks the magic cookie (RFC 2543 peers, §17.2.3)."""

    request_uri: str
    from_tag: str
    call_id: str
    cseq: int
    top_via: str
    #: The request's To tag; for an ACK, the tag of the response it acknowledges.
    to_tag: str


@dataclass(frozen=True, slots=True)
class TxKey:
    """A transaction's identity. ``method`` is the creating request's (an ACK's is INVITE's: it belongs
    to the INVITE transaction). RFC 3261 keys have ``branch`` (and ``sent_by`` on the server side);
    RFC 2543 keys have ``legacy`` instead."""

    method: str
    branch: str = ""
    sent_by: str = ""
    legacy: LegacyId | None = None


def _bounded(text: str) -> str:
    if len(text) <= MAX_KEY_TEXT:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _top_via(message: Request | Response) -> Via | None:
    try:
        return message.top_via
    except BadHeader:
        return None


def server_key(request: Request) -> TxKey | None:
    """The server transaction ``request`` belongs to (RFC 3261 §17.2.3), None when the request cannot be
    matched at all (no readable top Via; without the cookie, no readable From/To/Call-ID/CSeq)."""
    via = _top_via(request)
    if via is None:
        return None
    method = _bounded(Method.INVITE.value if request.method == Method.ACK else request.method)
    if via.branch.startswith(BRANCH_COOKIE):
        return TxKey(method=method, branch=_bounded(via.branch), sent_by=_bounded(via.sent_by))
    legacy = _legacy_id(request, via)
    return None if legacy is None else TxKey(method=method, legacy=legacy)


def _legacy_id(request: Request, via: Via) -> LegacyId | None:
    uri = request.uri.strip()
    try:
        call_id, cseq = request.call_id, request.cseq.number
        from_tag, to_tag = request.from_.tag or "", request.to.tag or ""
    except BadHeader:
        return None
    if not uri:
        return None
    # Vias compare by their parts (§20.42), so the key holds the Via as we write it, not as it came.
    parts = (uri, from_tag, call_id, str(via), to_tag)
    uri, from_tag, call_id, top_via, to_tag = (_bounded(p) for p in parts)
    return LegacyId(uri, from_tag, call_id, cseq, top_via, to_tag)


def invite_key_of_cancel(cancel: Request) -> TxKey | None:
    """The key of the INVITE server transaction ``cancel`` cancels (§9.2): a CANCEL copies the INVITE's
    top Via, Request-URI, tags, Call-ID and CSeq number, so only the method differs."""
    key = server_key(cancel)
    return None if key is None else replace(key, method=Method.INVITE.value)


def client_key(message: Request | Response) -> TxKey | None:
    """The client transaction a response belongs to (§17.1.3: the top Via's branch and the CSeq
    method), or the one a request of ours creates. None when there is no branch to match."""
    via = _top_via(message)
    if via is None or not via.branch:
        return None
    try:
        method = message.method if isinstance(message, Request) else message.cseq.method
    except BadHeader:
        return None
    return TxKey(method=_bounded(method), branch=_bounded(via.branch))


def new_branch(random_bytes: bytes) -> str:
    """A branch for a request of ours (§8.1.1.7): the magic cookie and ``random_bytes`` in hex. The
    caller draws the bytes (``secrets.token_bytes(12)`` in service, a seeded Random in tests)."""
    low, high = BRANCH_BYTES
    if not low <= len(random_bytes) <= high:
        raise ValueError(f"new_branch: give {low} to {high} random bytes (got {len(random_bytes)})")
    return BRANCH_COOKIE + random_bytes.hex()


# --- requests a client builds from its INVITE ---------------------------------------------------------


def _derived_request(invite: Request, method: Method, to: str) -> Request:
    """The ACK (§17.1.1.3) or CANCEL (§9.1) of ``invite``: its Request-URI, top Via only, Route set,
    From, Call-ID and CSeq number; ``to`` is the To it carries."""
    vias = invite.headers.values("via")
    sender = invite.headers.get("from")
    call_id = invite.headers.get("call-id")
    try:
        number = invite.cseq.number
    except BadHeader as e:
        raise ValueError(f"{method} for an INVITE: the INVITE's {e}") from None
    if not vias or sender is None or call_id is None:
        raise ValueError(f"{method} for an INVITE: the INVITE needs Via, From and Call-ID headers")
    headers = Headers([("Via", vias[0])])
    for route in invite.headers.get_all("route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", invite.headers.get("max-forwards") or "70")
    headers.add("From", sender)
    headers.add("To", to)
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{number} {method}")
    return Request(method=method.value, uri=invite.uri, headers=headers)


def cancel_request(invite: Request) -> Request:
    """The CANCEL for ``invite`` (§9.1): same Request-URI, Call-ID, From, To (tags as they were) and
    CSeq number, the INVITE's top Via only (so its branch: the far end finds the INVITE by it) and its
    Route headers. Send it on a client transaction of its own, once a provisional response came."""
    if invite.method != Method.INVITE:
        raise ValueError(f"cancel_request: only an INVITE is cancelled here (got {invite.method or 'no method'})")
    to = invite.headers.get("to")
    if to is None:
        raise ValueError("CANCEL for an INVITE: the INVITE needs a To header")
    return _derived_request(invite, Method.CANCEL, to)


# --- the machinery the machines share -------------------------------------------------------------------

_Out = TypeVar("_Out", Request, Response)


class _Machine(Generic[_Out]):
    """Named timers, the outbox and the event queue of one machine, and the hook its table listens on."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self._timers: dict[TimerName, float] = {}
        self._outbox: list[_Out] = []
        self._events: list[TxEvent] = []
        #: Set by the table holding this machine: told after anything that may move its timer or end it.
        self._owner: TransactionTable | None = None

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None: no timer runs)."""
        return min(self._timers.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first (each at most once: a late call does not
        replay the retransmissions it missed)."""
        due = sorted((when, name) for name, when in self._timers.items() if when <= now)
        for when, name in due:
            if self._timers.get(name) == when:  # an earlier one may have stopped it
                del self._timers[name]
                self._fire(name, now)
        self._changed()

    def take_messages(self) -> list[_Out]:
        """The messages to send now, in order (each call empties the list)."""
        out, self._outbox = self._outbox, []
        return out

    def take_events(self) -> list[TxEvent]:
        """What the transaction user must know, in order (each call empties the list)."""
        out, self._events = self._events, []
        return out

    def _fire(self, timer: TimerName, now: float) -> None:
        raise NotImplementedError

    def _start(self, timer: TimerName, now: float, after: float) -> None:
        self._timers[timer] = now + after

    def _stop(self, *timers: TimerName) -> None:
        for timer in timers:
            self._timers.pop(timer, None)

    def _send(self, message: _Out) -> None:
        self._outbox.append(message)
        del self._outbox[:-MAX_PENDING]

    def _tell(self, event: TxEvent) -> None:
        self._events.append(event)
        del self._events[:-MAX_PENDING]

    def _changed(self) -> None:
        if self._owner is not None:
            self._owner._machine_changed(self)


class _Transaction(_Machine[_Out]):
    """What client and server transactions share: the request, the key, the transport, the state."""

    def __init__(self, request: Request, key: TxKey, *, reliable: bool, timing: Timing, state: TxState) -> None:
        super().__init__(timing)
        self.request = request
        self.key = key
        self.reliable = reliable
        self.is_invite = request.method == Method.INVITE
        self.state = state

    @property
    def done(self) -> bool:
        return self.state is TxState.TERMINATED

    def transport_error(self, now: float, reason: str = "") -> None:
        """The owner could not send this transaction's message: the TU is told and the transaction ends
        (§17.1.4, §17.2.4)."""
        if self.state is not TxState.TERMINATED:
            self._tell(TransportFailed(reason))
            self._terminate()
        self._changed()

    def _terminate(self) -> None:
        self.state = TxState.TERMINATED
        self._timers.clear()

    def _wait(self, timer: TimerName, now: float) -> None:
        """Start one of the absorbing timers (D, I, J, K): 0 on reliable transports ends at once."""
        after = self.timing.duration(timer, reliable=self.reliable)
        if after <= 0:
            self._terminate()
        else:
            self._start(timer, now, after)


# --- server transactions (§17.2) ------------------------------------------------------------------------


class ServerTransaction(_Transaction[Response]):
    """The server side of one request (§17.2.1 for INVITE, §17.2.2 otherwise, RFC 6026 for the 2xx).

    Created by the owner for a request no live transaction matches (see :meth:`TransactionTable.server_for`);
    the owner passes the request to the TU itself. Then: :meth:`respond` with the TU's responses,
    :meth:`receive` with requests that match (retransmissions, the ACK), :meth:`handle_timer`.

    An INVITE's server transaction sends 100 Trying itself when the TU has not responded within
    ``Timing.trying_after`` (200 ms); a TU that answers at once passes ``auto_trying=False``.
    """

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timing: Timing = Timing(),  # frozen: one shared default is safe
        auto_trying: bool = True,
    ) -> None:
        key = server_key(request)
        if key is None:
            raise ValueError("ServerTransaction: the request has no usable Via/From/To/Call-ID/CSeq (server_key)")
        if request.method == Method.ACK:
            raise ValueError("ServerTransaction: an ACK creates no transaction (RFC 3261 §17.2.3); pass it to the TU")
        invite = request.method == Method.INVITE
        state = TxState.PROCEEDING if invite else TxState.TRYING
        super().__init__(request, key, reliable=reliable, timing=timing, state=state)
        self.created = now
        #: What a retransmitted request gets: the last provisional response, then the final one.
        self.last_response: Response | None = None
        self._g_interval = timing.T1
        if invite and auto_trying:
            self._start(TimerName.TRYING, now, timing.duration(TimerName.TRYING, reliable=reliable))

    @property
    def final_to_tag(self) -> str | None:
        """The To tag of our final response: an RFC 2543 ACK matches only with it (§17.2.3)."""
        final = self.last_response
        if final is None or final.status < 200:
            return None
        try:
            return final.to.tag
        except BadHeader:
            return None

    def respond(self, response: Response, now: float) -> bool:
        """Send the TU's ``response``. False (nothing sent) when this state takes no response of that
        class: after the final response (RFC 3261 discards them), except further 2xx in Accepted,
        which go out (the TU's own 2xx retransmissions, RFC 6026)."""
        sent = self._respond(response, now)
        self._changed()
        return sent

    def _respond(self, response: Response, now: float) -> bool:
        status = response.status
        if not 100 <= status <= 699:
            return False
        if self.state is TxState.ACCEPTED:
            if 200 <= status <= 299:
                self._send(response)
                return True
            return False
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return False
        self._stop(TimerName.TRYING)
        self._send(response)
        self.last_response = response
        if status < 200:
            self.state = TxState.PROCEEDING
            return True
        if not self.is_invite:
            self.state = TxState.COMPLETED
            self._wait(TimerName.J, now)
        elif status < 300:
            self.state = TxState.ACCEPTED
            self._start(TimerName.L, now, self.timing.timeout)
        else:
            self.state = TxState.COMPLETED
            if not self.reliable:
                self._start(TimerName.G, now, self._g_interval)
            self._start(TimerName.H, now, self.timing.timeout)
        return True

    def receive(self, request: Request, now: float) -> None:
        """A request that matched this transaction: a retransmission of ours (answered with the last
        response, or absorbed) or, for an INVITE, an ACK."""
        answered = self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self.last_response is not None
        if request.method == Method.ACK:
            self._receive_ack(request, now)
        elif request.method == self.request.method and answered and self.last_response is not None:
            self._send(self.last_response)
        # Otherwise absorbed, never passed up: retransmissions in Trying, Accepted (RFC 6026), Confirmed.
        self._changed()

    def _receive_ack(self, ack: Request, now: float) -> None:
        if not self.is_invite:
            return
        if self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self._stop(TimerName.G, TimerName.H)
            self._wait(TimerName.I, now)
        elif self.state is TxState.ACCEPTED:
            self._tell(AckReceived(ack))
        # Proceeding (an ACK before any final), Confirmed (retransmitted ACKs): absorbed.

    def _fire(self, timer: TimerName, now: float) -> None:
        if timer is TimerName.TRYING:
            if self.state is TxState.PROCEEDING and self.last_response is None:
                self.last_response = self._trying(now)
                self._send(self.last_response)
        elif timer is TimerName.G:
            if self.state is TxState.COMPLETED and self.last_response is not None:
                self._send(self.last_response)
                self._g_interval = min(2 * self._g_interval, self.timing.T2)
                self._start(TimerName.G, now, self._g_interval)
        elif timer is TimerName.H:
            self._tell(TimedOut(TimerName.H))
            self._terminate()
        else:  # I, J, L: the absorbing is over
            self._terminate()

    def _trying(self, now: float) -> Response:
        """100 Trying (§8.2.6.1): no To tag; a Timestamp is copied with the delay we added."""
        extra: list[tuple[str, str]] = []
        stamp = self.request.headers.get("timestamp")
        if stamp is not None and stamp.split():
            extra.append(("Timestamp", f"{stamp.split()[0]} {max(0.0, now - self.created):.3f}"))
        return response_to(self.request, 100, headers=extra)


# --- client transactions (§17.1) ------------------------------------------------------------------------


class ClientTransaction(_Transaction[Request]):
    """The client side of one request of ours (§17.1.1 for INVITE, §17.1.2 otherwise, RFC 6026).

    The request goes out on creation (:meth:`take_messages`); its top Via must carry a branch of ours
    (:func:`new_branch`). Responses that match (:meth:`TransactionTable.client_for`) go to :meth:`receive`.
    A non-2xx final to an INVITE is acknowledged here (:attr:`ack`); a 2xx is the TU's to acknowledge.
    """

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timing: Timing = Timing(),  # frozen: one shared default is safe
    ) -> None:
        if request.method == Method.ACK:
            raise ValueError("ClientTransaction: an ACK has no transaction; send it as it is (RFC 3261 §17.1)")
        key = client_key(request)
        if key is None or not key.branch.startswith(BRANCH_COOKIE):
            raise ValueError("ClientTransaction: the request's top Via needs a branch from new_branch()")
        invite = request.method == Method.INVITE
        super().__init__(
            request, key, reliable=reliable, timing=timing, state=TxState.CALLING if invite else TxState.TRYING
        )
        #: The ACK sent for the non-2xx final response (None before one came).
        self.ack: Request | None = None
        #: The final response passed up (the first; retransmissions of it are absorbed).
        self.final_response: Response | None = None
        retransmit, give_up = (TimerName.A, TimerName.B) if invite else (TimerName.E, TimerName.F)
        self._interval = timing.T1
        if not reliable:
            self._start(retransmit, now, self._interval)
        self._start(give_up, now, timing.timeout)
        self._send(request)

    def receive(self, response: Response, now: float) -> None:
        """A response whose branch and CSeq method match this transaction."""
        if client_key(response) == self.key and 100 <= response.status <= 699:
            if self.is_invite:
                self._receive_invite_response(response, now)
            else:
                self._receive_response(response, now)
        self._changed()

    def cancel_sent(self, now: float) -> None:
        """The TU sent a CANCEL for this INVITE: if no final response comes in 64*T1, the transaction
        ends with ``TimedOut(CANCELLED)`` (§9.1) rather than waiting in Proceeding for ever."""
        waiting = self.state in (TxState.CALLING, TxState.PROCEEDING)
        if self.is_invite and waiting and TimerName.CANCELLED not in self._timers:
            self._start(TimerName.CANCELLED, now, self.timing.timeout)
        self._changed()

    def _receive_invite_response(self, response: Response, now: float) -> None:
        status = response.status
        if self.state in (TxState.CALLING, TxState.PROCEEDING):
            if status < 200:
                self.state = TxState.PROCEEDING
                self._stop(TimerName.A, TimerName.B)  # no timer in Proceeding: the TU CANCELs (§17.1.1.2)
                self._tell(ResponseReceived(response))
                return
            self._stop(TimerName.A, TimerName.B, TimerName.CANCELLED)
            self.final_response = response
            self._tell(ResponseReceived(response))
            if status < 300:
                self.state = TxState.ACCEPTED
                self._start(TimerName.M, now, self.timing.timeout)
            else:
                self.state = TxState.COMPLETED
                self._acknowledge(response)
                self._wait(TimerName.D, now)
        elif self.state is TxState.COMPLETED and status >= 300:
            self._acknowledge(response)  # the ACK was lost: send it again, the TU knows already
        elif 200 <= status <= 299 and self.state in (TxState.ACCEPTED, TxState.COMPLETED):
            # RFC 6026: each 2xx (retransmitted, or from another fork) goes up to be ACKed by the TU.
            # In Completed it is a fork answering after another refused: the TU ACKs and BYEs it.
            self._tell(ResponseReceived(response))

    def _acknowledge(self, response: Response) -> None:
        to = response.headers.get("to") or self.request.headers.get("to") or ""
        self.ack = _derived_request(self.request, Method.ACK, to)
        self._send(self.ack)

    def _receive_response(self, response: Response, now: float) -> None:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return  # Completed: a retransmitted final, absorbed
        self._tell(ResponseReceived(response))
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return
        self.final_response = response
        self.state = TxState.COMPLETED
        self._stop(TimerName.E, TimerName.F)
        self._wait(TimerName.K, now)

    def _fire(self, timer: TimerName, now: float) -> None:
        if timer is TimerName.A:
            if self.state is TxState.CALLING:
                self._send(self.request)
                self._interval *= 2  # INVITE: doubling without the T2 cap (§17.1.1.2); B bounds it
                self._start(TimerName.A, now, self._interval)
        elif timer is TimerName.E:
            if self.state in (TxState.TRYING, TxState.PROCEEDING):
                self._send(self.request)
                proceeding = self.state is TxState.PROCEEDING
                self._interval = self.timing.T2 if proceeding else min(2 * self._interval, self.timing.T2)
                self._start(TimerName.E, now, self._interval)
        elif timer in (TimerName.B, TimerName.F, TimerName.CANCELLED):
            self._tell(TimedOut(timer))
            self._terminate()
        else:  # D, K, M: the absorbing is over
            self._terminate()


# --- the UAS core's 2xx retransmission (§13.3.1.4) -----------------------------------------------------


class AckWait(StrEnum):
    RETRANSMITTING = "retransmitting"
    ACKED = "acked"
    GAVE_UP = "gave_up"


class TwoXxRetransmitter(_Machine[Response]):
    """Resends a UAS's 2xx to an INVITE until its ACK comes (§13.3.1.4): after T1, then doubling up to
    T2, for 64*T1, then ``TimedOut(NO_ACK)`` (the dialog should send BYE). RFC 3261 gives this to the
    UAS core, not the transaction, because the ACK for a 2xx is a transaction of its own; it runs on
    reliable transports too (a proxy on the way may forward over UDP).

    Created when the 2xx is first sent (by :meth:`ServerTransaction.respond`); :meth:`ack_received`
    when the dialog sees the ACK. :meth:`take_messages` gives the retransmissions to send.
    """

    def __init__(
        self,
        response: Response,
        *,
        now: float,
        timing: Timing = Timing(),  # frozen: one shared default is safe
    ) -> None:
        super().__init__(timing)
        self.response = response
        self.state = AckWait.RETRANSMITTING
        self._interval = timing.T1
        self._start(TimerName.RETRANSMIT_2XX, now, self._interval)
        self._start(TimerName.NO_ACK, now, timing.timeout)

    @property
    def done(self) -> bool:
        return self.state is not AckWait.RETRANSMITTING

    def ack_received(self, now: float) -> None:
        if self.state is AckWait.RETRANSMITTING:
            self.state = AckWait.ACKED
            self._timers.clear()
        self._changed()

    def _fire(self, timer: TimerName, now: float) -> None:
        if timer is TimerName.NO_ACK:
            self.state = AckWait.GAVE_UP
            self._timers.clear()
            self._tell(TimedOut(TimerName.NO_ACK))
        else:
            self._send(self.response)
            self._interval = min(2 * self._interval, self.timing.T2)
            self._start(TimerName.RETRANSMIT_2XX, now, self._interval)


# --- the table -------------------------------------------------------------------------------------------

Machine = ServerTransaction | ClientTransaction | TwoXxRetransmitter
_Tx = TypeVar("_Tx", ServerTransaction, ClientTransaction)


class TableFull(RuntimeError):
    """A transaction was added past the table's cap: check :attr:`TransactionTable.full` first."""


class TransactionTable:
    """The live transactions of one endpoint, by key, and one timer over them all.

    Bounded: at most ``max_server`` server transactions (past it :attr:`full` is true and the owner
    refuses new requests, e.g. 503 statelessly), ``max_client`` client transactions and as many 2xx
    retransmitters as server transactions. Terminated machines leave at once. The timer is a heap with
    lazy deletion, so :meth:`next_timer` and :meth:`handle_timer` cost O(log n) per change, not O(n).
    """

    def __init__(self, *, max_server: int = MAX_SERVER_TRANSACTIONS, max_client: int = MAX_CLIENT_TRANSACTIONS) -> None:
        if max_server < 1 or max_client < 1:
            raise ValueError("TransactionTable: max_server and max_client must be at least 1")
        self.max_server = max_server
        self.max_client = max_client
        self._servers: dict[TxKey, ServerTransaction] = {}
        self._clients: dict[TxKey, ClientTransaction] = {}
        self._retransmitters: set[TwoXxRetransmitter] = set()
        self._heap: list[tuple[float, int, Machine]] = []
        self._pushed = 0  # heap entries' tie-breaker (machines do not compare)

    # --- size ---

    @property
    def full(self) -> bool:
        """No room for another server transaction: refuse new requests (retransmissions still match)."""
        return len(self._servers) >= self.max_server

    @property
    def client_full(self) -> bool:
        return len(self._clients) >= self.max_client

    @property
    def server_count(self) -> int:
        return len(self._servers)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def __len__(self) -> int:
        return len(self._servers) + len(self._clients) + len(self._retransmitters)

    # --- adding ---

    def add_server(self, tx: ServerTransaction) -> None:
        self._insert(self._servers, tx, self.max_server, "server", "check .full first", "use server_for()")

    def add_client(self, tx: ClientTransaction) -> None:
        self._insert(self._clients, tx, self.max_client, "client", "check .client_full", "draw a new branch")

    def _insert(self, live: dict[TxKey, _Tx], tx: _Tx, cap: int, side: str, when_full: str, when_taken: str) -> None:
        if len(live) >= cap:
            raise TableFull(f"TransactionTable: {cap} {side} transactions live; {when_full}")
        if tx.key in live:
            raise ValueError(f"TransactionTable: a {side} transaction with this key is live; {when_taken}")
        live[tx.key] = tx
        self._adopt(tx)

    def add_retransmitter(self, retransmitter: TwoXxRetransmitter) -> None:
        if len(self._retransmitters) >= self.max_server:
            raise TableFull(f"TransactionTable: {self.max_server} 2xx retransmitters live")
        self._retransmitters.add(retransmitter)
        self._adopt(retransmitter)

    # --- matching ---

    def server_for(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` matches (a retransmission, or the ACK of a non-2xx),
        None for a new request (or one that cannot be matched: see :func:`server_key`)."""
        key = server_key(request)
        if key is None:
            return None
        tx = self._servers.get(key)
        if tx is not None or request.method != Method.ACK or key.legacy is None or not key.legacy.to_tag:
            return tx
        # RFC 2543 ACK: it carries the To tag of our response, which the INVITE (no tag yet) did not.
        untagged = replace(key, legacy=replace(key.legacy, to_tag=""))
        tx = self._servers.get(untagged)
        return tx if tx is not None and tx.final_to_tag == key.legacy.to_tag else None

    def invite_for(self, cancel: Request) -> ServerTransaction | None:
        """The live INVITE server transaction ``cancel`` cancels (None: answer the CANCEL 481)."""
        key = invite_key_of_cancel(cancel)
        return None if key is None else self._servers.get(key)

    def client_for(self, response: Response) -> ClientTransaction | None:
        key = client_key(response)
        return None if key is None else self._clients.get(key)

    # --- timers ---

    def next_timer(self) -> float | None:
        """The earliest timer over every live machine (None: nothing to wait for)."""
        while self._heap:
            when, _, machine = self._heap[0]
            if machine._owner is self and machine.next_timer() == when:
                return when
            heapq.heappop(self._heap)  # stale: the machine moved its timer or left
        return None

    def handle_timer(self, now: float) -> list[Machine]:
        """Fire the timers due at ``now``; returns the machines that ran, whose messages and events the
        owner takes (terminated ones are already out of the table)."""
        fired: list[Machine] = []
        seen: set[int] = set()
        while self._heap and self._heap[0][0] <= now:
            when, _, machine = heapq.heappop(self._heap)
            if machine._owner is not self or machine.next_timer() != when or id(machine) in seen:
                continue
            seen.add(id(machine))
            fired.append(machine)
            machine.handle_timer(now)  # pushes its next timer (later than now) or leaves
        return fired

    def _adopt(self, machine: Machine) -> None:
        machine._owner = self
        self._machine_changed(machine)

    def _machine_changed(self, machine: object) -> None:
        if not isinstance(machine, ServerTransaction | ClientTransaction | TwoXxRetransmitter):
            return
        if machine.done:
            self._remove(machine)
            return
        when = machine.next_timer()
        if when is not None:
            self._pushed += 1
            heapq.heappush(self._heap, (when, self._pushed, machine))
            if len(self._heap) > 2 * len(self) + 64:
                self._compact()

    def _remove(self, machine: Machine) -> None:
        machine._owner = None
        if isinstance(machine, ServerTransaction):
            if self._servers.get(machine.key) is machine:
                del self._servers[machine.key]
        elif isinstance(machine, ClientTransaction):
            if self._clients.get(machine.key) is machine:
                del self._clients[machine.key]
        else:
            self._retransmitters.discard(machine)

    def _compact(self) -> None:
        """Drop stale heap entries (every change pushes one; the old ones wait until their time)."""
        live: list[Machine] = [*self._servers.values(), *self._clients.values(), *self._retransmitters]
        self._heap = []
        for machine in live:
            when = machine.next_timer()
            if when is not None:
                self._pushed += 1
                self._heap.append((when, self._pushed, machine))
        heapq.heapify(self._heap)
