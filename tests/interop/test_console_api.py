"""The console's API on a real `swml serve`: sessions (cookie flags, CSRF, sign-out on every worker, a
limit on wrong tokens), recording search, the events streams of a real sipp call, and waveforms."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import numpy as np

from conftest import read_wav
from swml_engine.recording.crypt import is_sealed

from .peers import Engine, free_port, run_sipp, scenario
from .test_encryption import key_file, plaintext

EngineFactory = Callable[..., Engine]
TOKEN = "test-token-0123456789"
SCRIPT = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - hangup\n"


def http(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (with --workers, any worker may take it)."""
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def sign_in(base: str, token: str = TOKEN) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"token": token}).encode()
    return http("POST", f"{base}/api/session", body=body, headers={"Content-Type": "application/json"})


def signed_in(base: str) -> tuple[dict[str, str], str]:
    """The Cookie header of a new session, and its CSRF token."""
    code, headers, body = sign_in(base)
    assert code == 200, body
    return {"Cookie": headers["set-cookie"].split(";")[0]}, json.loads(body)["csrf_token"]


def test_a_session_cookie_lets_a_browser_in_on_every_worker_until_it_signs_out(engine: EngineFactory) -> None:
    port = free_port()
    eng = engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--workers", "2")
    base = f"http://127.0.0.1:{port}"

    code, headers, body = sign_in(base)
    assert code == 200 and headers["cache-control"] == "no-store"
    flags = [f.strip() for f in headers["set-cookie"].split(";")]
    assert flags[0].startswith("swml_session=") and len(flags[0]) > 40
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(flags) and "Secure" not in flags
    csrf = json.loads(body)["csrf_token"]
    cookie = {"Cookie": flags[0]}

    # Several connections: both workers take the cookie (the session is in the index they share).
    for _ in range(6):
        assert http("GET", f"{base}/api/recordings", headers=cookie)[0] == 200
    code, _, body = http("GET", f"{base}/api/session", headers=cookie)
    assert code == 200 and json.loads(body)["csrf_token"] == csrf

    # A change with the cookie needs the CSRF header; with it, the request goes through (404: no such
    # recording). The bearer token alone needs none.
    nosuch = f"{base}/api/recordings/00000000-0000-0000-0000-000000000000"
    assert http("DELETE", nosuch, headers=cookie)[0] == 403
    assert http("DELETE", nosuch, headers={**cookie, "X-CSRF-Token": "wrong"})[0] == 403
    assert http("DELETE", nosuch, headers={**cookie, "X-CSRF-Token": csrf})[0] == 404
    assert http("DELETE", nosuch, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404

    # Sign-out: the cookie is cleared, and the session is dead on every worker.
    assert http("DELETE", f"{base}/api/session", headers=cookie)[0] == 403  # (CSRF too)
    code, headers, _ = http("DELETE", f"{base}/api/session", headers={**cookie, "X-CSRF-Token": csrf})
    assert code == 204 and "Max-Age=0" in headers["set-cookie"]
    for _ in range(6):
        assert http("GET", f"{base}/api/recordings", headers=cookie)[0] == 401

    # A form cannot sign in (no JSON), nor can a wrong or forged cookie get in.
    form = http("POST", f"{base}/api/session", body=b"token=" + TOKEN.encode(), headers={"Content-Type": "text/plain"})
    assert form[0] in (415, 422)
    assert http("GET", f"{base}/api/recordings", headers={"Cookie": "swml_session=" + "A" * 43})[0] == 401
    assert "Traceback" not in eng.log()


def test_wrong_tokens_are_refused_then_limited_per_address_and_https_makes_the_cookie_secure(
    engine: EngineFactory,
) -> None:
    port = free_port()
    engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--public-url", f"https://example.test:{port}")
    base = f"http://127.0.0.1:{port}"
    code, headers, _ = sign_in(base)
    assert code == 200 and "Secure" in [f.strip() for f in headers["set-cookie"].split(";")]
    codes = [sign_in(base, "wrong-token-0123456789")[0] for _ in range(11)]
    assert codes == [401] * 10 + [429]
    code, headers, _ = sign_in(base)  # the right token waits too: this address is guessing
    assert code == 429 and 0 < int(headers["retry-after"]) <= 60


def tone_then_pause_wav(path: Path, rate: int = 8000) -> None:
    """3 s of stereo: left 440 Hz at half scale for 1 s, silence (a pause) for 1 s, the tone again;
    right silent throughout."""
    t = np.arange(rate) / rate
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    left = np.concatenate([tone, np.zeros(rate, np.int16), tone])
    frames = np.stack([left, np.zeros_like(left)], axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())


def recording_files(data: Path, recording_id: str, fmt: str, start: float, call_id: str = "c1") -> None:
    """A finished stereo recording in a data directory, as a service leaves one (found at start)."""
    root = data / "recordings"
    root.mkdir(parents=True, exist_ok=True)
    tone_then_pause_wav(root / f"{recording_id}.wav")
    if fmt != "wav":
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(root / f"{recording_id}.wav"),
                str(root / f"{recording_id}.{fmt}"),
            ],
            check=True,
        )
        (root / f"{recording_id}.wav").unlink()
    meta = {
        "recording_id": recording_id,
        "call_id": call_id,
        "state": "finished",
        "format": fmt,
        "sample_rate": 8000,
        "channels": 2,
        "channel_layout": {"left": "speak", "right": "listen"},
        "stereo": True,
        "duration": 3.0,
        "size": (root / f"{recording_id}.{fmt}").stat().st_size,
        "start_time": start,
        "end_time": start + 3,
        "end_reason": "hangup",
    }
    (root / f"{recording_id}.json").write_text(json.dumps(meta))


