"""Streaming rate conversion between the call rates (8 kHz G.711, 16 kHz G.722), frame by frame.

A filter that keeps its history across frames, so a stream converted 20 ms at a time has no seam at
the frames' edges (a conversion of each frame on its own leaves a step there: a 50 Hz buzz). Used
where two rates meet while audio flows: the two legs of a bridge, and a leg whose codec changed rate
mid-call while its call keeps the first one (a recording runs).
"""

from __future__ import annotations

from math import gcd

import numpy as np
import numpy.typing as npt

from swml_engine.media.frame import Frame

#: Taps of the resampling filter: the passband keeps the telephone band (to 85 % of the lower
#: Nyquist frequency), the stopband is ~50 dB down; its delay is (taps - 1) / 2 samples at the
#: upsampled rate (1.44 ms between 8 and 16 kHz).
RESAMPLER_TAPS = 47


class StreamResampler:
    """Mono int16 at one rate to another, frame by frame, with no gap or click between frames
    (the filter keeps its history). Each input of ``n`` samples gives exactly ``n * to / from``."""

    def __init__(self, from_rate: int, to_rate: int, taps: int = RESAMPLER_TAPS) -> None:
        common = gcd(from_rate, to_rate)
        self.from_rate, self.to_rate = from_rate, to_rate
        self._up, self._down = to_rate // common, from_rate // common
        cutoff = 0.85 * min(from_rate, to_rate) / 2 / (from_rate * self._up)  # cycles per upsampled sample
        n = np.arange(taps) - (taps - 1) / 2
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 5.0)
        self._h: npt.NDArray[np.float32] = (h * self._up / h.sum()).astype(np.float32)
        self._history = np.zeros(taps - 1, dtype=np.float32)

    @property
    def delay(self) -> float:
        """The filter's delay in seconds."""
        return (len(self._h) - 1) / 2 / (self.from_rate * self._up)

    def __call__(self, samples: Frame) -> Frame:
        up = np.zeros(len(samples) * self._up, dtype=np.float32)
        up[:: self._up] = samples
        buf = np.concatenate([self._history, up])
        self._history = buf[len(buf) - len(self._history) :]
        y = np.convolve(buf, self._h, mode="valid")[:: self._down]
        out: Frame = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return out


class RateConverter:
    """One stream's conversion, whatever rates it is asked for: a new filter when either changes
    (a codec chosen or changed by a re-INVITE), none while they are equal."""

    def __init__(self) -> None:
        self._resampler: StreamResampler | None = None

    def __call__(self, samples: Frame, from_rate: int, to_rate: int) -> Frame:
        if from_rate == to_rate:
            return samples
        r = self._resampler
        if r is None or r.from_rate != from_rate or r.to_rate != to_rate:
            r = self._resampler = StreamResampler(from_rate, to_rate)
        return r(samples)
