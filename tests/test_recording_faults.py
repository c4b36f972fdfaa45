"""Recording when things go wrong outside the engine: the disk fills up, a callback receiver hangs."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from conftest import RATE, HttpServer, read_wav, run_doc, small_filesystem, tone, wav_bytes
from swml_engine import callbacks
from swml_engine.callbacks import CallbackChannel
from swml_engine.events import EventLog
from swml_engine.urls import parse_http_url

FULL_DISK_DOC = """
version: 1.0.0
sections:
  main:
    - answer
    - record_call: {stereo: true, format: wav}
    - sleep: 3000
    - set: {after: 'still running'}
    - hangup
"""

#: Bytes a process may write to any one file: the stereo recording (32 kB/s) hits it at ~2 s, before
#: heard.wav (16 kB/s) does.
FILE_LIMIT = 64 * 1024


def _limit_file_size() -> None:
    # RLIMIT_FSIZE makes the kernel refuse writes past the limit with EFBIG, as a full disk refuses
    # them with ENOSPC: a real failed write(2), without needing root to fill a filesystem.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def swml_run(
    tmp_path: Path, doc: str, caller: np.ndarray | None = None, limit: bool = False, extra: tuple[str, ...] = ()
) -> tuple[Path, list[dict[str, Any]]]:
    """`swml run` of ``doc`` in its own process (optionally under the file-size limit); returns the
    --out directory and its events. It must end cleanly: exit 0, no traceback."""
    path = tmp_path / "doc.yaml"
    path.write_text(doc)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "swml_engine", "run", str(path), "--out", str(out), *extra]
    if caller is not None:
        (tmp_path / "caller.wav").write_bytes(wav_bytes(caller))
        cmd += ["--caller-audio", str(tmp_path / "caller.wav")]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, preexec_fn=_limit_file_size if limit else None
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return out, events


def test_storage_full_mid_recording_fails_the_recording_not_the_call(tmp_path: Path) -> None:
    out, events = swml_run(tmp_path, FULL_DISK_DOC, tone(440, 4.0), limit=True)
    assert json.loads((out / "vars.json").read_text())["after"] == "still running"
    states = [e["state"] for e in events if e["type"] == "record.state"]
    assert states == ["recording", "error"]
    errors = [e for e in events if e["type"] == "error"]
    assert errors and "File too large" in errors[0]["message"]
    [meta_path] = (out / "recordings").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["end_reason"] == "error" and meta["state"] == "error"
    # what was written before the storage refused more is a valid, readable file
    audio, rate = read_wav(Path(meta["url"].removeprefix("file://")))
    assert 1.5 < len(audio) / rate <= FILE_LIMIT / (rate * 4)
    ended = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended and ended[0]["reason"] == "hangup"


def test_callback_receiver_that_hangs_is_retried_and_never_holds_the_call(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.url("/hang")
    http_server.delays["/hang"] = [1.5]  # the first attempt gets no answer within the 0.3 s timeout
    doc = f"""
version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{status_url: '{url}'}}
    - sleep: 2000
    - hangup
"""
    res = run_doc(doc, tmp_path, callback_timeout=0.3)
    assert abs(res.duration - 2.0) < 0.05  # the call's time is its own: the hanging receiver cost it nothing
    attempts = [e for e in res.events if e["type"] == "callback"]
    first = attempts[0]
    assert first["state"] == "recording" and first["attempt"] == 1 and not first["delivered"]
    assert "Timeout" in str(first["status"])
    delivered = [(e["state"], e["attempt"]) for e in attempts if e["delivered"]]
    assert delivered == [("recording", 2), ("finished", 1)]  # retried, and still in order
    got = [r["json"]["params"]["state"] for r in http_server.requests if r["path"] == "/hang"]
    assert got[-2:] == ["recording", "finished"]


def test_callbacks_waiting_for_a_receiver_that_is_down_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that takes connections and never answers: each payload holds a delivery thread for its
    attempts while the calls go on sending theirs — 250 calls in 40 s once left 470 payloads waiting,
    growing for as long as it stayed down. Past MAX_WAITING, a payload is given up at once, with its
    ``callback`` event; the ones taken are delivered or given up as before, and free their places."""
    # 20 places (without the bound: all 50 wait), beside what earlier tests of this process left waiting
    # (the count is the process's: a receiver of theirs may still be retried)
    monkeypatch.setattr(callbacks, "MAX_WAITING", callbacks._Pool.waiting + 20, raising=False)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        target = parse_http_url(f"http://127.0.0.1:{hole.getsockname()[1]}/status")
        events = EventLog()
        channels = [CallbackChannel(target, events, attempts=1, timeout=1.0) for _ in range(50)]
        for channel in channels:  # one per call, as each call's status_url has its own
            channel.send({"params": {"state": "recording"}})
        given_up = [e for e in events.events if not e["delivered"] and "waiting already" in str(e["status"])]
        assert len(given_up) == 30 and given_up[0]["state"] == "recording" and given_up[0]["attempt"] == 0
        assert all(channel.join(20) for channel in channels)
    timed_out = [e for e in events.events if e["attempt"] == 1]
    assert len(timed_out) == 20 and not any(e["delivered"] for e in timed_out)
    channels[0].send({"params": {"state": "finished"}})  # room again
    assert channels[0].join(20)
    assert events.events[-1]["state"] == "finished" and events.events[-1]["attempt"] == 1


FULL_DISK_ALL_FORMATS = """
sections:
  main:
    - answer
    - record_call: {control_id: w, format: wav}
    - record_call: {control_id: m, format: mp3}
    - record_call: {control_id: a, format: mp4}
    - sleep: 8000
    - set: {after: 'still running'}
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 96 KiB filesystem (tmpfs) for the recordings: writes fail with ENOSPC when it fills."""
    with small_filesystem(tmp_path / "out" / "recordings", "96k") as root:
        yield root


