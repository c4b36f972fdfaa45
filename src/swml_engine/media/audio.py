"""Decoding and resampling audio to the call's format (mono int16 at 8 or 16 kHz), with PyAV."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from swml_engine.media.frame import Frame, Samples, samples_per_frame


class AudioError(Exception):
    """Audio could not be decoded; the message says why in words a user understands."""


def _resampler(rate: int) -> object:
    import av

    return av.AudioResampler(format="s16", layout="mono", rate=rate)


def _collect(resampled: list[object], out: list[Samples]) -> None:
    for av_frame in resampled:
        arr = av_frame.to_ndarray()  # type: ignore[attr-defined]
        out.append(np.ascontiguousarray(arr.reshape(-1), dtype=np.int16))


def resample(samples: Samples, from_rate: int, to_rate: int) -> Samples:
    """Mono int16 at ``from_rate`` to mono int16 at ``to_rate``."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.int16, copy=False)
    import av

    av_frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
    av_frame.sample_rate = from_rate
    res = _resampler(to_rate)
    out: list[Samples] = []
    _collect(res.resample(av_frame), out)  # type: ignore[attr-defined]
    _collect(res.resample(None), out)  # type: ignore[attr-defined]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def decode(source: bytes | str | Path, rate: int, *, max_seconds: float = 4 * 3600) -> Samples:
    """Decode any audio file FFmpeg reads (wav, mp3, mp4/aac, ogg, ...) to mono int16 at ``rate``."""
    import av

    target: object = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        container = av.open(target, mode="r", options={"probesize": "65536"})
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise AudioError(f"not a readable audio file ({_reason(e)})") from None
    try:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioError("the file has no audio stream")
        res = _resampler(rate)
        out: list[Samples] = []
        limit = int(max_seconds * rate)
        total = 0
        try:
            for av_frame in container.decode(streams[0]):
                av_frame.pts = None  # let the resampler keep its own timeline
                before = len(out)
                _collect(res.resample(av_frame), out)  # type: ignore[attr-defined]
                total += sum(len(o) for o in out[before:])
                if total > limit:
                    raise AudioError(f"the audio is longer than {max_seconds:.0f} s")
            _collect(res.resample(None), out)  # type: ignore[attr-defined]
        except av.error.FFmpegError as e:
            if not out:
                raise AudioError(f"the audio cannot be decoded ({_reason(e)})") from None
            # A damaged tail: keep what decoded, as a player would.
    finally:
        container.close()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).strip() or type(e).__name__


def frames_of(samples: Samples, rate: int) -> Iterator[Frame]:
    """Cut samples into 20 ms frames; the last one is padded with silence."""
    n = samples_per_frame(rate)
    for start in range(0, len(samples), n):
        chunk = samples[start : start + n]
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), dtype=np.int16)])
        yield chunk
