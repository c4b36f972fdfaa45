"""A SIP call behind the transport interface: an INVITE's dialog and its RTP stream.

The engine sees the same call as with the simulated transport; this class turns ``answer`` into a
200 OK with our SDP answer, ``early_media`` into a 183, ``hangup`` into a BYE (or a final error
response before answer), and the peer's BYE, CANCEL and re-INVITE into call events and media changes.

An INVITE without SDP (delayed offer) gets our offer in the 200 OK; media starts when the ACK brings
the answer. Such a call has no early media (an offer in an unreliable 183 could not be answered).

With ``answer.username``/``password`` the INVITE is first challenged (401); the caller's retried
INVITE, with credentials, becomes the one we answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, replace
from typing import Any

from aiosipua.header_codec import parse_address, parse_uri, stringify_uri
from aiosipua.incoming_call import IncomingCall
from aiosipua.message import SipRequest
from aiosipua.sdp import parse_sdp

from swml_engine.media.frame import Frame
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.media.sources.tones import dtmf_frames
from swml_engine.transports.base import Transport
from swml_engine.transports.sip.codecs import SUPPORTED
from swml_engine.transports.sip.digest import DigestChallenge
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
from swml_engine.transports.sip.signalling import SipServer

log = logging.getLogger(__name__)

#: How long a challenged caller has to send its INVITE again with credentials (RFC 3261 Timer B).
AUTH_WAIT = 32.0

#: Final response for a call the script ends before answering, by hangup reason.
_REJECT_STATUS = {"busy": (486, "Busy Here"), "decline": (603, "Decline")}


class SipCallTransport(Transport):
    kind = "sip"

    def __init__(
        self, server: SipServer, invite: IncomingCall, offer: Offer | None, rtp_host: str, sdp_host: str | None = None
    ) -> None:
        self.server = server
        self.invite = invite
        #: The peer's offer (None: delayed offer, until the ACK brings the answer to ours).
        self.offer = offer
        self.rate = preferred_rate(offer) if offer is not None else 8000
        #: The RTP socket binds here (maybe a wildcard); our SDP says ``sdp_host``, an address the peer reaches.
        self.rtp_host = rtp_host
        self.sdp_host = sdp_host or rtp_host
        #: The SIP source is where the caller's media is expected from too (with the SDP address).
        self.rtp = RtpStream(self.rate, self._on_digit, signalling_host=invite.source_addr[0])
        self.session = SessionVersion()
        self.media: Media | None = None
        self._media_on = False
        self.ended = False
        self.answered = False
        self._closed = False
        self._awaiting_answer = False  # our offer went out in the 200 OK; the ACK has not come
        self._reoffered = False  # ... and that 200 OK answered an offerless re-INVITE
        self.authenticated = False
        self._inband: InbandDtmfDetector | None = None
        #: The answer a 183 carried (the offer, the media, the SDP): the 200 OK repeats it unless it changed.
        self._early_answer: tuple[Offer, Media, str] | None = None
        #: While a 401 is out: resolved with the caller's retried INVITE.
        self._retry: asyncio.Future[IncomingCall] | None = None

    async def bind(self, ports: tuple[int, int]) -> None:
        await self.rtp.bind(self.rtp_host, ports)

    @property
    def sdp_local(self) -> tuple[str, int]:
        """Our media address as the SDP gives it (c=/o=, m= port)."""
        return (self.sdp_host, self.rtp.local[1])

    # --- the call interface -----------------------------------------------------------------------

    def _on_digit(self, digit: str) -> None:
        if self.call is not None:
            self.call.loop.call_soon(self.call.on_dtmf, digit)

    def read_speak(self) -> Frame | None:
        if not self._media_on:
            return None
        frame = self.rtp.read()
        if frame is not None and self._inband is not None:
            digit = self._inband.feed(frame)
            if digit is not None:
                self._on_digit(digit)
        return frame

    def _use_media(self, media: Media) -> None:
        """Media as negotiated (answer, ACK of a delayed offer, re-INVITE) flows from now on. Without
        telephone-events, digits are listened for as tones in the caller's audio instead."""
        self.media = media
        self.rtp.configure(media)
        self._media_on = True
        if media.telephone_event is not None:
            self._inband = None
        elif self._inband is None:
            self._inband = InbandDtmfDetector(self.rate)

    def skip(self, frames: int) -> None:
        self.rtp.skip(frames)

    def write_listen(self, frame: Frame) -> None:
        if self._media_on:
            self.rtp.write(frame)

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
        self._follow_codec_rate(media)
        self._use_media(media)
        return build_answer(self.offer, media, self.sdp_local, self.session)

    def _follow_codec_rate(self, media: Media) -> None:
        """The call runs (and records) at the rate of the codec chosen at answer time.

        The rate is set when the call is made, before the script's ``answer.codecs`` is known: for an
        offer of G.722 first, 16 kHz. When the answer chooses another codec, the call takes that codec's
        rate — as long as no audio at the old rate is in flight (a recording or detector running, a
        sound playing); then the old rate stays and the RTP stream converts."""
        rate = SUPPORTED[media.codec].rate
        call = self.call
        if rate == self.rate:
            return
        if call is not None and not call.change_rate(rate):
            log.info(
                "call %s stays at %d Hz (%s is %d Hz): media already runs", call.call_id, self.rate, media.codec, rate
            )
            return
        self.rate = rate
        self.rtp.call_rate = rate
        self._inband = None  # made again at the new rate when the peer has no telephone-events

    def _answer_sdp(self) -> str | None:
        """Our SDP answer (media starts), or None when the call was refused with 488."""
        if self.ended:
            return None
        try:
            return self._negotiate()
        except NotAcceptable as e:
            self._reject(488, "Not Acceptable Here", str(e))
            return None

    async def early_media(self) -> None:
        if self.offer is None:  # delayed offer: nothing to answer in a 183 (the sounds before answer go nowhere)
            if self.call is not None:
                self.call.events.emit("sip.no_early_media", reason="delayed offer: the caller sent no SDP to answer")
            return
        sdp = self._answer_sdp()
        if sdp is not None and self.offer is not None and self.media is not None:
            self._early_answer = (self.offer, self.media, sdp)
            self.server.send_provisional(self.invite, 183, "Session Progress", sdp)

    async def answer(self) -> None:
        credentials = self.call.credentials if self.call is not None else None
        if credentials is not None and not await self._authenticate(*credentials):
            return
        if self.offer is None:
            self._answer_with_offer()
            return
        sdp = self._answer_sdp()
        if sdp is not None:
            self.invite.accept(parse_sdp(sdp))
            self.answered = True
            self.rtp.media_starts()

    @property
    def awaiting_credentials(self) -> bool:
        return self._retry is not None and not self._retry.done()

    def retry(self, incoming: IncomingCall) -> None:
        """The caller's INVITE again (same Call-ID) after our 401: hand it to the waiting answer."""
        if self._retry is not None and not self._retry.done():
            self._retry.set_result(incoming)

    async def _authenticate(self, username: str, password: str) -> bool:
        """Challenge the INVITE; True once the retried INVITE proves the password (and is the call now)."""
        if self.authenticated:
            return True
        if self.ended:
            return False
        challenge = DigestChallenge()
        self._retry = asyncio.get_running_loop().create_future()
        self.invite._send_response(401, "Unauthorized", extra_headers={"WWW-Authenticate": challenge.header()})
        self.invite.dialog.terminate()
        try:
            incoming = await asyncio.wait_for(asyncio.shield(self._retry), AUTH_WAIT)
        except TimeoutError:
            self._give_up(401, f"no INVITE with credentials within {AUTH_WAIT:.0f} s of the challenge")
            return False
        finally:
            self._retry = None
        if self.ended:
            return False
        self.invite = incoming
        if not challenge.verify(incoming.invite, username, password):
            self._reject(403, "Forbidden", f"wrong credentials for user {username!r}")
            return False
        try:
            self.offer = parse_offer(incoming.invite.text) if incoming.invite.body else None
        except NotAcceptable as e:
            self._reject(488, "Not Acceptable Here", str(e))
            return False
        self.authenticated = True
        if self.call is not None:
            self.call.events.emit("sip.authenticated", username=username)
        return True

    def _give_up(self, status: int, why: str) -> None:
        """End the call before its answer: ``status`` went out (by _reject), or the transaction is over."""
        log.info("call %s rejected %s: %s", self.invite.call_id, status, why)
        self.ended = True
        self._media_on = False
        if self.call is not None:
            self.call.events.emit("sip.rejected", status=status, reason=why)
            self.call.on_remote_hangup("rejected")

    def _answer_with_offer(self) -> None:
        if self.ended:
            return
        try:
            sdp = build_offer(self._allowed, self.sdp_local, self.session)
        except NotAcceptable as e:
            self._reject(488, "Not Acceptable Here", str(e))
            return
        self.invite.accept(parse_sdp(sdp))
        self.answered = True
        self._awaiting_answer = True

    def ack(self, body: str) -> None:
        """The caller's ACK: for a delayed offer it carries the answer to ours, and media starts; for an
        offerless re-INVITE it carries the answer to our re-offer, and media moves to it."""
        if not self._awaiting_answer or self.ended:
            return
        if self._reoffered:
            self._ack_reoffer(body)
            return
        self._awaiting_answer = False
        try:
            if not body.strip():
                raise NotAcceptable("the ACK carries no SDP answer to our offer")
            answer = parse_offer(body)
            media = negotiate(answer, self._allowed)
        except NotAcceptable as e:
            # RFC 3261 §13.3.1.4: an answer we cannot use ends the session we just confirmed.
            log.info("call %s: unusable answer in ACK, sending BYE: %s", self.invite.call_id, e)
            self.ended = True
            self.server.bye(self.invite, "Incompatible SDP")
            if self.call is not None:
                self.call.events.emit("error", where="sip.ack", message=f"{e}; call ended with BYE")
                self.call.on_remote_hangup("rejected")
            return
        self.offer = answer
        self._follow_codec_rate(media)
        self._use_media(media)
        if self.call is not None:
            self.call.events.emit("sip.answer", codec=media.codec, direction=media.direction)

    def _ack_reoffer(self, body: str) -> None:
        if not body.strip():
            return  # a retransmitted ACK of an earlier transaction: the one with the answer is still to come
        self._awaiting_answer = self._reoffered = False
        codec = [self.media.codec] if self.media is not None else []
        try:
            answer = parse_offer(body)
            media = negotiate(answer, codec)  # the answer can only hold codecs of our offer: the current one
        except NotAcceptable as e:
            # The re-INVITE failed; the session goes on as it was (RFC 3261 §14.1).
            log.info("call %s: unusable answer in the re-INVITE's ACK, media unchanged: %s", self.invite.call_id, e)
            if self.call is not None:
                self.call.events.emit("error", where="sip.ack", message=f"{e}; media unchanged")
            return
        self.offer = answer
        self._use_media(media)
        if self.call is not None:
            self.call.events.emit("sip.reinvite", codec=media.codec, direction=media.direction, hold=answer.on_hold)

    def _reject(self, status: int, reason: str, why: str) -> None:
        self.invite.reject(status, reason)
        self._give_up(status, why)

    async def hangup(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self._media_on = False
        if self.answered:
            self.server.bye(self.invite, reason)
        else:
            status, phrase = _REJECT_STATUS.get(reason, (480, "Temporarily Unavailable"))
            self.invite.reject(status, phrase)

    async def send_dtmf(self, digit: str, duration: float) -> None:
        if self._inband is not None and self.call is not None:  # the peer takes no events: tones, in-band
            await self.call.play_frames(dtmf_frames(digit, duration, self.call.rate))
            return
        await self.rtp.send_digit(digit, duration)

    async def close(self) -> None:
        self._media_on = False
        if self._closed:
            return
        self._closed = True
        self.rtp.close()
        if self.call is not None:  # what the network did to this call, for the operator
            stats = asdict(self.rtp.stats)
            stats["send_jitter_p99_ms"] = self.rtp.stats.send_jitter_p99()
            del stats["send_deviation_ms"]
            self.call.events.emit("rtp.stats", **stats)

    # --- from the peer ----------------------------------------------------------------------------

    def remote_bye(self) -> None:
        self.ended = True
        self._media_on = False
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def remote_cancel(self) -> None:
        self.ended = True
        self._media_on = False
        if self.call is not None:
            self.call.on_remote_hangup("cancel")

    def reinvite(self, request: SipRequest, via: SipServer | None = None) -> None:
        """Hold, resume, a new address or codec: answer from what we have, keep the call either way.
        The answer goes back over ``via``, the server (UDP or TCP) the re-INVITE came on."""
        server = via or self.server
        if self._reoffered:  # a new re-INVITE: the answer owed to an earlier re-offer of ours is moot
            self._awaiting_answer = self._reoffered = False
        if not request.body:
            # Offerless re-INVITE: we offer our current session in the 200 OK (RFC 3261 §14.2), sending
            # and receiving (the peer may be resuming), and the ACK brings the answer (see ack()).
            offer, media = self.offer, self.media
            sdp = None
            if offer is not None and media is not None:
                sdp = build_answer(offer, replace(media, direction="sendrecv"), self.sdp_local, self.session)
                self._awaiting_answer = self._reoffered = True
            server.reply_in_dialog(self.invite, request, 200, "OK", sdp)
            return
        try:
            offer = parse_offer(request.text)
            codec = [self.media.codec] if self.media is not None else []
            try:  # keep the codec when the peer still offers it: no rate change mid-recording
                media = negotiate(offer, codec)
            except NotAcceptable:
                media = negotiate(offer, self.call.codecs if self.call is not None else [])
        except NotAcceptable as e:
            log.info("re-INVITE on %s refused: %s", self.invite.call_id, e)
            server.reply_in_dialog(self.invite, request, 488, "Not Acceptable Here")
            return
        self.offer = offer
        self._use_media(media)
        sdp = build_answer(offer, media, self.sdp_local, self.session)
        server.reply_in_dialog(self.invite, request, 200, "OK", sdp)
        if self.call is not None:
            self.call.events.emit("sip.reinvite", codec=media.codec, direction=media.direction, hold=offer.on_hold)

    # --- the call scope ---------------------------------------------------------------------------

    def call_info(self) -> dict[str, Any]:
        """``call.from``, ``call.to``, ``call.headers`` and ``call.sip_data`` (calling-overview.mdx)."""
        req = self.invite.invite
        headers = [{"name": name, "value": v} for name, values in req.headers.items() for v in values]
        data: dict[str, Any] = {}
        _uri_fields(data, "sip_req", req.uri)
        for prefix, header in (("sip_from", "from"), ("sip_to", "to"), ("sip_contact", "contact")):
            value = req.headers.get_first(header)
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
    except (ValueError, IndexError):
        out[f"{prefix}_uri"] = uri
        return
    out[f"{prefix}_uri"] = stringify_uri(parsed)
    out[f"{prefix}_user"] = parsed.user or ""
    out[f"{prefix}_host"] = parsed.host


def _address_fields(out: dict[str, Any], prefix: str, value: str, *, with_params: bool) -> None:
    try:
        addr = parse_address(value)
    except (ValueError, IndexError):
        out[f"{prefix}_uri"] = value
        return
    out[f"{prefix}_uri"] = stringify_uri(addr.uri)
    out[f"{prefix}_user"] = addr.uri.user or ""
    out[f"{prefix}_host"] = addr.uri.host
    if with_params:
        out[f"{prefix}_port"] = str(addr.uri.port or "")
        out[f"{prefix}_params"] = {k: v or "" for k, v in {**addr.uri.params, **addr.params}.items()}
