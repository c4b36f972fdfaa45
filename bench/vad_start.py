"""What a recording with a silence timeout costs the event loop at its start: the voice detector it
takes (a Silero model kept from an ended recording, reset) against one loaded for it, as every such
recording did before.

    .venv/bin/python bench/vad_start.py [--starts 50]

Both are timed on this thread as the event loop would run them (the loop's media waits for them), per
start; loading a model is the reference. A voicemail's `record` has an `end_silence_timeout`, so each
one started paid the load while every call of the process waited.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from swml_engine.media import vad
from swml_engine.media.vad import VoiceDetector


def per_start(fn: Callable[[], None], n: int) -> tuple[float, float]:
    """Wall and CPU seconds per call of ``fn`` (best of 3 runs of ``n``)."""
    best_wall = best_cpu = float("inf")
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        best_wall = min(best_wall, (time.perf_counter() - wall) / n)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / n)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=50, help="recordings started per run (default 50)")
    args = parser.parse_args()
    VoiceDetector(8000).close()  # (the library itself loaded once, as in a running service)

    def loaded() -> None:  # the engine before: a model loaded for each recording
        vad.MODELS = vad._Models()
        VoiceDetector(8000).close()

    def kept() -> None:  # the engine: the model an ended recording gave back
        VoiceDetector(8000).close()

    reference = per_start(loaded, args.starts)
    vad.MODELS = vad._Models()
    engine = per_start(kept, args.starts)
    print("| voice detector at a recording's start | wall per start | CPU per start | vs reference (wall) |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in (
        ("loaded for it (reference; the engine before)", reference),
        ("kept from an ended recording (the engine)", engine),
    ):
        print(f"| {name} | {wall * 1000:.3f} ms | {cpu * 1000:.3f} ms | {wall / reference[0]:.2g}x |")


if __name__ == "__main__":
    main()
