"""SIP dialogs (RFC 3261 §12, with what §13-§15 ask of them), for a UAS and a UAC, without I/O.

A :class:`Dialog` holds the state two user agents share — Call-ID, tags, CSeq numbers, the remote
target and the route set — and applies the dialog's rules to the messages the core hands it:

- made by a UAS from an INVITE (:meth:`Dialog.for_uas`: route set = Record-Route *in order*, §12.1.1)
  or by a UAC from a 1xx/2xx with a To tag (:meth:`Dialog.for_uac`: Record-Route *reversed*, §12.1.2);
  a forking proxy gives one INVITE several dialogs, one per To tag (:func:`dialog_id_of`);
- requests we receive are checked (:meth:`Dialog.receive_request`): a CSeq lower than the last one is
  refused 500 (§12.2.2), an INVITE during our own gets 491 and one during theirs 500 with Retry-After
  (§14.2), BYE ends the dialog;
- requests we send are built (:meth:`Dialog.request`, :meth:`Dialog.ack`) with the next CSeq, the route
  set as Route headers (loose routing; a strict router's URI becomes the Request-URI and the remote target
  the last Route, §12.2.1.1) and the URI the request goes to next;
- answers (ours, :meth:`Dialog.answer`; theirs, :meth:`Dialog.receive_response`) move the state: early →
  confirmed on a 2xx to the INVITE, terminated on a final error to it or a 408/481 (§12.2.1.2); a 2xx to
  a re-INVITE or UPDATE refreshes the remote target; the route set is fixed once confirmed.

Not here: retransmissions and timers (the transactions'), which address a URI resolves to and over which
transport (the endpoint's), what to answer to a request the dialog accepts (the policy's). Branches come
from a ``random.Random`` the caller may give, so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from swml_engine.transports.sip.message import (
    BRANCH_COOKIE,
    MAX_CSEQ,
    REASONS,
    BadHeader,
    Headers,
    Request,
    Response,
    Via,
    response_to,
)
from swml_engine.transports.sip.uri import NameAddr, Uri, UriError, parse_uri

#: Max-Forwards of the requests we start (RFC 3261 §8.1.1.6).
MAX_FORWARDS = 70
#: Requests whose 2xx replaces the remote target with their Contact (RFC 3261 §12.2, RFC 3311).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})
#: RFC 3261 §14.2: a second INVITE while the first is unanswered gets 500 and Retry-After 0-10 s.
RETRY_AFTER_MAX = 10
#: Headers an ACK for a 2xx copies from its INVITE (§13.2.2.4: the same credentials).
_CREDENTIALS = ("authorization", "proxy-authorization")
#: URI parameters a Request-URI may not carry (RFC 3261 §19.1.1's table): stripped from a route or target.
_NOT_IN_REQUEST_URI = frozenset({"method"})


class DialogState(StrEnum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Role(StrEnum):
    """Which end of a request we are: its client (we sent it) or its server (we received it)."""

    UAC = "uac"
    UAS = "uas"


class DialogError(ValueError):
    """A message that cannot make or fit a dialog, or a request the dialog cannot send now; the
    message says which rule and what to do instead."""


@dataclass(frozen=True)
class DialogId:
    """A dialog's identity from our side (RFC 3261 §12): the remote tag is None for a peer of RFC 2543's
    day that sent no From tag."""

    call_id: str
    local_tag: str | None
    remote_tag: str | None


@dataclass(frozen=True)
class Rejection:
    """The answer to a request the dialog refuses: a status, a reason phrase a person can read, and
    the headers it needs (Retry-After)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def dialog_id_of(message: Request | Response) -> DialogId:
    """The id of the dialog ``message`` belongs to, from our side: a request we receive names our tag in
    To; a response to a request we sent, in From. A UAC keeps one dialog per id: two To tags in answers
    to one INVITE are two dialogs (a forking proxy). Raises BadHeader."""
    if isinstance(message, Request):
        return DialogId(message.call_id, message.to.tag, message.from_.tag)
    return DialogId(message.call_id, message.from_.tag, message.to.tag)


