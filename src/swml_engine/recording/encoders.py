"""Streaming writers for recordings: WAV (RF64 past 4 GB), MP3 (lameenc), AAC in fragmented MP4 (PyAV).

Each writer takes 16-bit PCM frames (mono, or interleaved stereo) and puts them on disk as the call goes,
so memory stays flat however long the call, and a process killed mid-recording leaves a file that holds
all audio up to the last flush (at most :data:`FLUSH_SECONDS` before the kill). ``recovery.py`` repairs
such files.
"""

from __future__ import annotations

import os
import struct
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from swml_engine.media.frame import Frame

#: How often a writer pushes its data to the OS (and a WAV writer rewrites its header).
FLUSH_SECONDS = 0.5
FORMATS = ("wav", "mp3", "mp4")

Pcm = npt.NDArray[np.int16]  # shape (n,) mono or (n, 2) stereo


class EncoderError(Exception):
    """The recording could not be written (disk full, unwritable directory...)."""


class Writer(ABC):
    """Collects frames in a block of :data:`FLUSH_SECONDS` and hands the block to the format's encoder.

    One encoder call and one file write per half second instead of per 20 ms frame is most of what
    makes a recording cheap on a loaded server; the block is also the unit of the crash promise (what
    was handed over before a kill is on disk).
    """

    #: The file name extension, and the format name in metadata.
    format: str

    def __init__(self, path: Path, rate: int, channels: int) -> None:
        self.path = path
        self.rate = rate
        self.channels = channels
        self.samples = 0  # per channel, including what is still in the block
        size = max(1, round(rate * FLUSH_SECONDS))
        self._block: Pcm = np.zeros((size, 2) if channels == 2 else size, dtype=np.int16)
        self._fill = 0

    @property
    def duration(self) -> float:
        return self.samples / self.rate

    def write(self, pcm: Pcm) -> None:
        """Append mono ``(n,)`` or interleaved stereo ``(n, 2)`` samples."""
        n = pcm.shape[0]
        if n > len(self._block):  # a long gap of silence: straight to the encoder
            self._drain()
            self._encode(pcm)
            self.samples += n
            return
        self._room(n)[:] = pcm
        self._advance(n)

    def write_channels(self, left: Frame | None, right: Frame | None) -> None:
        """Append one stereo frame from its two mono sides (None: that side is silent)."""
        n = len(left if left is not None else right if right is not None else ())
        part = self._room(n)
        part[:, 0] = 0 if left is None else left
        part[:, 1] = 0 if right is None else right
        self._advance(n)

    def close(self) -> Path:
        """Finish the file; returns its final path."""
        self._drain()
        try:
            return self._finish()
        except OSError as e:
            raise self._failed(e) from None

    def _room(self, n: int) -> Pcm:
        """The block's next ``n`` samples to fill (the block is handed over first if they do not fit)."""
        if self._fill + n > len(self._block):
            self._drain()
        return self._block[self._fill : self._fill + n]

    def _advance(self, n: int) -> None:
        self._fill += n
        self.samples += n
        if self._fill == len(self._block):
            self._drain()

    def _drain(self) -> None:
        if self._fill:
            fill, self._fill = self._fill, 0
            self._encode(self._block[:fill])

    def _encode(self, pcm: Pcm) -> None:
        try:
            self._write(pcm)
            self.flush()
        except OSError as e:
            raise self._failed(e) from None

    def _failed(self, e: OSError) -> EncoderError:
        return EncoderError(f"cannot write {self.path.name}: {e.strerror or e}")

    @abstractmethod
    def _write(self, pcm: Pcm) -> None:
        """Encode and write ``pcm`` (a view of the block: copy what must outlive the call)."""

    @abstractmethod
    def flush(self) -> None:
        """Push what was written to the OS (and keep the file valid as it stands)."""

    @abstractmethod
    def _finish(self) -> Path:
        """Close the file (the block is already written); returns its final path."""


# --- WAV -------------------------------------------------------------------------------------------

#: Header layout: RIFF, a 28-byte JUNK chunk reserved for the RF64 ds64 chunk, fmt, data.
WAV_HEADER = 80
_RIFF_LIMIT = 0xFFFFFFFF


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    """An 80-byte WAV header; past 4 GB the same bytes become RF64 (JUNK turns into ds64)."""
    block = channels * 2
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, rate, rate * block, block, 16)
    riff_size = WAV_HEADER - 8 + data_bytes
    if riff_size <= _RIFF_LIMIT:
        return (
            struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
            + struct.pack("<4sI", b"JUNK", 28)
            + bytes(28)
            + fmt
            + struct.pack("<4sI", b"data", data_bytes)
        )
    samples = data_bytes // block
    ds64 = struct.pack("<4sIQQQI", b"ds64", 28, riff_size, data_bytes, samples, 0)
    return struct.pack("<4sI4s", b"RF64", _RIFF_LIMIT, b"WAVE") + ds64 + fmt + struct.pack("<4sI", b"data", _RIFF_LIMIT)


