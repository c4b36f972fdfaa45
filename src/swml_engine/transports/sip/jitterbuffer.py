"""A jitter buffer on the RTP timestamp line: packets land where their timestamp says, frames leave at 20 ms.

Working by timestamp rather than by packet makes packet size irrelevant (a peer sending 30 ms packets
fills 20 ms frames just the same), puts reordered packets in their place, and turns a lost packet
into silence of exactly its length — the frame count on our side never depends on what arrived, so
recordings keep the call's full length. A new SSRC, or a timestamp jump no reordering explains,
starts a new timeline at the current playout point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swml_engine.transports.sip.codecs import Samples
from swml_engine.transports.sip.rtp import ts_delta


@dataclass
class JitterStats:
    packets: int = 0
    late: int = 0  # arrived after their audio was played out (counted, dropped)
    resyncs: int = 0  # new SSRC or timestamp jump
    concealed_frames: int = 0  # frames with a gap filled by silence


class JitterBuffer:
    def __init__(self, rate: int, clock_rate: int = 8000, *, delay: float = 0.06, capacity: float = 1.0) -> None:
        self.rate = rate
        self.frame = rate // 50
        #: Timestamp units to samples (G.722: 8000 Hz clock for 16 kHz audio).
        self._scale = rate / clock_rate
        self.delay = round(delay * rate)
        self.size = round(capacity * rate)
        #: Beyond this much queued audio the sender runs fast (or burst after a stall): skip ahead.
        self.max_depth = self.delay + round(0.2 * rate)
        self._buf = np.zeros(self.size, dtype=np.int16)
        self._filled = np.zeros(self.size, dtype=bool)
        self.read_pos = 0  # absolute sample index of the next frame out
        self._started = False
        self._ssrc: int | None = None
        self._last_ts = 0
        self._last_pos = 0
        self._high = 0  # end of the latest audio written
        self.stats = JitterStats()

    def _resync(self, ssrc: int, ts: int) -> None:
        self._ssrc = ssrc
        self._last_ts = ts
        self._last_pos = self.read_pos + self.delay
        if self._started:
            self.stats.resyncs += 1
        self._started = True

    def push(self, ssrc: int, timestamp: int, samples: Samples) -> None:
        self.stats.packets += 1
        n = len(samples)
        if n == 0:
            return
        if ssrc != self._ssrc:
            self._resync(ssrc, timestamp)
        pos = self._last_pos + round(ts_delta(timestamp, self._last_ts) * self._scale)
        if pos > self.read_pos + self.size - n or pos + n < self.read_pos - self.size:
            # Far ahead or far behind: the sender restarted its timeline (not jitter).
            self._resync(ssrc, timestamp)
            pos = self._last_pos
        else:
            self._last_ts, self._last_pos = timestamp, pos
        if pos + n <= self.read_pos:
            self.stats.late += 1
            return
        if pos < self.read_pos:  # partly late: keep the part still to come
            samples = samples[self.read_pos - pos :]
            pos = self.read_pos
            n = len(samples)
        start = pos % self.size
        first = min(n, self.size - start)
        self._buf[start : start + first] = samples[:first]
        self._filled[start : start + first] = True
        if first < n:
            self._buf[: n - first] = samples[first:]
            self._filled[: n - first] = True
        self._high = max(self._high, pos + n)
        if self._high - self.read_pos > self.max_depth:
            self._skip_to(self._high - self.delay)

    def skip(self, frames: int) -> None:
        """Drop ``frames`` frames of playout (the call skipped that many ticks)."""
        if self._started:
            self._skip_to(self.read_pos + frames * self.frame)

    def _skip_to(self, pos: int) -> None:
        while self.read_pos + self.frame <= pos:
            self._take()

    def _take(self) -> tuple[Samples, bool]:
        start = self.read_pos % self.size
        end = start + self.frame
        if end <= self.size:
            frame = self._buf[start:end].copy()
            filled = self._filled[start:end]
            complete = bool(filled.all())
            if not complete:
                frame[~filled] = 0
            self._filled[start:end] = False
        else:  # the frame wraps around the ring
            idx = np.arange(start, end) % self.size
            frame = self._buf[idx]
            filled = self._filled[idx]
            complete = bool(filled.all())
            frame[~filled] = 0
            self._filled[idx] = False
        self.read_pos += self.frame
        return frame, complete

    def pop(self) -> Samples | None:
        """The next 20 ms (gaps filled with silence), or None before the first packet arrived."""
        if not self._started:
            return None
        frame, complete = self._take()
        if not complete:
            self.stats.concealed_frames += 1
        return frame
