"""Virtual-clock throughput: seconds of call per wall second for a long play/silence script.

Reference in the same run: the cost of the media alone (a call that only sleeps, so the same 20 ms
ticks with no player work), to show what the script and players add.

    .venv/bin/python bench/run_speed.py [--minutes 60]
"""

from __future__ import annotations

import argparse
import time

from swml_engine.document.loader import load_text
from swml_engine.methods import REGISTRY
from swml_engine.session import Simulation, simulate

PLAY = """
sections:
  main:
    - answer
    - label: again
    - play: {urls: ['silence:50', 'ring:60:us', 'silence:10']}
"""
#: Plays the 2 minutes again (a goto's max is at least 1: --minutes under 4 plays them once).
AGAIN = "    - goto: {label: again, max: %d}\n"
SLEEP = "sections: {main: [answer, {sleep: %d}]}"


def measure(text: str) -> tuple[float, float]:
    doc = load_text(text, methods=REGISTRY)
    started = time.perf_counter()
    res = simulate(doc, Simulation())
    return res.duration, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    args = ap.parse_args()
    loops = max(1, args.minutes // 2) - 1  # each loop is 2 minutes of call
    call_s, wall_s = measure(PLAY + (AGAIN % loops if loops else ""))
    ref_call, ref_wall = measure(SLEEP % int(call_s * 1000))
    rows = (("play/ring/silence script", call_s, wall_s), ("reference (sleep only)", ref_call, ref_wall))
    for label, c, w in rows:
        print(f"{label:26s} {c:8.1f} s of call in {w:6.2f} s wall = {c / w:8.0f}x real time")
    print(f"ratio play/reference wall time: {wall_s / ref_wall:.2f}")


if __name__ == "__main__":
    main()
