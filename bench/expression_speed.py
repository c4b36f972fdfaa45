"""What a JavaScript expression costs in a step, against the same step with a plain value.

A simulated call runs N ``set`` steps whose value is a ``${...}`` expression (evaluated by V8 on the
expression thread, off the event loop, within the sandbox's limits), then the same N steps with a plain
path lookup (``${call.from}``: no JavaScript) as the reference in the same run. The difference per step
is the price of one expression: JSON for the scope, the hop to the V8 thread and back, the evaluation.

    .venv/bin/python bench/expression_speed.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import time

from swml_engine.document.loader import load_text
from swml_engine.methods import REGISTRY
from swml_engine.session import Simulation, simulate

SCRIPT = """
sections:
  main:
    - answer
    - label: again
    - set: {{x: '{value}'}}
    - goto: {{label: again, max: 100}}
"""


def measure(value: str, loops: int) -> float:
    """Wall seconds for ``loops`` runs of the script (each 100 set steps and goto steps)."""
    doc = load_text(SCRIPT.format(value=value), methods=REGISTRY)
    started = time.perf_counter()
    for _ in range(loops):
        simulate(doc, Simulation())
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000, help="set steps per variant (default 2000)")
    args = ap.parse_args()
    loops = max(1, args.steps // 101)
    steps = loops * 101
    measure("${1 + 1}", 1)  # warm up: V8 starts, templates compile
    expression = measure("${call.from.length + 1}", loops)
    reference = measure("${call.from}", loops)
    per_step = (expression - reference) / steps * 1e6
    print(f"expression steps : {steps} in {expression:6.2f} s  ({expression / steps * 1e6:7.0f} µs a step)")
    print(f"reference (path) : {steps} in {reference:6.2f} s  ({reference / steps * 1e6:7.0f} µs a step)")
    print(f"one expression costs {per_step:.0f} µs more; ratio expression/reference {expression / reference:.2f}")


if __name__ == "__main__":
    main()
