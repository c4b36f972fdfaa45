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
