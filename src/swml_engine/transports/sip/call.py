"""A SIP call behind the transport interface: an INVITE's dialog and its RTP stream.

The engine sees the same call as with the simulated transport; this class turns ``answer`` into a
200 OK with our SDP answer, ``early_media`` into a 183, ``hangup`` into a BYE (or a final error
response before answer), and the peer's BYE, CANCEL and re-INVITE into call events and media changes.

An INVITE without SDP (delayed offer) gets our offer in the 200 OK; media starts when the ACK brings
the answer. Such a call has no early media (an offer in an unreliable 183 could not be answered).

With ``answer.username``/``password`` the INVITE is first challenged (401); the caller's retried
INVITE, with credentials, becomes the one we answer.

The leg is one explicit state (:class:`LegState`), moved only along :data:`_MOVES`; SIP itself (the
answers, their retransmissions, the dialog) is the core's (useragent.py), reached through the endpoint.

Its media is a :class:`SipMedia`, which the legs the engine places (outbound.py) use too: the RTP stream,
offer/answer and the call's rate following the codec, DTMF both ways, re-offers, and the RTP timeout that
ends a leg whose far end vanished without a BYE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from enum import StrEnum
from typing import Any

from swml_engine.logs import CallLog
from swml_engine.media.frame import FRAME_SECONDS, Frame
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.media.sources.tones import dtmf_frames
from swml_engine.transports.base import CallSide, CannotRefer, DtmfPath, ReferStatus, Transport
from swml_engine.transports.sip.auth import DigestChallenge, Verdict
from swml_engine.transports.sip.codecs import SUPPORTED
from swml_engine.transports.sip.endpoint import Endpoint
from swml_engine.transports.sip.message import BadHeader, Request
from swml_engine.transports.sip.refer import ReferUpdate
from swml_engine.transports.sip.rtpstream import RtpStream
from swml_engine.transports.sip.sdp import (
    Media,
    NotAcceptable,
    Offer,
    SessionVersion,
    build_answer,
    build_offer,
    negotiate,
    parse_offer,
    preferred_rate,
)
from swml_engine.transports.sip.transfer import LegTransfer
from swml_engine.transports.sip.uri import UriError, parse_name_addr, parse_uri
from swml_engine.transports.sip.useragent import ServerCall
from swml_engine.vocabulary import EndReason

log = logging.getLogger(__name__)

#: A peer's SDP address that means hold (RFC 3264 §8.4): it sends nothing either.
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})
#: How long a challenged caller has to send its INVITE again with credentials (RFC 3261 Timer B).
AUTH_WAIT = 32.0

#: Final response for a call the script ends before answering, by hangup reason (any other: 480).
_REJECT_STATUS: dict[EndReason, tuple[int, str]] = {"busy": (486, "Busy Here"), "decline": (603, "Decline")}


class LegState(StrEnum):
    """Where the leg is. Media flows in ``early``, ``answered`` and ``reoffered``."""

    RINGING = "ringing"  # the INVITE is taken; no answer yet
    CHALLENGED = "challenged"  # our 401 is out: waiting for the INVITE with credentials
    AUTHENTICATED = "authenticated"  # ... which came and proved the password (still unanswered)
    EARLY = "early"  # our 183 with SDP is out: early media
    AWAITING_ANSWER = "awaiting_answer"  # our offer went in the 200 OK (delayed offer); the ACK brings the answer
    ANSWERED = "answered"  # answered, media negotiated
    REOFFERED = "reoffered"  # our offer went in a re-INVITE's 200 OK (offerless re-INVITE); the ACK answers it
    ENDED = "ended"  # hung up, refused, cancelled
    CLOSED = "closed"  # and its media socket closed


_UNANSWERED = frozenset({LegState.RINGING, LegState.AUTHENTICATED, LegState.EARLY})
_UP = frozenset({LegState.AWAITING_ANSWER, LegState.ANSWERED, LegState.REOFFERED})
_MEDIA = frozenset({LegState.EARLY, LegState.ANSWERED, LegState.REOFFERED})
#: The moves a leg may make (to ENDED and CLOSED from anywhere, see LegState.move).
_MOVES: dict[LegState, frozenset[LegState]] = {
    LegState.RINGING: frozenset({LegState.CHALLENGED, LegState.EARLY, LegState.AWAITING_ANSWER, LegState.ANSWERED}),
    LegState.CHALLENGED: frozenset({LegState.AUTHENTICATED}),
    LegState.AUTHENTICATED: frozenset({LegState.EARLY, LegState.AWAITING_ANSWER, LegState.ANSWERED}),
    LegState.EARLY: frozenset({LegState.EARLY, LegState.ANSWERED}),
    LegState.AWAITING_ANSWER: frozenset({LegState.ANSWERED}),
    LegState.ANSWERED: frozenset({LegState.ANSWERED, LegState.REOFFERED}),
    LegState.REOFFERED: frozenset({LegState.ANSWERED, LegState.REOFFERED}),
    LegState.ENDED: frozenset(),
    LegState.CLOSED: frozenset(),
}


class IllegalMove(RuntimeError):
    """A leg asked to move where its state does not lead: a bug, named with both states."""


class SipReject(Exception):
    """Refuse the call before its answer with ``status`` (raised where the reason is found; turned into
    the response in one place, :meth:`SipCallTransport.reject`)."""

    def __init__(self, status: int, reason: str, why: str) -> None:
        super().__init__(f"{status} {reason}: {why}")
        self.status = status
        self.reason = reason
        self.why = why


class SipMedia:
    """One SIP leg's media, whichever side placed the call: the caller's leg (:class:`SipCallTransport`)
    and the legs the engine places (outbound.py) share it.

    It holds the RTP stream, the peer's latest SDP (``remote``: its offer, or its answer to ours) and what
    offer/answer agreed (``media``). The call runs at the chosen codec's rate when it can (see
    :meth:`follow_codec_rate`). DTMF: RFC 4733 events when the peer takes them, else the tones in the
    audio, both ways. Once :meth:`watch` is called (at the answer), a peer that should send audio and
    sends nothing at all for ``rtp_timeout`` seconds of the call's media clock is taken for gone
    (``on_timeout``): a phone that lost power or a network, or a killed far end, sends no BYE.
    """

    def __init__(
        self,
        owner: Transport,
        rate: int,
        rtp_host: str,
        sdp_host: str,
        *,
        signalling_host: str | None,
        sip_call_id: str,
        rtp_timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        #: The transport this is the media of: its call gets digits, rate changes and events.
        self.owner = owner
        owner.rate = rate
        #: The RTP socket binds here (maybe a wildcard); our SDP says ``sdp_host``, an address the peer reaches.
        self.rtp_host = rtp_host
        self.sdp_host = sdp_host
        self.sip_call_id = sip_call_id
        #: The SIP source is where the peer's media is expected from too (with the SDP address).
        self.rtp = RtpStream(rate, self._on_digit, signalling_host=signalling_host)
        self.session = SessionVersion()
        self.media: Media | None = None
        self.remote: Offer | None = None
        self._inband: InbandDtmfDetector | None = None
        self._timeout_ticks = round(rtp_timeout / FRAME_SECONDS) if rtp_timeout else 0
        self._on_timeout = on_timeout
        self._watching = False
        #: Datagrams seen at the last tick, and ticks since the count last moved.
        self._heard = -1
        self._silent = 0

    @property
    def call(self) -> CallSide | None:
        return self.owner.call

    @property
    def log(self) -> CallLog:
        call = self.owner.call
        return CallLog(log, call.call_id if call is not None else None, self.sip_call_id)

    async def bind(self, ports: tuple[int, int]) -> None:
        await self.rtp.bind(self.rtp_host, ports)

    @property
    def sdp_local(self) -> tuple[str, int]:
        """Our media address as the SDP gives it (c=/o=, m= port)."""
        return (self.sdp_host, self.rtp.local[1])

    # --- frames -----------------------------------------------------------------------------------

    def _on_digit(self, digit: str, path: DtmfPath = "event") -> None:
        call = self.owner.call
        if call is not None:
            call.loop.call_soon(call.on_dtmf, digit, path)

    def read(self) -> Frame | None:
        """The peer's next 20 ms (a tick of the call's media clock)."""
        if self._watching:
            self._watch()
        frame = self.rtp.read()
        if frame is not None and self._inband is not None:
            digit = self._inband.feed(frame)
            if digit is not None:
                self._on_digit(digit, "inband")
        return frame

    def write(self, frame: Frame) -> None:
        self.rtp.write(frame)

    def skip(self, frames: int) -> None:
        self.rtp.skip(frames)

    async def send_dtmf(self, digit: str, duration: float) -> None:
        call = self.owner.call
        if not self.owner.takes_dtmf_events and call is not None:  # the peer takes no events: tones, in-band
            await call.play_frames(dtmf_frames(digit, duration, call.rate))
            return
        await self.rtp.send_digit(digit, duration)

    def close(self) -> None:
        """Close the socket; the call's log gets what the network did to it."""
        self._watching = False
        self.rtp.close()
        call = self.owner.call
        if call is not None:
            stats = asdict(self.rtp.stats)
            stats["send_jitter_p99_ms"] = self.rtp.stats.send_jitter_p99()
            del stats["send_deviation_ms"]
            call.events.emit("rtp.stats", **stats)

    # --- the RTP timeout ------------------------------------------------------------------------------

    def watch(self) -> None:
        """From now on (the answer), a peer that falls silent for the RTP timeout is gone."""
        self._watching = self._timeout_ticks > 0 and self._on_timeout is not None

    def _watch(self) -> None:
        """Counted in ticks of the media clock, not in wall time: a loaded loop that skips ticks never
        ends a call. Any datagram counts (even a foreign or malformed one: the call is kept rather than
        cut); a peer on hold is not counted — told not to send, holding the old way (RFC 2543: its address
        0.0.0.0, the stream stopped both ways), or holding us with sendonly: that says it may send (music
        on hold), yet phones often send nothing then (baresip's hold does so), and a hold is not a peer
        gone."""
        media = self.media
        if media is None or media.direction != "sendrecv" or media.remote[0] in _UNSPECIFIED:
            self._silent = 0
            return
        stats = self.rtp.stats
        heard = stats.received + stats.malformed + stats.foreign
        if heard != self._heard:
            self._heard, self._silent = heard, 0
            return
        self._silent += 1
        if self._silent == self._timeout_ticks and self._on_timeout is not None:
            self._watching = False
            seconds = self._timeout_ticks * FRAME_SECONDS
            self.log.info("call %s: no RTP for %g s: the far end is taken for gone", self.sip_call_id, seconds)
            call = self.owner.call
            if call is not None:
                call.events.emit("warning", where="sip.rtp", message=f"no RTP for {seconds:g} s: the call ends")
            self._on_timeout()

    # --- offer and answer ------------------------------------------------------------------------------

    def use(self, media: Media) -> None:
        """Media as negotiated (answer, ACK of a delayed offer, re-INVITE) flows from now on. Without
        telephone-events, digits are listened for as tones in the peer's audio instead (and sent as tones).
        The owner says which (:attr:`Transport.takes_dtmf_events`): a bridge sends it the other party's
        in-band digits as events when it takes them."""
        self.media = media
        self.rtp.configure(media)
        self.owner.takes_dtmf_events = media.telephone_event is not None
        if media.telephone_event is not None:
            self._inband = None
        elif self._inband is None:
            self._inband = InbandDtmfDetector(self.owner.rate)

    def follow_codec_rate(self, media: Media) -> None:
        """The call runs (and records) at the rate of the codec chosen.

        The rate is set when the call is made, before the codec is known (for the caller's leg, before
        the script's ``answer.codecs``; for a placed leg, before the far end answers). When the codec
        has another rate, the call takes it — as long as no audio at the old rate is in flight (a
        recording or detector running, a sound playing); then the old rate stays and the RTP stream
        converts."""
        rate = SUPPORTED[media.codec].rate
        owner, call = self.owner, self.owner.call
        if rate == owner.rate:
            return
        if call is not None and not call.change_rate(rate):
            self.log.info(
                "call %s stays at %d Hz (%s is %d Hz): media already runs", call.call_id, owner.rate, media.codec, rate
            )
            return
        owner.rate = rate
        self.rtp.call_rate = rate
        self._inband = None  # made again at the new rate when the peer has no telephone-events

    def answer_with(self, offer: Offer, media: Media) -> str:
        """Our SDP answer to ``offer`` choosing ``media`` (negotiated from it): media starts."""
        self.remote = offer
        self.follow_codec_rate(media)
        self.use(media)
        return build_answer(offer, media, self.sdp_local, self.session)

    def take_answer(self, answer: Offer, allowed: list[str]) -> Media:
        """The peer's answer to our offer: media starts (NotAcceptable when nothing in it is usable)."""
        media = negotiate(answer, allowed)
        self.remote = answer
        self.follow_codec_rate(media)
        self.use(media)
        return media

    def offer(self, allowed: list[str], *, wideband: bool = False) -> str:
        """Our offer: the codecs ``allowed`` in their order (all we speak when empty: G.711 first, or
        G.722 first when ``wideband``). NotAcceptable when none of ``allowed`` is ours."""
        return build_offer(allowed, self.sdp_local, self.session, wideband=wideband)

    def reoffer(self) -> bytes:
        """For a re-INVITE without SDP: our current session as the offer, sending and receiving (the
        peer may be resuming); nothing before media was agreed."""
        remote, media = self.remote, self.media
        if remote is None or media is None:
            return b""
        return build_answer(remote, replace(media, direction="sendrecv"), self.sdp_local, self.session).encode()

    def take_reoffer_answer(self, text: str) -> None:
        """The answer to :meth:`reoffer` (in the ACK): media moves to it; an unusable one leaves the
        session as it was (RFC 3261 §14.1)."""
        codec = [self.media.codec] if self.media is not None else []
        try:
            answer = parse_offer(text)
            media = negotiate(answer, codec)  # the answer can only hold codecs of our offer: the current one
        except NotAcceptable as e:
            self.log.info("call %s: unusable answer to our re-offer, media unchanged: %s", self.sip_call_id, e)
            if self.call is not None:
                self.call.events.emit("error", where="sip.ack", message=f"{e}; media unchanged")
            return
        self.remote = answer
        self.use(media)
        self._told_reinvite(media, answer)

    def answer_reinvite(self, text: str, allowed: list[str]) -> bytes | None:
        """Our answer to a re-INVITE's offer (hold, resume, a new address or codec) — media follows it at
        once — or None when nothing in it can be served (488; the media stays as it was)."""
        try:
            offer = parse_offer(text)
            codec = [self.media.codec] if self.media is not None else []
            try:  # keep the codec when the peer still offers it: no rate change mid-recording
                media = negotiate(offer, codec)
            except NotAcceptable:
                media = negotiate(offer, allowed)
        except NotAcceptable as e:
            self.log.info("re-INVITE on %s refused: %s", self.sip_call_id, e)
            return None
        self.remote = offer
        self.use(media)
        self._told_reinvite(media, offer)
        return build_answer(offer, media, self.sdp_local, self.session).encode()

    def _told_reinvite(self, media: Media, remote: Offer) -> None:
        if self.call is not None:
            self.call.events.emit("sip.reinvite", codec=media.codec, direction=media.direction, hold=remote.on_hold)


