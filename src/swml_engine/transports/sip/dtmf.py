"""DTMF as RFC 4733 telephone-events: decode a peer's digits once each, encode ours.

A sender repeats each event every packet while the key is down and sends its end packet three times;
all of them carry the event's start timestamp. So one digit is one (SSRC, timestamp) pair, and we
report it on the first packet we see of it — a lost start or lost end packet still gives the digit
exactly once.
"""

from __future__ import annotations

import struct
from collections import deque

EVENTS = "0123456789*#ABCD"
_EVENT = struct.Struct("!BBH")


def event_code(digit: str) -> int:
    return EVENTS.index(digit.upper())


def encode_event(code: int, end: bool, duration: int, volume: int = 10) -> bytes:
    return _EVENT.pack(code, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


class DtmfReceiver:
    """Turns telephone-event payloads into digits, one per event."""

    def __init__(self) -> None:
        # Recent events; a short memory is enough since repeats arrive within a second.
        self._seen: deque[tuple[int, int]] = deque(maxlen=32)

    def receive(self, ssrc: int, timestamp: int, payload: bytes) -> str | None:
        """The digit this packet starts, or None (a repeat, an end packet of a known event, not a digit)."""
        if len(payload) < 4:
            return None
        code, _flags, _duration = _EVENT.unpack_from(payload)
        if code >= len(EVENTS):
            return None  # flash hook, tones: not a digit
        key = (ssrc, timestamp)
        if key in self._seen:
            return None
        self._seen.append(key)
        return EVENTS[code]
