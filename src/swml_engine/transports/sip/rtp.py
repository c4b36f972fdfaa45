"""RTP packets (RFC 3550): parse what a peer sends, build what we send.

Parsing never raises on hostile input: anything that is not a well-formed RTP version 2 packet comes
back as ``None`` and is counted by the caller, so a flood of junk at a media port costs a few
microseconds per packet and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
HEADER_SIZE = _HEADER.size


@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def serialize(self) -> bytes:
        return (
            _HEADER.pack(
                0x80,
                (0x80 if self.marker else 0) | (self.payload_type & 0x7F),
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc,
            )
            + self.payload
        )


def parse_rtp(data: bytes) -> RtpPacket | None:
    """The packet in ``data``, or None when it is not valid RTP (wrong version, lengths that do not add up)."""
    size = len(data)
    if size < HEADER_SIZE:
        return None
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        return None
    pt = b1 & 0x7F
    if 72 <= pt <= 76:  # RTCP sent to the RTP port (RFC 5761 range): not media
        return None
    offset = HEADER_SIZE + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if size < offset + 4:
            return None
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = size
    if b0 & 0x20:  # padding: the last byte says how much
        pad = data[-1]
        if pad == 0 or offset + pad > size:
            return None
        end -= pad
    if offset > end:
        return None
    return RtpPacket(pt, seq, ts, ssrc, bytes(data[offset:end]), bool(b1 & 0x80))


def seq_delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_delta(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, signed."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000