def test_disk_full_finishes_every_recording_and_loses_nothing_written(tmp_path: Path, small_disk: Path) -> None:
    out, events = swml_run(tmp_path, FULL_DISK_ALL_FORMATS, tone(440, 10.0, level=0.3))
    assert json.loads((out / "vars.json").read_text())["after"] == "still running"
    metas = {m["control_id"]: m for m in (json.loads(p.read_text()) for p in small_disk.glob("*.json"))}
    assert sorted(metas) == ["a", "m", "w"] and not list(small_disk.glob("*.tmp"))
    assert all(m["state"] in ("finished", "error") and m["end_reason"] for m in metas.values()), metas
    assert "error" in {m["state"] for m in metas.values()}  # the disk did fill
    for m in metas.values():  # what reached the disk is a readable file, and the metadata says its size
        path = small_disk / f"{m['recording_id']}.{m['format']}"
        assert m["size"] == path.stat().st_size > 0, m
        try:
            with av.open(str(path)) as c:
                decoded = sum(f.samples for f in c.decode(audio=0))
        except av.error.FFmpegError as e:
            raise AssertionError(f"{m['format']}: {e}") from None
        assert decoded > RATE, m
    ends = [e for e in events if e["type"] == "record.state" and e["state"] != "recording"]
    assert sorted(e["control_id"] for e in ends) == ["a", "m", "w"]


@pytest.mark.parametrize("fmt", ["wav", "mp3", "mp4"])
def test_a_recording_started_on_a_full_disk_fails_and_leaves_no_file(tmp_path: Path, fmt: str) -> None:
    """The disk already full when record_call starts: its audio file's header fit, its metadata did not,
    and the recording said "recording", then "error", leaving an audio file no metadata names — one the
    API, recovery and uploads never see. It fails at once now (record_call_result "failed", the error
    naming the file), leaves nothing behind, and the call goes on."""
    doc = (
        "sections:\n  main:\n    - answer\n"
        f"    - record_call: {{format: {fmt}}}\n"
        "    - set: {result: '${record_call_result}'}\n    - sleep: 500\n    - set: {after: ok}\n"
    )
    with small_filesystem(tmp_path / "out" / "recordings", "64k") as root:
        filler = root / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:  # every block taken
            while True:
                f.write(b"x" * 4096)
                f.flush()
        out, events = swml_run(tmp_path, doc, tone(440, 2.0, level=0.3))
        assert sorted(p.name for p in root.iterdir()) == ["filler"]
    variables = json.loads((out / "vars.json").read_text())
    assert variables["result"] == "failed" and variables["after"] == "ok"
    assert [e["state"] for e in events if e["type"] == "record.state"] == ["error"]
    [error] = [e for e in events if e["type"] == "error"]
    assert "cannot start the recording: cannot write" in error["message"], error
    assert "No space left on device" in error["message"], error


def test_heard_wav_that_cannot_grow_ends_the_transcript_not_the_call(tmp_path: Path) -> None:
    # heard.wav (16 kB/s) reaches the file-size limit at ~4 s
    doc = "sections: {main: [answer, {play: 'silence:6'}, {set: {after: 'still running'}}]}"
    out, events = swml_run(tmp_path, doc, limit=True)
    assert json.loads((out / "vars.json").read_text())["after"] == "still running"
    assert [e["where"] for e in events if e["type"] == "error"] == ["heard.wav"]
    audio, rate = read_wav(out / "heard.wav")
    assert 3.0 <= len(audio) / rate <= FILE_LIMIT / (rate * 2)


def test_an_mp4_killed_before_its_first_fragment_is_recovered_as_an_empty_mp4(tmp_path: Path) -> None:
    """A process killed in an MP4 recording's first moments (before its first fragment, so before FFmpeg
    wrote even the header) leaves metadata saying ``recording`` and an empty ``.part.mp4``. Recovery
    makes it a valid, empty MP4 (one AAC track, no samples) and marks it finished, as an empty WAV or
    MP3 is; it was marked ``error`` ('could not be repaired: InvalidDataError') with a 0-byte file."""
    from swml_engine.recording.encoders import part_path
    from swml_engine.recording.recovery import recover

    run_doc("sections: {main: [answer, {record_call: {format: mp4, stereo: true}}, {sleep: 500}]}", tmp_path)
    root = tmp_path / "out" / "recordings"
    (meta_path,) = root.glob("*.json")
    meta = json.loads(meta_path.read_text())
    audio = root / f"{meta['recording_id']}.mp4"
    # What the kill leaves: the metadata of a recording under way, and the fragmented file FFmpeg has
    # not written to yet (the writer creates it empty, to lock it).
    audio.unlink()
    part_path(audio).write_bytes(b"")
    meta_path.write_text(json.dumps({**meta, "state": "recording", "end_reason": None, "duration": 0, "size": 0}))

    (done,) = recover(root)
    assert done.duration == 0.0 and "empty MP4" in done.note
    meta = json.loads(meta_path.read_text())
    assert (meta["state"], meta["end_reason"], meta["duration"]) == ("finished", "recovered", 0.0)
    assert meta["size"] == audio.stat().st_size > 0 and not part_path(audio).exists()
    with av.open(str(audio)) as c:
        (stream,) = c.streams.audio
        assert (stream.codec_context.name, stream.channels, stream.rate) == ("aac", 2, RATE)
        assert sum(f.samples for f in c.decode(audio=0)) == 0
