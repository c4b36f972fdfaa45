"""The SIP user agent core: every RFC rule of the service's SIP side, without I/O.

Shaped like aioquic's ``QuicConnection``. The endpoint (sockets, name resolution, one timer) feeds it:

- :meth:`UserAgent.receive` with each message's bytes, the :class:`Peer` it came from and ``now``;
- :meth:`UserAgent.handle_timer` when :meth:`UserAgent.get_timer` says;

and reads back :meth:`UserAgent.datagrams_to_send` (bytes and where they go) and
:meth:`UserAgent.next_event` (what the application must know: a call came, was ACKed, was cancelled ...).
The application acts through methods (:meth:`UserAgent.answer`, :meth:`UserAgent.bye` ...), each taking
``now``. Nothing here reads a clock, opens a socket or resolves a name: a test drives it with numbers.

What it does with requests, in order: a message that cannot be read is counted and dropped; with
``--workers`` sharing the port, a message whose tag of ours names another worker is handed to it
(:class:`Relay`, see "Workers" below); a request is
validated (validation.py: 400, 505, 501, 405, 416, 420, 415, 406, or dropped when no answer can reach its
sender); a retransmission is answered by its transaction; an ACK goes to its dialog; a CANCEL ends the
INVITE it names (200, then 487); a request for a dialog we do not have gets 481; an INVITE that repeats
one in progress by another path gets 482; OPTIONS gets 200 (503 while calls are refused), naming what we
take; an INVITE becomes a call (:class:`InviteReceived`), and while calls are refused, 503.

Session timers (RFC 4028) in the calls we answer: the INVITE's ``Session-Expires`` is agreed in our 2xx
(or refused 422/400 before the call exists), each re-INVITE or body-less UPDATE of the caller agrees it
anew, our refresh (UPDATE when the caller allows it, else a re-INVITE of our last SDP) goes at half the
interval when we are the refresher, and a session not refreshed in time gets our BYE (:class:`CallGone`).

Where answers go (RFC 3261 §18.2.2): over TCP back on the request's connection (``Peer.flow``); over UDP to
the source address when the top Via asks for ``rport`` or names another host (``received``), else to the
Via's own address. Requests we send go to the next hop the dialog names, as a :class:`Target` the endpoint
resolves; over TCP the connection the call came on is preferred while it is open.

Workers: processes sharing a UDP port (SO_REUSEPORT) each get the datagrams the kernel hashes to them by
source address, and that hash moves when a worker is restarted (or a peer's source port changes mid-call).
So each worker's tags name it (:attr:`Policy.worker`: ``w<index>-<random>``, in the To tag of the dialogs
we answer and the From tag of every request we send), and a UserAgent made with ``relay=True`` does not
answer a request whose To tag, or a response whose From tag, names another worker: it emits
:class:`Relay` with the datagram as it came, and the endpoint hands it to that worker, which takes it as
if it had come from the same source (``receive(..., relayed=True)``; never relayed twice). Tags are
enough: every in-dialog request, every ACK, and every response to a request of ours carries one. A
CANCEL carries none (it names the INVITE by the caller's branch): one for a call still ringing on
another worker gets 481.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from swml_engine.transports.sip.counts import MessageCounts
from swml_engine.transports.sip.dialog import Dialog, DialogError, DialogId, dialog_id_of
from swml_engine.transports.sip.message import (
    BadHeader,
    Headers,
    MessageError,
    Method,
    Request,
    Response,
    Via,
    parse_message,
    response_to,
)
from swml_engine.transports.sip.session_timer import (
    MIN_SE,
    Agreed,
    SessionClock,
    SessionTimer,
    SessionTimerError,
    TooSmall,
    answer_request,
)
from swml_engine.transports.sip.transaction import (
    AckReceived as TxAckReceived,
)
from swml_engine.transports.sip.transaction import (
    ClientTransaction,
    ResponseReceived,
    ServerTransaction,
    TableFull,
    TimedOut,
    TimerName,
    Timing,
    TransactionTable,
    TransportFailed,
    TwoXxRetransmitter,
    TxEvent,
    new_branch,
    server_key,
)
from swml_engine.transports.sip.uri import NameAddr, Uri, split_list
from swml_engine.transports.sip.validation import ALLOW, SUPPORTED, Rejection, allow_header, check_request

log = logging.getLogger(__name__)

#: Messages waiting to be sent, and events waiting to be read, beyond which the oldest are dropped (a
#: reader that stopped reading must not grow memory without bound).
MAX_QUEUE = 10_000
#: Seconds between two log lines saying new calls are refused because the core is full.
FULL_LOG_INTERVAL = 60
#: Distinct sources whose unreadable messages are logged (the rest are counted only).
MAX_NOISY = 1000
#: How full the transaction table may be for a request answered outside any call to take a transaction
#: (beyond, it is answered statelessly: see UserAgent._refuse).
REFUSALS_SHARE = 0.5
#: Server transactions one call may hold live (its INVITE's, its requests': each lasts up to 32 s): beyond,
#: its requests but BYE get 503 statelessly, so that one caller's flood inside its own call cannot fill
#: the table every other call needs. A phone's in-dialog requests are a few a minute.
MAX_CALL_TRANSACTIONS = 64
#: A tag of ours with ``--workers``: the worker's index, a dash, 48 random bits in hex (:func:`worker_of_tag`).
_WORKER_TAG = re.compile(r"w(\d{1,2})-[0-9a-f]{12}")
#: RFC 3261 §14.1: after a 491 to our re-INVITE, a UAS that does not own the Call-ID waits 0 to 2 s (in
#: units of 10 ms).
GLARE_WAIT = (0, 200)


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True)
class Peer:
    """Where a message came from: its transport, address and — over TCP — the endpoint's connection
    (``flow``); and ``local``, our address as this peer reaches it (what our Via, Contact and SDP say)."""

    transport: Transport
    host: str
    port: int
    flow: int = 0
    local: tuple[str, int] = ("", 0)


@dataclass(frozen=True)
class Target:
    """A next hop for the endpoint to resolve (a name or an address) and send to; over TCP ``flow``, when
    still open, is used instead of a new connection."""

    transport: Transport
    host: str
    port: int
    flow: int = 0


Destination = Peer | Target


@dataclass(frozen=True)
class Datagram:
    """Bytes to send, and where; ``sender`` is the core's to know (given back with :meth:`UserAgent.send_failed`)."""

    data: bytes
    to: Destination
    sender: object = None


# --- events ---------------------------------------------------------------------------------------------


class SipEvent:
    """What the core tells the application (every event is one of these; the UAC and registration
    modules add their own)."""


@dataclass(frozen=True, eq=False)
class InviteReceived(SipEvent):
    """A new call: answer it (:meth:`UserAgent.provisional`, :meth:`UserAgent.answer`) or refuse it
    (:meth:`UserAgent.reject`). The same Call-ID may come again (an INVITE with credentials after a 401):
    it is a new call then."""

    call: ServerCall


@dataclass(frozen=True, eq=False)
class AckReceived(SipEvent):
    """The ACK for our 2xx (to the INVITE, or to a re-INVITE); ``body`` holds the answer when our 2xx
    carried the offer (a delayed offer), else nothing: the SDP the ACK carries (a multipart body's SDP
    part), never another kind of body."""

    call: ServerCall
    body: bytes


