"""A jitter buffer on the RTP timestamp line: packets land where their timestamp says, frames leave at 20 ms.

Working by timestamp rather than by packet makes packet size irrelevant (a peer sending 30 ms packets
fills 20 ms frames just the same), puts reordered packets in their place, and turns a lost packet
into silence of exactly its length — the frame count on our side never depends on what arrived, so
recordings keep the call's full length. A new SSRC, a timestamp jump no reordering explains, or a run of
packets that all come too late (the sender fell behind the playout and stays there: it paused while
we played on, or a stalled machine skipped our ticks) starts a new timeline at the current playout point.

A sender whose clock runs fast or slow against ours (a few hundred ppm is common, 0.5% is seen) sends
more or less than a frame per tick: how much audio waits ahead of playout drifts a frame every few
seconds to minutes (a loop running late takes its frames late, and finds more waiting: that lateness
is not counted). Watched over each second, the wait is kept near the delay one frame at a time —
a frame dropped when even its shortest of the second was two frames over, a frame of silence played
when even its longest was a frame under while the sender sent all along — so the latency does not
grow (it grew to 200 ms over the delay, then 200 ms of audio were cut at once) nor run out (every few
seconds, late packets lost and a new timeline started).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from swml_engine.media.frame import Samples

#: Packets in a row that come after their audio was played: one or two are jitter (dropped); this many
#: mean the sender's timeline fell behind ours for good, and it is started again where we play.
LATE_RUN = 3
#: Frames over which the audio waiting ahead of playout is watched for a sender's clock drift (1 s).
DRIFT_WINDOW = 50
#: What a window found of the sender's clock against ours: ``fast`` (a frame was dropped), ``slow``
#: (a frame of silence is played), None: neither.
Drift = Literal["fast", "slow"] | None


@dataclass
class JitterStats:
    packets: int = 0
    late: int = 0  # arrived after their audio was played out (counted, dropped)
    resyncs: int = 0  # new SSRC or timestamp jump
    concealed_frames: int = 0  # frames with a gap filled by silence
    drift_dropped: int = 0  # frames dropped: the sender's clock runs fast (kept from adding latency)
    drift_filled: int = 0  # frames of silence played: the sender's clock runs slow (kept from running dry)


@dataclass(frozen=True, slots=True)
class Coded:
    """A packet kept as it came, decoded only when its audio is played: a codec with state between
    packets (G.722's ADPCM) must decode them in timestamp order, and a network reorders packets (one
    decoded out of turn threw the decoder off for the next few frames: clicks at 40% of the voice)."""

    payload: bytes
    samples: int  # how many samples it decodes to


class JitterBuffer:
    """Decoded packets kept by the absolute sample position their timestamp gives them.

    A packet that fills exactly the next frame (20 ms packets, in order or reordered within the delay:
    nearly every packet of nearly every call) is handed out as it is; only frames that take their audio
    from several packets, or from none, are assembled sample by sample.
    """

    def __init__(
        self,
        rate: int,
        clock_rate: int = 8000,
        *,
        delay: float = 0.06,
        capacity: float = 1.0,
        decode: Callable[[Coded], Samples] | None = None,
    ) -> None:
        self.rate = rate
        #: Decodes the :class:`Coded` packets pushed, in timestamp order (to exactly ``samples`` samples).
        self._decode = decode
        self.frame = rate // 50
        #: Timestamp units to samples (G.722: 8000 Hz clock for 16 kHz audio).
        self._scale = rate / clock_rate
        self.delay = round(delay * rate)
        self.size = round(capacity * rate)
        #: Beyond this much queued audio the sender runs fast (or burst after a stall): skip ahead.
        self.max_depth = self.delay + round(0.2 * rate)
        #: start position -> samples (or a packet still to decode); every key is at or after read_pos
        #: once a frame has been taken.
        self._chunks: dict[int, Samples | Coded] = {}
        self.read_pos = 0  # absolute sample index of the next frame out
        self._started = False
        self._ssrc: int | None = None
        self._last_ts = 0
        self._last_pos = 0
        self._high = 0  # end of the latest audio written
        self._purge_at = 64
        self._late_run = 0  # packets in a row that came too late
        #: This window's frames so far, the least and most audio waiting ahead of playout at their take,
        #: and whether every one of them was whole (the sender sent all along).
        self._window = 0
        self._least = self._most = 0
        self._whole = True
        self.stats = JitterStats()

    def _resync(self, ssrc: int, ts: int) -> None:
        self._ssrc = ssrc
        self._last_ts = ts
        self._last_pos = self.read_pos + self.delay
        if self._started:
            self.stats.resyncs += 1
        self._started = True

    def push(self, ssrc: int, timestamp: int, samples: Samples | Coded) -> None:
        self.stats.packets += 1
        n = samples.samples if isinstance(samples, Coded) else len(samples)
        if n == 0:
            return
        if ssrc != self._ssrc:
            self._resync(ssrc, timestamp)
        delta = ((timestamp - self._last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000  # ts_delta, inline
        pos = self._last_pos + (delta if self._scale == 1 else round(delta * self._scale))
        read_pos = self.read_pos
        if pos > read_pos + self.size - n or pos + n < read_pos - self.size:
            # Far ahead or far behind: the sender restarted its timeline (not jitter).
            self._resync(ssrc, timestamp)
            pos = self._last_pos
        else:
            self._last_ts, self._last_pos = timestamp, pos
        if pos + n <= read_pos:
            self._late_run += 1
            if self._late_run < LATE_RUN:
                self.stats.late += 1
                return
            self._resync(ssrc, timestamp)  # fell behind for good: heard again from here, after the delay
            pos = self._last_pos
        self._late_run = 0
        if pos < read_pos:  # partly late: keep the part still to come
            samples = self._decoded(samples)[read_pos - pos :]
            pos = read_pos
            n = len(samples)
        self._chunks[pos] = samples
        if pos + n > self._high:
            self._high = pos + n
            if self._high - read_pos > self.max_depth:
                self._skip_to(self._high - self.delay)

    def skip(self, frames: int) -> None:
        """Drop ``frames`` frames of playout (the call skipped that many ticks)."""
        if self._started:
            self._skip_to(self.read_pos + frames * self.frame)

    def _decoded(self, samples: Samples | Coded) -> Samples:
        if not isinstance(samples, Coded):
            return samples
        assert self._decode is not None, "a Coded packet needs the buffer's decode"
        return self._decode(samples)

    @staticmethod
    def _length(samples: Samples | Coded) -> int:
        return samples.samples if isinstance(samples, Coded) else len(samples)

    def _skip_to(self, pos: int) -> None:
        """Move playout to the last frame boundary at or before ``pos``, dropping the audio before it."""
        new = self.read_pos + (pos - self.read_pos) // self.frame * self.frame
        chunks = self._chunks
        for key in sorted(k for k in chunks if k < new):
            samples = chunks.pop(key)
            if key + self._length(samples) > new:
                chunks.setdefault(new, self._decoded(samples)[new - key :])
            elif isinstance(samples, Coded):
                self._decoded(samples)  # not played, but decoded in turn: the decoder's state follows the stream
        self.read_pos = new

    def _take(self) -> tuple[Samples, bool]:
        start = self.read_pos
        end = start + self.frame
        self.read_pos = end
        chunks = self._chunks
        exact = chunks.pop(start, None)
        if isinstance(exact, Coded):
            exact = self._decoded(exact)
        if exact is not None and len(exact) == self.frame:
            if len(chunks) > self._purge_at:  # a sender whose packets overlap leaves stale pieces behind
                self._skip_to(end)
                self._purge_at = max(64, 2 * len(chunks))
            return exact, True
        if exact is not None:
            chunks[start] = exact
        # Assembled from the pieces that overlap this frame (30 ms packets, losses, odd sizes).
        frame = np.zeros(self.frame, dtype=np.int16)
        filled = np.zeros(self.frame, dtype=bool)
        for key in sorted(k for k in chunks if k < end):
            stop = key + self._length(chunks[key])
            if stop <= start:
                del chunks[key]
                continue  # overtaken by another packet for the same time
            samples = self._decoded(chunks.pop(key))
            a, b = max(key, start), min(stop, end)
            frame[a - start : b - start] = samples[a - key : b - key]
            filled[a - start : b - start] = True
            if stop > end:
                chunks.setdefault(end, samples[end - key :])
        return frame, bool(filled.all())

    def pop(self, late: float = 0.0) -> Samples | None:
        """The next 20 ms (gaps filled with silence), or None before the first packet arrived. ``late``:
        how long after its due time this frame is taken (a busy loop), whose packets are not the
        sender's running ahead."""
        if not self._started:
            return None
        if self._drift(round(late * self.rate)) == "slow":
            self.stats.drift_filled += 1
            return np.zeros(self.frame, dtype=np.int16)  # read_pos stays: the sender's audio waits a frame more
        frame, complete = self._take()
        if not complete:
            self.stats.concealed_frames += 1
            self._whole = False
        return frame

    def _drift(self, late: int) -> Drift:
        """Once a window: ``fast`` (a frame was dropped) or ``slow`` (play a frame of silence), else None.
        ``late``: samples of audio that came while this frame's take was overdue (not counted)."""
        waiting = self._high - self.read_pos - late
        if self._window == 0:
            self._least = self._most = waiting
            self._whole = True
        else:
            self._least = min(self._least, waiting)
            self._most = max(self._most, waiting)
        self._window += 1
        if self._window < DRIFT_WINDOW:
            return None
        self._window = 0
        if self._least >= self.delay + 2 * self.frame:
            self._skip_to(self.read_pos + self.frame)
            self.stats.drift_dropped += 1
            return "fast"
        if self._most <= self.delay - self.frame and self._whole:
            return "slow"
        return None
