"""The `swml` command as a user runs it: exit codes, messages, output files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import read_wav, rms, tone, wav_bytes, window

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def swml(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swml_engine", *args], capture_output=True, text=True, timeout=120)


def test_validate_exit_codes_and_messages(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("sections: {main: [answer, {play: 'say:hi'}]}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sections:\n  main:\n    - answer\n    - play: {urls: ['say:a', 'ring:zz']}\n    - sleep: -3\n")
    unsupported = tmp_path / "ai.json"
    unsupported.write_text('{"sections": {"main": [{"ai": {}}]}}')
    broken = tmp_path / "broken.yaml"
    broken.write_text("sections: [\n")

    r = swml("validate", str(good))
    assert r.returncode == 0 and r.stdout.strip() == f"{good}: ok"

    r = swml("validate", str(bad))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{bad}: sections.main[1].play.urls[1]: 'ring:zz': no ring cadence for country 'zz'; known: "
        + r.stderr.split("known: ")[1].splitlines()[0],
        f"{bad}: sections.main[2].sleep.duration: -3 is below the minimum 0 ms",
    ]

    r = swml("validate", str(unsupported))
    assert r.returncode == 3
    assert r.stderr.strip() == f"{unsupported}: sections.main[0].ai: not supported by this engine"

    r = swml("validate", str(broken))
    assert r.returncode == 1 and "invalid YAML" in r.stderr and "Traceback" not in r.stderr

    r = swml("validate", str(good), str(unsupported), str(bad))
    assert r.returncode == 1  # the worst verdict wins

    r = swml("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_run_writes_heard_events_and_vars(tmp_path: Path) -> None:
    caller = tmp_path / "caller.wav"
    caller.write_bytes(wav_bytes(tone(440, 2.0, rate=16000), 16000))
    out = tmp_path / "out"
    r = swml(
        "run", str(EXAMPLES / "ivr.yaml"), "--dtmf", "9:2", "--out", str(out), "--caller-audio", str(caller),
        "--from", "+15550009999", "--header", "X-Test=1", "--env", "REGION=eu",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "call ended after" in r.stdout
    variables = json.loads((out / "vars.json").read_text())
    assert variables["prompt_value"] == "2" and variables["return_value"] == "support"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events[0]["type"] == "call.state" and events[-1] == {**events[-1], "state": "ended", "reason": "hangup"}
    assert {"step.start", "step.end", "vars.set", "dtmf", "play.start", "play.end"} <= {e["type"] for e in events}
    heard, rate = read_wav(out / "heard.wav")
    assert abs(len(heard) / rate - events[-1]["t"]) <= 0.021
    assert rms(window(heard, rate, 0.1, 1.0)) > 300  # the greeting


def test_run_reports_bad_options_and_documents_in_one_line(tmp_path: Path) -> None:
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [answer]}")
    r = swml("run", str(doc), "--dtmf", "x", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("swml run: --dtmf: 'x' is not T:DIGITS")
    r = swml("run", str(doc), "--caller-audio", str(tmp_path / "nope.wav"))
    assert r.returncode == 2 and "no such file" in r.stderr
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 50)
    r = swml("run", str(doc), "--caller-audio", str(junk), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_progress_bar_moves_on_a_terminal_between_events(tmp_path: Path) -> None:
    """A 4 s real-time run with no events between 0 s and 4 s: the bar (on a real terminal, a pty)
    still shows the call time growing, and ends with a newline."""
    import os
    import pty
    import re

    doc = tmp_path / "long.yaml"
    doc.write_text("sections: {main: [answer, {sleep: 4000}]}")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swml_engine",
            "run",
            str(doc),
            "--realtime",
            "--hangup-at",
            "10",
            "--out",
            str(tmp_path / "o"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    shown = [float(t) for t in re.findall(rb"call time +([0-9.]+) s of 10 s", b"".join(chunks))]
    assert len(shown) >= 4 and shown == sorted(shown) and 2.0 <= shown[0] < shown[-1] <= 4.1, shown
