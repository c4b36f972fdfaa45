"""What --encrypt-key-file adds to a recording: CPU per recorded hour and bytes on disk, per format.

The same simulated call twice per format (the caller speaks a 440 Hz tone for the whole call,
record_call records both sides, mono): once written plain, once sealed (recording/crypt.py). The CPU
time of the process for each call (virtual clock: no waiting in it) and the recording's size on disk.

    .venv/bin/python bench/encryption_cost.py [--minutes 60]
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from swml_engine.document.loader import load_text
from swml_engine.methods import REGISTRY
from swml_engine.recording.crypt import Keyring
from swml_engine.session import Simulation, simulate

RATE = 8000


def record(doc: str, caller: np.ndarray, out: Path, keyring: Keyring | None) -> tuple[float, int]:
    """CPU seconds of the call, and the size of its recording on disk."""
    started = time.process_time()
    simulate(load_text(doc, methods=REGISTRY), Simulation(caller_audio=caller, out=out, keyring=keyring))
    cpu = time.process_time() - started
    (audio,) = [p for p in (out / "recordings").iterdir() if p.suffix != ".json"]
    return cpu, audio.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    args = ap.parse_args()
    seconds = args.minutes * 60
    t = np.arange(seconds * RATE) / RATE
    caller = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = root / "keys"
        keys.write_text(f"bench {base64.b64encode(os.urandom(32)).decode()}\n")
        keys.chmod(0o600)
        keyring = Keyring.load(keys)
        print(f"{args.minutes} min call, record_call of both sides (mono)")
        print(f"{'format':6s} {'plain CPU s':>11s} {'sealed CPU s':>12s} {'extra s/h':>9s} {'extra bytes':>11s}")
        for fmt in ("wav", "mp3", "mp4"):
            doc = f"sections: {{main: [answer, {{record_call: {{format: {fmt}}}}}, {{sleep: {seconds * 1000}}}]}}"
            plain_cpu, plain_size = record(doc, caller, root / f"{fmt}-plain", None)
            sealed_cpu, sealed_size = record(doc, caller, root / f"{fmt}-sealed", keyring)
            extra = (sealed_cpu - plain_cpu) * 60 / args.minutes
            grown = (sealed_size - plain_size) / plain_size
            print(f"{fmt:6s} {plain_cpu:11.2f} {sealed_cpu:12.2f} {extra:9.2f} {grown:10.2%}")


if __name__ == "__main__":
    main()
