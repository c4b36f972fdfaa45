"""Calls the engine places over SIP: the far legs of ``connect`` in ``swml serve`` (docs/serve.md,
"Calls the engine places").

:class:`SipDialer` is the service's :class:`~swml_engine.dialing.Dialer`. It decides where a destination
goes (:func:`route`): a ``sip:`` URI to its own host, a phone number in E.164 to the ``--trunk``, anything
else is refused (:class:`~swml_engine.dialing.CannotDial`). Each destination becomes a
:class:`SipFarTransport`, which places the call on the SIP core (uac.py's :class:`OutboundCall`) and turns
what the core tells into the steps the dial plan reads (ringing, early media, answered, failed, ended).
The service hands the core's events for placed calls to :meth:`SipDialer.on_event`.

A far leg's media is the same :class:`~swml_engine.transports.sip.call.SipMedia` as a caller's: the
RTP stream, offer/answer with the call's rate following the codec, DTMF both ways, re-offers from the far
end, and the RTP timeout that ends a leg whose far end vanished without a BYE.

Not here: the dial plan (serial, parallel, timeouts, confirm, cancelling the losers: methods/connect.py
and dialplan.py) and the bridge (media/bridge.py).

A destination's host is located as RFC 3263 says (locate.py: NAPTR, SRV, then A/AAAA); the leg tries
the places found in order, going on to the next when one does not answer (its INVITE timed out, the
transport failed) or answers 503 (§4.3), until one gives another answer or none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from urllib.parse import quote

from swml_engine.dialing import CannotDial, DialFailure, DialTarget, FarTransport
from swml_engine.logs import CallLog
from swml_engine.media.frame import Frame
from swml_engine.transports.sip.auth import Credentials
from swml_engine.transports.sip.call import SipMedia
from swml_engine.transports.sip.codecs import SUPPORTED
from swml_engine.transports.sip.endpoint import Endpoint
from swml_engine.transports.sip.locate import AS_GIVEN, NO_SRV, Hop, addresses, locate, looked_up
from swml_engine.transports.sip.message import unfit_for_a_header
from swml_engine.transports.sip.sdp import NotAcceptable, parse_offer
from swml_engine.transports.sip.session_timer import MIN_SE
from swml_engine.transports.sip.uac import (
    ANSWERED_ELSEWHERE,
    Answered,
    CallState,
    ChallengeReceived,
    Failed,
    Hangup,
    OutboundCall,
    Provisional,
    ReInviteAcked,
    ReInviteDone,
    ReInviteReceived,
    UacError,
    checked_headers,
)
from swml_engine.transports.sip.uri import NameAddr, Uri, UriError, parse_uri, shown
from swml_engine.transports.sip.useragent import SipEvent, Target, Transport
from swml_engine.vocabulary import EndReason, FailReason

log = logging.getLogger(__name__)

#: A phone number as connect.mdx has it: E.164, ``+`` and up to 15 digits.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: Redirects (3xx) one leg follows before it fails ``rejected`` with the last one's status.
MAX_REDIRECTS = 3
#: Seconds a destination's name may take to resolve.
RESOLVE_TIMEOUT = 10.0
#: Longest display name (``from_name``) and caller ID (``from``) we send.
MAX_DISPLAY_NAME = 128
MAX_CALLER_ID = 128
#: Longest far-end reason phrase passed on in a DialFailure (events, callbacks, variables).
MAX_REASON = 200
#: Seconds a leg given up waits for the far end's answer to its CANCEL (its 487) before it is over for the
#: dial plan anyway: time for the CANCEL's retransmissions (0.5, 1, 2 s) on a lossy path. A far end that
#: never answers does not hold the caller's call for RFC 3261's 32 s; the core still waits them out.
CANCEL_GRACE = 4.0
#: Characters a SIP URI's user part takes as they are (RFC 3261 §25.1: unreserved, user-unreserved);
#: anything else in ``from`` is %-escaped.
_USER_SAFE = "-_.!~*'()&=+$,;?/"
#: The core's events about calls we placed.
UAC_EVENTS = (Provisional, Answered, Failed, Hangup, ChallengeReceived, ReInviteReceived, ReInviteAcked, ReInviteDone)


# --- where a destination goes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trunk:
    """Where phone numbers go (``swml serve --trunk``): a SIP server, and the credentials it asks for
    (``SWML_TRUNK_USERNAME``/``SWML_TRUNK_PASSWORD``, never on the command line)."""

    host: str
    port: int
    transport: Transport
    credentials: Credentials | None = None
    #: Whether the URI gave its port and named its transport (if not, and the host is a name, its
    #: NAPTR/SRV records say: RFC 3263).
    port_given: bool = True
    transport_given: bool = True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port_given else ""
        tail = f";transport={self.transport}" if self.transport_given and self.transport is Transport.TCP else ""
        return f"sip:{host}{port}{tail}"


def parse_trunk(text: str, username: str | None = None, password: str | None = None) -> Trunk:
    """``sip:provider.example.com[:port][;transport=tcp]`` → a Trunk; ValueError saying what is wrong."""
    try:
        uri = parse_uri(text)
    except UriError as e:
        raise ValueError(f"--trunk {shown(text)!r}: {e}; expected sip:HOST[:PORT][;transport=tcp]") from None
    if uri.scheme != "sip" or uri.user is not None or uri.headers:
        raise ValueError(f"--trunk {shown(text)!r}: expected sip:HOST[:PORT][;transport=tcp] (no user, no sips:)")
    transport = _transport_of(uri)
    if transport is None:
        raise ValueError(f"--trunk {shown(text)!r}: transport={uri.transport} is not served (udp or tcp)")
    if (username is None) != (password is None):
        raise ValueError("--trunk: give both SWML_TRUNK_USERNAME and SWML_TRUNK_PASSWORD, or neither")
    credentials = Credentials(username, password) if username is not None and password is not None else None
    return Trunk(uri.host, uri.port or 5060, transport, credentials, uri.port is not None, uri.transport != "")


def _transport_of(uri: Uri) -> Transport | None:
    named = uri.transport
    if named in ("", "udp"):
        return Transport.UDP
    return Transport.TCP if named == "tcp" else None


@dataclass(frozen=True)
class Route:
    """Where one destination goes: whom the INVITE names (Request-URI, To), its next hop (located when
    dialled: ``port`` None when the URI gives none, ``transport`` None when it names none), the
    credentials for a challenge, and whether it is a phone number (through the trunk)."""

    request_uri: Uri
    host: str
    port: int | None
    transport: Transport | None
    credentials: Credentials | None
    phone: bool
    #: The 3xx status that sent the leg here (None: the destination the script gave).
    redirected_by: int | None = None


def route(target: DialTarget, trunk: Trunk | None) -> Route:
    """Where ``target.to`` goes; CannotDial when it cannot be dialled from here."""
    to = target.to.strip()
    if E164.fullmatch(to):
        if trunk is None:
            raise CannotDial(DialFailure("unreachable", text=f"{to}: phone numbers need swml serve --trunk"))
        uri = Uri("sip", host=trunk.host, user=to, port=trunk.port if trunk.port != 5060 else None)
        port = trunk.port if trunk.port_given else None
        transport = trunk.transport if trunk.transport_given else None
        return Route(uri, trunk.host, port, transport, trunk.credentials, phone=True)
    try:
        uri = parse_uri(to)
    except UriError as e:
        raise CannotDial(DialFailure("error", text=f"{shown(to)!r}: {e}")) from None
    if uri.scheme == "sips":
        raise CannotDial(DialFailure("unreachable", text=f"{shown(to)!r}: sips: needs TLS, which this engine lacks"))
    if uri.scheme != "sip":
        raise CannotDial(DialFailure("error", text=f"{shown(to)!r}: give a sip: URI or an E.164 number (+15551234567)"))
    transport = _transport_of(uri)
    if transport is None:
        raise CannotDial(DialFailure("unreachable", text=f"{shown(to)!r}: transport={uri.transport} is not served"))
    # A URI's ?headers never go into a Request-URI (RFC 3261 §19.1.5); maddr is not followed.
    uri = replace(uri, headers="", password=None)
    credentials = None
    if target.username is not None and target.password is not None:
        credentials = Credentials(target.username, target.password)
    return Route(uri, uri.host, uri.port, transport if uri.transport else None, credentials, phone=False)


def codec_choice(codecs: tuple[str, ...]) -> list[str]:
    """``connect.codecs`` as the codecs we offer, in order (``G722@16000h`` is G722); CannotDial when
    none of them is one we speak. Empty: every codec we speak."""
    names = [c.split("@")[0].strip().upper() for c in codecs if c.strip()]
    ours = [n for n in dict.fromkeys(names) if n in SUPPORTED]
    if names and not ours:
        wanted = ", ".join(shown(n) for n in names[:8])
        raise CannotDial(
            DialFailure("error", text=f"codecs {wanted}: none is one this engine speaks ({', '.join(SUPPORTED)})")
        )
    return ours


def caller_id(target: DialTarget) -> tuple[str | None, str | None]:
    """Our From's user part and display name: ``from`` (a ``sip:`` URI's user, else the text %-escaped
    as a user part must be) and ``from_name``; CannotDial for a name that cannot go in a header."""
    given = target.from_.strip()
    if len(given) > MAX_CALLER_ID:
        raise CannotDial(DialFailure("error", text=f"from: at most {MAX_CALLER_ID} characters (got {len(given)})"))
    user: str | None = given
    if given.lower().startswith(("sip:", "sips:")):
        try:
            user = parse_uri(given).user
        except UriError as e:
            raise CannotDial(DialFailure("error", text=f"from {shown(given)!r}: {e}")) from None
    elif given:
        user = quote(given, safe=_USER_SAFE)
    display = target.from_name
    if display is not None and (len(display) > MAX_DISPLAY_NAME or unfit_for_a_header(display)):
        raise CannotDial(
            DialFailure("error", text=f"from_name: at most {MAX_DISPLAY_NAME} printable characters on one line")
        )
    return user or None, display or None


def failure_of(event: Failed, *, cancelled: bool) -> DialFailure:
    """What a final answer (or its absence) means for the dial plan (docs/serve.md)."""
    status = event.status
    text = "".join(c if c.isprintable() else " " for c in event.reason[:MAX_REASON])  # the far end's words
    reason: FailReason
    if cancelled:
        reason = "cancelled"
    elif event.local:  # no final answer from the far end: nothing reached it, or nothing came back
        reason = "unreachable" if status in (408, 503) else "error"
    elif status in (486, 600):
        reason = "busy"
    elif status in (408, 480):
        reason = "no_answer"
    else:
        reason = "rejected"
    return DialFailure(reason, status, text)


# --- one far leg ----------------------------------------------------------------------------------------


class LegPhase(StrEnum):
    """Where a far leg is (what it reported to the dial plan is ``FarTransport.state``)."""

    PREPARING = "preparing"  # resolving the next hop, binding RTP: nothing sent yet
    CALLING = "calling"  # the INVITE is out (or a redirect's); no answer yet
    EARLY = "early"  # the far end's early media flows (a 183 with SDP)
    GIVING_UP = "giving_up"  # cancelled: waiting for the INVITE's end
    ANSWERED = "answered"  # the far party is on: media both ways
    ENDED = "ended"  # failed, or over after the answer
    CLOSED = "closed"  # and its media socket closed


_RINGING = (LegPhase.CALLING, LegPhase.EARLY)


class SipFarTransport(FarTransport):
    """One far leg on SIP: made by :meth:`SipDialer.place`, started by :meth:`dial`."""

    def __init__(self, dialer: SipDialer, target: DialTarget, where: Route, rate: int, codecs: list[str]) -> None:
        super().__init__(target)
        self.dialer = dialer
        self.route = where
        self.codecs = codecs
        self.rate = rate
        self.phase = LegPhase.PREPARING
        #: The call on the SIP core (a new one for each redirect followed).
        self.sip: OutboundCall | None = None
        #: Made once the next hop is known (our SDP address is the one that reaches it).
        self.sip_media: SipMedia | None = None
        self.redirects = 0
        #: The places located for the current destination not tried yet (RFC 3263 §4.3), the addresses
        #: of the one being tried, and why the last one tried failed.
        self._hops: list[Hop] = []
        self._addresses: list[tuple[Hop, str]] = []
        self._last: DialFailure | None = None
        #: The destination being tried (the script's, or where a redirect sent the leg).
        self._where = where
        self._task: asyncio.Task[None] | None = None
        #: Ends the wait for the answer to our CANCEL (CANCEL_GRACE).
        self._grace: asyncio.TimerHandle | None = None
        self._log = CallLog(log, target.caller_call_id or None)

    # --- dialling -----------------------------------------------------------------------------------------

    @property
    def heard_from(self) -> bool:
        # Any answer to our INVITE (100 Trying, a challenge), or a redirect followed already.
        return self.redirects > 0 or (self.sip is not None and self.sip.responded)

    def dial(self) -> None:
        if self.phase is LegPhase.PREPARING and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._place(self.route.request_uri, self.route))

    async def _place(self, uri: Uri, where: Route) -> None:
        """Locate the destination's host (RFC 3263), then try its first place."""
        self._where = where
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                self._hops = await locate(where.host, where.port, where.transport)
        except (OSError, TimeoutError) as e:
            self._failed(DialFailure("unreachable", text=f"{shown(where.host)}: {e or 'no answer from DNS'}"))
            self._task = None
            return
        except asyncio.CancelledError:
            return  # given up meanwhile (cancel() reported it)
        self._addresses, self._last = [], None
        await self._try_next(uri, where)

    async def _next_address(self, where: Route) -> tuple[Hop, str] | None:
        """The next place to try and its address: the next address of the place being tried, else the
        first of the next place that has one; None when none is left (``_last`` says why)."""
        while not self._addresses and self._hops:
            hop = self._hops.pop(0)
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT):
                    found = await self.dialer.addresses_of(hop)
            except (OSError, TimeoutError) as e:
                text = f"{shown(hop.host)}: {e or 'no answer from DNS'}"
                if hop.found == NO_SRV:
                    text += f" (looked up: {looked_up(where.host, where.transport)})"
                elif not hop.srv and hop.found != AS_GIVEN:  # (DNS failed: say how)
                    text += f" ({hop.found})"
                self._log.info("call to %s: %s (%s)", shown(self.target.to), text, hop.found)
                self._last = self._last or DialFailure("unreachable", text=text)
                continue
            self._addresses = [(hop, address) for address in found]
        return self._addresses.pop(0) if self._addresses else None

    async def _try_next(self, uri: Uri, where: Route) -> None:
        """Bind RTP (once), send the INVITE to the next place located; a failure on the way fails the leg."""
        dialer = self.dialer
        try:
            place = await self._next_address(where)
            if place is None:
                self._failed(self._last or DialFailure("unreachable", text=f"{shown(where.host)}: nowhere to send"))
                return
            hop, host = place
            if where.redirected_by is not None and not where.phone and await dialer.is_trunk(host):
                # A far end's 3xx must not reach the trunk: a trunk that knows us by our address would
                # carry whatever number the far end named, at the operator's expense.
                text = f"a redirect to the trunk ({shown(str(uri))}) is not followed: only dialled numbers go there"
                self._log.warning("call to %s: %s", shown(self.target.to), text)
                self._failed(DialFailure("rejected", where.redirected_by, text))
                return
            local = dialer.endpoint.local_host(host)
            if self.sip_media is None:
                media = SipMedia(
                    self,
                    self.rate,
                    dialer.endpoint.local_addr[0],
                    local,
                    signalling_host=host,
                    sip_call_id="",
                    rtp_timeout=dialer.rtp_timeout,
                    on_timeout=self._rtp_timeout,
                )
                try:
                    await media.bind(dialer.rtp_ports)
                except OSError as e:
                    media.rtp.close()
                    self._failed(DialFailure("error", 503, f"not placed: {e}"))
                    return
                self.sip_media = media
            self._invite(uri, where, Target(hop.transport, host, hop.port), local)
        except asyncio.CancelledError:
            return  # given up meanwhile (cancel() reported it)
        except Exception as e:  # a bug must fail this leg, not the caller's call
            self._log.exception("placing %s failed", shown(self.target.to))
            self._failed(DialFailure("error", text=f"{type(e).__name__}: {e}"))
        finally:
            if self._task is asyncio.current_task():  # (not a fail-over's, started by what the INVITE met)
                self._task = None

    def _invite(self, uri: Uri, where: Route, hop: Target, local: str) -> None:
        media, target, dialer = self.sip_media, self.target, self.dialer
        assert media is not None
        media.sdp_host = local
        phone = where.phone
        offer = media.offer([] if phone else self.codecs, wideband=self.rate == 16000)
        expires = None if phone or target.session_timeout is None else max(MIN_SE, target.session_timeout)
        user, display = caller_id(target)
        # to a trunk: its own domain, and no display name (connect.mdx: from_name is for SIP calls only)
        from_ = NameAddr(
            uri=Uri("sip", host=where.host if phone else local, user=user), display=None if phone else display
        )
        try:
            call = OutboundCall(
                dialer.endpoint.ua,
                target=hop,
                local=(local, dialer.endpoint.local_addr[1]),
                request_uri=uri,
                from_=from_,
                to=NameAddr(uri=uri),
                sdp=offer.encode(),
                headers=() if phone else target.headers,
                credentials=where.credentials,
                session_expires=expires,
                max_forwards=target.max_forwards,
            )
        except UacError as e:
            self._failed(DialFailure("error", text=str(e)))
            return
        self.sip = call
        media.sip_call_id = call.call_id
        self.phase = LegPhase.CALLING
        dialer.track(call, self)
        if self.call is not None:
            codecs = [line.split()[1].split("/")[0] for line in offer.splitlines() if line.startswith("a=rtpmap:")]
            self.call.events.emit(
                "sip.invite", sip_call_id=call.call_id, to=str(uri), offer=codecs, rtp_port=media.rtp.local[1]
            )
        call.start(dialer.endpoint.now)
        dialer.endpoint.flush()

    # --- what the far end does (the dialer passes the core's events on) --------------------------------------

    def on_event(self, event: SipEvent) -> None:
        if isinstance(event, Provisional):
            self._provisional(event)
        elif isinstance(event, Answered):
            self._answered(event)
        elif isinstance(event, Failed):
            self._failed_sip(event)
        elif isinstance(event, Hangup):
            self._hung_up(f"{event.cause}" + (f" ({event.reason})" if event.reason else ""))
        elif isinstance(event, ReInviteReceived):
            self._reinvite(event)
        elif isinstance(event, ReInviteAcked) and event.sdp and self.sip_media is not None:
            self.sip_media.take_reoffer_answer(event.sdp.decode("utf-8", "replace"))
        elif isinstance(event, ChallengeReceived):
            self._log.info("call %s challenged for realm %r", event.call.call_id, shown(event.realm))

    def _provisional(self, event: Provisional) -> None:
        if self.phase not in _RINGING:
            return
        if event.status >= 180 and self.state == "created":
            self.report("ringing")
        media = self.sip_media
        if not event.early_media or self.phase is not LegPhase.CALLING or media is None:
            return
        try:
            media.take_answer(parse_offer(event.sdp.decode("utf-8", "replace")), self.codecs)
        except NotAcceptable as e:
            self._log.info("call %s: early media not taken: %s", event.call.call_id, e)
            return
        self.phase = LegPhase.EARLY
        media.rtp.media_starts()
        if self.state == "created":
            self.report("ringing")
        self.report("early_media")

    def _answered(self, event: Answered) -> None:
        media, sip = self.sip_media, self.sip
        if self.phase not in _RINGING or media is None or sip is None:
            return
        try:
            chosen = media.take_answer(parse_offer(event.sdp.decode("utf-8", "replace")), self.codecs)
        except NotAcceptable as e:
            # The far end answered with nothing we can use: the session it confirmed ends at once.
            sip.bye(self.dialer.endpoint.now, "Incompatible SDP")
            self.dialer.endpoint.flush()
            self._failed(DialFailure("error", 488, f"the far end's answer is unusable: {e}"))
            return
        self.phase = LegPhase.ANSWERED
        media.rtp.media_starts()
        media.watch()
        if self.call is not None:
            self.call.events.emit("sip.answer", codec=chosen.codec, direction=chosen.direction)
        self.report("answered")

    def _failed_sip(self, event: Failed) -> None:
        if self.phase not in (*_RINGING, LegPhase.GIVING_UP):
            return
        contact = _redirect(event) if self.phase in _RINGING else None
        if contact is not None and self.redirects < MAX_REDIRECTS:
            self._follow(event, contact)
            return
        failure = failure_of(event, cancelled=self.phase is LegPhase.GIVING_UP)
        if self.phase is LegPhase.CALLING and _try_another(event) and (self._addresses or self._hops):
            self._fail_over(event, failure)
            return
        if self.call is not None and failure.reason != "cancelled":
            self.call.events.emit("sip.rejected", status=event.status, reason=shown(event.reason))
        self._failed(failure)

    def _fail_over(self, event: Failed, failure: DialFailure) -> None:
        """No answer from the place tried, or a 503: the same INVITE to the next one (RFC 3263 §4.3)."""
        hop = event.call.target
        self._log.info(
            "call %s: %d %s from %s:%d: trying the next place for %s",
            event.call.call_id,
            event.status,
            shown(event.reason),
            hop.host,
            hop.port,
            shown(self._where.host),
        )
        self._last = failure
        self.dialer.forget(event.call)
        self.sip = None
        if self.sip_media is not None:  # made for the place that failed (its address, as a media source)
            self.sip_media.close()
            self.sip_media = None
        uri = event.call.request_uri
        self._task = asyncio.get_running_loop().create_task(self._try_next(uri, self._where))

    def _follow(self, event: Failed, contact: Uri) -> None:
        """A 3xx: the same call to the Contact it gives (the best one), with the credentials only when the
        redirect stays on the same host (ours are not given to wherever a far end names)."""
        self.redirects += 1
        where = self.route
        transport = _transport_of(contact) if contact.transport else None
        credentials = where.credentials if contact.host == where.host else None
        uri = replace(contact, headers="", password=None)
        moved = Route(uri, uri.host, uri.port, transport, credentials, where.phone, event.status)
        self._log.info("call %s: %d redirects to %s", event.call.call_id, event.status, shown(str(uri)))
        self.dialer.forget(event.call)
        self.sip = None
        self.phase = LegPhase.CALLING
        self._task = asyncio.get_running_loop().create_task(self._place(uri, moved))

    def _hung_up(self, why: str) -> None:
        if self.phase is not LegPhase.ANSWERED:
            return
        self._log.info("far leg %s hung up: %s", shown(self.target.to), why)
        self._over()
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def _reinvite(self, event: ReInviteReceived) -> None:
        """Hold, resume, new media, a session refresh: answered from what we have; the leg goes on."""
        media, sip, now = self.sip_media, event.call, self.dialer.endpoint.now
        if self.phase is not LegPhase.ANSWERED or media is None:
            sip.answer_reinvite(491, now)
        elif not event.sdp:
            sip.answer_reinvite(200, now, media.reoffer())  # our session; the ACK brings their answer
        else:
            answer = media.answer_reinvite(event.sdp.decode("utf-8", "replace"), self.codecs)
            if answer is None:
                sip.answer_reinvite(488, now)
            else:
                sip.answer_reinvite(200, now, answer)
        self.dialer.endpoint.flush()

    def _rtp_timeout(self) -> None:
        """Nothing from the far end for the RTP timeout (SipMedia.watch): it is gone; BYE, the leg ends."""
        if self.phase is not LegPhase.ANSWERED or self.sip is None:
            return
        self.sip.bye(self.dialer.endpoint.now, "RTP timeout")
        self.dialer.endpoint.flush()
        self._over()
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def _cancel_unanswered(self) -> None:
        """No final answer CANCEL_GRACE after our CANCEL: over for the dial plan (the core waits on)."""
        self._grace = None
        if self.phase is LegPhase.GIVING_UP:
            self._log.info("far leg %s: no answer to our CANCEL in %g s", shown(self.target.to), CANCEL_GRACE)
            self._failed(DialFailure("cancelled"))

    def _failed(self, failure: DialFailure) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self.phase in (LegPhase.ENDED, LegPhase.CLOSED):
            return
        self.phase = LegPhase.ENDED
        self._log.info(
            "far leg %s failed: %s %s %s",
            shown(self.target.to),
            failure.reason,
            failure.code or "",
            shown(failure.text),
        )
        self.report("failed", failure)

    def _over(self) -> None:
        self.phase = LegPhase.ENDED
        self.report("ended")

    # --- what the dial plan and the bridge do ------------------------------------------------------------

    def cancel(self, *, elsewhere: bool = False) -> None:
        phase, now = self.phase, self.dialer.endpoint.now
        if phase is LegPhase.PREPARING or (phase in _RINGING and self.sip is None):
            if self._task is not None:  # resolving or binding (or following a redirect): nothing is ringing
                self._task.cancel()
            self._failed(DialFailure("cancelled"))
        elif phase in _RINGING and self.sip is not None:
            self.phase = LegPhase.GIVING_UP
            # Its 487 (or a 2xx crossing it, hung up) fails the leg.
            self.sip.cancel(now, ANSWERED_ELSEWHERE if elsewhere else "cancelled")
            self.dialer.endpoint.flush()
            if self.sip.state is CallState.CANCEL_WAITING:
                # No provisional yet, so no CANCEL may go (RFC 3261 §9.1) until one comes, up to Timer B's
                # 32 s. The core finishes that alone (the CANCEL at the first provisional, ACK and BYE for
                # a 2xx, nothing after Timer B): the dial plan, and a caller who hung up, wait for none of it.
                self._failed(DialFailure("cancelled"))
            else:
                self._grace = asyncio.get_running_loop().call_later(CANCEL_GRACE, self._cancel_unanswered)
        elif phase is LegPhase.ANSWERED and self.sip is not None:
            self.sip.bye(now, "hangup")
            self.dialer.endpoint.flush()
            self._over()

    async def hangup(self, reason: EndReason) -> None:
        self.cancel()

    def read_speak(self) -> Frame | None:
        media = self.sip_media
        if media is None or self.phase not in (LegPhase.EARLY, LegPhase.ANSWERED):
            return None
        return media.read()

    def write_listen(self, frame: Frame) -> None:
        media = self.sip_media
        if media is not None and self.phase is LegPhase.ANSWERED:
            media.write(frame)

    def skip(self, frames: int) -> None:
        if self.sip_media is not None:
            self.sip_media.skip(frames)

    async def send_dtmf(self, digit: str, duration: float) -> None:
        if self.sip_media is not None and self.phase is LegPhase.ANSWERED:
            await self.sip_media.send_dtmf(digit, duration)

    async def close(self) -> None:
        if self.phase is LegPhase.CLOSED:
            return
        if self.phase is not LegPhase.ENDED:
            self.cancel()  # (never left dangling: the far end gets its CANCEL or BYE)
        self.phase = LegPhase.CLOSED
        if self._task is not None:
            self._task.cancel()
        if self._grace is not None:
            self._grace.cancel()
        if self.sip_media is not None:
            self.sip_media.close()
        self.dialer.closed(self)