class SipCallTransport(Transport):
    kind = "sip"

    def __init__(
        self,
        endpoint: Endpoint,
        sip: ServerCall,
        offer: Offer | None,
        rtp_host: str,
        sdp_host: str | None = None,
        *,
        rtp_timeout: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        #: The INVITE being served, in the core (a new one after a 401: the INVITE with credentials).
        self.sip = sip
        self.sip_media = SipMedia(
            self,
            preferred_rate(offer) if offer is not None else 8000,
            rtp_host,
            sdp_host or rtp_host,
            signalling_host=sip.peer.host,
            sip_call_id=sip.call_id,
            rtp_timeout=rtp_timeout,
            on_timeout=self._rtp_timeout,
        )
        #: The peer's offer (None: delayed offer, until the ACK brings the answer to ours).
        self.offer = offer
        self.state = LegState.RINGING
        #: The answer a 183 carried (the offer, the media, the SDP): the 200 OK repeats it unless it changed.
        self._early_answer: tuple[Offer, Media, str] | None = None
        #: While a 401 is out: resolved with the caller's retried INVITE.
        self._retry: asyncio.Future[ServerCall] | None = None
        #: A transfer of the caller by REFER in progress (sip_refer).
        self._transfer: LegTransfer | None = None
        #: The caller's ACK came. Until then — or until its RTP does — nothing is sent after the answer:
        #: an INVITE whose source was forged never gets one, and must not aim the call's audio (hundreds
        #: of times its own size) at whoever its SDP names (docs/security.md).
        self._acked = False

    # --- the leg's state ------------------------------------------------------------------------------

    def _move(self, to: LegState) -> None:
        """Change state along _MOVES; ENDED from any state but CLOSED, CLOSED from any."""
        here = self.state
        if to is LegState.CLOSED or (to is LegState.ENDED and here is not LegState.CLOSED):
            self.state = to
            return
        if to not in _MOVES[here]:
            raise IllegalMove(f"call {self.call_id}: a SIP leg cannot go from {here} to {to}")
        self.state = to

    @property
    def ended(self) -> bool:
        return self.state in (LegState.ENDED, LegState.CLOSED)

    @property
    def call_id(self) -> str:
        return self.sip.call_id

    @property
    def invite(self) -> Request:
        return self.sip.invite

    @property
    def offer(self) -> Offer | None:
        return self.sip_media.remote

    @offer.setter
    def offer(self, offer: Offer | None) -> None:
        self.sip_media.remote = offer

    @property
    def rtp(self) -> RtpStream:
        return self.sip_media.rtp

    @property
    def media(self) -> Media | None:
        return self.sip_media.media

    @property
    def _log(self) -> CallLog:
        """The log for this leg's lines: its SIP Call-ID, and the engine's call id once a call runs on it."""
        return self.sip_media.log

    def _flush(self) -> None:
        self.endpoint.flush()

    def ringing(self) -> None:
        if self.state in _UNANSWERED:
            self.endpoint.ua.provisional(self.sip, 180, self.endpoint.now)
            self._flush()

    async def bind(self, ports: tuple[int, int]) -> None:
        await self.sip_media.bind(ports)

    @property
    def sdp_local(self) -> tuple[str, int]:
        """Our media address as the SDP gives it (c=/o=, m= port)."""
        return self.sip_media.sdp_local

    # --- the call interface -----------------------------------------------------------------------

    def read_speak(self) -> Frame | None:
        if self.state not in _MEDIA:
            return None
        return self.sip_media.read()

    def skip(self, frames: int) -> None:
        self.sip_media.skip(frames)

    def write_listen(self, frame: Frame) -> None:
        if self.state in _MEDIA and (self._acked or self.state is LegState.EARLY or self.sip_media.rtp.stats.received):
            self.sip_media.write(frame)

    @property
    def _allowed(self) -> list[str]:
        return self.call.codecs if self.call is not None else []

    def _negotiate(self) -> str:
        assert self.offer is not None
        media = negotiate(self.offer, self._allowed)
        early = self._early_answer
        if early is not None and early[0] is self.offer and early[1] == media:
            # The 200 OK repeats the 183's answer to the same offer, o= version and all (RFC 6337 §3.1).
            return early[2]
        return self.sip_media.answer_with(self.offer, media)

    def _answer_sdp(self) -> str:
        """Our SDP answer (media starts); SipReject 488 when the offer has nothing we can use."""
        try:
            return self._negotiate()
        except NotAcceptable as e:
            raise SipReject(488, "Not Acceptable Here", str(e)) from None

    async def early_media(self) -> None:
        if self.state not in _UNANSWERED:
            return
        if self.offer is None:  # delayed offer: nothing to answer in a 183 (the sounds before answer go nowhere)
            if self.call is not None:
                self.call.events.emit("sip.no_early_media", reason="delayed offer: the caller sent no SDP to answer")
            return
        try:
            sdp = self._answer_sdp()
        except SipReject as e:
            self.reject(e)
            return
        if self.media is not None:
            self._early_answer = (self.offer, self.media, sdp)
        self._move(LegState.EARLY)
        self.endpoint.ua.provisional(self.sip, 183, self.endpoint.now, sdp.encode())
        self._flush()

    async def answer(self) -> None:
        credentials = self.call.credentials if self.call is not None else None
        if credentials is not None and not await self._authenticate(*credentials):
            return
        if self.state not in _UNANSWERED:
            return
        try:
            if self.offer is None:
                sdp = self._our_offer()
                self._move(LegState.AWAITING_ANSWER)
            else:
                sdp = self._answer_sdp()
                self._move(LegState.ANSWERED)
        except SipReject as e:
            self.reject(e)
            return
        self.endpoint.ua.answer(self.sip, sdp.encode(), self.endpoint.now)
        self._flush()
        if self.state is LegState.ANSWERED:
            self.rtp.media_starts()
            self.sip_media.watch()

    def _our_offer(self) -> str:
        try:
            return self.sip_media.offer(self._allowed)
        except NotAcceptable as e:
            raise SipReject(488, "Not Acceptable Here", str(e)) from None

    @property
    def awaiting_credentials(self) -> bool:
        return self.state is LegState.CHALLENGED

    def retry(self, sip: ServerCall) -> None:
        """The caller's INVITE again (same Call-ID) after our 401: hand it to the waiting answer."""
        if self._retry is not None and not self._retry.done():
            self._retry.set_result(sip)

    async def _authenticate(self, username: str, password: str) -> bool:
        """Challenge the INVITE; True once the retried INVITE proves the password (and is the call now)."""
        if self.state is LegState.AUTHENTICATED:
            return True
        if self.state is not LegState.RINGING:
            return False
        challenge = DigestChallenge()
        self._retry = asyncio.get_running_loop().create_future()
        self._move(LegState.CHALLENGED)
        now = self.endpoint.now
        self.endpoint.ua.reject(self.sip, 401, now, headers=challenge.headers(now))
        self._flush()
        try:
            sip = await asyncio.wait_for(asyncio.shield(self._retry), AUTH_WAIT)
        except TimeoutError:
            self._give_up(401, f"no INVITE with credentials within {AUTH_WAIT:.0f} s of the challenge")
            return False
        finally:
            self._retry = None
        if self.ended:
            self.endpoint.ua.reject(sip, 487, self.endpoint.now)
            self._flush()
            return False
        self.sip = sip
        now, host, guesses = self.endpoint.now, sip.peer.host, self.endpoint.wrong_passwords
        if guesses.wait(host, now) > 0:
            # Not even checked: a 200 for a right guess now would tell the guesser it was right.
            self.reject(SipReject(403, "Forbidden", f"too many wrong passwords from {host}: not checked for a minute"))
            return False
        verdict = challenge.verify(sip.invite, username, password, now)
        if verdict is not Verdict.ACCEPTED:
            # A retry without credentials, or with wrong ones, is refused (docs/serve.md): 403.
            wrong = verdict in (Verdict.REJECTED, Verdict.REPLAYED)
            if wrong:
                guesses.failed(host, now)
            why = f"wrong credentials for user {username!r}" if wrong else f"no credentials for user {username!r}"
            self.reject(SipReject(403, "Forbidden", why))
            return False
        try:
            offer = sip.invite.sdp  # (a multipart body's SDP part: validation.py)
            self.offer = parse_offer(offer.decode("utf-8", "replace")) if offer else None
        except NotAcceptable as e:
            self.reject(SipReject(488, "Not Acceptable Here", str(e)))
            return False
        self._move(LegState.AUTHENTICATED)
        if self.call is not None:
            self.call.events.emit("sip.authenticated", username=username)
        return True

    def reject(self, rejection: SipReject) -> None:
        """Refuse the call before its answer: the one place a SipReject becomes a final response."""
        if self.state not in _UNANSWERED and self.state is not LegState.CHALLENGED:
            return
        self.endpoint.ua.reject(self.sip, rejection.status, self.endpoint.now, rejection.reason)
        self._flush()
        self._give_up(rejection.status, rejection.why)

    def _give_up(self, status: int, why: str) -> None:
        """End the call before its answer: ``status`` went out (by reject), or the transaction is over."""
        self._log.info("call %s rejected %s: %s", self.call_id, status, why)
        self._move(LegState.ENDED)
        if self.call is not None:
            self.call.events.emit("sip.rejected", status=status, reason=why)
            self.call.on_remote_hangup("rejected")

    def ack(self, body: bytes) -> None:
        """The caller's ACK: for a delayed offer it carries the answer to ours, and media starts; for an
        offerless re-INVITE it carries the answer to our re-offer, and media moves to it."""
        self._acked = self._acked or self.state in _UP  # (the ACK of our 200, not of a 401 before it)
        if self.state is LegState.REOFFERED:
            self._ack_reoffer(body.decode("utf-8", "replace"))
        elif self.state is LegState.AWAITING_ANSWER:
            self._ack_answer(body.decode("utf-8", "replace"))

    def _ack_answer(self, text: str) -> None:
        try:
            if not text.strip():
                raise NotAcceptable("the ACK carries no SDP answer to our offer")
            media = self.sip_media.take_answer(parse_offer(text), self._allowed)
        except NotAcceptable as e:
            # RFC 3261 §13.3.1.4: an answer we cannot use ends the session we just confirmed.
            self._log.info("call %s: unusable answer in ACK, sending BYE: %s", self.call_id, e)
            self._move(LegState.ENDED)
            self.endpoint.ua.bye(self.sip, self.endpoint.now, "Incompatible SDP")
            self._flush()
            if self.call is not None:
                self.call.events.emit("error", where="sip.ack", message=f"{e}; call ended with BYE")
                self.call.on_remote_hangup("rejected")
            return
        self._move(LegState.ANSWERED)
        self.sip_media.watch()
        if self.call is not None:
            self.call.events.emit("sip.answer", codec=media.codec, direction=media.direction)

    def _ack_reoffer(self, text: str) -> None:
        if not text.strip():
            return  # a retransmitted ACK of an earlier transaction: the one with the answer is still to come
        self._move(LegState.ANSWERED)
        self.sip_media.take_reoffer_answer(text)

    async def hangup(self, reason: EndReason) -> None:
        if self.ended:
            return
        if self.state in _UP:
            self._move(LegState.ENDED)
            self.endpoint.ua.bye(self.sip, self.endpoint.now, reason)
            self._flush()
            return
        status, phrase = _REJECT_STATUS.get(reason, (480, "Temporarily Unavailable"))
        self._move(LegState.ENDED)
        if self._retry is not None and not self._retry.done():
            self._retry.cancel()  # a 401 is out: nothing more to answer
        self.endpoint.ua.reject(self.sip, status, self.endpoint.now, phrase)
        self._flush()

    def end(self, status: int = 500, phrase: str = "Server Internal Error") -> None:
        """End the leg from the service (an internal error): refused ``status`` before the answer, BYE
        after; ``phrase`` is the SIP reason phrase (the BYE's Reason text)."""
        if self.ended:
            return
        if self.state in _UP:
            self._move(LegState.ENDED)
            self.endpoint.ua.bye(self.sip, self.endpoint.now, phrase)
        else:
            self._move(LegState.ENDED)
            self.endpoint.ua.reject(self.sip, status, self.endpoint.now, phrase)
        self._flush()

    async def send_dtmf(self, digit: str, duration: float) -> None:
        await self.sip_media.send_dtmf(digit, duration)

    async def close(self) -> None:
        if self.state is LegState.CLOSED:
            return
        self._move(LegState.CLOSED)
        self.sip_media.close()

    # --- from the peer ----------------------------------------------------------------------------

    def remote_bye(self) -> None:
        if not self.ended:
            self._move(LegState.ENDED)
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def remote_cancel(self) -> None:
        if not self.ended:
            self._move(LegState.ENDED)
        if self._retry is not None and not self._retry.done():
            self._retry.cancel()
        if self.call is not None:
            self.call.on_remote_hangup("cancel")

    def reinvite(self, request: Request) -> None:
        """Hold, resume, a new address or codec: answer from what we have, keep the call either way."""
        ua, now = self.endpoint.ua, self.endpoint.now
        if self.state not in (LegState.ANSWERED, LegState.REOFFERED):
            ua.answer_reinvite(self.sip, 491, now)  # (not up yet, or ending: the peer tries again later)
            self._flush()
            return
        if not request.sdp:
            # Offerless re-INVITE: we offer our current session in the 200 OK (RFC 3261 §14.2), and the
            # ACK brings the answer (see ack()).
            sdp = self.sip_media.reoffer()
            if sdp:
                self._move(LegState.REOFFERED)
            ua.answer_reinvite(self.sip, 200, now, sdp)
            self._flush()
            return
        answer = self.sip_media.answer_reinvite(request.sdp.decode("utf-8", "replace"), self._allowed)
        if answer is None:
            ua.answer_reinvite(self.sip, 488, now)
            self._flush()
            return
        self._move(LegState.ANSWERED)  # (a new offer settles an answer owed to our re-offer: moot now)
        ua.answer_reinvite(self.sip, 200, now, answer)
        self._flush()

    # --- transfer (sip_refer) ---------------------------------------------------------------------

    async def refer(
        self, to_uri: str, credentials: tuple[str, str] | None, progress: Callable[[ReferStatus], None]
    ) -> ReferStatus:
        """Send the caller a REFER to ``to_uri`` (transfer.py: waits for our 200's ACK, then the core's
        referral), one at a time; the service hands its progress here (:meth:`refer_update`)."""
        if self.state not in _UP:
            raise CannotRefer(f"call {self.call_id} is not answered (or is over): nothing to transfer")
        if self._transfer is not None:
            raise CannotRefer(f"call {self.call_id} is being transferred already")
        self._transfer = LegTransfer(self.endpoint, self.sip, progress)
        try:
            return await self._transfer.run(to_uri, credentials)
        finally:
            self._transfer = None

    def refer_update(self, event: ReferUpdate) -> None:
        """A step of the caller's referral (the core's ReferUpdate, routed by the service)."""
        if self._transfer is not None:
            self._transfer.update(event)

    def _rtp_timeout(self) -> None:
        """The caller sent nothing for the RTP timeout (SipMedia.watch): it is gone, the call ends (BYE)."""
        if self.state not in _UP:
            return
        self._move(LegState.ENDED)
        self.endpoint.ua.bye(self.sip, self.endpoint.now, "RTP timeout")
        self._flush()
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def hops_left(self) -> int | None:
        return self.invite.max_forwards  # (checked 0-255 when the INVITE came)

    # --- the call scope ---------------------------------------------------------------------------

    def call_info(self) -> dict[str, Any]:
        """``call.from``, ``call.to``, ``call.headers`` and ``call.sip_data`` (calling-overview.mdx)."""
        req = self.invite
        headers = [{"name": name, "value": value} for name, value in req.headers]
        data: dict[str, Any] = {}
        _uri_fields(data, "sip_req", req.uri)
        for prefix, header in (("sip_from", "from"), ("sip_to", "to"), ("sip_contact", "contact")):
            value = req.headers.get(header)
            if value:
                _address_fields(data, prefix, value, with_params=prefix == "sip_contact")
        return {
            "from": data.get("sip_from_uri", ""),
            "to": data.get("sip_to_uri", ""),
            "headers": headers,
            "sip_data": data,
        }


def _uri_fields(out: dict[str, Any], prefix: str, uri: str) -> None:
    try:
        parsed = parse_uri(uri)
    except UriError:
        out[f"{prefix}_uri"] = uri
        return
    out[f"{prefix}_uri"] = str(parsed)
    out[f"{prefix}_user"] = parsed.user or ""
    out[f"{prefix}_host"] = parsed.host


def _address_fields(out: dict[str, Any], prefix: str, value: str, *, with_params: bool) -> None:
    try:
        addr = parse_name_addr(value.split(",")[0] if prefix == "sip_contact" else value)
    except (UriError, BadHeader):
        out[f"{prefix}_uri"] = value
        return
    out[f"{prefix}_uri"] = str(addr.uri)
    out[f"{prefix}_user"] = addr.uri.user or ""
    out[f"{prefix}_host"] = addr.uri.host
    if with_params:
        out[f"{prefix}_port"] = str(addr.uri.port or "")
        out[f"{prefix}_params"] = {k: v or "" for k, v in (*addr.uri.params, *addr.params)}