def test_the_waveform_shows_the_tone_on_the_left_the_silent_right_and_the_pause(
    engine: EngineFactory, tmp_path: Path
) -> None:
    recording_files(tmp_path / "data-0", "11111111-1111-1111-1111-111111111111", "wav", start=1000.0)
    recording_files(tmp_path / "data-0", "22222222-2222-2222-2222-222222222222", "mp3", start=2000.0, call_id="c2")
    recording_files(tmp_path / "data-0", "33333333-3333-3333-3333-333333333333", "mp4", start=100.0, call_id="c3")
    port = free_port()
    engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{port}"
    cookie, _ = signed_in(base)

    for recording_id in (
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
        "33333333-3333-3333-3333-333333333333",
    ):
        code, _, body = http("GET", f"{base}/api/recordings/{recording_id}/waveform?points=30", headers=cookie)
        assert code == 200, body
        shape = json.loads(body)
        left, right = shape["channels"]
        assert (left["label"], left["role"], right["label"], right["role"]) == ("left", "speak", "right", "listen")
        assert shape["duration"] == 3.0 and shape["points"] == 30 and len(left["max"]) == len(right["min"]) == 30
        # The tone's peaks (both signs) in its two seconds, the pause near 0 (the MP3 and AAC encoders smear its
        # edges by a span at most), the right channel silent.
        tone = [*range(1, 9), *range(21, 29)]
        assert all(0.4 < left["max"][i] < 0.6 and -0.6 < left["min"][i] < -0.4 for i in tone), left
        assert all(abs(left["max"][i]) < 0.02 and abs(left["min"][i]) < 0.02 for i in range(11, 19)), left
        assert max(map(abs, right["max"] + right["min"])) < 0.05  # (joint stereo leaks a little)

    # Bounded: too many points, or none, is a 422; an unknown recording a 404.
    one = "11111111-1111-1111-1111-111111111111"
    assert http("GET", f"{base}/api/recordings/{one}/waveform?points=2001", headers=cookie)[0] == 422
    assert http("GET", f"{base}/api/recordings/{one}/waveform?points=0", headers=cookie)[0] == 422
    assert http("GET", f"{base}/api/recordings/nosuch/waveform", headers=cookie)[0] == 404

    # The search: by format, start time and duration, with the total.
    def ids(query: str) -> tuple[list[str], int]:
        code, _, body = http("GET", f"{base}/api/recordings?{query}", headers=cookie)
        assert code == 200, body
        found = json.loads(body)
        return [r["recording_id"][:2] for r in found["recordings"]], found["total"]

    assert ids("") == (["22", "11", "33"], 3)
    assert ids("format=mp3") == (["22"], 1)
    assert ids("from_time=500&to_time=1500") == (["11"], 1)
    assert ids("min_duration=2.5&max_duration=3.5&limit=1&offset=1") == (["11"], 3)
    assert ids("min_duration=4") == ([], 0)
    assert http("GET", f"{base}/api/recordings?min_duration=-1", headers=cookie)[0] == 422