def _try_another(event: Failed) -> bool:
    """Whether a failure is one RFC 3263 §4.3 tries the next place for: no answer at all (Timer B, the
    transport failed), or a 503 from the far end."""
    if event.local:
        return event.status in (408, 503) and not event.call.responded
    return event.status == 503


def _redirect(event: Failed) -> Uri | None:
    """The Contact a 3xx sends us to, when it is one we dial (sip:, a transport we serve)."""
    if not 300 <= event.status < 400:
        return None
    for contact in event.contacts:
        if contact.scheme == "sip" and _transport_of(contact) is not None:
            return contact
    return None


# --- the dialer -----------------------------------------------------------------------------------------


class SipDialer:
    """The service's dialer: one for every call (``CallOptions.dialer``). ``admit`` says why no more
    calls may be placed now (``--max-calls``, an overloaded loop), or None."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        rtp_ports: tuple[int, int],
        trunk: Trunk | None = None,
        rtp_timeout: float | None = None,
        admit: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.endpoint = endpoint
        self.rtp_ports = rtp_ports
        self.trunk = trunk
        self.rtp_timeout = rtp_timeout
        self.admit = admit
        #: Far legs placed and not closed yet (they count towards --max-calls).
        self.legs: set[SipFarTransport] = set()
        self._by_call: dict[OutboundCall, SipFarTransport] = {}

    async def is_trunk(self, host: str) -> bool:
        """Whether an address (as looked up for a leg) is one of the trunk's (any place its SRV records
        name): on any port, since a provider that knows the engine by its address knows it on all of them."""
        trunk = self.trunk
        if trunk is None:
            return False
        port = trunk.port if trunk.port_given else None
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                for hop in await locate(trunk.host, port, trunk.transport if trunk.transport_given else None):
                    with contextlib.suppress(OSError):  # (a place that cannot be found cannot be reached either)
                        if host in await self.addresses_of(hop):
                            return True
        except (OSError, TimeoutError):
            pass
        return False

    async def addresses_of(self, hop: Hop) -> list[str]:
        """The addresses of a place located, that our SIP socket reaches: an SRV target's from DNS, the
        URI's own host from the system's resolver (one); OSError saying why when there is none."""
        if hop.srv:
            return await addresses(hop.host, bound=self.endpoint.local_addr[0])
        return [(await self.endpoint.lookup(hop.host, hop.port, hop.transport))[0]]

    def place(self, target: DialTarget, rate: int) -> SipFarTransport:
        where = route(target, self.trunk)
        codecs = [] if where.phone else codec_choice(target.codecs)
        if not where.phone:
            try:
                checked_headers(target.headers)
            except UacError as e:
                raise CannotDial(
                    DialFailure("error", text=str(e).replace("OutboundCall(headers=...)", "headers"))
                ) from None
            caller_id(target)
        busy = self.admit()
        if busy is not None:
            raise CannotDial(DialFailure("error", text=f"not placed: {busy}"))
        leg = SipFarTransport(self, target, where, rate, codecs)
        self.legs.add(leg)
        return leg

    # --- the core's events ---------------------------------------------------------------------------------

    def on_event(self, event: SipEvent) -> bool:
        """Pass an event about a placed call to its leg; False for any other event."""
        if not isinstance(event, UAC_EVENTS):
            return False
        leg = self._by_call.get(event.call)
        if leg is not None:
            leg.on_event(event)
        if event.call.ended and isinstance(event, Failed | Hangup):
            self._by_call.pop(event.call, None)
        return True

    def track(self, call: OutboundCall, leg: SipFarTransport) -> None:
        self._by_call[call] = leg

    def forget(self, call: OutboundCall) -> None:
        self._by_call.pop(call, None)

    def closed(self, leg: SipFarTransport) -> None:
        self.legs.discard(leg)
        if leg.sip is not None and leg.sip.ended:
            self._by_call.pop(leg.sip, None)

    # --- stopping ------------------------------------------------------------------------------------------

    async def stop(self, wait: float = 5.0) -> None:
        """Hang up every far leg (CANCEL or BYE) and give their BYEs ``wait`` seconds to be answered
        (retransmitted meanwhile), so no far party is left on a dead call when the service stops."""
        for leg in list(self.legs):
            leg.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.endpoint.ua.pending("BYE") and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for leg in list(self.legs):
            with contextlib.suppress(Exception):
                await leg.close()