class WavWriter(Writer):
    format = "wav"

    def __init__(self, path: Path, rate: int, channels: int) -> None:
        super().__init__(path, rate, channels)
        self._f: BinaryIO = path.open("wb")
        self._f.write(wav_header(rate, channels, 0))
        self._data = 0

    def _write(self, pcm: Pcm) -> None:
        raw = pcm.astype("<i2", copy=False).tobytes()
        self._f.write(raw)
        self._data += len(raw)

    def flush(self) -> None:
        # The header is rewritten at every flush, so the file on disk is always a valid WAV.
        end = self._f.tell()
        self._f.seek(0)
        self._f.write(wav_header(self.rate, self.channels, self._data))
        self._f.seek(end)
        self._f.flush()

    def _finish(self) -> Path:
        self.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.path


# --- MP3 -------------------------------------------------------------------------------------------


class Mp3Writer(Writer):
    format = "mp3"

    def __init__(self, path: Path, rate: int, channels: int) -> None:
        import lameenc

        super().__init__(path, rate, channels)
        enc = lameenc.Encoder()
        enc.set_in_sample_rate(rate)
        enc.set_channels(channels)
        enc.set_bit_rate(32 * channels if rate <= 8000 else 48 * channels)
        enc.set_quality(5)
        self._enc = enc
        self._f: BinaryIO = path.open("wb")

    def _write(self, pcm: Pcm) -> None:
        self._f.write(bytes(self._enc.encode(pcm.astype("<i2", copy=False).tobytes())))

    def flush(self) -> None:
        self._f.flush()

    def _finish(self) -> Path:
        self._f.write(bytes(self._enc.flush()))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.path


# --- MP4 (AAC) ------------------------------------------------------------------------------------


def part_path(path: Path) -> Path:
    """Where a fragmented MP4 grows while recording (``<id>.part.mp4``)."""
    return path.with_suffix(".part.mp4")


class Mp4Writer(Writer):
    """AAC in fragmented MP4 while recording (every fragment is playable after a crash), remuxed to a
    plain MP4 when the recording ends."""

    format = "mp4"

    def __init__(self, path: Path, rate: int, channels: int) -> None:
        import av

        super().__init__(path, rate, channels)
        self._part = part_path(path)
        options = {
            "movflags": "empty_moov+default_base_moof+frag_keyframe",
            "frag_duration": str(int(FLUSH_SECONDS * 1_000_000)),
            "flush_packets": "1",
        }
        try:
            self._out: Any = av.open(str(self._part), "w", format="mp4", options=options)
        except (OSError, av.error.FFmpegError) as e:
            raise EncoderError(f"cannot create {self._part.name}: {e}") from None
        layout = "stereo" if channels == 2 else "mono"
        stream = self._out.add_stream("aac", rate=rate, layout=layout)
        stream.bit_rate = 32000 * channels if rate <= 8000 else 48000 * channels
        stream.codec_context.options = {"aac_coder": "fast"}
        self._stream = stream
        self._layout = layout
        self._pts = 0

    def _write(self, pcm: Pcm) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(
            pcm.reshape(1, -1).astype(np.int16, copy=False), format="s16", layout=self._layout
        )
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += pcm.shape[0]
        try:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
        except av.error.FFmpegError as e:
            raise OSError(str(e)) from None

    def flush(self) -> None:
        pass  # flush_packets=1 and frag_duration already push each fragment to the file

    def _finish(self) -> Path:
        import av

        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
        except av.error.FFmpegError:
            pass
        self._out.close()
        remux_to_mp4(self._part, self.path)
        self._part.unlink(missing_ok=True)
        return self.path


def remux_to_mp4(source: Path, target: Path) -> None:
    """Copy the AAC packets of a (fragmented) MP4 into a plain MP4 with its index up front."""
    import av

    tmp = target.with_suffix(".remux.mp4")
    with (
        av.open(str(source), "r") as src,
        av.open(str(tmp), "w", format="mp4", options={"movflags": "faststart"}) as dst,
    ):
        in_stream = src.streams.audio[0]
        out_stream = dst.add_stream_from_template(in_stream)
        try:
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.stream = out_stream
                dst.mux(packet)
        except av.error.FFmpegError:
            pass  # a fragment torn by a crash: keep the complete ones before it
    os.replace(tmp, target)


def open_writer(fmt: str, path: Path, rate: int, channels: int) -> Writer:
    writers: dict[str, type[WavWriter | Mp3Writer | Mp4Writer]] = {"wav": WavWriter, "mp3": Mp3Writer, "mp4": Mp4Writer}
    cls = writers[fmt]
    try:
        return cls(path, rate, channels)
    except OSError as e:
        raise EncoderError(f"cannot create {path.name}: {e.strerror or e}") from None
