"""Repairing recordings a crash left unfinished (the process killed mid-recording).

A recording's metadata says ``state: recording`` until it is finalised, so after a crash those are the
ones to repair: a WAV gets its header sizes from the file length, an MP3 stream is playable as it is
(a torn last frame is dropped by decoders), a fragmented MP4 is remuxed from its complete fragments. Each
is then marked ``state: finished``, ``end_reason: recovered``, with its true duration and size.
Run at start-up (``swml run`` on its output directory; each worker of ``swml serve``, a worker started
again in a dead one's place too) and by ``swml recover DIR``. A live writer holds a lock on its file
(encoders.py), which the kernel drops when its process dies: recovery repairs only files whose lock it
takes, and holds it while it repairs, so the recordings other workers are writing — or repairing at the
same time — are left alone.

A sealed recording (``crypt.py``) is repaired through its plaintext: every block completed before the
kill is kept (a last block a kill cut in the middle is dropped), the format's headers are fixed, and the
file is sealed again with its final block. Without its key it is left as it is, for a run that has it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swml_engine.recording.crypt import (
    BLOCK,
    AudioFile,
    CryptError,
    Keyring,
    SealedFile,
    TamperedError,
    is_sealed,
    open_existing,
    plain_size,
    sealed_with,
)
from swml_engine.recording.encoders import (
    AAC_PRIMING,
    WAV_HEADER,
    EncoderError,
    Mp4Writer,
    av_input,
    part_path,
    remux_to_mp4,
    repair_mp3,
    wav_header,
)
from swml_engine.recording.store import RecordingStore

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    recording_id: str
    path: Path
    duration: float
    note: str


def recover(root: Path, keyring: Keyring | None = None) -> list[Recovered]:
    """Repair every unfinished recording under ``root``; returns what was repaired. A sealed one whose
    key is not given stays unrepaired (a warning says so), for a run with the key."""
    if not root.is_dir():
        return []
    store = RecordingStore(root)
    done: list[Recovered] = []
    for meta_path in sorted(root.glob("*.json")):
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("state") != "recording" or not isinstance(meta.get("recording_id"), str):
            continue
        path = store.audio_path(str(meta["recording_id"]), str(meta.get("format")))
        with _held(path, part_path(path)) as held:
            # Not held: a live recording of a running call (this process, or another worker of the
            # service), or one another worker starting beside this one is repairing: not ours to touch.
            repaired = _repair_one(store, meta_path, path, keyring) if held else None
        if repaired is not None:
            done.append(repaired)
    return done


@contextlib.contextmanager
def _held(*paths: Path) -> Iterator[bool]:
    """Hold the lock a live writer holds on each of ``paths`` that exists while the body runs (the
    kernel drops a writer's when its process dies, however it dies); False when one is taken."""
    fds: list[int] = []
    try:
        for path in paths:
            try:
                fds.append(os.open(path, os.O_RDONLY))
            except OSError:
                continue  # (not there: an MP4's final file before its remux, its part after)
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        for fd in fds:
            os.close(fd)


def _repair_one(store: RecordingStore, meta_path: Path, path: Path, keyring: Keyring | None) -> Recovered | None:
    """Repair and mark one recording whose files we hold. Its metadata is read again: the worker that
    wrote it may have finished it between the first look and the lock."""
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("state") != "recording":
        return None
    rid = str(meta["recording_id"])
    held = keyring.keys if keyring is not None else {}
    missing = [key for key in map(sealed_with, (path, part_path(path))) if key and key not in held]
    if missing:  # not a file beyond repair: a run with its key repairs it (marked error, none would)
        log.warning(
            "recording %s is encrypted with key %r and was left unfinished: a run that has that key repairs "
            "it (swml recover DIR --key-file KEYS, or swml serve --encrypt-key-file KEYS)",
            rid,
            missing[0],
        )
        return None
    written = _last_written(path, part_path(path))  # before the repair writes to them
    try:
        rate, channels = int(meta.get("sample_rate") or 8000), int(meta.get("channels") or 1)
        duration, note = repair(str(meta.get("format")), path, rate, channels, keyring)
    except Exception as e:  # a file beyond repair is reported, the others still get repaired
        duration, note = 0.0, f"could not be repaired: {type(e).__name__}: {e}"
        meta["state"] = "error"
    else:
        meta["state"] = "finished"
    meta["end_reason"] = "recovered"
    meta["duration"] = round(duration, 3)
    meta["size"] = stored_size(path, keyring)
    meta["end_time"] = _ended_at(meta.get("start_time"), duration, written)
    store.write_metadata(meta)
    return Recovered(rid, path, duration, note)


def _last_written(*paths: Path) -> float | None:
    """When the dead writer last wrote to any of ``paths`` (None: none is there)."""
    times = []
    for path in paths:
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times, default=None)


def _ended_at(start_time: object, duration: float, written: float | None) -> float:
    """When a recovered recording's audio stopped — not when it was repaired, which may be hours later.
    Its start plus the audio it holds, or the writer's last write when that is later (a pause with
    ``skip`` left time out of the file; the writer flushes at least once a second)."""
    start = float(start_time) if isinstance(start_time, (int, float)) else None
    candidates = [t for t in (start + duration if start is not None else None, written) if t is not None]
    return max(candidates, default=time.time())


