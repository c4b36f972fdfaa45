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
import numpy as np
import pytest

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


@pytest.mark.parametrize("kill_after", [2.3, 3.6])  # two phases of the writers' blocks and fragments
def test_sigkill_mid_recording_then_recover(tmp_path: Path, kill_after: float) -> None:
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
    time.sleep(1.0)
    # Recovery while the call runs (another worker starting, an operator's `swml recover`) leaves the
    # live recordings alone.
    r = subprocess.run([sys.executable, "-m", "swml_engine", "recover", str(out)], capture_output=True, text=True)
    assert r.stdout.strip() == "nothing to recover", r.stdout + r.stderr
    time.sleep(kill_after - 1.0)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.wait()

    metas = [json.loads(p.read_text()) for p in (out / "recordings").glob("*.json")]
    assert sorted(m["state"] for m in metas) == ["recording"] * 3  # the crash left them unfinished

    r = subprocess.run([sys.executable, "-m", "swml_engine", "recover", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("recovered") == 3, r.stdout + r.stderr
    for m in (json.loads(p.read_text()) for p in (out / "recordings").glob("*.json")):
        assert (m["state"], m["end_reason"]) == ("finished", "recovered")
        # All audio up to at most 1 s before the kill, measured from the recording's own start.
        recorded = killed_at - m["start_time"]
        assert recorded - 1.0 <= m["duration"] <= recorded + 0.1, (m["format"], m["duration"], recorded)
        path = out / "recordings" / f"{m['recording_id']}.{m['format']}"
        assert m["size"] == path.stat().st_size
        with av.open(str(path)) as c:
            s = c.streams.audio[0]
            assert s.channels == m["channels"] and s.rate == 8000
            frames = [f.to_ndarray() for f in c.decode(s)]
        n = sum(f.shape[-1] for f in frames) // (2 if m["format"] == "wav" and m["channels"] == 2 else 1)
        assert abs(n / 8000 - m["duration"]) < 0.2
        first = np.concatenate([f[0] for f in frames])[:4000].astype(np.float64)  # the caller's tone from the start
        assert np.abs(first[800:]).max() > (0.1 if first.dtype.kind == "f" and np.abs(first).max() <= 1 else 3000)
    assert not list((out / "recordings").glob("*.part.mp4"))
    r = subprocess.run([sys.executable, "-m", "swml_engine", "recover", str(out)], capture_output=True, text=True)
    assert r.stdout.strip() == "nothing to recover"
    # The next run into the same directory says nothing more (all repaired) and starts clean.
    r = subprocess.run(
        [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(out), "--hangup-at", "1"],
        capture_output=True,
        text=True,
    )
    assert "recovered" not in r.stdout and r.returncode == 0


def test_next_run_recovers_and_says_so(tmp_path: Path) -> None:
    """`swml run` into the output directory of a killed run repairs its recordings and says so, on
    stdout and in events.jsonl."""
    doc = tmp_path / "long.yaml"
    doc.write_text(SCRIPT)
    out = tmp_path / "out"
    proc = swml("run", str(doc), "--realtime", "--out", str(out), "-q")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list((out / "recordings").glob("*.json"))) < 3:
        time.sleep(0.02)
    time.sleep(1.2)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.wait()
    time.sleep(2.0)  # the repair comes later than the crash: the recordings' end is the crash's time
    r = subprocess.run(
        [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(out), "--hangup-at", "1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.count("recovered recording") == 3, r.stdout + r.stderr
    recovered = [e for e in read_jsonl(out / "events.jsonl") if e["type"] == "record.recovered"]
    assert len(recovered) == 3 and all(e["duration"] > 0 for e in recovered)
    for m in (json.loads(p.read_text()) for p in (out / "recordings").glob("*.json")):
        if m["end_reason"] == "recovered":
            assert killed_at - 1.2 <= m["end_time"] <= killed_at + 0.1, (m["format"], m["end_time"] - killed_at)
