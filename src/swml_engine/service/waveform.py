"""A recording's waveform for the console: per channel, the lowest and highest sample of each of N equal
spans of the recording (``GET /api/recordings/{id}/waveform?points=N``).

Computed on request, never stored: a cache file beside the metadata would outlive an upload to the
bucket (the spool copy goes) and a delete would have one more file to find. What bounds the cost
instead: one waveform is decoded at a time per worker (:data:`DECODERS`; the others wait their turn),
on a thread, so the event loop and the calls' media never wait on it; the result (at most
:data:`MAX_POINTS` pairs per channel) is kept for the last :data:`CACHED` recordings asked for, keyed
by their size, so a page opened again costs nothing. Decoding is PyAV's (WAV, MP3, MP4 alike);
audio that is not a plain local file — in the bucket, or sealed (encrypted) — is first copied,
decrypted by its :class:`~swml_engine.service.storage.AudioSource`, to a temporary file in the
recordings directory (disk, not memory, holds it), removed right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from swml_engine.service.storage import AudioSource, LocalAudio

#: The most points a request may ask for (a wide screen's pixels), and the default.
MAX_POINTS = 2000
DEFAULT_POINTS = 800
#: Waveforms decoded at once per worker.
DECODERS = 1
#: Waveforms remembered (each at most 2 channels x 2 x MAX_POINTS numbers: under 100 kB).
CACHED = 32

_Key = tuple[str, int, int]  # recording id, its size, points


class WaveformError(Exception):
    """The audio could not be decoded (a damaged file)."""


class Peaks:
    """The running lowest and highest sample per span and channel, for a recording of ``total`` samples
    per channel (samples past it, as an MP3's padding, count in the last span)."""

    def __init__(self, channels: int, points: int, total: int) -> None:
        self.points = points
        self.total = max(1, total)
        self.low = np.zeros((channels, points), dtype=np.float32)
        self.high = np.zeros((channels, points), dtype=np.float32)
        self._at = 0

    def add(self, samples: npt.NDArray[np.float32]) -> None:
        """``samples``: (channels, n) floats in -1..1, the next n of the recording."""
        n = samples.shape[1]
        if n == 0:
            return
        span = np.minimum(
            np.arange(self._at, self._at + n, dtype=np.int64) * self.points // self.total, self.points - 1
        )
        self._at += n
        starts = np.flatnonzero(np.diff(span, prepend=-1))  # where each span present begins
        which = span[starts]
        channels = min(samples.shape[0], self.low.shape[0])
        for c in range(channels):
            self.low[c, which] = np.minimum(self.low[c, which], np.minimum.reduceat(samples[c], starts))
            self.high[c, which] = np.maximum(self.high[c, which], np.maximum.reduceat(samples[c], starts))


def _decode(path: Path, meta: dict[str, Any], points: int) -> dict[str, Any]:
    """The waveform of an audio file (runs on a thread)."""
    layout: dict[str, str] = meta.get("channel_layout") or {}
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or int(meta.get("sample_rate") or 8000)
        channels = stream.codec_context.channels or len(layout) or 1
        duration = float(meta.get("duration") or 0) or float(container.duration or 0) / av.time_base
        peaks = Peaks(channels, points, round(duration * rate))
        planar = av.AudioResampler(format="fltp", rate=rate)
        for frame in container.decode(stream):
            for converted in planar.resample(frame):
                peaks.add(converted.to_ndarray().astype(np.float32, copy=False))
    labels = list(layout.items()) or [("mono", "speak+listen")]
    if len(labels) != channels:
        labels = [("mono", "speak+listen")] if channels == 1 else [(f"channel {c + 1}", "") for c in range(channels)]
    return {
        "duration": round(duration, 3),
        "points": points,
        "sample_rate": rate,
        "channels": [
            {
                "label": label,
                "role": role,
                "min": np.round(peaks.low[c].astype(np.float64), 4).tolist(),
                "max": np.round(peaks.high[c].astype(np.float64), 4).tolist(),
            }
            for c, (label, role) in enumerate(labels)
        ],
    }


class Waveforms:
    """One worker's waveform maker: its turn-taking and its cache (see the module's docstring)."""

    def __init__(self, decoders: int = DECODERS, cached: int = CACHED) -> None:
        self._turns = asyncio.Semaphore(decoders)
        self._cached = cached
        self._cache: OrderedDict[_Key, dict[str, Any]] = OrderedDict()

    async def of(self, source: AudioSource, meta: dict[str, Any], points: int, spool: Path) -> dict[str, Any]:
        """The waveform of ``source``; ``spool``: where a copy may be made (WaveformError: undecodable)."""
        key = (str(meta["recording_id"]), source.size, points)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        async with self._turns:
            try:
                result = await self._decode(source, meta, points, spool)
            except av.FFmpegError as e:
                raise WaveformError(f"the audio of recording {key[0]} cannot be decoded: {e}") from None
        if meta.get("end_reason") is not None:  # (a live recording grows: made again each time)
            self._cache[key] = result
            while len(self._cache) > self._cached:
                self._cache.popitem(last=False)
        return result

    @staticmethod
    async def _decode(source: AudioSource, meta: dict[str, Any], points: int, spool: Path) -> dict[str, Any]:
        if isinstance(source, LocalAudio):
            return await asyncio.to_thread(_decode, source.path, meta, points)
        copy = spool / f".waveform-{secrets.token_hex(8)}.{meta.get('format', 'wav')}"
        try:
            with copy.open("wb") as f:
                async for block in source.chunks(0, source.size):
                    await asyncio.to_thread(f.write, block)
            return await asyncio.to_thread(_decode, copy, meta, points)
        finally:
            with contextlib.suppress(OSError):
                copy.unlink()
