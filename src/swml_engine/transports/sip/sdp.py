"""SDP offer/answer for audio calls (RFC 3264): pick one codec from the offer, answer it, reject the rest.

When the INVITE carries no offer (delayed offer), we make the offer in our 200 OK (:func:`build_offer`)
and the caller's ACK carries the answer, which :func:`parse_offer`/:func:`negotiate` read the same way.

Parsing is aiosipua's; the choice and the answer are ours because they carry the engine's rules: the
offer's order decides among the codecs we speak, ``answer.codecs`` may narrow them, the offer's own
telephone-event payload type is echoed, and anything we cannot serve is a :class:`NotAcceptable`
(SIP 488) with the reason.
"""

from __future__ import annotations

import ipaddress
import re
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


#: One label of a DNS name (no nested repetition: checking hostile input stays linear).
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
#: RTP payload types are 7 bits (RFC 3550 §5.1); anything else in an m= line is not an RTP stream.
MAX_PAYLOAD_TYPE = 127
MAX_PORT = 65535
#: Reason strings echo at most this much of what the peer wrote (a hostile offer makes no log flood).
_ECHO = 40


def is_host_name(host: str) -> bool:
    """Whether an SDP address may be a DNS name (anything else there is junk, never looked up). A name
    whose last label is all digits is not one (RFC 3696 §2): ``999.1.1.1`` is a broken IPv4 address."""
    if not 0 < len(host) <= 253:
        return False
    labels = host.removesuffix(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def unicast_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why media must not be sent to ``ip`` (multicast, broadcast, reserved), or None for a unicast
    address. The unspecified address (0.0.0.0, ::) passes: in SDP it means hold (RFC 3264 §8.4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return None
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip.is_reserved:  # 240.0.0.0/4, with 255.255.255.255 (broadcast) at its top
            return "a broadcast or reserved address"
        if ip.packed[0] == 0:  # 0.0.0.0/8 other than 0.0.0.0: "this network", never a destination
            return "not a destination address"
    return None


def _media_address(host: str) -> str:
    """The connection address of the audio stream, checked: a unicast IP address (brackets removed),
    0.0.0.0 (hold) or a host name; anything else is a :class:`NotAcceptable`."""
    # An IPv6 address in brackets is not what RFC 4566 writes, but some peers (sipp) do.
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if is_host_name(host):
            return host
        raise NotAcceptable(f"connection address {host[:_ECHO]!r} is neither an IP address nor a host name") from None
    problem = unicast_problem(ip)
    if problem is not None:
        raise NotAcceptable(f"connection address {host} is {problem}: media goes to one unicast address")
    return host


def _check_lines(body: str) -> None:
    """What aiosipua's parser would quietly misread: a c= line without its address reads as 0.0.0.0
    (hold) there, so it is refused here."""
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("c=") and len(line[2:].split()) < 3:
            raise NotAcceptable(f"connection line {line[:_ECHO]!r} has no address (c=IN IP4 <address>)")


def _check_media(sdp: SdpMessage) -> None:
    """Ports of every stream within 0-65535 (0: a stream the peer does not want, RFC 3264 §5.1)."""
    for m in sdp.media:
        if not 0 <= m.port <= MAX_PORT:
            raise NotAcceptable(f"m={m.media[:_ECHO]} port {m.port} is outside 0-{MAX_PORT}")


def _check_payload_types(m: MediaDescription) -> None:
    """Every format of an RTP stream is a payload type 0-127 (the RTP header has 7 bits for it)."""
    for fmt in m.formats:
        if not (len(fmt) <= 3 and fmt.isascii() and fmt.isdigit() and int(fmt) <= MAX_PAYLOAD_TYPE):
            raise NotAcceptable(f"payload type {fmt[:_ECHO]!r} is outside 0-{MAX_PAYLOAD_TYPE}")


def parse_offer(body: str) -> Offer:
    """The audio stream of an offer (or of the answer to our offer), checked before anything uses it:
    every refusal is a :class:`NotAcceptable` whose message says what was wrong."""
    _check_lines(body)
    try:
        sdp = parse_sdp(body)
    except (ValueError, IndexError) as e:
        raise NotAcceptable(f"unreadable SDP ({str(e)[: 2 * _ECHO]})") from None
    _check_media(sdp)
    refused: NotAcceptable | None = None
    for index, m in enumerate(sdp.media):
        if m.media == "audio" and m.port > 0:
            if not m.proto.upper().startswith("RTP/AVP"):
                # an SRTP stream may have a plain one beside it ("best effort" SRTP): that one is answered,
                # this one declined in its place (build_answer)
                refused = refused or NotAcceptable(
                    f"media profile {m.proto[:_ECHO]} is not served (plain RTP/AVP only)"
                )
                continue
            conn = m.connection or sdp.connection
            if conn is None:
                raise NotAcceptable("the audio stream has no connection address (c=)")
            _check_payload_types(m)
            return Offer(sdp, m, index, (_media_address(conn.address), m.port))
    raise refused or NotAcceptable("the offer has no audio stream")


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
    names = sorted({(c.encoding_name or str(c.payload_type)).upper()[:_ECHO] for c in offer.audio.codecs})
    offered = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
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


def build_offer(allowed: list[str], local: tuple[str, int], session: SessionVersion, *, wideband: bool = False) -> str:
    """Our offer (a call whose INVITE had none; a call we place): the codecs ``allowed`` in their order,
    or all we speak when empty — G.711 first, or G.722 first when ``wideband`` (a 16 kHz caller's far leg
    then needs no resampling when the far end takes it)."""
    names = [n for n in OFFER_ORDER if not allowed or n in allowed]
    if allowed:  # answer.codecs (connect.codecs) also decides the order
        names.sort(key=allowed.index)
    elif wideband:
        names.sort(key=lambda n: SUPPORTED[n].rate != 16000)
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
