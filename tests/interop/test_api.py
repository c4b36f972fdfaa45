"""The HTTP API of `swml serve`: recordings and calls over real HTTP, signed recording URLs, Range
requests, live control of a recording during a real sipp call, and the token on every /api request."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conftest import HttpServer, read_wav
from swml_engine.media.clock import MediaTicker

from .peers import Engine, free_port, run_sipp, scenario, wait_for

EngineFactory = Callable[..., Engine]
TOKEN = "test-token-0123456789"


def request(
    method: str,
    url: str,
    *,
    token: str | None = TOKEN,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def call_in_background(eng: Engine, work: Path, bye_timeout: int = 20000) -> threading.Thread:
    xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=bye_timeout)
    thread = threading.Thread(target=run_sipp, args=(work, xml, eng.port), daemon=True)
    thread.start()
    return thread


def test_recordings_api_signed_urls_and_range(engine: EngineFactory, http_server: HttpServer, tmp_path: Path) -> None:
    http = free_port()
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 1500\n"
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    call_in_background(eng, tmp_path / "sipp", bye_timeout=10000).join(30)
    assert wait_for(lambda: any(r["json"]["params"]["state"] == "finished" for r in http_server.requests), 10)
    final = [r["json"]["params"] for r in http_server.requests if r["path"] == "/status"][-1]

    # The callback's URL is the service's own, signed: it fetches the audio without the token.
    url = final["url"]
    parts = urlsplit(url)
    assert url.startswith(f"{base}/recordings/{final['recording_id']}.wav?") and "signature" in parse_qs(parts.query)
    code, headers, audio = request("GET", url, token=None)
    assert code == 200 and headers["content-type"] == "audio/wav" and len(audio) == final["size"]
    (tmp_path / "got.wav").write_bytes(audio)
    samples, rate = read_wav(tmp_path / "got.wav")
    assert rate == 8000 and abs(len(samples) / rate - final["duration"]) < 0.021
    # Changed, or past its expiry: 403.
    q = parse_qs(parts.query)
    tampered = f"{base}{parts.path}?expires={int(q['expires'][0]) + 1}&signature={q['signature'][0]}"
    expired = f"{base}{parts.path}?expires={int(time.time()) - 1}&signature={q['signature'][0]}"
    other = url.replace(final["recording_id"], "00000000-0000-0000-0000-000000000000")
    assert [request("GET", u, token=None)[0] for u in (tampered, expired, other)] == [403, 403, 403]

    # /api needs the token.
    assert request("GET", f"{base}/api/recordings", token=None)[0] == 401
    assert request("GET", f"{base}/api/recordings", token="wrong")[0] == 401
    code, _, body = request("GET", f"{base}/api/recordings?call_id={final['call_id']}")
    (listed,) = json.loads(body)["recordings"]
    assert code == 200 and listed["recording_id"] == final["recording_id"] and listed["state"] == "finished"
    assert json.loads(request("GET", f"{base}/api/recordings?call_id=nosuch")[2])["recordings"] == []
    code, _, body = request("GET", f"{base}/api/recordings/{final['recording_id']}")
    assert code == 200 and json.loads(body)["channel_layout"] == {"mono": "speak+listen"}

    # Range: the bytes asked for, 206.
    code, headers, part = request(
        "GET", f"{base}/api/recordings/{final['recording_id']}/audio", headers={"Range": "bytes=100-199"}
    )
    assert code == 206 and part == audio[100:200] and headers["content-range"] == f"bytes 100-199/{len(audio)}"

    # The call, with its recordings.
    code, _, body = request("GET", f"{base}/api/calls")
    (call,) = json.loads(body)["calls"]
    assert code == 200 and call["call_id"] == final["call_id"] and call["state"] == "ended"
    code, _, body = request("GET", f"{base}/api/calls/{final['call_id']}")
    assert code == 200 and [r["recording_id"] for r in json.loads(body)["recordings"]] == [final["recording_id"]]

    # OpenAPI describes it; delete removes file and entry.
    spec = json.loads(request("GET", f"{base}/openapi.json", token=None)[2])
    assert "/api/recordings/{recording_id}/audio" in spec["paths"]
    assert request("DELETE", f"{base}/api/recordings/{final['recording_id']}")[0] == 204
    assert request("GET", f"{base}/api/recordings/{final['recording_id']}")[0] == 404
    assert request("GET", url, token=None)[0] == 404
    assert not list((eng.data / "recordings").glob(f"{final['recording_id']}*"))


def test_live_control_pause_resume_stop(engine: EngineFactory, http_server: HttpServer, tmp_path: Path) -> None:
    http = free_port()
    status = http_server.url("/status")
    script = (
        "version: 1.0.0\nsections:\n  main:\n    - answer\n"
        f"    - record_call: {{control_id: a, status_url: '{status}'}}\n"
        f"    - record_call: {{control_id: b, status_url: '{status}', stereo: true}}\n"
        "    - sleep: 5000\n"
    )
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    call = call_in_background(eng, tmp_path / "sipp")

    def ids() -> dict[str, str]:
        posts = [r["json"]["params"] for r in http_server.requests if r["path"] == "/status"]
        return {p["control_id"]: p["recording_id"] for p in posts}

    assert wait_for(lambda: len(ids()) == 2, 10)
    seen = time.monotonic()  # both recordings started before this
    a, b = ids()["a"], ids()["b"]
    time.sleep(1.0)
    pause_sent = time.monotonic()
    code, _, body = request("POST", f"{base}/api/recordings/{a}/pause", body={"behavior": "skip"})
    pause_done = time.monotonic()
    assert code == 200 and json.loads(body)["state"] == "recording"
    assert request("POST", f"{base}/api/recordings/{a}/pause")[0] == 409  # already paused
    time.sleep(1.5)
    resume_sent = time.monotonic()
    assert request("POST", f"{base}/api/recordings/{a}/resume")[0] == 200
    resume_done = stop_sent = time.monotonic()
    assert request("POST", f"{base}/api/recordings/{b}/stop")[0] == 200
    assert request("POST", f"{base}/api/recordings/{b}/stop")[0] == 409  # not live any more
    assert request("POST", f"{base}/api/recordings/nosuch/stop")[0] == 404
    call.join(30)

    def posts() -> list[dict[str, Any]]:
        return [r["json"]["params"] for r in http_server.requests if r["path"] == "/status"]

    # Callbacks are delivered beside the call: wait for both final ones.
    assert wait_for(lambda: sum(1 for p in posts() if p["state"] == "finished") == 2, 20), posts()
    states_a = [(p["state"], p.get("pause_behavior")) for p in posts() if p["control_id"] == "a"]
    assert states_a == [("recording", None), ("paused", "skip"), ("recording", None), ("finished", None)]
    metas = {m["control_id"]: m for m in eng.recordings(2)}
    # a: its time span (the call's 5 s of sleep, and more on a busy machine: the steps before it take
    # their time) less the time skipped, which lies between the requests' times (a busy machine stretches
    # it, so the bounds come from the clock, not from the sleeps). A pause or resume takes effect at the
    # media tick being played, which on a busy machine runs up to MAX_LATE behind the loop's clock (later
    # ticks are skipped), so each end may move by that much and a frame.
    skipped_min, skipped_max = resume_sent - pause_done, resume_done - pause_sent
    slack = MediaTicker.MAX_LATE + 0.05
    span = float(metas["a"]["end_time"]) - float(metas["a"]["start_time"])
    assert span > 5.0 - 0.05, metas["a"]  # the whole sleep
    skipped = span - float(metas["a"]["duration"])
    assert skipped_min - slack < skipped < skipped_max + slack, (skipped, skipped_min, skipped_max, metas["a"])
    # b: stopped by the API, at least the time from when it was seen started to when the stop was sent.
    assert metas["b"]["end_reason"] == "api", metas["b"]
    assert stop_sent - seen - 0.05 < float(metas["b"]["duration"]) < 4.9, metas["b"]
    samples, rate = read_wav(eng.data / "recordings" / f"{b}.wav")
    assert samples.shape[1] == 2 and abs(len(samples) / rate - float(metas["b"]["duration"])) < 0.021


def test_token_is_generated_once_and_kept(engine: EngineFactory, tmp_path: Path) -> None:
    http = free_port()
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n", "--http", f"127.0.0.1:{http}")
    token = (eng.data / "api-token").read_text().strip()
    assert len(token) >= 32 and token in eng.log()
    assert (eng.data / "api-token").stat().st_mode & 0o077 == 0
    base = f"http://127.0.0.1:{http}"
    assert request("GET", f"{base}/api/calls", token=token)[0] == 200
    assert request("GET", f"{base}/api/calls", token=None)[0] == 401


def test_live_control_reaches_the_worker_that_records(
    engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    """Two workers share the HTTP port: a request may land on either, and still controls the call."""
    http = free_port()
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 5000\n"
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--workers", "2", "--log-level", "debug")
    assert wait_for(lambda: eng.log().count("ready") >= 2, 10)
    base = f"http://127.0.0.1:{http}"
    call = call_in_background(eng, tmp_path / "sipp")
    assert wait_for(lambda: any(r["path"] == "/status" for r in http_server.requests), 10)
    rid = http_server.requests[0]["json"]["params"]["recording_id"]
    # New connections spread over the workers: pause and resume ten times, each must work.
    codes = [request("POST", f"{base}/api/recordings/{rid}/{act}")[0] for _ in range(5) for act in ("pause", "resume")]
    assert codes == [200] * 10
    # Whichever worker a delete lands on, the one that records says the recording is live.
    assert [request("DELETE", f"{base}/api/recordings/{rid}")[0] for _ in range(6)] == [409] * 6
    assert "passed to the worker at" in eng.log()  # some landed on the other worker
    call.join(30)
    assert wait_for(lambda: any(r["json"]["params"]["state"] == "finished" for r in http_server.requests), 10)
    states = [r["json"]["params"]["state"] for r in http_server.requests if r["path"] == "/status"]
    assert states == ["recording", *["paused", "recording"] * 5, "finished"]
