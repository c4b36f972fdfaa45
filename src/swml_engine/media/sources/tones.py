"""Generated sounds: silence, ring-back tones by country, the record beep."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from swml_engine.media.audio import frames_of
from swml_engine.media.frame import Frame, Samples, frames_for, samples_per_frame, silence
from swml_engine.media.inband_dtmf import HIGH, KEYS, LOW

BEEP_HZ = 1000.0
BEEP_SECONDS = 0.25
_LEVEL = 0.25  # peak of a tone, as a fraction of full scale (about -12 dBFS)


@dataclass(frozen=True)
class Cadence:
    freqs: tuple[float, ...]
    #: Alternating on/off durations in seconds, starting with a tone.
    pattern: tuple[float, ...]

    @property
    def period(self) -> float:
        return sum(self.pattern)


# Ring-back tones (ITU-T E.180 and national specifications). "ring:us" plays one period.
RING_CADENCES: dict[str, Cadence] = {
    "us": Cadence((440.0, 480.0), (2.0, 4.0)),
    "ca": Cadence((440.0, 480.0), (2.0, 4.0)),
    "gb": Cadence((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "uk": Cadence((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "ie": Cadence((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "au": Cadence((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "nz": Cadence((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "de": Cadence((425.0,), (1.0, 4.0)),
    "at": Cadence((420.0,), (1.0, 5.0)),
    "ch": Cadence((425.0,), (1.0, 4.0)),
    "fr": Cadence((440.0,), (1.5, 3.5)),
    "be": Cadence((425.0,), (1.0, 3.0)),
    "nl": Cadence((425.0,), (1.0, 4.0)),
    "it": Cadence((425.0,), (1.0, 4.0)),
    "es": Cadence((425.0,), (1.5, 3.0)),
    "pt": Cadence((425.0,), (1.0, 5.0)),
    "se": Cadence((425.0,), (1.0, 5.0)),
    "no": Cadence((425.0,), (1.0, 4.0)),
    "dk": Cadence((425.0,), (1.0, 4.0)),
    "fi": Cadence((425.0,), (1.0, 4.0)),
    "pl": Cadence((425.0,), (1.0, 4.0)),
    "ru": Cadence((425.0,), (0.8, 3.2)),
    "br": Cadence((425.0,), (1.0, 4.0)),
    "mx": Cadence((425.0,), (1.0, 4.0)),
    "ar": Cadence((425.0,), (1.0, 4.0)),
    "in": Cadence((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "jp": Cadence((400.0,), (1.0, 2.0)),
    "cn": Cadence((450.0,), (1.0, 4.0)),
}


def tone(freqs: tuple[float, ...], seconds: float, rate: int, level: float = _LEVEL) -> Samples:
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) / max(1, len(freqs))
    # 5 ms ramps at both ends so the tone starts and stops without a click.
    ramp = min(n // 2, round(0.005 * rate))
    if ramp > 0:
        env = np.ones(n)
        env[:ramp] = np.linspace(0.0, 1.0, ramp)
        env[-ramp:] = np.linspace(1.0, 0.0, ramp)
        wave = wave * env
    return (np.asarray(wave) * level * 32767).astype(np.int16)


@cache
def _period_samples(country: str, rate: int) -> Samples:
    cadence = RING_CADENCES[country]
    parts: list[Samples] = []
    for i, seconds in enumerate(cadence.pattern):
        if i % 2 == 0:
            parts.append(tone(cadence.freqs, seconds, rate))
        else:
            parts.append(np.zeros(round(seconds * rate), dtype=np.int16))
    out = np.concatenate(parts)
    out.flags.writeable = False
    return out


def ring_frames(country: str, seconds: float | None, rate: int) -> Iterator[Frame]:
    """``seconds`` None plays one ring period."""
    period = _period_samples(country, rate)
    total = len(period) if seconds is None else round(seconds * rate)
    n = samples_per_frame(rate)
    pos = 0
    while pos < total:
        idx = (np.arange(pos, min(pos + n, total)) % len(period)).astype(np.int64)
        frame = period[idx]
        if len(frame) < n:
            frame = np.concatenate([frame, np.zeros(n - len(frame), dtype=np.int16)])
        yield frame
        pos += n


def silence_frames(seconds: float, rate: int) -> Iterator[Frame]:
    frame = silence(rate)
    for _ in range(frames_for(seconds)):
        yield frame


def beep_frames(rate: int) -> Iterator[Frame]:
    return frames_of(tone((BEEP_HZ,), BEEP_SECONDS, rate, level=0.3), rate)


def dtmf_frames(digit: str, seconds: float, rate: int) -> Iterator[Frame]:
    """The key's two DTMF tones (in-band digits, for a peer that takes no RFC 4733 events)."""
    row = next(i for i, keys in enumerate(KEYS) if digit in keys)
    return frames_of(tone((LOW[row], HIGH[KEYS[row].index(digit)]), seconds, rate, level=0.5), rate)
