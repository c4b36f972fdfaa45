"""A simulated caller for ``swml run`` and the tests: scripted audio, key presses and hangup.

The caller's audio (``--caller-audio``) starts when the call is answered; digits (``--dtmf``) and the
hangup (``--hangup-at``) happen at fixed seconds from the start of the call. Everything the caller
hears is written to ``heard.wav`` from the first frame, so a time in ``events.jsonl`` is the same
time in ``heard.wav``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swml_engine.media.frame import Frame, Samples, samples_per_frame
from swml_engine.transports.base import Transport
from swml_engine.vocabulary import EndReason

#: Gap between digits pressed in one group (``--dtmf 3:123``).
DIGIT_GAP = 0.25
_DTMF_ITEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*([0-9A-Da-d*#]+)\s*$")


def parse_dtmf_schedule(text: str) -> list[tuple[float, str]]:
    """``"3:12#,10.5:9"`` → [(3.0, '1'), (3.25, '2'), (3.5, '#'), (10.5, '9')]; ValueError says what is wrong."""
    out: list[tuple[float, str]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _DTMF_ITEM.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not T:DIGITS (seconds, a colon, then digits 0-9 * # A-D)")
        t = float(m.group(1))
        out.extend((t + i * DIGIT_GAP, d.upper()) for i, d in enumerate(m.group(2)))
    return sorted(out)


@dataclass
class CallerScript:
    audio: Samples | None = None  # mono int16 at the call's rate, starts at answer
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    hangup_at: float | None = None


#: Audio bytes a plain WAV can hold (its sizes are 32-bit).
_WAV_LIMIT = 0xFFFFFFFF - 64


class HeardWriter:
    """Writes what the caller hears to a mono 16-bit WAV, a second at a time (flat memory).

    A failed write (a full disk) stops the file where it is and says so once in :attr:`error`; the call
    goes on, it only loses its transcript of what was heard.
    """

    def __init__(self, path: Path, rate: int) -> None:
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)
        self._pending: list[Frame] = []
        self._bytes = 0
        self.error: str | None = None

    def write(self, frame: Frame) -> None:
        if self.error is None:
            self._pending.append(frame)
            if len(self._pending) >= 50:
                self.flush()

    def flush(self) -> None:
        if self._pending:
            data = np.concatenate(self._pending).astype("<i2").tobytes()
            self._pending.clear()
            self._bytes += len(data)
            if self._bytes > _WAV_LIMIT:
                self.error = (
                    "heard.wav reached the 4 GiB a WAV file can hold; what the caller heard is no longer written"
                )
                return
            try:
                self._wav.writeframes(data)
            except OSError as e:
                self.error = f"heard.wav: {e.strerror or e}; what the caller heard is no longer written"

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(OSError):
            self._wav.close()


class SimulatedTransport(Transport):
    kind = "phone"

    def __init__(self, rate: int = 8000, script: CallerScript | None = None, heard: Path | None = None) -> None:
        self.rate = rate
        self.script = script or CallerScript()
        self._heard = HeardWriter(heard, rate) if heard is not None else None
        self._pos: int | None = None  # position in the caller's audio once answered
        self._n = samples_per_frame(rate)
        self._timers: list[asyncio.TimerHandle] = []
        self.sent_digits: list[str] = []
        self.answered = False
        self.hangup_reason: EndReason | None = None

    def on_call_start(self) -> None:
        call = self.call
        assert call is not None
        loop = call.loop
        t0 = loop.time() - call.now()  # the call's start on the loop's clock
        for t, digit in self.script.dtmf:
            self._timers.append(loop.call_at(t0 + t, call.on_dtmf, digit))
        if self.script.hangup_at is not None:
            self._timers.append(loop.call_at(t0 + self.script.hangup_at, call.on_remote_hangup, "hangup"))

    def read_speak(self) -> Frame | None:
        audio = self.script.audio
        if self._pos is None or audio is None or self._pos >= len(audio):
            return None
        frame = audio[self._pos : self._pos + self._n]
        self._pos += self._n
        if len(frame) < self._n:
            frame = np.concatenate([frame, np.zeros(self._n - len(frame), dtype=np.int16)])
        return frame

    def write_listen(self, frame: Frame) -> None:
        heard = self._heard
        if heard is not None:
            heard.write(frame)
            if heard.error is not None and self.call is not None:
                self.call.events.emit("error", where="heard.wav", message=heard.error)
                heard.close()
                self._heard = None

    async def answer(self) -> None:
        self.answered = True
        self._pos = 0

    async def hangup(self, reason: EndReason) -> None:
        self.hangup_reason = reason

    async def send_dtmf(self, digit: str, duration: float) -> None:
        self.sent_digits.append(digit)
        await asyncio.sleep(duration)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._heard is not None:
            self._heard.close()
            self._heard = None
