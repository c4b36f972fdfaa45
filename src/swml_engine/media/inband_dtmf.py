"""DTMF digits heard as tones in the audio (in-band), for callers that do not send RFC 4733 events.

Each 20 ms frame is measured at the eight DTMF frequencies (a DFT at exactly those frequencies, one
matrix product per frame). A frame holds a digit when one low-group and one high-group tone carry
most of its energy, at a plausible level and twist, each clearly above its group's other tones.
Speech rarely puts that much energy into two such pure tones; requiring it in two consecutive frames
(40 ms, the shortest digit ITU-T Q.24 lets a receiver accept) keeps speech from triggering it. A digit is
reported once per key press: another needs two frames without it first (a lost packet inside a long
tone does not make the digit twice).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

LOW = (697.0, 770.0, 852.0, 941.0)
HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")

#: Share of the frame's energy the two tones must carry together.
MIN_TONE_SHARE = 0.7
#: Weakest frame RMS taken as a tone (int16 units; about -45 dBFS).
MIN_RMS = 180.0
#: Power of the high tone over the low one: ITU-T Q.24 allows 4 dB normal and 8 dB reverse twist.
MAX_TWIST = (10 ** (-8 / 10), 10 ** (4 / 10))
#: The strongest tone of a group over the next one in that group.
MIN_GROUP_MARGIN = 4.0
FRAMES_TO_ACCEPT = 2
FRAMES_TO_RELEASE = 2


class InbandDtmfDetector:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._basis: dict[int, npt.NDArray[np.float32]] = {}
        self._candidate = ""
        self._seen = 0
        self._reported = ""
        self._quiet = 0

    def _basis_for(self, n: int) -> npt.NDArray[np.float32]:
        """Cosines and sines of the eight frequencies over ``n`` samples, stacked: one product per frame."""
        basis = self._basis.get(n)
        if basis is None:
            t = np.arange(n) / self.rate
            freqs = np.array(LOW + HIGH)[:, None]
            basis = np.vstack([np.cos(2 * np.pi * freqs * t), np.sin(2 * np.pi * freqs * t)]).astype(np.float32)
            self._basis[n] = basis
        return basis

    def digit_in(self, frame: npt.NDArray[np.int16]) -> str:
        """The digit whose tones fill this one frame, or ''."""
        n = len(frame)
        if n == 0:
            return ""
        x = frame.astype(np.float32)
        energy = float(x @ x)
        if energy < MIN_RMS * MIN_RMS * n:
            return ""
        projected = self._basis_for(n) @ x
        scale = 2 / (n * energy)  # a pure tone filling the frame gives a share of about 1
        # The eight shares together, in one product: most audio ends here (little of it at DTMF
        # frequencies), before the per-tone work below. A far leg streaming voice or music runs this
        # every frame, so it is kept to four numpy calls.
        if float(projected @ projected) * scale < MIN_TONE_SHARE:
            return ""
        # Small arrays: numpy calls cost more than the arithmetic, so the eight values go to Python.
        p = projected.tolist()
        share = [(p[i] * p[i] + p[i + 8] * p[i + 8]) * scale for i in range(8)]
        lows, highs = share[:4], share[4:]
        low, high = max(lows), max(highs)
        li, hi = lows.index(low), highs.index(high)
        if low + high < MIN_TONE_SHARE:
            return ""
        if not MAX_TWIST[0] <= high / max(low, 1e-12) <= MAX_TWIST[1]:
            return ""
        lows[li] = highs[hi] = 0.0
        if max(lows) * MIN_GROUP_MARGIN > low or max(highs) * MIN_GROUP_MARGIN > high:
            return ""
        return KEYS[li][hi]

    def feed(self, frame: npt.NDArray[np.int16]) -> str | None:
        """Take the next frame; returns a digit the moment a key press is established."""
        digit = self.digit_in(frame)
        if not digit:
            self._seen = 0
            self._candidate = ""
            self._quiet += 1
            if self._quiet >= FRAMES_TO_RELEASE:
                self._reported = ""
            return None
        self._quiet = 0
        if digit != self._candidate:
            self._candidate, self._seen = digit, 0
        self._seen += 1
        if self._seen >= FRAMES_TO_ACCEPT and digit != self._reported:
            self._reported = digit
            return digit
        return None
