"""A real `swml run` process killed with SIGKILL mid-recording: every recording is repaired, playable,
holds the audio up to at most 1 s before the kill, and is marked `end_reason: recovered`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av

from conftest import read_jsonl, tone, wav_bytes

SCRIPT = """
sections:
  main:
    - answer
    - record_call: {control_id: w, format: wav}
    - record_call: {control_id: m, format: mp3, stereo: true}
    - record_call: {control_id: a, format: mp4}
    - play: 'silence:600'
"""


def swml(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "swml_engine", *args], **kw)  # type: ignore[call-overload,no-any-return]


def test_sigkill_mid_recording_then_recover(tmp_path: Path) -> None:
    doc = tmp_path / "long.yaml"
    doc.write_text(SCRIPT)
    caller = tmp_path / "caller.wav"
    caller.write_bytes(wav_bytes(tone(440, 60, level=0.3)))
    out = tmp_path / "out"
    proc = swml("run", str(doc), "--realtime", "--out", str(out), "--caller-audio", str(caller), "-q")
    events = out / "events.jsonl"
    deadline = time.monotonic() + 30
    started = 0
    while time.monotonic() < deadline and started < 3:
        time.sleep(0.02)
        if events.exists():
            lines = read_jsonl(events)
            started = sum(1 for e in lines if e["type"] == "record.state" and e["state"] == "recording")
    assert started == 3
    t_start = time.monotonic()
    time.sleep(3.0)
    os.kill(proc.pid, signal.SIGKILL)
    killed_after = time.monotonic() - t_start
    proc.wait()

    metas = [json.loads(p.read_text()) for p in (out / "recordings").glob("*.json")]
    assert sorted(m["state"] for m in metas) == ["recording"] * 3  # the crash left them unfinished

    r = subprocess.run([sys.executable, "-m", "swml_engine", "recover", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("recovered") == 3, r.stdout + r.stderr
    for m in (json.loads(p.read_text()) for p in (out / "recordings").glob("*.json")):
        assert (m["state"], m["end_reason"]) == ("finished", "recovered")
        # All audio up to at most 1 s before the kill (the last recording started a moment after the first).
        assert killed_after - 1.0 <= m["duration"] <= killed_after + 0.5, (m["format"], m["duration"], killed_after)
        path = out / "recordings" / f"{m['recording_id']}.{m['format']}"
        assert m["size"] == path.stat().st_size
        with av.open(str(path)) as c:
            s = c.streams.audio[0]
            assert s.channels == m["channels"] and s.rate == 8000
            n = sum(f.samples for f in c.decode(s))
        assert abs(n / 8000 - m["duration"]) < 0.2
    assert not list((out / "recordings").glob("*.part.mp4"))
    r = subprocess.run([sys.executable, "-m", "swml_engine", "recover", str(out)], capture_output=True, text=True)
    assert r.stdout.strip() == "nothing to recover"