@dataclass(frozen=True, eq=False)
class ByeReceived(SipEvent):
    call: ServerCall


@dataclass(frozen=True, eq=False)
class CancelReceived(SipEvent):
    """The caller gave up before our final answer: the INVITE got 487 already."""

    call: ServerCall


@dataclass(frozen=True, eq=False)
class ReInvite(SipEvent):
    """A re-INVITE in an answered call: answer it with :meth:`UserAgent.answer_reinvite`."""

    call: ServerCall
    request: Request


@dataclass(frozen=True, eq=False)
class CallGone(SipEvent):
    """The call ended without the application ending it: our 2xx was never ACKed (``no_ack``), the
    transport to the peer failed (``transport``), no session refresh came in time (``session_expired``,
    RFC 4028: our BYE went) or ours was refused for good or not answered (``session_refresh_failed``)."""

    call: ServerCall
    why: str


@dataclass(frozen=True, eq=False)
class RequestFailed(SipEvent):
    """A request we sent in a call (a BYE) got no answer, or a final error: logged by the application."""

    call: ServerCall
    method: str
    why: str


@dataclass(frozen=True, eq=False)
class Relay(SipEvent):
    """A datagram on the shared port for another worker (its tag of ours names ``worker``): nothing here
    answered it; the endpoint hands ``data`` and its source ``peer`` to that worker as they came."""

    worker: int
    data: bytes
    peer: Peer


Event = SipEvent


# --- the UAS side of a call ----------------------------------------------------------------------------------


class UasState(StrEnum):
    """Where an incoming call is, as SIP sees it."""

    PROCEEDING = "proceeding"  # the INVITE came; no final answer yet
    ACCEPTED = "accepted"  # our 2xx went out; its ACK has not come
    #: We hung up while our 2xx to the INVITE still waited for its ACK: RFC 3261 §15 holds our BYE until
    #: the ACK comes (the caller may not have our 2xx yet: it is still sent again) or the 2xx gives up.
    ENDING = "ending"
    CONFIRMED = "confirmed"  # the ACK came: the call is up
    ENDED = "ended"


@dataclass(eq=False)
class ServerCall:
    """An INVITE we serve, and the dialog it makes. Held by the core; the application passes it back."""

    invite: Request
    peer: Peer
    local_tag: str
    transaction: ServerTransaction
    dialog: Dialog
    state: UasState = UasState.PROCEEDING
    #: Our 2xx's retransmissions until its ACK (the INVITE's, then each re-INVITE's).
    retransmitter: TwoXxRetransmitter | None = None
    #: A re-INVITE the application has not answered yet, and its transaction.
    reinvite: tuple[Request, ServerTransaction] | None = None
    #: Who serves requests of other methods in the dialog, by method (a REFER's NOTIFYs: refer.py).
    handlers: dict[str, RequestHandler] = field(default_factory=dict)
    #: The session timer the INVITE (or the pending re-INVITE) asked for, as our 2xx will agree it.
    asked: Agreed = field(default_factory=lambda: Agreed(None))
    #: The running session timer (RFC 4028), once a 2xx agreed one.
    session: SessionClock | None = None
    #: Our session description as our last 2xx gave it (a refresh re-INVITE of ours offers it again).
    local_sdp: bytes = b""
    #: Our refresh (re-INVITE or UPDATE) waiting for its final answer.
    refreshing: Request | None = None
    #: The Reason text of our BYE held back until the ACK (:attr:`UasState.ENDING`).
    bye_reason: str | None = None
    #: Its server transactions still live (at most MAX_CALL_TRANSACTIONS).
    live_transactions: int = 0

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    @property
    def id(self) -> DialogId:
        return self.dialog.id

    @property
    def ended(self) -> bool:
        return self.state is UasState.ENDED


# --- what the core is told to do -------------------------------------------------------------------------


def _never_busy() -> str | None:
    return None


@dataclass(frozen=True)
class WorkerSlot:
    """Which of the workers sharing the SIP port this one is: ``index`` of ``count`` (both fixed for the
    service's life; a restarted worker takes its dead predecessor's index)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count <= 100:  # (two digits in a tag)
            raise ValueError(f"WorkerSlot: index {self.index} of {self.count} workers (at most 100)")


@dataclass
class Policy:
    """What this user agent serves: the methods (Allow), the option tags a Require may name, whether it
    takes new calls now (not while draining: INVITE and OPTIONS get 503), and its name."""

    allowed: frozenset[str] = ALLOW
    supported: frozenset[str] = SUPPORTED
    accepting: bool = True
    user_agent: str = "swml-engine"
    #: Seconds a refused caller is told to wait (Retry-After on 503).
    retry_after: int = 5
    #: Why the application would refuse a new call now (over its call limit, its media running late),
    #: or None. OPTIONS probes get 503 meanwhile, so a dispatcher marks this node down before it sends
    #: an INVITE that would fail; the INVITEs themselves are the application's to refuse (it counts
    #: and logs them).
    busy: Callable[[], str | None] = _never_busy
    #: With --workers: which one this is, named in every tag of ours (None: one process, plain tags).
    worker: WorkerSlot | None = None


class ClientOwner(Protocol):
    """Who gets the answers to a request we send (:meth:`UserAgent.send_request`)."""

    def on_response(self, response: Response, now: float) -> None:
        """Each response the transaction passes up (1xx, the final one; every 2xx to an INVITE)."""

    def on_timeout(self, why: str, now: float) -> None:
        """No final answer came (Timer B/F), or the transport failed: the request is over."""


class DialogOwner(Protocol):
    """Who gets what arrives for the dialogs of a call we placed (uac.py): the core routes by (Call-ID,
    our tag) — To in a request, From in a response."""

    def on_request(self, request: Request, tx: ServerTransaction, peer: Peer, now: float) -> None:
        """A request (not an ACK) in one of the call's dialogs: answer it through ``tx``."""

    def on_ack(self, ack: Request, now: float) -> None:
        """An ACK in one of the call's dialogs that no transaction took (the ACK for our 2xx)."""

    def on_stray_response(self, response: Response, now: float) -> None:
        """An answer to one of the call's requests whose transaction has ended (a 2xx retransmitted
        after Timer M, or a fork's 2xx after it)."""

    def reaches(self, transport: Transport, host: str, port: int) -> bool:
        """Whether the call, not over, sends its requests to ``host``:``port`` over ``transport``."""


class RequestHandler(Protocol):
    """Who serves one method's requests in the dialog of a call we answered (:meth:`UserAgent.serve_in_dialog`)."""

    def on_request(self, request: Request, tx: ServerTransaction, peer: Peer, now: float) -> None:
        """A request the dialog took (its CSeq in order): answer it through ``tx`` (:meth:`UserAgent.respond`)."""


