"""Offline speed of a 1-hour call with record_call (wav, mp3, mp4), against ffmpeg encoding the same audio.

The call: the caller speaks (a 440 Hz tone) for the whole hour, record_call records both sides, mono.
Reference, in the same run: the same call without a recording, and ffmpeg encoding the same hour of
8 kHz mono audio to each format (wall time of the ffmpeg process).

    .venv/bin/python bench/record_speed.py [--minutes 60]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from swml_engine.document.loader import load_text
from swml_engine.methods import REGISTRY
from swml_engine.session import Simulation, simulate

RATE = 8000
FFMPEG_ARGS = {
    "wav": ["-c:a", "pcm_s16le"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "32k"],
    "mp4": ["-c:a", "aac", "-b:a", "32k"],
}


def call_seconds(doc: str, caller: np.ndarray, out: Path) -> tuple[float, float]:
    started = time.perf_counter()
    res = simulate(load_text(doc, methods=REGISTRY), Simulation(caller_audio=caller, out=out))
    return res.duration, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    args = ap.parse_args()
    seconds = args.minutes * 60
    t = np.arange(seconds * RATE) / RATE
    caller = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "caller.wav"
        with wave.open(str(src), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(caller.tobytes())
        _, base_wall = call_seconds(f"sections: {{main: [answer, {{sleep: {seconds * 1000}}}]}}", caller, root / "b")
        print(f"{args.minutes} min call, no recording: {base_wall:6.2f} s wall")
        print(f"{'format':6s} {'engine s':>9s} {'recording s':>12s} {'ffmpeg s':>9s} {'ratio':>6s}")
        for fmt, ff in FFMPEG_ARGS.items():
            doc = f"sections: {{main: [answer, {{record_call: {{format: {fmt}}}}}, {{sleep: {seconds * 1000}}}]}}"
            _, wall = call_seconds(doc, caller, root / fmt)
            started = time.perf_counter()
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *ff, str(root / f"ref.{fmt}")], check=True)
            ref = time.perf_counter() - started
            rec_cost = wall - base_wall
            print(f"{fmt:6s} {wall:9.2f} {rec_cost:12.2f} {ref:9.2f} {rec_cost / ref:6.2f}")


if __name__ == "__main__":
    main()
