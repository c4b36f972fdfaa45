"""Audio as numpy int16 arrays, and its two names.

* :data:`Samples` — any number of 16-bit samples: a sound, a decoded file, a resampled block
  (mono; the recording writers also take interleaved stereo as shape ``(n, 2)``).
* :data:`Frame` — exactly 20 ms of mono samples at the call's rate: what the media tick moves from the
  transport to the taps and from the players to the transport, one per tick.

(A running section of a script is a :class:`~swml_engine.script.step.SectionRun`, not a frame.)
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

FRAME_SECONDS = 0.02
FRAMES_PER_SECOND = 50

Samples = npt.NDArray[np.int16]
Frame = Samples


def samples_per_frame(rate: int) -> int:
    return rate // FRAMES_PER_SECOND


@cache
def silence(rate: int) -> Frame:
    """A shared, read-only silent frame."""
    frame = np.zeros(samples_per_frame(rate), dtype=np.int16)
    frame.flags.writeable = False
    return frame


def frames_for(seconds: float) -> int:
    """Whole frames covering ``seconds`` (rounded to the nearest frame)."""
    return max(0, round(seconds * FRAMES_PER_SECOND))


def gain(frame: Frame, factor: float) -> Frame:
    """Scale a frame, clipping to int16 instead of wrapping around."""
    if factor == 1.0:
        return frame
    scaled = np.clip(frame.astype(np.float32) * factor, -32768, 32767)
    out: Frame = scaled.astype(np.int16)
    return out


def mix(a: Frame, b: Frame) -> Frame:
    """Sum two frames, clipped."""
    # ufuncs directly: np.clip's Python wrapper costs more than the arithmetic on 160 samples
    total = np.add(a, b, dtype=np.int32)
    np.minimum(total, 32767, out=total)
    np.maximum(total, -32768, out=total)
    out: Frame = total.astype(np.int16)
    return out
