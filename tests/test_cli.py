"""The `swml` command as a user runs it: exit codes, messages, output files."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_output_piped_into_a_reader_that_has_gone_is_no_traceback(tmp_path: Path) -> None:
    # `swml run doc.yaml | head -2`: the summary's lines met a closed pipe (a BrokenPipeError traceback).
    doc = tmp_path / "call.yaml"
    doc.write_text("sections: {main: [{set: {a: 1}}]}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the summary
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == ""
    assert (tmp_path / "out" / "vars.json").read_text().strip() == '{\n  "a": 1\n}'


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


def test_run_names_the_option_of_an_unusable_out_directory_or_caller_audio(tmp_path: Path) -> None:
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [answer]}")
    in_the_way = tmp_path / "out"
    in_the_way.write_text("a file")
    r = swml("run", str(doc), "--out", str(in_the_way))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        r.stderr.strip()
        == f"swml run: --out {in_the_way}: cannot make the output directory: a file of that name is in the way"
    )
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 50)
    r = swml("run", str(doc), "--caller-audio", str(junk), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith(f"swml run: --caller-audio {junk}: not a readable audio file")


class _HeldReceiver:
    """A status callback receiver on loopback whose first answer waits until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        held = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                held.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def held_receiver() -> Iterator[_HeldReceiver]:
    receiver = _HeldReceiver()
    try:
        yield receiver
    finally:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()


def test_run_says_it_waits_for_callbacks_and_sums_up_errors_callbacks_and_recordings(
    tmp_path: Path, held_receiver: _HeldReceiver
) -> None:
    """The summary a user reads: each error with its place (also one whose message has none), how many
    status callbacks were delivered, the recordings made; and while a receiver keeps the run waiting
    after the call, one line says what it waits for."""
    doc = tmp_path / "a.yaml"
    doc.write_text(
        "sections:\n  main:\n    - record_call: {}\n"
        f"    - play: {{url: 'silence:1', status_url: '{held_receiver.url}'}}\n"
        "    - prompt: {play: 'silence:1', speech_timeout: 2}\n"
    )
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    note = proc.stderr.readline()  # the receiver holds the first callback until the note came
    held_receiver.release.set()
    stdout, stderr = proc.communicate(timeout=60)
    assert note.startswith("the call is over; waiting for status callbacks still being delivered (up to 60 s")
    assert proc.returncode == 0 and stderr == ""
    lines = stdout.splitlines()
    assert "  error at 2.00 s: sections.main[2].prompt: no speech recognition in this engine" in "\n".join(lines)
    assert "status callbacks: 2 of 2 delivered (each attempt is a callback event)" in lines
    assert lines[-1] == f"outputs in {out}/: heard.wav, events.jsonl, vars.json, recordings/ (1 made by this call)"


def test_run_summary_gives_the_advice_for_a_destination_without_peer_and_warnings(tmp_path: Path) -> None:
    """A connect to a destination no --peer answers fails 'unreachable' with no error: the advice to add a
    --peer was only in events.jsonl, and the summary said 'errors: 0'."""
    doc = tmp_path / "a.yaml"
    doc.write_text(
        "sections:\n  main:\n    - connect: {to: 'sip:bob@example.com'}\n"
        "    - record_call: {control_id: a}\n    - stop_record_call: {control_id: b}\n"
    )
    r = swml("run", str(doc), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if line.startswith("  note at")]
    assert notes == [
        "  note at 0.00 s: no simulated far party answers sip:bob@example.com: add --peer "
        "'sip:bob@example.com=answer@1s' to swml run",
        "  note at 0.00 s: sections.main[2].stop_record_call: no live recording with control_id 'b' to stop",
    ]


def test_run_help_has_every_option_the_readme_names() -> None:
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    using = readme[readme.index("## Using it") : readme.index("Real calls:")]
    named = set(re.findall(r"(--[a-z][a-z-]+)", using))
    shown = swml("run", "--help").stdout
    assert len(named) >= 10 and {o for o in named if o not in shown} == set()
    assert "FROM_" not in shown  # the variable's name, not the option's
    # what a script reading call.from and call.to gets unless told, as the README says
    assert "(default +15551230000)" in shown and "(default +15557890000)" in shown


