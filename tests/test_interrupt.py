"""Ctrl-C (SIGINT) during `swml run`, sent to a real process: the first one is the caller hanging up."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swml_engine.media.audio import decode

#: Where no receiver listens (the test ports are 33000-33999): a status callback receiver that is down.
DOWN = "http://127.0.0.1:33001/cb"


def start(script: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "swml_engine", "run", str(script), "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal gives it, however the test runner was started (a background job ignores it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def poll(what: str, found: Any, proc: subprocess.Popen[str], deadline: float = 60.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = found()
        if value:
            return value
        assert proc.poll() is None, f"swml run ended before {what}: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {deadline} s")


def events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_ctrl_c_in_a_realtime_run_is_the_caller_hanging_up(tmp_path: Path) -> None:
    script = tmp_path / "s.yaml"
    script.write_text("sections: {main: [answer, {record_call: {}}, {sleep: 20000}]}")
    out = tmp_path / "out"
    proc = start(script, out, "--realtime")

    def recording() -> dict[str, Any] | None:
        for meta in (out / "recordings").glob("*.json"):
            with_state = json.loads(meta.read_text() or "{}")
            if with_state.get("state") == "recording":
                return dict(with_state)
        return None

    meta = poll("recording", recording, proc)
    poll("second of audio", lambda: time.time() > meta["start_time"] + 1.0, proc)
    interrupted_at = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Task was destroyed" not in stderr, stderr
    assert "interrupted (Ctrl-C): the caller hung up at" in stderr
    assert "call ended after" in stdout and "remote_hangup" in stdout  # the summary, as after a hangup
    finished = json.loads((out / "recordings" / f"{meta['recording_id']}.json").read_text())
    assert finished["state"] == "finished" and finished["end_reason"] == "hangup"
    audio = decode(out / "recordings" / f"{meta['recording_id']}.wav", 8000)
    assert abs(len(audio) / 8000 - (interrupted_at - meta["start_time"])) < 0.5
    assert abs(finished["duration"] - len(audio) / 8000) < 0.05
    assert json.loads((out / "vars.json").read_text())["record_call_result"] == "success"
    assert (out / "heard.wav").stat().st_size > 44
    ended = [e for e in events(out) if e["type"] == "call.state" and e["state"] == "ended"]
    assert [e["reason"] for e in ended] == ["remote_hangup"]


def test_ctrl_c_while_waiting_for_status_callbacks_stops_the_wait(tmp_path: Path) -> None:
    script = tmp_path / "s.yaml"
    script.write_text(f"sections: {{main: [answer, {{record_call: {{status_url: '{DOWN}'}}}}, {{sleep: 2000}}]}}")
    out = tmp_path / "out"
    proc = start(script, out)  # on the virtual clock: the call is over at once, the wait is real time

    poll("call's end", lambda: any(e["type"] == "call.state" and e["state"] == "ended" for e in events(out)), proc)
    proc.send_signal(signal.SIGINT)
    # The receiver's retries alone would hold the run some 30 s (and the wait lasts up to 60 s).
    stdout, stderr = proc.communicate(timeout=20)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "the wait for status callbacks stopped: 2 of 2 not delivered" in stderr
    assert "status callbacks: 0 of 2 delivered" in stdout
    assert (out / "vars.json").exists()
    meta = json.loads(next((out / "recordings").glob("*.json")).read_text())
    assert meta["state"] == "finished" and meta["end_reason"] == "script_end"


def test_ctrl_c_during_a_slow_fetch_on_the_virtual_clock_hangs_up_at_once(tmp_path: Path) -> None:
    """A long script on the virtual clock takes no time, but a URL that does not answer holds it (up to
    the fetch's 10 s): a Ctrl-C then is the caller hanging up, and the fetch stops with the call."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        script = tmp_path / "s.yaml"
        url = f"http://127.0.0.1:{server.getsockname()[1]}/a.wav"
        script.write_text(f"sections: {{main: [answer, {{record_call: {{}}}}, {{play: '{url}'}}, {{sleep: 600000}}]}}")
        out = tmp_path / "out"
        proc = start(script, out)
        server.settimeout(60)
        fetching, _ = server.accept()
        with fetching:
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (Ctrl-C): the caller hung up at 0.00 s" in stderr
    assert "remote_hangup" in stdout
    plays = [e["result"] for e in events(out) if e["type"] == "step.end" and e["method"] == "play"]
    assert plays == ["hangup"]  # (the fetch stopped: it would have failed the play after 10 s)
    meta = json.loads(next((out / "recordings").glob("*.json")).read_text())
    assert meta["state"] == "finished" and meta["end_reason"] == "hangup"
    assert (out / "vars.json").exists()


def test_a_ctrl_c_after_the_call_is_over_cuts_the_wait_for_callbacks_that_comes_next(tmp_path: Path) -> None:
    """A Ctrl-C once the call has ended but before the wait for status callbacks has begun (writing the
    outputs comes between: 'waiting' is said 2 s after the call's end) was taken for the caller hanging
    up a call already gone, and the wait went on in full — a receiver that is down held the run for a
    minute (seen under load in tests/test_cli.py's summary test). It ends the wait now."""
    from swml_engine.document.loader import load_text
    from swml_engine.methods import REGISTRY
    from swml_engine.session import CtrlC, Simulation, simulate

    with socket.socket() as closed:  # nothing listens here: each attempt is refused, then retried
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/cb"
    ctrl_c = CtrlC(stop_now=lambda: None)

    def press_once_over(event: dict[str, Any]) -> None:
        if event["type"] == "call.state" and event.get("state") == "ended":
            ctrl_c.received()  # (as the SIGINT handler would, on the loop, before the wait begins)

    doc = load_text(
        f"sections: {{main: [answer, {{play: {{url: 'silence:1', status_url: '{url}'}}}}]}}", methods=REGISTRY
    )
    started = time.monotonic()
    res = simulate(doc, Simulation(out=tmp_path / "o", ctrl_c=ctrl_c, on_event=press_once_over))
    assert ctrl_c.wait_cut and ctrl_c.hung_up_at is None  # (the call was not hung up: it was over)
    given_up = [e for e in res.events if e["type"] == "callback" and not e["delivered"]]
    assert given_up and time.monotonic() - started < 30  # (retries to a refusing receiver last about 45 s)
