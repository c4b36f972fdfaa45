"""Streaming writers for recordings: WAV (RF64 past 4 GB), MP3 (lameenc), AAC in fragmented MP4 (PyAV).

Each writer takes :data:`~swml_engine.media.frame.Samples` (mono, or interleaved stereo as ``(n, 2)``)
and puts them on disk as the call goes, so memory stays flat however long the call, and a process killed
mid-recording leaves a file that holds all audio up to the last flush (at most :data:`FLUSH_SECONDS`
before the kill). ``recovery.py`` repairs such files.

With a keyring (``--encrypt-key-file``) every file is written sealed (``crypt.py``): the writers see the
plaintext through :class:`~swml_engine.recording.crypt.SealedFile`, as they would see the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from swml_engine.media.frame import Frame, Samples
from swml_engine.recording.crypt import (
    AudioFile,
    CryptError,
    Keyring,
    SealedFile,
    is_sealed,
    open_existing,
    open_output,
)

#: How often a writer pushes its data to the OS (and a WAV writer rewrites its header).
FLUSH_SECONDS = 0.5
FORMATS = ("wav", "mp3", "mp4")


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
    #: How much audio a block holds before it goes to the encoder and the file.
    block_seconds: float = FLUSH_SECONDS
    _f: AudioFile

    def __init__(self, path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> None:
        self.path = path
        self.rate = rate
        self.channels = channels
        #: Seal the file under the keyring's newest key (None: written plain).
        self.keyring = keyring
        self.samples = 0  # per channel, including what is still in the block
        #: What went wrong without losing the recording (said in the call's events).
        self.warnings: list[str] = []
        #: A write failed (a full disk): nothing more goes to this file.
        self.broken = False
        self._lock = -1
        size = max(1, round(rate * self.block_seconds))
        self._block: Samples = np.zeros((size, 2) if channels == 2 else size, dtype=np.int16)
        self._fill = 0

    @property
    def duration(self) -> float:
        return self.samples / self.rate

    def write(self, pcm: Samples) -> None:
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
        """Finish the file; returns its final path. After a failed write (reported when it happened) the
        file is only closed, as it stands: :func:`recovery.repair` makes it playable, as after a crash."""
        try:
            if self.broken:
                self._abandon()
                return self.path
            self._drain()
            return self._finish()
        except OSError as e:
            self.broken = True
            self._abandon()
            raise self._failed(e) from None
        finally:
            self._release()

    def discard(self) -> None:
        """Close the file as it stands and let it go (the caller removes it): a recording that could not
        start."""
        self.broken = True
        try:
            self._abandon()
        finally:
            self._release()

    def _hold(self, path: Path) -> None:
        """Lock the file being written, so recovery (another process, or ``swml recover``) leaves a live
        recording alone. The kernel drops the lock when the process dies, however it dies."""
        self._lock = os.open(path, os.O_RDONLY)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _release(self) -> None:
        lock, self._lock = self._lock, -1
        if lock >= 0:
            os.close(lock)

    def _room(self, n: int) -> Samples:
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

    def _encode(self, pcm: Samples) -> None:
        try:
            self._write(pcm)
            self.flush()
        except OSError as e:
            self.broken = True
            raise self._failed(e) from None

    def _failed(self, e: OSError) -> EncoderError:
        return EncoderError(f"cannot write {self.path.name}: {e.strerror or e}")

    @abstractmethod
    def _write(self, pcm: Samples) -> None:
        """Encode and write ``pcm`` (a view of the block: copy what must outlive the call)."""

    @abstractmethod
    def flush(self) -> None:
        """Push what was written to the OS (and keep the file valid as it stands)."""

    @abstractmethod
    def _finish(self) -> Path:
        """Close the file (the block is already written); returns its final path."""

    def _abandon(self) -> None:
        """Close the file as it stands, writing nothing more (the storage refused a write)."""
        close_as_it_stands(self._f)


def close_as_it_stands(f: AudioFile) -> None:
    """Close a file without writing more (a sealed one is not marked finished: recovery repairs it)."""
    with contextlib.suppress(OSError):
        if isinstance(f, SealedFile):
            f.abandon()
        else:
            f.close()


# --- WAV -------------------------------------------------------------------------------------------

#: Header layout: RIFF, a 28-byte JUNK chunk reserved for the RF64 ds64 chunk, fmt, data.
WAV_HEADER = 80
_RIFF_LIMIT = 0xFFFFFFFF
#: The sizes a sealed WAV says while it is written: "to the end of the file", as streaming WAV writers
#: do (FFmpeg and PyAV read every sample); the exact sizes are written when it ends, or by recovery.
WAV_STREAMING = -1


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    """An 80-byte WAV header; past 4 GB the same bytes become RF64 (JUNK turns into ds64).
    ``WAV_STREAMING``: sizes that say "to the end of the file"."""
    block = channels * 2
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, rate, rate * block, block, 16)
    junk = struct.pack("<4sI", b"JUNK", 28) + bytes(28)
    if data_bytes == WAV_STREAMING:
        riff_size = data_size = _RIFF_LIMIT
    else:
        riff_size, data_size = WAV_HEADER - 8 + data_bytes, data_bytes
    if riff_size <= _RIFF_LIMIT:
        return struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE") + junk + fmt + struct.pack("<4sI", b"data", data_size)
    samples = data_bytes // block
    ds64 = struct.pack("<4sIQQQI", b"ds64", 28, riff_size, data_bytes, samples, 0)
    return struct.pack("<4sI4s", b"RF64", _RIFF_LIMIT, b"WAVE") + ds64 + fmt + struct.pack("<4sI", b"data", _RIFF_LIMIT)


class WavWriter(Writer):
    format = "wav"

    def __init__(self, path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> None:
        super().__init__(path, rate, channels, keyring)
        self._f = open_output(path, keyring)
        self._hold(path)
        # A sealed file's header is patched once, at the end: rewriting its first block at every flush
        # would put the whole first block at risk at every kill (a rewrite cut short does not authenticate).
        self._patch_each_flush = keyring is None
        self._f.write(wav_header(rate, channels, 0 if self._patch_each_flush else WAV_STREAMING))
        self._data = 0

    def _write(self, pcm: Samples) -> None:
        raw = pcm.astype("<i2", copy=False).tobytes()
        self._f.write(raw)
        self._data += len(raw)

    def flush(self) -> None:
        # A plain file's header is rewritten at every flush, so the file on disk is always a valid WAV.
        if self._patch_each_flush:
            self._patch_header()
        self._f.flush()

    def _patch_header(self) -> None:
        end = self._f.tell()
        self._f.seek(0)
        self._f.write(wav_header(self.rate, self.channels, self._data))
        self._f.seek(end)

    def _finish(self) -> Path:
        self._patch_header()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.path


# --- MP3 -------------------------------------------------------------------------------------------

#: LAME's encoder delay: the silence every LAME stream starts with, before the first input sample.
LAME_DELAY = 576
#: MPEG version bits and sample-rate index of each rate LAME writes, (version, index).
_MPEG_RATES = {
    44100: (3, 0), 48000: (3, 1), 32000: (3, 2),  # MPEG-1
    22050: (2, 0), 24000: (2, 1), 16000: (2, 2),  # MPEG-2
    11025: (0, 0), 12000: (0, 1), 8000: (0, 2),  # MPEG-2.5
}  # fmt: skip
_KBPS_MPEG1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_KBPS_MPEG2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def mp3_kbps(rate: int, channels: int) -> int:
    """The constant bit rate of our MP3 recordings: speech quality at telephone rates."""
    return (32 if rate <= 8000 else 48) * channels


def _crc16_arc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True)
class Mp3Layout:
    """Frame geometry of a constant-bit-rate Layer III stream."""

    rate: int
    channels: int
    kbps: int

    @property
    def mpeg1(self) -> bool:
        return self.rate >= 32000

    @property
    def samples_per_frame(self) -> int:
        return 1152 if self.mpeg1 else 576

    @property
    def frame_bytes(self) -> int:
        # Every rate and bit rate we use divides evenly, so no frame carries a padding byte.
        return (144 if self.mpeg1 else 72) * self.kbps * 1000 // self.rate

    def info_frame(self, frames: int, samples: int) -> bytes:
        """A Xing "Info" frame with a LAME tag, the first frame of the file. It holds no audio; it tells
        decoders the stream's frame count, encoder delay and end padding, so they play exactly ``samples``
        samples (gapless) instead of adding LAME's ~140 ms of priming and the last frame's tail."""
        version, rate_index = _MPEG_RATES[self.rate]
        kbps_index = (_KBPS_MPEG1 if self.mpeg1 else _KBPS_MPEG2).index(self.kbps)
        mode = 3 if self.channels == 1 else 1  # mono, or joint stereo as LAME writes it
        header = 0xFFE00000 | version << 19 | 1 << 17 | 1 << 16 | kbps_index << 12 | rate_index << 10
        header |= mode << 6 | 1 << 2  # "original" bit, as LAME sets it
        side_info = (17 if self.channels == 1 else 32) if self.mpeg1 else (9 if self.channels == 1 else 17)
        size = self.frame_bytes
        total = size * (frames + 1)
        padding = min(4095, max(0, frames * self.samples_per_frame - LAME_DELAY - samples)) if frames else 0
        toc = bytes(i * 256 // 100 for i in range(100))  # constant bit rate: seeking is linear
        xing = b"Info" + struct.pack(">III", 0x0F, frames, total) + toc + struct.pack(">I", 0)
        lame = b"LAME3.100" + bytes([0x01, 0]) + bytes(9) + bytes([min(self.kbps, 255)])
        lame += (LAME_DELAY << 12 | padding).to_bytes(3, "big") + bytes(4) + struct.pack(">IH", total, 0)
        body = struct.pack(">I", header) + bytes(side_info) + xing + lame
        body += struct.pack(">H", _crc16_arc(body))
        return body + bytes(size - len(body))


class Mp3Writer(Writer):
    """LAME (lameenc) at a constant bit rate. The file starts with an Info frame, rewritten at the end
    with the true length; after a crash it still says "no length yet" and recovery fills it in."""

    format = "mp3"

    def __init__(self, path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> None:
        import lameenc

        super().__init__(path, rate, channels, keyring)
        self.layout = Mp3Layout(rate, channels, mp3_kbps(rate, channels))
        enc = lameenc.Encoder()
        enc.set_in_sample_rate(rate)
        enc.set_channels(channels)
        enc.set_bit_rate(self.layout.kbps)
        enc.set_quality(5)
        self._enc = enc
        self._f = open_output(path, keyring)
        self._hold(path)
        self._f.write(self.layout.info_frame(0, 0))
        self._encoded = False

    def _write(self, pcm: Samples) -> None:
        self._f.write(bytes(self._enc.encode(pcm.astype("<i2", copy=False).tobytes())))
        self._encoded = True

    def flush(self) -> None:
        self._f.flush()

    def _finish(self) -> Path:
        if not self._encoded:  # LAME cannot flush what never started: one silent sample, trimmed by the tag
            self._write(np.zeros((1, self.channels) if self.channels == 2 else 1, dtype=np.int16))
        self._f.write(bytes(self._enc.flush()))
        audio = self._f.tell() - self.layout.frame_bytes
        self._f.seek(0)
        self._f.write(self.layout.info_frame(audio // self.layout.frame_bytes, self.samples))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.path


def repair_mp3(path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> None:
    """Make an MP3 a crash left whole: drop a torn last frame and write the Info frame's length."""
    layout = Mp3Layout(rate, channels, mp3_kbps(rate, channels))
    size = layout.frame_bytes
    with open_existing(path, keyring, writable=True) as f:
        if f.read(size)[4:].find(b"Info") < 0:
            return  # no Info frame: a plain stream, playable as it is
        frames = max(0, f.seek(0, os.SEEK_END) // size - 1)
        f.truncate(size * (frames + 1))
        f.seek(0)
        # The samples still inside the encoder at the kill never reached the file: no end padding known.
        f.write(layout.info_frame(frames, frames * layout.samples_per_frame - LAME_DELAY))
        f.flush()
        os.fsync(f.fileno())


# --- MP4 (AAC) ------------------------------------------------------------------------------------


def part_path(path: Path) -> Path:
    """Where a fragmented MP4 grows while recording (``<id>.part.mp4``)."""
    return path.with_suffix(".part.mp4")


class Mp4Writer(Writer):
    """AAC in fragmented MP4 while recording (every fragment is playable after a crash), remuxed to a
    plain MP4 when the recording ends."""

    format = "mp4"
    # AAC holds ~1024 samples back and a fragment is written whole: with half-second blocks and
    # fragments a kill could cost over a second. Quarter seconds keep the loss under ~0.8 s.
    block_seconds = FLUSH_SECONDS / 2

    def __init__(self, path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> None:
        import av

        super().__init__(path, rate, channels, keyring)
        self._part = part_path(path)
        #: The sealed file PyAV writes through (None: PyAV writes the plain file itself).
        self._sink: AudioFile | None = None
        options = {
            "movflags": "empty_moov+default_base_moof+frag_keyframe",
            "frag_duration": str(int(self.block_seconds * 1_000_000)),
            "flush_packets": "1",
        }
        try:
            if keyring is not None:
                self._sink = open_output(self._part, keyring)
            else:
                self._part.write_bytes(b"")  # FFmpeg creates the file only at its first write: lock it from now
            self._hold(self._part)
            self._out: Any = av.open(self._sink or str(self._part), "w", format="mp4", options=options)
        except (OSError, av.error.FFmpegError) as e:
            self._release()
            if self._sink is not None:
                close_as_it_stands(self._sink)
            raise EncoderError(f"cannot create {self._part.name}: {e}") from None
        layout = "stereo" if channels == 2 else "mono"
        stream = self._out.add_stream("aac", rate=rate, layout=layout)
        stream.bit_rate = 32000 * channels if rate <= 8000 else 48000 * channels
        stream.codec_context.options = {"aac_coder": "fast"}
        self._stream = stream
        self._layout = layout
        self._pts = 0

    def _write(self, pcm: Samples) -> None:
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
        # flush_packets=1 and frag_duration already push each fragment to the file, or to the sealed
        # file's last block in memory: that one is sealed to disk now.
        if self._sink is not None:
            self._sink.flush()

    def _abandon(self) -> None:
        import av

        with contextlib.suppress(OSError, av.error.FFmpegError):
            self._out.close()
        if self._sink is not None:
            close_as_it_stands(self._sink)

    def _finish(self) -> Path:
        import av

        empty = self.samples == 0
        if empty:  # FFmpeg writes the header at the first packet: without one, the file would stay empty
            self._out.start_encoding()
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
        except av.error.FFmpegError:
            pass
        self._out.close()
        if self._sink is not None:
            self._sink.close()
        if empty:  # a remux drops a track of no samples: the fragmented file (one empty track) is the MP4
            os.replace(self._part, self.path)
            return self.path
        try:
            remux_to_mp4(self._part, self.path, self.keyring)
        except EncoderError as e:
            # The fragmented file plays as it is: keep it under the final name rather than lose it.
            os.replace(self._part, self.path)
            self.warnings.append(f"{e}; kept as fragmented MP4")
        else:
            self._part.unlink(missing_ok=True)
        return self.path


#: Samples of priming FFmpeg's AAC encoder puts before the first input sample.
AAC_PRIMING = 1024


def remux_to_mp4(source: Path, target: Path, keyring: Keyring | None = None) -> None:
    """Copy the AAC packets of a (fragmented) MP4 into a plain MP4 with its index up front (sealed with a
    keyring: then the index is at the end, as FFmpeg's faststart rereads its output by name).

    The packets move back by the encoder's priming, so the MP4 gets an edit list that skips it: players
    start at the first recorded sample and the file's duration is the recording's. A fragment torn by a
    crash ends the copy (the complete ones before it are kept); a failure to write raises EncoderError
    and leaves ``target`` as it was.
    """
    import av

    tmp = target.with_suffix(".remux.mp4")
    keyring = keyring if is_sealed(source) else None  # a file stays as it was written: sealed or plain
    try:
        with contextlib.ExitStack() as files:
            sink = None if keyring is None else files.enter_context(open_output(tmp, keyring))
            src = files.enter_context(av.open(av_input(source, keyring, files), "r"))
            options = {"movflags": "faststart"} if sink is None else {}
            dst = files.enter_context(av.open(sink or str(tmp), "w", format="mp4", options=options))
            in_stream = src.streams.audio[0]
            out_stream = dst.add_stream_from_template(in_stream)
            shift = round(AAC_PRIMING / (in_stream.rate or 1) / (in_stream.time_base or Fraction(1, in_stream.rate)))
            packets = src.demux(in_stream)
            while True:
                try:
                    packet = next(packets)
                except (StopIteration, av.error.FFmpegError):
                    break  # the end, or a torn fragment
                if packet.dts is None:
                    continue
                packet.dts -= shift
                if packet.pts is not None:
                    packet.pts -= shift
                packet.stream = out_stream
                dst.mux(packet)
        os.replace(tmp, target)
    except (OSError, av.error.FFmpegError, CryptError) as e:
        tmp.unlink(missing_ok=True)
        raise EncoderError(f"cannot write {target.name}: {e}") from None


def av_input(path: Path, keyring: Keyring | None, files: contextlib.ExitStack) -> str | AudioFile:
    """What PyAV opens to read a recording: its path, or a sealed file's plaintext (closed with ``files``)."""
    if not is_sealed(path):
        return str(path)
    f = open_existing(path, keyring)
    files.callback(f.close)
    return f


def in_use(path: Path) -> bool:
    """Whether a live writer (of any process) holds this recording file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing drops the lock we may have taken)
    return False


def open_writer(fmt: str, path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> Writer:
    writers: dict[str, type[WavWriter | Mp3Writer | Mp4Writer]] = {"wav": WavWriter, "mp3": Mp3Writer, "mp4": Mp4Writer}
    cls = writers[fmt]
    try:
        return cls(path, rate, channels, keyring)
    except OSError as e:
        raise EncoderError(f"cannot create {path.name}: {e.strerror or e}") from None