def test_a_header_given_twice_reaches_the_script_twice_as_a_sip_invite_s_would(tmp_path: Path) -> None:
    """`--header X-A=1 --header X-A=2`: the second replaced the first without a word, where swml serve
    gives the script every header of the INVITE, repeated names included."""
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [{set: {h: '${call.headers}'}}]}\n")
    out = tmp_path / "o"
    r = swml("run", str(doc), "--header", "X-A=1", "--header", "X-A=2", "--header", "X-B=", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "vars.json").read_text())["h"] == [
        {"name": "X-A", "value": "1"},
        {"name": "X-A", "value": "2"},
        {"name": "X-B", "value": ""},
    ]


def test_the_summary_names_each_recording_this_run_made_among_earlier_runs_ones(tmp_path: Path) -> None:
    """A second run into the same --out: recordings/ holds both runs' files, and the summary said only
    "1 made by this call" (README: it prints "the recordings made"), so which one to listen to was a
    guess."""
    doc = tmp_path / "a.yaml"
    doc.write_text(
        "sections: {main: [answer, {record_call: {format: mp3, beep: true}}, {sleep: 1500}, stop_record_call]}\n"
    )
    out = tmp_path / "o"
    assert swml("run", str(doc), "--out", str(out)).returncode == 0
    earlier = {p.name for p in (out / "recordings").glob("*.mp3")}
    r = swml("run", str(doc), "--out", str(out))
    assert r.returncode == 0, r.stderr
    (made,) = {p.name for p in (out / "recordings").glob("*.mp3")} - earlier
    meta = json.loads((out / "recordings" / made.replace(".mp3", ".json")).read_text())
    # (at its first sample, in heard.wav's time: after the beep)
    said = f"  recording at {meta['call_time']:.2f} s: recordings/{made} ({meta['duration']:.2f} s, ended: stop_record_call)"
    assert meta["call_time"] > 0.25 and said in r.stdout.splitlines(), r.stdout


def test_a_caller_hanging_up_before_the_answer_cancels_the_call_as_a_sip_caller_does(tmp_path: Path) -> None:
    """--hangup-at before the script answers: a SIP caller then sends CANCEL and swml serve ends the call
    remote_cancel (docs/methods.md); swml run said remote_hangup, so a script's test of a caller giving up
    while it rings saw another end than the service would give."""
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [{sleep: 2000}, answer, {sleep: 2000}]}\n")
    for hangup_at, reason in (("1", "remote_cancel"), ("3", "remote_hangup")):
        r = swml("run", str(doc), "--hangup-at", hangup_at, "--out", str(tmp_path / hangup_at))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"call ended after {hangup_at}.00 s of call time") and f": {reason}\n" in r.stdout
        ended = json.loads((tmp_path / hangup_at / "events.jsonl").read_text().splitlines()[-1])
        assert ended == {**ended, "type": "call.state", "state": "ended", "reason": reason}


def test_a_peer_sound_ffmpeg_cannot_read_is_a_bad_option(tmp_path: Path) -> None:
    """--peer 'DEST=answer,audio:junk.wav': the run went on with the connect failing 'error' at the dial,
    the summary saying 'errors: 0' and exit 0; a --caller-audio FFmpeg cannot read is exit 2 at once."""
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [{connect: {to: 'sip:bob@example.com'}}]}\n")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 50)
    for item in ("audio", "early"):
        spec = f"sip:bob@example.com=answer@1s,ring@0,{item}:{junk}"
        r = swml("run", str(doc), "--peer", spec, "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.startswith(f"swml run: --peer {spec!r}: {item}:{junk}: not a readable audio file"), r.stderr


def test_a_run_leaves_no_far_party_s_heard_file_of_an_earlier_run_in_its_out(tmp_path: Path) -> None:
    """heard.wav, events.jsonl and vars.json are replaced by each run into an --out; peer-1-heard.wav of
    an earlier run stayed beside them, read as what this run's far party heard."""
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [{connect: {to: 'sip:bob@example.com'}}]}\n")
    out = tmp_path / "o"
    r = swml("run", str(doc), "--peer", "sip:bob@example.com=answer,hangup@1", "--out", str(out))
    assert r.returncode == 0 and (out / "peer-1-heard.wav").is_file(), r.stderr
    (out / "peer-10-heard-2.wav").write_bytes((out / "peer-1-heard.wav").read_bytes())
    mine = out / "peer-1-heard-notes.txt"  # not a name a run writes: kept
    mine.write_text("x")
    r = swml("run", str(doc), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "events.jsonl",
        "heard.wav",
        "peer-1-heard-notes.txt",
        "vars.json",
    ]