def stored_size(path: Path, keyring: Keyring | None) -> int:
    """A recording's size as the API gives it out (a sealed file's plaintext); 0 when it is gone."""
    try:
        return plain_size(path, keyring)
    except (OSError, CryptError):
        return 0


def repair(fmt: str, path: Path, rate: int, channels: int, keyring: Keyring | None = None) -> tuple[float, str]:
    """Make a recording file playable as it stands on disk (after a crash, or a write the storage
    refused); returns its playing length and what was done. A sealed file is repaired through its
    plaintext and sealed again (CryptError: it was altered, or its key is not in ``keyring``)."""
    sealed = ", sealed again" if is_sealed(path) or is_sealed(part_path(path)) else ""
    if fmt == "wav":
        seconds, note = _repair_wav(path, rate, channels, keyring)
        return seconds, note + sealed
    if fmt == "mp3":
        repair_mp3(path, rate, channels, keyring)
        return _decoded_seconds(path, keyring), "MP3 frames kept, length written in its Info frame" + sealed
    if fmt == "mp4":
        part = part_path(path)
        if part.is_file():
            if not _drop_torn_fragment(part, keyring):
                # Killed before the encoder's first fragment, so before FFmpeg wrote even the header:
                # nothing was recorded. An empty MP4 (one AAC track, no samples) as a recording stopped then.
                sealing = keyring if is_sealed(part) else None
                part.unlink()  # (the writer makes its own: our lock is on this one)
                Mp4Writer(path, rate, channels, sealing).close()
                return 0.0, "killed before its first fragment: an empty MP4" + sealed
            try:
                remux_to_mp4(part, path, keyring)
            except EncoderError:  # no room for the remuxed copy: the fragments play as they are
                os.replace(part, path)
                seconds = max(0.0, _decoded_seconds(path, keyring) - AAC_PRIMING / rate)
                return seconds, "complete MP4 fragments kept" + sealed
            part.unlink()
        return _mp4_seconds(path, keyring), "complete MP4 fragments remuxed" + sealed
    raise ValueError(f"unknown format {fmt!r}")


def _drop_torn_fragment(path: Path, keyring: Keyring | None) -> bool:
    """Cut a fragmented MP4 after its last whole fragment (a ``moof`` with its ``mdat``): a fragment
    half written when the process died or the disk filled would otherwise end decoding with an error.
    False when not even its header (``moov``) is whole."""
    keep = pos = 0
    header = False
    with open_existing(path, keyring, writable=True) as f:
        size = f.seek(0, os.SEEK_END)
        while pos + 8 <= size:
            f.seek(pos)
            length, kind = struct.unpack(">I4s", f.read(8))
            if length == 1:
                (length,) = struct.unpack(">Q", f.read(8))
            if length < 8 or pos + length > size:
                break  # torn
            pos += length
            header = header or kind == b"moov"
            if kind != b"moof":  # a moof counts once its mdat is whole
                keep = pos
        if keep < size:
            f.truncate(keep)
    return header


def _repair_wav(path: Path, rate: int, channels: int, keyring: Keyring | None) -> tuple[float, str]:
    block = 2 * channels
    note = "WAV header rewritten from the file length"
    with open_existing(path, keyring, writable=True) as f:
        if _first_block_lost(f):
            lost = BLOCK / (block * rate)
            note += f"; its first {lost:.2g} s, cut by the kill while its sizes were written, is silence"
        size = f.seek(0, os.SEEK_END)
        data = max(0, size - WAV_HEADER) // block * block
        f.truncate(WAV_HEADER + data)
        f.seek(0)
        f.write(wav_header(rate, channels, data))
        f.flush()
        os.fsync(f.fileno())
    return data / block / rate, note


def _first_block_lost(f: AudioFile) -> bool:
    """A sealed WAV's first block is rewritten once, at its end (the exact sizes): a kill in the middle
    of that write leaves that block alone unreadable. It becomes silence (the header is written next),
    and every other block is kept; any other block failing is not a crash's doing, and raises."""
    if not isinstance(f, SealedFile):
        return False
    try:
        f.verify()
        return False
    except TamperedError as e:
        if e.block != 0:
            raise
    f.blank(0)
    f.verify()
    return True


def _mp4_seconds(path: Path, keyring: Keyring | None) -> float:
    """The MP4's length as players see it (its edit list skips the AAC priming)."""
    import av

    with contextlib.ExitStack() as files, av.open(av_input(path, keyring, files), "r") as c:
        stream = c.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
    return _decoded_seconds(path, keyring)


def _decoded_seconds(path: Path, keyring: Keyring | None) -> float:
    import av

    samples = 0
    rate = 1
    with contextlib.ExitStack() as files, av.open(av_input(path, keyring, files), "r") as c:
        stream = c.streams.audio[0]
        rate = stream.rate or 1
        try:
            for frame in c.decode(stream):
                samples += frame.samples
        except av.error.FFmpegError:
            pass  # a torn tail: what decoded is what there is
    return samples / rate
