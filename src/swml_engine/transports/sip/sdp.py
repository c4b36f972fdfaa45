"""SDP offer/answer for audio calls (RFC 3264): pick one codec from the offer, answer it, reject the rest.

When the INVITE carries no offer (delayed offer), we make the offer in our 200 OK (:func:`build_offer`)
and the caller's ACK carries the answer, which :func:`parse_offer`/:func:`negotiate` read the same way.

Parsing is aiosipua's; the choice and the answer are ours because they carry the engine's rules: the
offer's order decides among the codecs we speak, ``answer.codecs`` may narrow them, the offer's own
telephone-event payload type is echoed, and anything we cannot serve is a :class:`NotAcceptable`
(SIP 488) with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiosipua.sdp import MediaDescription, SdpMessage, parse_sdp

from swml_engine.transports.sip.codecs import SUPPORTED

_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


class NotAcceptable(Exception):
    """The offer cannot be served (SIP 488); the message says why."""


@dataclass(frozen=True)
class Offer:
    sdp: SdpMessage
    audio: MediaDescription
    audio_index: int
    remote: tuple[str, int]

    @property
    def direction(self) -> str:
        """The audio stream's direction: its own attribute, else the session-level one (RFC 4566 §6:
        a session attribute applies to every stream without its own), else sendrecv."""
        return media_direction(self.sdp, self.audio)

    @property
    def on_hold(self) -> bool:
        """The peer asks us not to send (hold): sendonly/inactive, or the old c=0.0.0.0 form."""
        return self.direction in ("sendonly", "inactive") or self.remote[0] == "0.0.0.0"


@dataclass(frozen=True)
class Media:
    """What offer and answer agreed on."""

    codec: str
    payload_type: int
    telephone_event: int | None  # the offer's payload type for RFC 4733 events at the codec's clock
    ptime: int  # milliseconds per packet we send
    remote: tuple[str, int]
    direction: str  # ours, as answered

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")


_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def media_direction(sdp: SdpMessage, media: MediaDescription) -> str:
    """Direction of one stream: media level first, then session level (aiosipua reads only the first)."""
    for attributes in (media.attributes, sdp.attributes):
        for d in _DIRECTIONS:
            if d in attributes:
                return d
    return "sendrecv"


def parse_offer(body: str) -> Offer:
    try:
        sdp = parse_sdp(body)
    except (ValueError, IndexError) as e:
        raise NotAcceptable(f"unreadable SDP ({e})") from None
    for index, m in enumerate(sdp.media):
        if m.media == "audio" and m.port > 0:
            conn = m.connection or sdp.connection
            if conn is None:
                raise NotAcceptable("the audio stream has no connection address (c=)")
            if not m.proto.upper().startswith("RTP/AVP"):
                raise NotAcceptable(f"media profile {m.proto} is not served (plain RTP/AVP only)")
            # An IPv6 address in brackets is not what RFC 4566 writes, but some peers (sipp) do.
            return Offer(sdp, m, index, (conn.address.strip("[]"), m.port))
    raise NotAcceptable("the offer has no audio stream")


def preferred_rate(offer: Offer) -> int:
    """Sample rate of the codec we would choose with no restriction (the call's rate)."""
    return SUPPORTED[choose(offer, [])[0]].rate


def choose(offer: Offer, allowed: list[str]) -> tuple[str, int]:
    """(codec name, payload type): the first codec of the offer that we speak and ``allowed`` permits."""
    for c in offer.audio.codecs:
        name = (c.encoding_name or "").upper()
        info = SUPPORTED.get(name)
        if info is None or (allowed and name not in allowed):
            continue
        if c.clock_rate and c.clock_rate != 8000:
            continue  # G.711/G.722 always have an 8000 Hz RTP clock
        return name, c.payload_type
    offered = ", ".join(sorted({(c.encoding_name or str(c.payload_type)).upper() for c in offer.audio.codecs}))
    wanted = ", ".join(allowed) if allowed else ", ".join(SUPPORTED)
    raise NotAcceptable(f"no common codec: offered {offered or 'none'}; this call takes {wanted}")


def negotiate(offer: Offer, allowed: list[str]) -> Media:
    name, pt = choose(offer, allowed)
    te = None
    for c in offer.audio.codecs:
        if (c.encoding_name or "").lower() == "telephone-event" and c.clock_rate in (8000, 0):
            te = c.payload_type
            break
    ptime = 20
    for value in offer.audio.attributes.get("ptime", []):
        try:
            wanted = int(value.strip())
        except ValueError:
            continue
        if 10 <= wanted <= 60 and wanted % 10 == 0:
            ptime = wanted
    return Media(name, pt, te, ptime, offer.remote, _ANSWER_DIRECTION[offer.direction])


class SessionVersion:
    """o= line of our answers: one session id per call, the version goes up with each new answer."""

    def __init__(self) -> None:
        self.id = int(time.time() * 1000) & 0x7FFFFFFF
        self.version = 0

    def next(self) -> int:
        self.version += 1
        return self.version


#: Dynamic payload type of telephone-event in our own offers.
OFFER_TELEPHONE_EVENT = 101
#: Codecs in our own offers, by preference: G.711 first, so the call (and its recordings) runs at the
#: 8 kHz the caller's side almost always has; G.722 for a peer that prefers wideband.
OFFER_ORDER = ("PCMU", "PCMA", "G722")


def _session_lines(local: tuple[str, int], session: SessionVersion) -> list[str]:
    ip = local[0]
    ip_type = "IP6" if ":" in ip else "IP4"
    return [
        "v=0",
        f"o=swml-engine {session.id} {session.next()} IN {ip_type} {ip}",
        "s=swml-engine",
        f"c=IN {ip_type} {ip}",
        "t=0 0",
    ]


def build_offer(allowed: list[str], local: tuple[str, int], session: SessionVersion) -> str:
    """Our offer for a call whose INVITE had none: the codecs ``allowed`` (all we speak when empty)."""
    names = [n for n in OFFER_ORDER if not allowed or n in allowed]
    if allowed:  # answer.codecs also decides the order
        names.sort(key=allowed.index)
    if not names:
        raise NotAcceptable(f"none of {', '.join(allowed)} is a codec this engine speaks")
    pts = [SUPPORTED[n].static_pt for n in names]
    te = OFFER_TELEPHONE_EVENT
    lines = _session_lines(local, session)
    lines.append(f"m=audio {local[1]} RTP/AVP {' '.join(str(pt) for pt in [*pts, te])}")
    lines += [f"a=rtpmap:{pt} {n}/8000" for pt, n in zip(pts, names, strict=True)]
    lines += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-15", "a=ptime:20", "a=sendrecv"]
    return "\r\n".join(lines) + "\r\n"


def build_answer(offer: Offer, media: Media, local: tuple[str, int], session: SessionVersion) -> str:
    port = local[1]
    lines = _session_lines(local, session)
    for index, m in enumerate(offer.sdp.media):
        if index != offer.audio_index:
            # RFC 3264 §6: a rejected stream keeps its place with port 0.
            lines.append(f"m={m.media} 0 {m.proto} {' '.join(m.formats) or '0'}")
            continue
        formats = [str(media.payload_type)]
        if media.telephone_event is not None:
            formats.append(str(media.telephone_event))
        lines.append(f"m=audio {port} RTP/AVP {' '.join(formats)}")
        lines.append(f"a=rtpmap:{media.payload_type} {media.codec}/8000")
        if media.telephone_event is not None:
            lines.append(f"a=rtpmap:{media.telephone_event} telephone-event/8000")
            lines.append(f"a=fmtp:{media.telephone_event} 0-15")
        lines.append(f"a=ptime:{media.ptime}")
        lines.append(f"a={media.direction}")
    return "\r\n".join(lines) + "\r\n"
