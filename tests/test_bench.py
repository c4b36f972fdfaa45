"""The benchmark scripts still start (their imports and options), so bench/README.md's commands work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_script_starts(script: str) -> None:
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


@pytest.mark.parametrize(
    ("script", "args"), [("run_speed.py", ["--minutes", "1"]), ("expression_speed.py", ["--steps", "20"])]
)
def test_a_short_bench_run_loads_its_script_and_reports(script: str, args: list[str]) -> None:
    """The virtual-clock benches run end to end on a small size (a minute of call takes well under a second)."""
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ratio" in r.stdout


def test_the_bridged_load_run_counts_the_far_partys_frames_from_its_first_to_its_last() -> None:
    """bench/load_sip.py --bridge reads each recording's right channel between the bridge's start and end:
    a ring-tone frame before the far party's first 1 kHz frame is not its start, the silence before its
    first frame is its onset, a gap after it is lost frames, silence at the very end is its tail."""
    import importlib.util
    import tempfile
    import wave

    import numpy as np

    spec = importlib.util.spec_from_file_location("load_sip", BENCH / "load_sip.py")
    assert spec is not None and spec.loader is not None
    load_sip = importlib.util.module_from_spec(spec)
    sys.modules["load_sip"] = load_sip  # (its dataclasses look their module up)
    spec.loader.exec_module(load_sip)

    def tone(hz: float, frames: int) -> np.ndarray:
        t = np.arange(frames * 160) / 8000
        return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)

    def silence(frames: int) -> np.ndarray:
        return np.zeros(frames * 160, np.int16)

    lead = 25  # half a second before the bridge: the caller alone
    right = np.concatenate(
        [
            silence(lead),
            tone(440, 1) + tone(480, 1),
            silence(5),
            tone(1000, 100),
            silence(3),
            tone(1000, 90),
            silence(2),
        ]
    )
    left = tone(440, len(right) // 160)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(np.column_stack([left, right]).astype("<i2").tobytes())
        meta = {
            "audio": str(path),
            "call_time": 1.0,
            "bridges": [{"to": "sip:far@x", "call_id": "c", "start": 1.0 + lead / 50, "end": 1.0 + len(left) / 8000}],
        }
        far = load_sip.far_channel(meta)
        assert load_sip.lost_frames(path) == 0  # the caller, all along
    assert (far.bridged, far.onset_frames, far.lost, far.tail, far.tones_ok) == (True, 6, 3, 2, True)