def test_run_of_an_invalid_document_also_names_its_unsupported_methods_as_validate_does(tmp_path: Path) -> None:
    """A document with an error and an unsupported method: swml validate names both, swml run named only
    the error, and the user fixing it learnt of the other at the next run."""
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [{ai: {}}, {sleep: -3}]}\n")
    lines = [
        f"{doc}: sections.main[1].sleep.duration: -3 is below the minimum 0 ms",
        f"{doc}: sections.main[0].ai: not supported by this engine",
    ]
    r = swml("validate", str(doc))
    assert r.returncode == 1 and r.stderr.splitlines() == lines
    r = swml("run", str(doc), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.splitlines() == lines


def test_validate_and_run_start_without_loading_the_service(tmp_path: Path) -> None:
    """swml validate, run, recover and decrypt built swml serve's parser too, which imports the SIP stack
    and FastAPI: about a second of each start, three quarters of a small validate's."""
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [answer]}\n")
    probe = (
        "import sys\nfrom swml_engine.cli import main\n"
        f"codes = [main(['validate', '-q', {str(doc)!r}]), main(['run', '-q', {str(doc)!r}, '--out', {str(tmp_path / 'o')!r}])]\n"
        "print(codes, sorted(m for m in sys.modules if m.startswith(('swml_engine.service', 'fastapi'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[0, 0] []", r.stdout + r.stderr
    listed = swml("--help").stdout  # the service's commands are still there, and their options
    assert "serve" in listed and "index" in listed and "--script-url" in swml("serve", "--help").stdout


def test_a_header_or_env_without_a_value_is_named_with_its_command(tmp_path: Path) -> None:
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [answer]}\n")
    for option in ("--header", "--env"):
        r = swml("run", str(doc), option, "X", "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and r.stderr == f"swml run: {option} 'X': write NAME=VALUE\n"


def test_the_summary_says_why_status_callbacks_were_not_delivered(tmp_path: Path) -> None:
    """A receiver that is down (a status_url on a closed port): the summary said '0 of 2 delivered' and
    'errors: 0'; why was in events.jsonl alone. The wait for retries is cut short by a Ctrl-C."""
    import signal
    import socket

    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens on it
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/cb"
    doc = tmp_path / "a.yaml"
    doc.write_text(f"sections: {{main: [answer, {{play: {{url: 'silence:1', status_url: '{url}'}}}}]}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(tmp_path / "o")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("the call is over; waiting for status callbacks")
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = stdout.splitlines()
    assert "status callbacks: 0 of 2 delivered (each attempt is a callback event)" in lines
    assert f"  not delivered to {url}: ConnectError: [Errno 111] Connection refused" in lines, stdout


def test_the_summary_says_when_caller_digits_or_audio_never_reached_the_call(tmp_path: Path) -> None:
    """--dtmf 2000:1 (milliseconds, as SWML's own durations are: it is seconds) pressed after the call was
    over, and --caller-audio for a call never answered, did nothing without a word."""
    caller = tmp_path / "caller.wav"
    caller.write_bytes(wav_bytes(tone(440, 1.0), 8000))
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [answer, {prompt: {play: 'silence:1', max_digits: 1}}]}\n")
    r = swml("run", str(doc), "--dtmf", "2:5,2000:12", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    said = "  note: --dtmf: 2 digits from 2000.00 s on came after the call ended at 2.00 s (times are seconds)"
    assert said in r.stdout.splitlines(), r.stdout
    unanswered = tmp_path / "b.yaml"
    unanswered.write_text("sections: {main: [{sleep: 1000}, {hangup: {reason: busy}}]}\n")
    r = swml("run", str(unanswered), "--caller-audio", str(caller), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "  note: --caller-audio was not heard: the script never answered the call" in r.stdout.splitlines()