class EventStream:
    """A Server-Sent Events stream read as it comes (a real socket; every wait bounded by its timeout)."""

    def __init__(self, base: str, path: str, headers: dict[str, str]) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = HTTPConnection(host, int(port), timeout=30)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.events: list[dict[str, Any]] = []
        self.comments: list[bytes] = []

    def until(self, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        while not done(self.events):
            line = self.response.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                self.events.append(json.loads(line[6:]))
            elif line.startswith(b":"):
                self.comments.append(line)
        return self.events

    def close(self) -> None:
        self.conn.close()


def ended(call_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(
        e.get("call_id") == call_id and e["type"] == "call.state" and e.get("state") == "ended" for e in events
    )


def test_a_real_calls_events_stream_live_and_from_its_log_on_any_worker(engine: EngineFactory, tmp_path: Path) -> None:
    port = free_port()
    script = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - sleep: 1000\n"
    eng = engine(script, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    cookie, _ = signed_in(base)
    live = EventStream(base, "/api/events", cookie)
    assert live.response.status == 200 and live.response.headers["content-type"].startswith("text/event-stream")
    assert live.response.readline() == b": connected\n"
    bearer = EventStream(base, "/api/events", {"Authorization": f"Bearer {TOKEN}"})  # the token works too

    sipp = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
    thread = threading.Thread(target=run_sipp, args=(tmp_path / "sipp", sipp, eng.port), daemon=True)
    thread.start()
    first = live.until(lambda events: any(e["type"] == "call.state" for e in events))
    call_id = first[-1]["call_id"]
    events = [e for e in live.until(ended(call_id)) if e["call_id"] == call_id]
    thread.join(30)

    def story(events: list[dict[str, Any]]) -> list[str]:
        """The call's states and its recording's, in the order streamed."""
        return [f"{e['type']} {e['state']}" for e in events if e["type"] in ("call.state", "record.state")]

    assert story(events) == [
        "call.state ringing",
        "call.state answered",
        "record.state recording",
        "record.state finished",
        "call.state ended",
    ]
    assert [e for e in bearer.until(ended(call_id)) if e["call_id"] == call_id] == events
    live.close()
    bearer.close()

    # The ended call's own stream: its whole log, the same events, then stream.end; on either worker.
    with (eng.data / "calls" / f"{call_id}.jsonl").open() as f:
        logged = [json.loads(line) for line in f]
    for _ in range(2):
        one = EventStream(base, f"/api/calls/{call_id}/events", cookie)
        got = one.until(lambda events: bool(events) and events[-1]["type"] == "stream.end")
        one.close()
        assert got == [*logged, {"type": "stream.end"}]
    assert http("GET", f"{base}/api/calls/nosuch/events", headers=cookie)[0] == 404
    assert http("GET", f"{base}/api/calls/{call_id}/events")[0] == 401


def test_the_waveform_of_a_sealed_recording_is_that_of_its_plaintext(engine: EngineFactory, tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    port = free_port()
    # What the caller hears (the right channel) is a ring tone: not silence, so the comparison means something.
    script = (
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n"
        "    - play: {url: 'ring:1.5:us'}\n"
    )
    eng = engine(script, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--encrypt-key-file", str(keys))
    sipp = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
    run_sipp(tmp_path / "sipp", sipp, eng.port)
    (meta,) = eng.recordings(1)
    path = eng.data / "recordings" / f"{meta['recording_id']}.wav"
    assert is_sealed(path)
    (tmp_path / "plain.wav").write_bytes(plaintext(path, keys))
    samples, _ = read_wav(tmp_path / "plain.wav")
    samples = samples.astype(np.float64) / 32768

    points = 50
    code, _, body = http(
        "GET",
        f"http://127.0.0.1:{port}/api/recordings/{meta['recording_id']}/waveform?points={points}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert code == 200, body
    shape = json.loads(body)
    span = np.minimum(np.arange(len(samples)) * points // round(shape["duration"] * 8000), points - 1)
    for c, channel in enumerate(shape["channels"]):
        expected_max = [samples[span == i, c].max(initial=0.0) for i in range(points)]
        expected_min = [samples[span == i, c].min(initial=0.0) for i in range(points)]
        assert np.allclose(channel["max"], expected_max, atol=1e-3) and np.allclose(
            channel["min"], expected_min, atol=1e-3
        )
    assert max(shape["channels"][1]["max"]) > 0.05
    assert not list((eng.data / "recordings").glob(".waveform-*"))  # the decrypted copy is gone


def test_event_streams_count_in_the_connection_caps(engine: EngineFactory) -> None:
    port = free_port()
    engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--max-connections-per-address", "2")
    base = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    streams = [EventStream(base, "/api/events", bearer) for _ in range(2)]
    assert [s.response.status for s in streams] == [200, 200]
    assert http("GET", f"{base}/api/recordings", headers=bearer)[0] == 503  # a third connection: refused
    streams[0].close()
    for _ in range(400):  # (the server sees the close at once; a busy machine may take a while)
        if http("GET", f"{base}/api/recordings", headers=bearer)[0] == 200:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("a stream's connection was not released when its client closed it")
    streams[1].close()