def _without_tag(address: NameAddr) -> NameAddr:
    return replace(address, params=tuple((k, v) for k, v in address.params if k.lower() != "tag"))


def _with_tag(address: NameAddr, tag: str | None) -> str:
    return str(address.with_param("tag", tag) if tag else address)


def _request_uri(uri: Uri) -> Uri:
    """``uri`` as a Request-URI: without the parameters and headers a Request-URI may not carry."""
    params = tuple((k, v) for k, v in uri.params if k.lower() not in _NOT_IN_REQUEST_URI)
    return replace(uri, params=params, headers="")


def _secure(request: Request) -> bool:
    """RFC 3261 §12.1: a dialog is secure when its request went over TLS to a SIPS Request-URI."""
    try:
        return parse_uri(request.uri).scheme == "sips" and request.top_via.transport == "TLS"
    except (UriError, BadHeader):
        return False


def _contact(message: Request | Response) -> Uri | None:
    contacts = message.contacts()
    return contacts[0].uri if contacts else None


@dataclass
class Dialog:
    """One dialog's state (RFC 3261 §12.1). Build it with :meth:`for_uas` or :meth:`for_uac`."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    #: Our and the peer's address of record (From/To) without tags.
    local_uri: NameAddr
    remote_uri: NameAddr
    #: The CSeq number of our last request (a UAS that has sent none: one below the first it will send).
    local_seq: int
    #: The CSeq number of the peer's last request (None until it sends one, for a UAC).
    remote_seq: int | None
    #: Where our requests go (the peer's Contact), unless a route set says otherwise.
    remote_target: Uri
    #: The proxies our requests pass, first hop first.
    route_set: list[NameAddr]
    secure: bool
    #: Our end of the INVITE that made the dialog.
    role: Role
    state: DialogState
    rng: random.Random = field(default_factory=random.SystemRandom, repr=False, compare=False)
    #: CSeq number of an INVITE we sent that has no final answer yet (§14.1: one at a time).
    invite_out: int | None = None
    #: CSeq number of an INVITE we received and have not answered finally (§14.2).
    invite_in: int | None = None

    # --- making one ---------------------------------------------------------------------------------

    @classmethod
    def for_uas(
        cls, invite: Request, local_tag: str, local_seq_start: int, *, rng: random.Random | None = None
    ) -> Dialog:
        """The dialog an INVITE we answer makes (RFC 3261 §12.1.1), early until our final answer.
        ``local_tag``: our To tag; ``local_seq_start``: the CSeq number of the first request we send."""
        if invite.method != "INVITE":
            raise DialogError(f"a {invite.method} makes no dialog here (only an INVITE does)")
        if not 1 <= local_seq_start <= MAX_CSEQ:
            raise DialogError(f"local_seq_start {local_seq_start}: give 1 to 2**31 - 1 (RFC 3261 §8.1.1.5)")
        if not local_tag:
            raise DialogError("a UAS dialog needs our To tag")
        try:
            if invite.to.tag is not None:
                raise DialogError("the INVITE has a To tag: it belongs to a dialog already (match it, or answer 481)")
            contacts = invite.contacts()
            if len(contacts) != 1:
                raise DialogError(f"the INVITE has {len(contacts)} Contacts, not one (RFC 3261 §8.1.1.8): answer 400")
            if contacts[0].uri.scheme not in ("sip", "sips"):
                # where our BYE and re-INVITEs go: a tel: or other URI could never be sent one
                raise DialogError(
                    f"the INVITE's Contact is a {contacts[0].uri.scheme}: URI, not a SIP one (RFC 3261 §8.1.1.8)"
                )
            return cls(
                call_id=invite.call_id,
                local_tag=local_tag,
                remote_tag=invite.from_.tag,
                local_uri=_without_tag(invite.to),
                remote_uri=_without_tag(invite.from_),
                local_seq=local_seq_start - 1,
                remote_seq=invite.cseq.number,
                remote_target=contacts[0].uri,
                route_set=invite.routes("record-route"),
                secure=_secure(invite),
                role=Role.UAS,
                state=DialogState.EARLY,
                rng=rng or random.SystemRandom(),
                invite_in=invite.cseq.number,
            )
        except BadHeader as e:
            raise DialogError(f"the INVITE cannot make a dialog: {e}") from None

    @classmethod
    def for_uac(cls, request: Request, response: Response, *, rng: random.Random | None = None) -> Dialog:
        """The dialog a 1xx (early) or 2xx (confirmed) with a To tag makes for the INVITE we sent
        (RFC 3261 §12.1.2). A forking proxy's second To tag is a second dialog: call this again."""
        if request.method != "INVITE":
            raise DialogError(f"a {request.method} makes no dialog here (only an INVITE does)")
        if not 100 < response.status < 300:
            raise DialogError(f"a {response.status} makes no dialog (a 101-299 with a To tag does)")
        try:
            if response.call_id != request.call_id or response.cseq != request.cseq:
                raise DialogError("the response does not answer this INVITE (Call-ID or CSeq differ)")
            local_tag, remote_tag = request.from_.tag, response.to.tag
            if local_tag is None:
                raise DialogError("our INVITE has no From tag (RFC 3261 §8.1.1.3 asks for one)")
            if remote_tag is None:
                raise DialogError(f"a {response.status} without a To tag makes no dialog (RFC 3261 §12.1.2)")
            target = _contact(response)
            confirmed = response.status >= 200
            if target is None:
                if confirmed:
                    raise DialogError("a 2xx to our INVITE without a Contact: the dialog has no remote target")
                target = parse_uri(request.uri)  # an early dialog without one: until the 2xx names it
            return cls(
                call_id=request.call_id,
                local_tag=local_tag,
                remote_tag=remote_tag,
                local_uri=_without_tag(request.from_),
                remote_uri=_without_tag(request.to),
                local_seq=request.cseq.number,
                remote_seq=None,
                remote_target=target,
                route_set=list(reversed(response.routes("record-route"))),
                secure=_secure(request),
                role=Role.UAC,
                state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
                rng=rng or random.SystemRandom(),
                invite_out=None if confirmed else request.cseq.number,
            )
        except (BadHeader, UriError) as e:
            raise DialogError(f"the answer cannot make a dialog: {e}") from None

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def matches(self, request: Request) -> bool:
        """Whether a request we received belongs to this dialog (Call-ID, To tag ours, From tag theirs)."""
        try:
            return dialog_id_of(request) == self.id
        except BadHeader:
            return False

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED
        self.invite_in = self.invite_out = None

    # --- requests we receive, and our answers ---------------------------------------------------------

    def receive_request(self, request: Request) -> Rejection | None:
        """Apply a request the peer sent in this dialog; None when the dialog takes it (the policy
        answers it), else the answer that refuses it. An ACK is never answered: it gives None.
        A retransmission (same CSeq) is the transactions' to absorb before this."""
        if request.method == "ACK":
            return None
        try:
            ours = dialog_id_of(request) == self.id
            number = request.cseq.number
        except BadHeader as e:
            return Rejection(400, f"Bad {e.header}")
        if not ours or self.state is DialogState.TERMINATED:
            return Rejection(481, REASONS[481])
        if self.remote_seq is not None and number < self.remote_seq:
            # §12.2.2: out of order (an old request delayed, or a peer that lost count)
            return Rejection(500, f"CSeq {number} is lower than {self.remote_seq} already seen")
        self.remote_seq = number
        if request.method == "INVITE":
            if number == self.invite_in:
                return None  # the INVITE being answered, again: its transaction answers a retransmission
            if self.invite_out is not None:
                return Rejection(491, REASONS[491])  # glare: both re-INVITE at once (§14.2)
            if self.invite_in is not None:
                wait = self.rng.randint(0, RETRY_AFTER_MAX)
                return Rejection(500, "An INVITE Is Still Being Answered", (("Retry-After", str(wait)),))
            self.invite_in = number
        elif request.method == "BYE":
            self.terminate()
        return None

    def answer(
        self,
        request: Request,
        status: int,
        reason: str = "",
        *,
        contact: NameAddr | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Our response to a request of this dialog (the INVITE that made it included), with our To tag
        (added only when the To has none: an in-dialog answer keeps its one tag), the INVITE's Record-Route
        copied into answers that establish the dialog (§12.1.1), and ``contact`` (needed in a 1xx/2xx to
        an INVITE or UPDATE). Its effect on the dialog is applied as by :meth:`sent_response`."""
        response = response_to(request, status, reason, to_tag=self.local_tag, headers=headers, body=body)
        if self._establishes(request, status):
            for value in request.headers.get_all("record-route"):
                response.headers.add("Record-Route", value)
        if contact is not None:
            response.headers.add("Contact", str(contact))
        elif 100 < status < 300 and request.method in TARGET_REFRESH:
            raise DialogError(f"a {status} to an {request.method} needs our Contact (RFC 3261 §12.1.1, §12.2.2)")
        self.sent_response(request, response)
        return response

    def sent_response(self, request: Request, response: Response) -> None:
        """Apply a response we send to a request of this dialog (one built by :meth:`answer`, or
        elsewhere): a final answer to the INVITE that made the dialog confirms it (2xx) or ends it; a
        2xx to a re-INVITE or UPDATE takes the request's Contact as the new remote target."""
        status = response.status
        try:
            number = request.cseq.number
            target = _contact(request)
        except BadHeader:
            return
        if request.method == "INVITE" and number == self.invite_in and status >= 200:
            self.invite_in = None
            if self.state is DialogState.EARLY:
                self.state = DialogState.CONFIRMED if status < 300 else DialogState.TERMINATED
        refreshes = 200 <= status < 300 and request.method in TARGET_REFRESH
        if refreshes and target is not None and self.state is not DialogState.TERMINATED:
            self.remote_target = target

    def _establishes(self, request: Request, status: int) -> bool:
        """Whether our answer to ``request`` is one that establishes the dialog: a 101-299 to the
        INVITE that made it."""
        try:
            number = request.cseq.number
        except BadHeader:
            return False
        return (
            self.role is Role.UAS
            and self.state is DialogState.EARLY
            and number == self.invite_in
            and 100 < status < 300
        )

    # --- requests we send, and their answers ------------------------------------------------------------

    def request(
        self,
        method: str,
        *,
        via: Via,
        contact: NameAddr | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> tuple[Request, Uri]:
        """A request within the dialog (RFC 3261 §12.2.1.1) with the next CSeq, a new branch in ``via``,
        and the URI it goes to next (the first route, or the remote target). A BYE ends the dialog as it
        is sent (§15.1.1). Raises DialogError when the dialog cannot send it now."""
        if self.state is DialogState.TERMINATED:
            raise DialogError(f"the dialog {self.call_id} is over: no {method} can be sent in it")
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} is not built here: ack() acknowledges a 2xx; CANCEL copies its INVITE")
        if method == "BYE" and self.role is Role.UAS and self.state is DialogState.EARLY:
            raise DialogError("a UAS ends an early dialog with a final answer to the INVITE, not a BYE (§15)")
        if method == "INVITE" and (self.invite_out is not None or self.invite_in is not None):
            raise DialogError("an INVITE is still in progress in this dialog: wait for its final answer (§14.1)")
        if method in TARGET_REFRESH and contact is None:
            raise DialogError(f"a {method} refreshes the target: give our Contact (RFC 3261 §12.2.1.1)")
        if self.local_seq >= MAX_CSEQ:
            raise DialogError(f"the dialog's CSeq reached {MAX_CSEQ}: no further request fits (§8.1.1.5)")
        self.local_seq += 1
        request, next_hop = self._build(method, self.local_seq, via, contact, headers, body)
        if method == "INVITE":
            self.invite_out = self.local_seq
        elif method == "BYE":
            self.terminate()
        return request, next_hop

    def ack(
        self,
        invite: Request,
        response: Response,
        *,
        via: Via,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> tuple[Request, Uri]:
        """The ACK for a 2xx to our INVITE (RFC 3261 §13.2.2.4): built as any in-dialog request, but with
        the INVITE's CSeq number, a branch of its own and the INVITE's credentials; ``body`` carries our
        answer when the 2xx held the offer. Also for a 2xx that arrives after the dialog ended (then a BYE
        follows)."""
        if not 200 <= response.status < 300:
            raise DialogError(f"a {response.status} is ACKed by its INVITE transaction, not the dialog")
        try:
            cseq = invite.cseq
            same = response.cseq == cseq and dialog_id_of(response) == self.id
        except BadHeader as e:
            raise DialogError(f"cannot ACK: {e}") from None
        if invite.method != "INVITE" or not same:
            raise DialogError("the 2xx does not answer this INVITE in this dialog (Call-ID, tags or CSeq differ)")
        credentials = [(name, value) for name, value in invite.headers if name.lower() in _CREDENTIALS]
        return self._build("ACK", cseq.number, via, None, [*credentials, *headers], body)

    def receive_response(self, response: Response) -> None:
        """Apply an answer to a request we sent in this dialog: a 2xx to the INVITE confirms an early
        dialog, fixing its route set (the 2xx's Record-Route, reversed) and remote target; a final error
        to it ends the dialog; a 408 or 481 to any request ends it (§12.2.1.2); a 2xx to a re-INVITE or
        UPDATE refreshes the remote target from its Contact. Raises DialogError for another dialog's."""
        try:
            theirs = dialog_id_of(response)
            cseq = response.cseq
            target = _contact(response)
            routes = response.routes("record-route")
        except BadHeader as e:
            raise DialogError(f"an answer that cannot be read: {e}") from None
        if theirs.call_id != self.call_id or theirs.local_tag != self.local_tag:
            raise DialogError("an answer to a request of another dialog (Call-ID or From tag differ)")
        if theirs.remote_tag != self.remote_tag:
            raise DialogError(
                f"an answer from another dialog (To tag {theirs.remote_tag!r}, this one's {self.remote_tag!r}):"
                " a forking proxy's second branch is its own Dialog.for_uac"
            )
        status = response.status
        if self.state is DialogState.TERMINATED or status < 200:
            return
        if status in (408, 481):
            self.terminate()
            return
        if cseq.method == "INVITE" and cseq.number == self.invite_out:
            self.invite_out = None
            if self.state is DialogState.EARLY:
                if status >= 300:
                    self.terminate()
                    return
                self.state = DialogState.CONFIRMED
                self.route_set = list(reversed(routes))
        if status < 300 and cseq.method in TARGET_REFRESH and target is not None:
            self.remote_target = target

    # --- building ------------------------------------------------------------------------------------

    def _route(self) -> tuple[Uri, list[NameAddr], Uri]:
        """Request-URI, Route headers and next hop (RFC 3261 §12.2.1.1)."""
        target = _request_uri(self.remote_target)
        if not self.route_set:
            return target, [], target
        first = self.route_set[0]
        if first.uri.has_param("lr"):
            return target, list(self.route_set), first.uri
        # A strict router (RFC 2543) routes by the Request-URI: it gets its own URI there, and the remote
        # target rides as the last Route.
        return _request_uri(first.uri), [*self.route_set[1:], NameAddr(uri=self.remote_target)], first.uri

    def _build(
        self,
        method: str,
        number: int,
        via: Via,
        contact: NameAddr | None,
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> tuple[Request, Uri]:
        uri, routes, next_hop = self._route()
        out = Headers()
        out.add("Via", str(via.with_param("branch", f"{BRANCH_COOKIE}{self.rng.getrandbits(64):016x}")))
        out.add("Max-Forwards", str(MAX_FORWARDS))
        for route in routes:
            out.add("Route", str(route))
        out.add("From", _with_tag(self.local_uri, self.local_tag))
        out.add("To", _with_tag(self.remote_uri, self.remote_tag))
        out.add("Call-ID", self.call_id)
        out.add("CSeq", f"{number} {method}")
        if contact is not None:
            out.add("Contact", str(contact))
        for name, value in headers:
            out.add(name, value)
        return Request(headers=out, body=body, method=method, uri=str(uri)), next_hop
