"""The HTTP API as a program written from /openapi.json alone uses it: every answer to a real sipp call's
recordings and call — live and finished, and the errors — is one the schema declares for that route
(its status, its Content-Type, and its JSON body valid against the schema's JSON Schema)."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from conftest import wait_for

from .peers import Engine, free_port
from .test_api import TOKEN, call_in_background, request
from .test_console_api import recording_files

EngineFactory = Callable[..., Engine]
SCRIPT = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - sleep: 2500\n"


class Spec:
    """/openapi.json, and the check of one answer against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.checked: list[str] = []

    def operation(self, method: str, path: str) -> dict[str, Any]:
        for template, operations in self.spec["paths"].items():
            if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path):
                assert method.lower() in operations, f"{method} {template} is not in /openapi.json"
                return dict(operations[method.lower()])
        raise AssertionError(f"{path} is not in /openapi.json")

    def conforms(self, method: str, url: str, answer: tuple[int, dict[str, str], bytes]) -> Any:
        """The answer's JSON body (None for another), once it is shown to be as declared."""
        code, headers, body = answer
        path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
        declared = self.operation(method, path)["responses"]
        what = f"{method} {path} -> {code}"
        assert str(code) in declared, f"{what}: not declared (only {sorted(declared)}): {body[:200]!r}"
        self.checked.append(what)
        if not body:
            return None
        content = declared[str(code)].get("content", {})
        media = headers.get("content-type", headers.get("Content-Type", "")).split(";")[0].strip()
        assert media in content, f"{what}: Content-Type {media}, declared {sorted(content)}"
        if media != "application/json":
            return None
        document = json.loads(body)
        schema = {**content[media]["schema"], "components": self.spec["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(document), key=str)
        assert not errors, f"{what}: the body does not fit its schema: {errors[0].message} at {list(errors[0].path)}"
        return document


def post_bytes(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """A POST of these bytes as JSON, with the token."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers, method="POST"), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def read_stream(url: str, last_event_id: str | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    """A one-call event stream to its end: each message's id and event."""
    code, _, body = request("GET", url, headers={"Last-Event-ID": last_event_id} if last_event_id else None)
    assert code == 200, body
    messages = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            messages.append((fields.get("id"), json.loads(fields["data"])))
    return messages


def test_every_answer_to_a_client_is_one_the_openapi_schema_declares(engine: EngineFactory, tmp_path: Path) -> None:
    http = free_port()
    eng = engine(SCRIPT, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    spec = Spec(json.loads(request("GET", f"{base}/openapi.json", token=None)[2]))

    def ask(method: str, path: str, **options: Any) -> Any:
        return spec.conforms(method, base + path, request(method, base + path, **options))

    call: threading.Thread = call_in_background(eng, tmp_path / "sipp", bye_timeout=10000)
    live: list[dict[str, Any]] = []
    assert wait_for(lambda: live.extend(ask("GET", "/api/recordings?state=recording")["recordings"]) or live, 10)
    rid, cid = live[0]["recording_id"], live[0]["call_id"]
    # A live recording: its metadata, its control, its growing audio, and what it refuses.
    # Its size is the bytes on disk so far and its duration the time so far, by id and in the lists.
    assert wait_for(lambda: ask("GET", f"/api/recordings/{rid}")["size"] > 44, 10)
    [row] = [r for r in ask("GET", "/api/recordings?state=recording")["recordings"] if r["recording_id"] == rid]
    assert row["size"] > 44 and row["duration"] > 0, row
    assert ask("POST", f"/api/recordings/{rid}/pause", body={"behavior": "skip"})["pause_behavior"] == "skip"
    assert "paused already" in ask("POST", f"/api/recordings/{rid}/pause")["detail"]  # 409, saying why
    ask("POST", f"/api/recordings/{rid}/resume")
    assert "is not paused" in ask("POST", f"/api/recordings/{rid}/resume")["detail"]
    ask("DELETE", f"/api/recordings/{rid}")  # 409: live
    ask("GET", f"/api/recordings/{rid}/audio", headers={"Range": "bytes=0-99"})
    ask("GET", f"/api/calls/{cid}")
    call.join(30)
    assert wait_for(lambda: ask("GET", f"/api/recordings/{rid}")["state"] == "finished", 10)

    # The call's event stream is its events.jsonl; resumed with Last-Event-ID (as an EventSource that
    # reconnects), it goes on after the event named: none missed, none repeated.
    stream = f"{base}/api/calls/{cid}/events"
    whole = read_stream(stream)
    log = [json.loads(line) for line in (eng.data / "calls" / f"{cid}.jsonl").read_text().splitlines()]
    assert [event for _, event in whole] == [*log, {"type": "stream.end"}]
    assert read_stream(stream, whole[2][0]) == whole[3:]
    assert read_stream(stream, "12x") == read_stream(stream, "5") == whole  # (names no line's end: from the start)

    # Finished: lists, filters and pages, the audio whole, in part and past its end, the waveform.
    ask("GET", "/api/recordings?limit=1&offset=5&format=wav&caller=sipp")
    ask("GET", "/api/recordings?limit=1001")  # 422
    ask("HEAD", "/api/recordings")
    ask("GET", "/api/calls?state=ended")
    ask("GET", f"/api/calls/{cid}")
    ask("GET", f"/api/recordings/{rid}/waveform?points=10")
    ask("GET", f"/api/recordings/{rid}/waveform?points=0")  # 422
    for asked in ("bytes=0-", "bytes=-10", "bytes=99999999-"):  # 206, 206, 416
        ask("GET", f"/api/recordings/{rid}/audio", headers={"Range": asked})
    ask("HEAD", f"/api/recordings/{rid}/audio")
    url = ask("GET", f"/api/recordings/{rid}")["url"]
    spec.conforms("GET", url, request("GET", url, token=None))
    spec.conforms("GET", url, request("GET", url.replace("expires=", "expires=1"), token=None))  # 403
    for act in ("stop", "pause", "resume"):
        ask("POST", f"/api/recordings/{rid}/{act}")  # 409: not live
    pause = f"{base}/api/recordings/{rid}/pause"
    spec.conforms("POST", pause, post_bytes(pause, b"\xff{"))  # 400: a body that is not JSON at all
    # A method the path does not take: 405 naming every one it does (each is a route of its own).
    code, headers, _ = request("PUT", f"{base}/api/recordings/{rid}")
    assert code == 405 and headers["allow"] == "GET, HEAD, DELETE", headers
    # The errors a client meets: no token, unknown ids.
    ask("GET", "/api/recordings", token=None)  # 401
    for path in (f"/api/recordings/{rid}x", f"/api/recordings/{rid}x/audio", f"/api/calls/{cid}x"):
        ask("GET", path)  # 404
    ask("DELETE", f"/api/recordings/{rid}")  # 204
    ask("GET", f"/api/recordings/{rid}")  # 404
    codes = {what.rsplit(" ", 1)[1] for what in spec.checked}
    assert {"200", "204", "206", "400", "401", "403", "404", "409", "416", "422"} <= codes, spec.checked


def test_a_resumed_download_gets_the_rest_only_of_the_audio_it_began_with(
    engine: EngineFactory, tmp_path: Path
) -> None:
    """ETag and Last-Modified, and If-Range (RFC 9110): a client resuming a download of a live WAV that
    has grown since (its header rewritten) gets the whole file again, not bytes to append to a stale
    start; the finished audio's validators are the same on every request, and resume it."""
    http = free_port()
    eng = engine(SCRIPT, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    call = call_in_background(eng, tmp_path / "sipp", bye_timeout=10000)
    live: list[dict[str, Any]] = []
    assert wait_for(
        lambda: live.extend(json.loads(request("GET", f"{base}/api/recordings")[2])["recordings"]) or live, 10
    )
    audio = f"{base}/api/recordings/{live[0]['recording_id']}/audio"
    code, headers, begun = request("GET", audio)
    live_tag = headers["etag"]
    assert code == 200 and "last-modified" not in {k.lower() for k in headers}  # (live: no date says its version)
    assert wait_for(lambda: int(request("HEAD", audio)[1]["content-length"]) > len(begun), 10)
    code, headers, body = request("GET", audio, headers={"Range": f"bytes={len(begun)}-", "If-Range": live_tag})
    assert code == 200 and len(body) > len(begun) and body[:4] == b"RIFF", (code, headers)

    call.join(30)
    meta: dict[str, Any] = {}
    assert wait_for(
        lambda: meta.update(json.loads(request("GET", audio.removesuffix("/audio"))[2])) or meta.get("end_reason"), 10
    )
    code, headers, whole = request("GET", audio)
    tag, modified = headers["etag"], headers["last-modified"]
    assert code == 200 and tag != live_tag and request("HEAD", meta["url"], token=None)[1]["etag"] == tag
    assert headers["cache-control"] == "private, no-cache"  # (no proxy serves it past its URL's expiry)
    for condition in (tag, modified):
        code, headers, part = request("GET", audio, headers={"Range": "bytes=100-", "If-Range": condition})
        assert code == 206 and part == whole[100:], (condition, code)
    for stale in (live_tag, "Mon, 01 Jan 2001 00:00:00 GMT", f"W/{tag}"):
        code, _, body = request("GET", audio, headers={"Range": "bytes=100-", "If-Range": stale})
        assert code == 200 and body == whole, (stale, code)


def test_the_api_hands_out_recording_urls_that_work_from_now(engine: EngineFactory, tmp_path: Path) -> None:
    """A recording's file keeps the signed URL made when it began, which expires --url-ttl after; the API
    shows one made now, so a client listing old recordings gets links that work."""
    http = free_port()
    recording_id = "33333333-3333-3333-3333-333333333333"
    recording_files(tmp_path / "data-0", recording_id, "wav", start=1000.0)
    meta_file = tmp_path / "data-0" / "recordings" / f"{recording_id}.json"
    stale = f"http://127.0.0.1:{http}/recordings/{recording_id}.wav?expires=1003&signature={'0' * 64}"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "url": stale}))
    engine(SCRIPT, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    assert request("GET", stale, token=None)[0] == 403
    (listed,) = json.loads(request("GET", f"{base}/api/recordings")[2])["recordings"]
    one = json.loads(request("GET", f"{base}/api/recordings/{recording_id}")[2])
    for url in (listed["url"], one["url"]):
        code, headers, _ = request("GET", url, token=None)
        assert code == 200 and headers["content-type"] == "audio/wav", url
