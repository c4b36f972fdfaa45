"""Repairing recordings a crash left unfinished (the process killed mid-recording).

A recording's metadata says ``state: recording`` until it is finalised, so after a crash those are the
ones to repair: a WAV gets its header sizes from the file length, an MP3 stream is playable as it is
(a torn last frame is dropped by decoders), a fragmented MP4 is remuxed from its complete fragments. Each
is then marked ``state: finished``, ``end_reason: recovered``, with its true duration and size.
Run at start-up (``swml run`` on its output directory) and by ``swml recover DIR``.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swml_engine.recording.encoders import (
    AAC_PRIMING,
    WAV_HEADER,
    EncoderError,
    in_use,
    part_path,
    remux_to_mp4,
    repair_mp3,
    wav_header,
)
from swml_engine.recording.store import RecordingStore


@dataclass
class Recovered:
    recording_id: str
    path: Path
    duration: float
    note: str


def recover(root: Path) -> list[Recovered]:
    """Repair every unfinished recording under ``root``; returns what was repaired."""
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
        rid = str(meta["recording_id"])
        fmt = str(meta.get("format"))
        path = store.audio_path(rid, fmt)
        if in_use(path) or in_use(part_path(path)):
            continue  # a live recording of a running call (this process or another): not ours to touch
        try:
            duration, note = repair(fmt, path, int(meta.get("sample_rate") or 8000), int(meta.get("channels") or 1))
        except Exception as e:  # a file beyond repair is reported, the others still get repaired
            duration, note = 0.0, f"could not be repaired: {type(e).__name__}: {e}"
            meta["state"] = "error"
        else:
            meta["state"] = "finished"
        meta["end_reason"] = "recovered"
        meta["duration"] = round(duration, 3)
        meta["size"] = path.stat().st_size if path.is_file() else 0
        meta["end_time"] = path.stat().st_mtime if path.is_file() else time.time()
        store.write_metadata(meta)
        done.append(Recovered(rid, path, duration, note))
    return done


def repair(fmt: str, path: Path, rate: int, channels: int) -> tuple[float, str]:
    """Make a recording file playable as it stands on disk (after a crash, or a write the storage
    refused); returns its playing length and what was done."""
    if fmt == "wav":
        return _repair_wav(path, rate, channels)
    if fmt == "mp3":
        repair_mp3(path, rate, channels)
        return _decoded_seconds(path), "MP3 frames kept, length written in its Info frame"
    if fmt == "mp4":
        part = part_path(path)
        if part.is_file():
            _drop_torn_fragment(part)
            try:
                remux_to_mp4(part, path)
            except EncoderError:  # no room for the remuxed copy: the fragments play as they are
                os.replace(part, path)
                return max(0.0, _decoded_seconds(path) - AAC_PRIMING / rate), "complete MP4 fragments kept"
            part.unlink()
        return _mp4_seconds(path), "complete MP4 fragments remuxed"
    raise ValueError(f"unknown format {fmt!r}")


def _drop_torn_fragment(path: Path) -> None:
    """Cut a fragmented MP4 after its last whole fragment (a ``moof`` with its ``mdat``): a fragment
    half written when the process died or the disk filled would otherwise end decoding with an error."""
    size = path.stat().st_size
    keep = pos = 0
    with path.open("r+b") as f:
        while pos + 8 <= size:
            f.seek(pos)
            length, kind = struct.unpack(">I4s", f.read(8))
            if length == 1:
                (length,) = struct.unpack(">Q", f.read(8))
            if length < 8 or pos + length > size:
                break  # torn
            pos += length
            if kind != b"moof":  # a moof counts once its mdat is whole
                keep = pos
        if keep < size:
            f.truncate(keep)


def _repair_wav(path: Path, rate: int, channels: int) -> tuple[float, str]:
    block = 2 * channels
    size = path.stat().st_size
    data = max(0, size - WAV_HEADER) // block * block
    with path.open("r+b") as f:
        f.truncate(WAV_HEADER + data)
        f.seek(0)
        f.write(wav_header(rate, channels, data))
        f.flush()
        os.fsync(f.fileno())
    return data / block / rate, "WAV header rewritten from the file length"


def _mp4_seconds(path: Path) -> float:
    """The MP4's length as players see it (its edit list skips the AAC priming)."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
    return _decoded_seconds(path)


def _decoded_seconds(path: Path) -> float:
    import av

    samples = 0
    rate = 1
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate = stream.rate or 1
        try:
            for frame in c.decode(stream):
                samples += frame.samples
        except av.error.FFmpegError:
            pass  # a torn tail: what decoded is what there is
    return samples / rate