class Timed(Protocol):
    """Something of the application's with timers of its own (a registration's refresh, an outbound
    call's session timer) that the core's one timer covers: see :meth:`UserAgent.add_timed`."""

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class UserAgent:
    """See the module docstring."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        timing: Timing | None = None,
        rng: random.Random | None = None,
        max_calls: int = 100_000,
        relay: bool = False,
    ) -> None:
        self.policy = policy or Policy()
        #: Whether a message for another worker's dialog is handed on (:class:`Relay`): on the port the
        #: workers share, not on a port of this worker's own.
        self.relay = relay and self.policy.worker is not None
        self.timing = timing or Timing()
        self.rng = rng or random.SystemRandom()
        self.max_calls = max_calls
        self.table = TransactionTable()
        self._outbox: deque[Datagram] = deque(maxlen=MAX_QUEUE)
        self._events: deque[Event] = deque(maxlen=MAX_QUEUE)
        #: Where each machine's messages go (server transactions: their request's source).
        self._where: dict[object, Destination] = {}
        #: Who gets each client transaction's responses.
        self._owners: dict[ClientTransaction, ClientOwner] = {}
        #: Calls by dialog id, and the calls still being set up by (Call-ID, From tag, CSeq) for 482.
        self._calls: dict[DialogId, ServerCall] = {}
        self._setting_up: dict[tuple[str, str | None, int], ServerCall] = {}
        #: Which machine belongs to which call (to tell the call when one ends badly).
        self._machine_call: dict[object, ServerCall] = {}
        #: Calls we placed, by (Call-ID, our tag): their dialogs' requests and late answers go to them.
        self._owned: dict[tuple[str, str], DialogOwner] = {}
        #: The application's own timed machines (registrations, outbound calls).
        self._timed: list[Timed] = []
        #: The running session timers of the calls we answered, by call (each one of ``_timed``).
        self._sessions: dict[DialogId, _Session] = {}
        #: Messages read and written, by method and status (the service's /metrics reads them).
        self.counts = MessageCounts()
        #: Unreadable messages, by count, and the sources already logged.
        self.malformed = 0
        self._noisy: set[str] = set()
        #: When the core last logged that it refused calls for want of room (None: never).
        self._full_said_at: float | None = None
        #: Requests refused by validation, by count, and the sources already logged.
        self.invalid = 0
        self._refused_sources: set[str] = set()

    # --- what the endpoint reads ------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        when = self.table.next_timer()
        for timed in self._timed:
            mine = timed.next_timer()
            if mine is not None and (when is None or mine < when):
                when = mine
        return when

    @property
    def calls(self) -> int:
        return len(self._calls)

    def pending(self, method: str) -> int:
        """Requests of ``method`` we sent that have no final answer yet (a stopping service waits for its
        BYEs to be answered, their retransmissions bounded by Timer F). A request answered is not pending
        even while its transaction lingers to absorb retransmissions (Timer K)."""
        return len(self.unanswered((method,)))

    def unanswered(self, methods: Iterable[str]) -> set[object]:
        """The requests of ``methods`` we sent that have no final answer yet (see :meth:`pending`); a BYE
        held back until its call's ACK (:attr:`UasState.ENDING`) counts as its call."""
        wanted = frozenset(methods)
        out: set[object] = {
            tx for tx in self._owners if tx.request.method in wanted and not tx.done and tx.final_response is None
        }
        if Method.BYE in wanted:
            out.update(call for call in self._calls.values() if call.state is UasState.ENDING)
        return out

    def flow_in_use(self, flow: int, addr: tuple[str, int] | None = None) -> bool:
        """Whether a call that is not over uses TCP connection ``flow`` (to ``addr``): a call that came
        on it (its requests come on it, ours go out on it), or a call we placed whose requests go to
        ``addr`` over TCP. The endpoint keeps such a connection open however long it is idle."""
        if any(call.peer.flow == flow for call in self._calls.values()):
            return True
        return addr is not None and any(o.reaches(Transport.TCP, *addr) for o in self._owned.values())

    # --- what the endpoint feeds -----------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        for machine in self.table.handle_timer(now):
            self._drain(machine, now)
        for timed in list(self._timed):
            due = timed.next_timer()
            if due is not None and due <= now:
                timed.handle_timer(now)

    def receive(self, data: bytes, peer: Peer, now: float, *, relayed: bool = False) -> None:
        """One message's bytes (a datagram, or one framed from a TCP stream); ``relayed``: handed on by
        another worker (see the module docstring), so answered here whatever its tag says."""
        if not data.strip(b"\r\n"):
            return  # a keep-alive (RFC 5626 §4.4.1)
        try:
            message = parse_message(data)
        except MessageError as e:
            self._malformed(peer, str(e))
            return
        if self.relay and not relayed and peer.transport is Transport.UDP:
            other = self._other_worker(message)
            if other is not None:  # (counted by the worker that takes it)
                self._event(Relay(other, data, peer))
                return
        self.counts.received(message)
        if isinstance(message, Response):
            self._receive_response(message, now)
            return
        self._receive_request(message, peer, now, datagram=peer.transport is Transport.UDP)

    def _other_worker(self, message: Request | Response) -> int | None:
        """The other worker whose tag ``message`` carries as ours (To in a request, From in a response)."""
        try:
            ours = message.to.tag if isinstance(message, Request) else message.from_.tag
        except BadHeader:
            return None
        worker = worker_of_tag(ours)
        me = self.policy.worker
        if worker is None or me is None or worker == me.index or worker >= me.count:
            return None  # ours, or no worker's: answered here (481 for a dialog we do not have)
        return worker

    # --- responses -------------------------------------------------------------------------------------

    def _receive_response(self, response: Response, now: float) -> None:
        tx = self.table.client_for(response)
        if tx is None:
            owner = self._owner(response)
            if owner is not None:  # a placed call's 2xx after its transaction ended (Timer M, a late fork)
                owner.on_stray_response(response, now)
            return  # else a late retransmission, or a response to nothing of ours
        tx.receive(response, now)
        self._drain(tx, now)

    # --- requests --------------------------------------------------------------------------------------

    def _receive_request(self, request: Request, peer: Peer, now: float, *, datagram: bool) -> None:
        rejection = check_request(
            request,
            transport=peer.transport.value,
            datagram=datagram,
            allowed=self._allowed_for(request),
            supported=self.policy.supported,
        )
        if rejection is not None and rejection.drop:
            self._malformed(peer, rejection.reason)
            return
        _stamp_received(request, peer)
        existing = self.table.server_for(request)
        if existing is not None:  # a retransmission, or the ACK of a non-2xx: its transaction's
            existing.receive(request, now)
            self._drain(existing, now)
            return
        if rejection is not None:
            self._invalid(request, peer, f"{rejection.status} {rejection.reason}: {rejection.warning}")
            self._refuse(request, peer, now, rejection.status, rejection.reason, rejection.headers, rejection.warning)
            return
        method = request.method
        if method == Method.ACK:
            self._ack(request, now)
        elif method == Method.CANCEL:
            self._cancel(request, peer, now)
        elif _to_tag(request) is not None:
            self._in_dialog(request, peer, now)
        elif method == Method.INVITE:
            self._invite(request, peer, now)
        elif method == Method.OPTIONS:
            self._options(request, peer, now)
        elif method == Method.BYE:
            self._refuse(request, peer, now, 481)  # a BYE outside any dialog (RFC 3261 §15.1.2)
        else:
            self._refuse(request, peer, now, 405, headers=(("Allow", allow_header(self.policy.allowed)),))

    def _invite(self, request: Request, peer: Peer, now: float) -> None:
        cseq = request.cseq
        key = (request.call_id, request.from_.tag, cseq.number)
        if key in self._setting_up:
            # RFC 3261 §8.2.2.2: the INVITE being answered, come again by another path (a forking or
            # looping proxy): it must not become a second call.
            self._refuse(request, peer, now, 482)
            return
        if not self.policy.accepting:
            self._refuse(request, peer, now, 503, headers=(("Retry-After", str(self.policy.retry_after)),))
            return
        if len(self._calls) >= self.max_calls or self.table.full:
            self._refuse(request, peer, now, 503, headers=(("Retry-After", str(self.policy.retry_after)),))
            if self._full_said_at is None or now - self._full_said_at >= FULL_LOG_INTERVAL:
                self._full_said_at = now  # (a line a minute at most: a flood must not flood the log)
                what = f"{self.max_calls} calls" if len(self._calls) >= self.max_calls else "no room for a transaction"
                log.warning(
                    "new calls refused 503: %s (%d calls, %d server transactions); the next such line in %d s at the"
                    " earliest",
                    what,
                    len(self._calls),
                    len(self.table),
                    FULL_LOG_INTERVAL,
                )
            return
        local_tag = self.new_tag()
        try:
            dialog = Dialog.for_uas(request, local_tag, 1, rng=self.rng)
        except DialogError as e:
            self._refuse(request, peer, now, 400, warning=str(e))
            return
        asked = self._timer_asked(request)
        if not isinstance(asked, Agreed):
            self._refuse(request, peer, now, asked.status, asked.reason, asked.headers, asked.warning)
            return
        tx = self._server_transaction(request, peer, now)
        if tx is None:
            return
        call = ServerCall(invite=request, peer=peer, local_tag=local_tag, transaction=tx, dialog=dialog, asked=asked)
        self._calls[call.id] = call
        self._setting_up[key] = call
        self._serves(tx, call)
        self._respond(call, tx, request, 100, now)  # at once: the caller stops retransmitting
        self._event(InviteReceived(call))

    def refusing(self) -> str | None:
        """Why a new call would get 503 now (an OPTIONS probe gets it then), None while calls are taken."""
        if not self.policy.accepting:
            return "not accepting calls"
        return self.policy.busy()

    def _options(self, request: Request, peer: Peer, now: float) -> None:
        if self.refusing() is not None:
            self._refuse(request, peer, now, 503, headers=(("Retry-After", str(self.policy.retry_after)),))
            return
        self._refuse(request, peer, now, 200, headers=self._capabilities())

    def _capabilities(self) -> tuple[tuple[str, str], ...]:
        """What an OPTIONS answer says we take: methods, option tags, body types."""
        return (*self._extensions(), ("Accept", "application/sdp"))

    def _extensions(self) -> tuple[tuple[str, str], ...]:
        """Allow, and Supported when we support any option tag: in a 2xx to an INVITE (RFC 3261
        §13.3.1.4), so the caller knows it may refresh with ``Require: timer``."""
        allow = ("Allow", allow_header(self.policy.allowed))
        tags = self.policy.supported
        return (allow, ("Supported", ", ".join(sorted(tags)))) if tags else (allow,)

    def _ack(self, ack: Request, now: float) -> None:
        """An ACK no transaction took: the ACK for a 2xx of ours (its own transaction, RFC 3261 §17.1.1.3)."""
        owner = self._owner(ack)
        if owner is not None:
            owner.on_ack(ack, now)
            return
        try:
            call = self._calls.get(dialog_id_of(ack))
        except BadHeader:
            return
        if call is None or call.ended:
            return  # a late or stray ACK: nothing to do (an ACK is never answered)
        self._acked(call, ack, now)

    def _acked(self, call: ServerCall, ack: Request, now: float) -> None:
        retransmitter = call.retransmitter
        if retransmitter is None:
            return  # no 2xx of ours waits for it (a retransmitted ACK)
        try:
            number = ack.cseq.number
        except BadHeader:
            return
        if number != _cseq_number(retransmitter.response):
            return  # the ACK of an earlier 2xx
        retransmitter.ack_received(now)
        self._drain(retransmitter, now)
        call.retransmitter = None
        ending = call.state is UasState.ENDING
        call.state = UasState.CONFIRMED
        if ending:  # the BYE held back for this ACK goes now (the application has ended the call)
            self.bye(call, now, call.bye_reason)
            return
        self._event(AckReceived(call, ack.sdp))  # (a multipart body: its SDP part, as for an INVITE)

    def _cancel(self, cancel: Request, peer: Peer, now: float) -> None:
        invite_tx = self.table.invite_for(cancel)
        if invite_tx is None:
            self._refuse(cancel, peer, now, 481)  # nothing in progress to cancel (RFC 3261 §9.2)
            return
        call = self._machine_call.get(invite_tx)
        # the CANCEL itself is answered in any case, with the To tag of the INVITE's answers (RFC 3261 §9.2)
        self._refuse(cancel, peer, now, 200, tag=call.local_tag if call is not None else None)
        if call is None or call.state is not UasState.PROCEEDING:
            return  # already answered finally: the CANCEL has no effect
        self._final(call, 487, now)
        self._event(CancelReceived(call))

    def _in_dialog(self, request: Request, peer: Peer, now: float) -> None:
        owner = self._owner(request)
        if owner is not None:  # a call we placed
            tx = self._server_transaction(request, peer, now)
            if tx is not None:
                owner.on_request(request, tx, peer, now)
            return
        try:
            call = self._calls.get(dialog_id_of(request))
        except BadHeader:
            call = None
        if call is None or call.ended:
            self._refuse(request, peer, now, 481)  # RFC 3261 §12.2.2: no such dialog (ended, or never ours)
            return
        if call.live_transactions >= MAX_CALL_TRANSACTIONS and request.method != Method.BYE:
            busy = response_to(request, 503, headers=(("Retry-After", "1"), ("User-Agent", self.policy.user_agent)))
            self._send(busy, _reply_destination(request, peer))  # (statelessly: see MAX_CALL_TRANSACTIONS)
            return
        rejection = call.dialog.receive_request(request)
        tx = self._server_transaction(request, peer, now)
        if tx is None:
            return
        self._serves(tx, call)
        if rejection is not None:
            self._respond(call, tx, request, rejection.status, now, reason=rejection.reason, headers=rejection.headers)
            return
        method = request.method
        if method == Method.BYE:
            self._respond(call, tx, request, 200, now)
            if call.state is UasState.PROCEEDING:  # a BYE in the early dialog ends the INVITE too
                self._final(call, 487, now)
            told = call.state is not UasState.ENDING  # (ending: the application ended it already)
            self._end(call)
            if told:
                self._event(ByeReceived(call))
        elif method == Method.INVITE:
            if call.state in (UasState.PROCEEDING, UasState.ENDING):
                self._respond(call, tx, request, 491, now)  # not confirmed yet, or being ended
                return
            asked = self._timer_asked(request)
            if not isinstance(asked, Agreed):
                self._respond(call, tx, request, asked.status, now, reason=asked.reason, headers=asked.headers)
                return
            call.asked = asked
            call.reinvite = (request, tx)
            self._event(ReInvite(call, request))
        elif method == Method.UPDATE:
            self._their_update(call, request, tx, now)
        elif method == Method.OPTIONS:
            self._respond(call, tx, request, 200, now, headers=self._capabilities())
        elif method in call.handlers:
            call.handlers[method].on_request(request, tx, peer, now)
        else:
            headers = (("Allow", allow_header(self.policy.allowed)),)
            self._respond(call, tx, request, 405, now, headers=headers)

    # --- what the application does ------------------------------------------------------------------------

    def provisional(self, call: ServerCall, status: int, now: float, body: bytes = b"") -> None:
        """180 Ringing, 183 Session Progress (with our SDP answer as ``body``) ..."""
        if call.state is not UasState.PROCEEDING or not 100 < status < 200:
            return
        self._respond(call, call.transaction, call.invite, status, now, body=body, contact=True)

    def answer(self, call: ServerCall, body: bytes, now: float) -> None:
        """200 OK with our SDP (an answer, or our offer for a delayed offer); retransmitted until the ACK."""
        if call.state is not UasState.PROCEEDING:
            return
        timer = call.asked.headers()
        response = self._respond(call, call.transaction, call.invite, 200, now, body=body, contact=True, headers=timer)
        self._forget_setting_up(call)
        call.state = UasState.ACCEPTED
        self._retransmit_2xx(call, response, now)
        self._agreed(call, call.asked.timer, body, now)

    def reject(
        self,
        call: ServerCall,
        status: int,
        now: float,
        reason: str = "",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """A final error to the INVITE (486, 603, 480, 488, 401 with a challenge ...): the call is over."""
        if call.state is not UasState.PROCEEDING or status < 300:
            return
        self._final(call, status, now, reason=reason, headers=headers)

    def answer_reinvite(self, call: ServerCall, status: int, now: float, body: bytes = b"") -> None:
        """Answer the pending re-INVITE (:class:`ReInvite`): 200 with our SDP, or 488 and the like."""
        pending = call.reinvite
        if pending is None or call.ended:
            return
        call.reinvite = None
        request, tx = pending
        ok = 200 <= status < 300
        headers = call.asked.headers() if ok else []
        response = self._respond(call, tx, request, status, now, body=body, contact=ok, headers=headers)
        if ok:
            call.state = UasState.ACCEPTED
            self._retransmit_2xx(call, response, now)
            self._agreed(call, call.asked.timer, body, now)  # each re-INVITE agrees the timer anew (§9)

    def bye(self, call: ServerCall, now: float, reason: str | None = None) -> None:
        """End an answered call from our side: a BYE along the route set (or to the Contact), with a
        ``Reason`` header, retransmitted until answered. Before the answer, :meth:`reject` instead."""
        if call.ended or call.state in (UasState.PROCEEDING, UasState.ENDING):
            return
        if call.state is UasState.ACCEPTED and self._first_2xx_unacked(call):
            # RFC 3261 §15: no BYE before the ACK of our 2xx to the INVITE — if that 2xx was lost, a BYE
            # would reach a caller still ringing. The 2xx keeps going; the BYE follows the ACK, or the 2xx
            # giving up (32 s). (A re-INVITE's 2xx holds no BYE back: the dialog is confirmed already.)
            call.state = UasState.ENDING
            call.bye_reason = reason
            self._stop_session(call)
            return
        headers = [("User-Agent", self.policy.user_agent)]
        if reason:
            text = reason.replace('"', "'")[:100]
            headers.append(("Reason", f'SIP;cause=200;text="{text}"'))
        try:
            request, next_hop = call.dialog.request("BYE", via=self._via(call.peer), headers=headers)
        except DialogError as e:
            log.info("call %s: no BYE sent: %s", call.call_id, e)
            self._end(call)
            return
        self._end(call)
        self._send_request(request, self._target(next_hop, call.peer), now, _ByeOwner(self, call))

    @staticmethod
    def _first_2xx_unacked(call: ServerCall) -> bool:
        """Whether our 2xx to the call's INVITE (not to a re-INVITE) still waits for its ACK."""
        retransmitter = call.retransmitter
        return retransmitter is not None and _cseq_number(retransmitter.response) == _cseq_number(call.invite)

    # --- for the modules that send requests of their own (uac.py, register.py) -------------------------

    def send_request(
        self, request: Request, target: Target, now: float, owner: ClientOwner
    ) -> ClientTransaction | None:
        """Send ``request`` (its top Via must carry a branch from :meth:`new_branch`) through a client
        transaction, given back (None when it could not be sent: ``owner.on_timeout`` heard why at once);
        its answers go to ``owner``."""
        return self._send_request(request, target, now, owner)

    def respond(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Send ``response`` through the server transaction of a request a :class:`DialogOwner` got."""
        tx.respond(response, now)
        self._drain(tx, now)

    def reply_destination(self, request: Request, peer: Peer) -> Destination:
        """Where answers to ``request`` from ``peer`` go (RFC 3261 §18.2.2, RFC 3581)."""
        return _reply_destination(request, peer)

    def serve_in_dialog(self, call: ServerCall, method: str, handler: RequestHandler) -> None:
        """Hand ``method``'s requests in ``call``'s dialog to ``handler`` (a REFER's NOTIFYs) while the call
        lasts, or until :meth:`unserve_in_dialog`. Our Allow does not change: the method is taken there only."""
        call.handlers[method] = handler

    def unserve_in_dialog(self, call: ServerCall, method: str, handler: RequestHandler) -> None:
        if call.handlers.get(method) is handler:
            del call.handlers[method]

    def target(self, uri: Uri, peer: Peer) -> Target:
        """Where a request of ours to ``uri`` goes in the dialog of a call that came from ``peer``."""
        return self._target(uri, peer)

    def own_dialogs(self, call_id: str, local_tag: str, owner: DialogOwner) -> None:
        """Route the dialogs of (``call_id``, ``local_tag``) to ``owner`` until :meth:`disown_dialogs`."""
        if len(self._owned) >= self.max_calls and (call_id, local_tag) not in self._owned:
            raise TableFull(f"UserAgent: {self.max_calls} outbound calls live; end some first")
        self._owned[(call_id, local_tag)] = owner

    def disown_dialogs(self, call_id: str, local_tag: str) -> None:
        self._owned.pop((call_id, local_tag), None)

    def send_stateless(self, message: Request | Response, to: Destination) -> None:
        """Send a message no transaction carries (the ACK for a 2xx, RFC 3261 §17.1.1.3)."""
        self._send(message, to)

    def emit(self, event: SipEvent) -> None:
        """Queue an event for the application."""
        self._event(event)

    def add_timed(self, timed: Timed) -> None:
        """Cover ``timed``'s timers with the core's one timer until :meth:`remove_timed`."""
        if timed not in self._timed:
            self._timed.append(timed)

    def remove_timed(self, timed: Timed) -> None:
        if timed in self._timed:
            self._timed.remove(timed)

    def new_tag(self) -> str:
        """A tag of ours (naming this worker with --workers: see the module docstring)."""
        tag = _tag(self.rng)
        worker = self.policy.worker
        return tag if worker is None else f"w{worker.index}-{tag}"

    def new_branch(self) -> str:
        return new_branch(self.rng.getrandbits(96).to_bytes(12, "big"))

    def via(self, local: tuple[str, int], transport: Transport) -> Via:
        """Our Via for a request sent from ``local`` (the branch is the sender's to add)."""
        host, port = local
        return Via(transport.value.upper(), host, port or None, (("rport", None),))

    def contact(self, local: tuple[str, int], transport: Transport, user: str | None = None) -> NameAddr:
        """Our Contact at ``local`` (``transport=tcp`` over TCP, so the peer's requests come over TCP)."""
        host, port = local
        params: tuple[tuple[str, str | None], ...] = (("transport", "tcp"),) if transport is Transport.TCP else ()
        return NameAddr(uri=Uri("sip", host=host, user=user, port=port or None, params=params))

    # --- session timers of the calls we answer (RFC 4028) ------------------------------------------------

    def _timer_asked(self, request: Request) -> Agreed | Rejection:
        """The timer an INVITE or a refresh asks for, as our 2xx will agree it; or how to refuse it: 422
        when its interval is below our minimum, 400 when its timer headers cannot be read."""
        try:
            asked = answer_request(request, min_se=MIN_SE)
        except (BadHeader, SessionTimerError) as e:
            header = e.header if isinstance(e, BadHeader) else "Session-Expires"
            return Rejection(400, f"Bad {header}", str(e))
        if isinstance(asked, TooSmall):
            return Rejection(422, "Session Interval Too Small", "", tuple(asked.headers()))
        return asked

    def _agreed(self, call: ServerCall, timer: SessionTimer | None, body: bytes, now: float) -> None:
        """A 2xx of ours went out agreeing ``timer`` (None: the session runs without one from now)."""
        if body:
            call.local_sdp = body
        if timer is None:
            self._stop_session(call)
        elif call.session is None:
            call.session = SessionClock(timer, now)
            session = self._sessions[call.id] = _Session(self, call)
            self.add_timed(session)
        else:
            call.session.restart(timer, now)

    def _stop_session(self, call: ServerCall) -> None:
        call.session = None
        session = self._sessions.pop(call.id, None)
        if session is not None:
            self.remove_timed(session)

    def _their_update(self, call: ServerCall, request: Request, tx: ServerTransaction, now: float) -> None:
        """An UPDATE in a call we answered: a session refresh (no body) is answered 200 with the timer it
        agrees; one that offers a new session description gets 488 (a re-INVITE does that here)."""
        if call.state is UasState.PROCEEDING or request.body:
            warning = "an UPDATE with a session description is not taken: send a re-INVITE"
            self._respond(call, tx, request, 488, now, headers=(("Warning", f'399 swml-engine "{warning}"'),))
            return
        asked = self._timer_asked(request)
        if not isinstance(asked, Agreed):
            self._respond(call, tx, request, asked.status, now, reason=asked.reason, headers=asked.headers)
            return
        self._respond(call, tx, request, 200, now, headers=(*asked.headers(), *self._extensions()), contact=True)
        self._agreed(call, asked.timer, b"", now)

    def _session_due(self, call: ServerCall, now: float) -> None:
        session = call.session
        if session is None or call.ended:
            return
        due = session.due(now)
        if due == "expire":
            log.info("call %s: no session refresh came in time: BYE", call.call_id)
            self.bye(call, now, "session expired")
            self._event(CallGone(call, "session_expired"))
        elif due == "refresh":
            self._refresh(call, now)

    def _refresh(self, call: ServerCall, now: float) -> None:
        """Our session refresh (we are the refresher): an UPDATE when the caller allows it, else a
        re-INVITE offering our session description unchanged. Not while a re-INVITE is under way in the
        dialog (theirs refreshes the session when answered; ours is sent once theirs is done)."""
        session = call.session
        if session is None or call.refreshing is not None:
            return
        if call.reinvite is not None or call.state is not UasState.CONFIRMED:
            session.refresh_failed(now, retry_in=1.0)
            return
        allows_update = Method.UPDATE in (v.upper() for v in call.invite.headers.values("allow"))
        method = Method.UPDATE if allows_update else Method.INVITE
        body = b"" if method == Method.UPDATE else call.local_sdp
        headers = [*self._extensions(), ("User-Agent", self.policy.user_agent)]
        headers += [h for h in session.timer.refresh_offer().headers() if h[0] != "Supported"]  # (in _extensions)
        if body:
            headers.append(("Content-Type", "application/sdp"))
        try:
            request, next_hop = call.dialog.request(
                method, via=self._via(call.peer), contact=self._contact(call.peer), headers=headers, body=body
            )
        except DialogError as e:
            log.info("call %s: no session refresh sent: %s", call.call_id, e)
            session.refresh_failed(now, retry_in=1.0)
            return
        call.refreshing = request
        self._send_request(request, self._target(next_hop, call.peer), now, _RefreshOwner(self, call, request))

    def _refreshed(self, call: ServerCall, request: Request, response: Response, now: float) -> None:
        """The answer to our refresh: a 2xx agrees the timer anew; a 491 (their re-INVITE crossed ours)
        is tried again in 0-2 s, another refusal halfway to the expiry; a 408 or 481 ends the call (the
        dialog is gone, RFC 3261 §12.2.1.2)."""
        status = response.status
        if status < 200:
            return
        if 200 <= status < 300 and request.method == Method.INVITE:
            self._ack_2xx(call, request, response)  # every 2xx to our INVITE is ACKed, call over or not
        if call.refreshing is not request:
            return  # a retransmitted 2xx (ACKed above)
        call.refreshing = None
        with contextlib.suppress(DialogError):
            call.dialog.receive_response(response)
        session = call.session
        if call.ended or session is None:
            return
        if status < 300:
            try:
                timer = session.timer.refresh_offer().agreed(response)
            except SessionTimerError as e:
                log.info("call %s: %s: no session timer from now", call.call_id, e)
                timer = None
            self._agreed(call, timer, b"", now)
        elif status in (408, 481):
            self._gone(call, now, f"our session refresh got {status}")
        else:
            wait = self.rng.randint(*GLARE_WAIT) / 100 if status == 491 else None
            log.info("call %s: session refresh got %d: tried again before the session expires", call.call_id, status)
            session.refresh_failed(now, retry_in=wait)

    def _refresh_unanswered(self, call: ServerCall, request: Request, why: str, now: float) -> None:
        if call.refreshing is request:
            call.refreshing = None
            if not call.ended:
                self._gone(call, now, f"our session refresh: {why}")  # no answer in the dialog (§14.1)

    def _gone(self, call: ServerCall, now: float, why: str) -> None:
        log.info("call %s: %s: the call is over", call.call_id, why)
        self.bye(call, now, why)
        self._event(CallGone(call, "session_refresh_failed"))

    def _ack_2xx(self, call: ServerCall, invite: Request, response: Response) -> None:
        try:
            ack, next_hop = call.dialog.ack(invite, response, via=self._via(call.peer))
        except DialogError as e:
            log.info("call %s: no ACK: %s", call.call_id, e)
            return
        self._send(ack, self._target(next_hop, call.peer))

    # --- internals ---------------------------------------------------------------------------------------

    def _allowed_for(self, request: Request) -> frozenset[str]:
        """The methods served for ``request``: the policy's, and its own method when a handler serves it in
        its dialog (:meth:`serve_in_dialog`)."""
        allowed = self.policy.allowed
        if request.method in allowed:
            return allowed
        try:
            call = self._calls.get(dialog_id_of(request))
        except BadHeader:
            return allowed
        # An UPDATE is taken in a call we answered (a session refresh: RFC 4028 §7.4 prefers it), though not
        # offered in Allow: a caller that reads Allow refreshes with a re-INVITE, which carries everything.
        if call is None or (request.method not in call.handlers and request.method != Method.UPDATE):
            return allowed
        return allowed | {request.method}

    def _server_transaction(self, request: Request, peer: Peer, now: float) -> ServerTransaction | None:
        if server_key(request) is None:
            return None
        try:
            tx = ServerTransaction(
                request,
                reliable=peer.transport is not Transport.UDP,
                now=now,
                timing=self.timing,
                auto_trying=False,
            )
            self.table.add_server(tx)
        except (ValueError, TableFull) as e:
            log.debug("no transaction for %s: %s", request.method, e)
            return None
        self._where[tx] = _reply_destination(request, peer)
        return tx

    def _respond(
        self,
        call: ServerCall,
        tx: ServerTransaction,
        request: Request,
        status: int,
        now: float,
        *,
        reason: str = "",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        contact: bool = False,
    ) -> Response:
        extra = [*headers, ("User-Agent", self.policy.user_agent)]
        if body:
            extra.append(("Content-Type", "application/sdp"))
        if status >= 200 and request.method == Method.INVITE and status < 300:
            extra += self._extensions()
        try:
            response = call.dialog.answer(
                request,
                status,
                reason,
                contact=self._contact(call.peer) if contact else None,
                headers=extra,
                body=body,
            )
        except DialogError:
            response = response_to(request, status, reason, to_tag=call.local_tag, headers=extra, body=body)
        tx.respond(response, now)
        self._drain(tx, now)
        return response

    def _final(
        self,
        call: ServerCall,
        status: int,
        now: float,
        *,
        reason: str = "",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """A final error to the call's INVITE: the call is over (its transaction waits for the ACK)."""
        self._respond(call, call.transaction, call.invite, status, now, reason=reason, headers=headers)
        self._end(call)

    def _end(self, call: ServerCall) -> None:
        call.state = UasState.ENDED
        call.dialog.terminate()
        self._stop_session(call)
        self._forget_setting_up(call)
        self._calls.pop(call.id, None)
        self._stop_retransmitting(call)  # (the call is over: its 2xx waits for no ACK now)

    def _forget_setting_up(self, call: ServerCall) -> None:
        try:
            key = (call.invite.call_id, call.invite.from_.tag, call.invite.cseq.number)
        except BadHeader:
            return
        if self._setting_up.get(key) is call:
            del self._setting_up[key]

    def _retransmit_2xx(self, call: ServerCall, response: Response, now: float) -> None:
        self._stop_retransmitting(call)  # (an earlier 2xx still unacked: this one takes its place)
        retransmitter = TwoXxRetransmitter(response, now=now, timing=self.timing)
        call.retransmitter = retransmitter
        self._where[retransmitter] = _reply_destination(call.invite, call.peer)
        self._machine_call[retransmitter] = call
        self.table.add_retransmitter(retransmitter)

    def _refuse(
        self,
        request: Request,
        peer: Peer,
        now: float,
        status: int,
        reason: str = "",
        headers: Iterable[tuple[str, str]] = (),
        warning: str = "",
        tag: str | None = None,
    ) -> None:
        """Answer a request that is no call's (or refused before one exists): through a transaction
        when it can have one (retransmissions then get the same answer; an INVITE's error is repeated
        until its ACK) and the table is less than :data:`REFUSALS_SHARE` full, else once, statelessly
        (RFC 3261 §8.2.7). ``tag``: our To tag when the request has none (a new one when not given).

        Why the share: these answers come from anyone, forged sources included, and each transaction
        lasts 32 s (Timer J, Timer H): 320 OPTIONS a second once filled the table, and every new call
        got 503 while they went on. Past the share the calls alone take the table."""
        extra = [*headers, ("User-Agent", self.policy.user_agent)]
        if warning:
            text = warning.replace("\\", "\\\\").replace('"', "'")[:120]
            extra.append(("Warning", f'399 {peer.local[0] or "swml-engine"} "{text}"'))
        to_tag = None if _to_tag(request) is not None else tag or self.new_tag()
        response = response_to(request, status, reason, to_tag=to_tag, headers=extra)
        if request.method == Method.ACK:
            return
        table = self.table
        tx = (
            self._server_transaction(request, peer, now)
            if table.server_count < table.max_server * REFUSALS_SHARE
            else None
        )
        if tx is None:
            self._send(response, _reply_destination(request, peer))
            return
        tx.respond(response, now)
        self._drain(tx, now)

    def _send_request(
        self, request: Request, target: Target, now: float, owner: ClientOwner
    ) -> ClientTransaction | None:
        try:
            tx = ClientTransaction(request, reliable=target.transport is not Transport.UDP, now=now, timing=self.timing)
            self.table.add_client(tx)
        except (ValueError, TableFull) as e:
            owner.on_timeout(f"not sent: {e}", now)
            return None
        self._where[tx] = target
        self._owners[tx] = owner
        self._drain(tx, now)
        return tx

    def _owner(self, message: Request | Response) -> DialogOwner | None:
        """The placed call whose tag the message carries as ours (To in a request, From in a response)."""
        if not self._owned:
            return None
        try:
            ours = message.to.tag if isinstance(message, Request) else message.from_.tag
            call_id = message.call_id
        except BadHeader:
            return None
        return None if ours is None else self._owned.get((call_id, ours))

    def _drain(self, machine: object, now: float) -> None:
        """Send what ``machine`` has to send, act on what it says; forget it once it is over."""
        if not isinstance(machine, ServerTransaction | ClientTransaction | TwoXxRetransmitter):
            return
        where = self._where.get(machine)
        for message in machine.take_messages():
            if where is not None:
                self._send(message, where, machine)
        for event in machine.take_events():
            self._on_machine_event(machine, event, now)
        if machine.done:
            self._forget(machine)

    def _stop_retransmitting(self, call: ServerCall) -> None:
        """Stop the 2xx of ``call`` that waits for its ACK, if one does, and forget it — the table lets a
        stopped machine go at once, and nothing drains it later: kept here, every call that ended before
        its ACK came (a script hanging up at once, a caller whose ACK was lost) stayed in memory."""
        retransmitter, call.retransmitter = call.retransmitter, None
        if retransmitter is not None:
            retransmitter.ack_received(0.0)
            self._forget(retransmitter)

    def _serves(self, tx: ServerTransaction, call: ServerCall) -> None:
        """``tx`` is a request of ``call``'s (until :meth:`_forget`)."""
        self._machine_call[tx] = call
        call.live_transactions += 1

    def _forget(self, machine: object) -> None:
        """Let go of what this core keeps of a machine that is over (where it sends, its call, its owner)."""
        self._where.pop(machine, None)
        call = self._machine_call.pop(machine, None)
        if call is not None and isinstance(machine, ServerTransaction):
            call.live_transactions -= 1
        if isinstance(machine, ClientTransaction):
            self._owners.pop(machine, None)

    def _on_machine_event(self, machine: object, event: TxEvent, now: float) -> None:
        call = self._machine_call.get(machine)
        if isinstance(machine, ClientTransaction):
            owner = self._owners.get(machine)
            if owner is None:
                return
            if isinstance(event, ResponseReceived):
                owner.on_response(event.response, now)
            elif isinstance(event, TimedOut):
                owner.on_timeout("no answer", now)
            elif isinstance(event, TransportFailed):
                owner.on_timeout(f"not sent: {event.reason}", now)
            return
        if isinstance(event, TxAckReceived) and call is not None:
            self._acked(call, event.request, now)
        elif isinstance(event, TimedOut) and event.timer is TimerName.NO_ACK and call is not None:
            if call.ended:
                return
            # The wait for the ACK is over: a BYE may go (RFC 3261 §15).
            ending = call.state is UasState.ENDING
            self._stop_retransmitting(call)
            call.state = UasState.CONFIRMED
            if ending:  # our BYE waited for an ACK that never came
                self.bye(call, now, call.bye_reason)
            else:
                # RFC 3261 §13.3.1.4: the session SHOULD be ended with a BYE. The caller may well have
                # our 2xx and its ACK lost on the way (a proxy or NAT dropping it): without the BYE its
                # phone stays in a call nobody is on.
                self.bye(call, now, "no ACK")
                self._event(CallGone(call, "no_ack"))
        elif isinstance(event, TransportFailed) and call is not None and not call.ended:
            self._end(call)
            self._event(CallGone(call, "transport"))

    def _send(self, message: Request | Response, to: Destination, sender: object = None) -> None:
        self.counts.sent(message)
        self._outbox.append(Datagram(message.encode(), to, sender))

    def send_failed(self, datagram: Datagram, why: str, now: float) -> None:
        """The endpoint could not send ``datagram`` (a name that does not resolve, a connection refused):
        the transaction that sent it ends, and its owner hears why (RFC 3261 §17.1.4, §18.4)."""
        sender = datagram.sender
        if isinstance(sender, ClientTransaction | ServerTransaction) and not sender.done:
            sender.transport_error(now, why)
            self._drain(sender, now)

    def _event(self, event: Event) -> None:
        self._events.append(event)

    def _invalid(self, request: Request, peer: Peer, why: str) -> None:
        """A request refused by validation: counted, and logged once per source (a flood of them must
        not flood the log)."""
        self.invalid += 1
        if peer.host not in self._refused_sources and len(self._refused_sources) < MAX_NOISY:
            self._refused_sources.add(peer.host)
            log.info(
                "SIP %s from %s:%s refused %s; further ones from there are counted",
                request.method[:20],
                peer.host,
                peer.port,
                why,
            )

    def _malformed(self, peer: Peer, why: str) -> None:
        self.malformed += 1
        if peer.host not in self._noisy and len(self._noisy) < MAX_NOISY:
            self._noisy.add(peer.host)
            log.warning("SIP from %s:%s dropped (%s); further ones from there are counted", peer.host, peer.port, why)

    def _via(self, peer: Peer) -> Via:
        host, port = peer.local
        return Via(peer.transport.value.upper(), host, port or None, (("rport", None),))

    def _contact(self, peer: Peer) -> NameAddr:
        host, port = peer.local
        params: tuple[tuple[str, str | None], ...] = (("transport", "tcp"),) if peer.transport is Transport.TCP else ()
        return NameAddr(uri=Uri("sip", host=host, port=port or None, params=params))

    def _target(self, uri: Uri, peer: Peer) -> Target:
        """Where a request to ``uri`` goes: its host and port (5060 when none), over the transport it
        names or the call's; over TCP the call's connection is preferred while it is open. Over UDP, a
        private address from a caller at a public one (a phone behind NAT naming its own address in its
        Contact) goes to where the caller's requests came from instead: the NAT's mapping, which its own
        traffic keeps open, is the one way in."""
        named = uri.transport
        transport = Transport.TCP if named == "tcp" else Transport.UDP if named == "udp" else peer.transport
        host, port = uri.host, uri.port or 5060
        if transport is Transport.UDP and peer.transport is Transport.UDP and behind_nat(host, peer.host):
            host, port = peer.host, peer.port
        flow = peer.flow if transport is Transport.TCP else 0
        return Target(transport, host, port, flow)


class _Session:
    """A call's session timer, as the core's one timer sees it (:class:`Timed`)."""

    def __init__(self, ua: UserAgent, call: ServerCall) -> None:
        self.ua = ua
        self.call = call

    def next_timer(self) -> float | None:
        return self.call.session.next_timer() if self.call.session is not None else None

    def handle_timer(self, now: float) -> None:
        self.ua._session_due(self.call, now)


class _RefreshOwner:
    """The answers to our session refresh."""

    def __init__(self, ua: UserAgent, call: ServerCall, request: Request) -> None:
        self.ua = ua
        self.call = call
        self.request = request

    def on_response(self, response: Response, now: float) -> None:
        self.ua._refreshed(self.call, self.request, response, now)

    def on_timeout(self, why: str, now: float) -> None:
        self.ua._refresh_unanswered(self.call, self.request, why, now)


class _ByeOwner:
    """Our BYE's answers: nothing to do but say when it failed."""

    def __init__(self, ua: UserAgent, call: ServerCall) -> None:
        self.ua = ua
        self.call = call

    def on_response(self, response: Response, now: float) -> None:
        if response.status >= 300:
            self.ua._event(RequestFailed(self.call, "BYE", f"{response.status} {response.reason}"))

    def on_timeout(self, why: str, now: float) -> None:
        self.ua._event(RequestFailed(self.call, "BYE", why))


# --- helpers ------------------------------------------------------------------------------------------------


def behind_nat(host: str, source: str) -> bool:
    """Whether ``host`` (an address a peer gave us) is one no one outside its network reaches — private,
    loopback, link-local, shared (CGNAT) — while the peer's packets come from a public ``source``."""
    try:
        named, seen = (ipaddress.ip_address(a.strip("[]")) for a in (host, source))
    except ValueError:
        return False  # a host name: taken as it is
    if isinstance(seen, ipaddress.IPv6Address) and seen.ipv4_mapped is not None:
        seen = seen.ipv4_mapped  # an IPv4 caller on a dual-stack socket
    return not named.is_global and seen.is_global


def _tag(rng: random.Random) -> str:
    return f"{rng.getrandbits(48):012x}"


def worker_of_tag(tag: str | None) -> int | None:
    """The worker index a tag of ours names (:meth:`UserAgent.new_tag`), None for any other tag."""
    match = _WORKER_TAG.fullmatch(tag) if tag else None
    return int(match[1]) if match else None


def _to_tag(request: Request) -> str | None:
    try:
        return request.to.tag
    except BadHeader:
        return None


def _cseq_number(message: Request | Response) -> int | None:
    try:
        return message.cseq.number
    except BadHeader:
        return None


def _stamp_received(request: Request, peer: Peer) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: the top Via learns where the request really came from."""
    try:
        top = request.top_via
    except BadHeader:
        return
    stamped = top
    if top.host != peer.host:
        stamped = stamped.with_param("received", peer.host)
    if top.param("rport") is not None:
        stamped = stamped.with_param("rport", str(peer.port))
    if stamped is top:
        return
    fresh = Headers()
    done = False
    for name, value in request.headers:
        if not done and name.lower() in ("via", "v"):
            items = split_list(value)
            value = ", ".join([str(stamped), *items[1:]])
            done = True
        fresh.add(name, value)
    request.headers = fresh


def _reply_destination(request: Request, peer: Peer) -> Destination:
    """Where responses to ``request`` go (RFC 3261 §18.2.2, RFC 3581)."""
    if peer.transport is Transport.TCP:
        return peer  # the request's connection (the endpoint opens one to the Via when it is gone)
    try:
        via = request.top_via
    except BadHeader:
        return peer
    host = via.param("received") or via.host
    rport = via.param("rport")
    port = int(rport) if rport and rport.isdigit() else via.port or 5060
    if host == peer.host and port == peer.port:
        return peer
    return Target(Transport.UDP, host, port)
