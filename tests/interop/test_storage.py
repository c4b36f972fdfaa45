"""`swml serve --storage s3://...` against a real S3-speaking server (moto, its own process) and real sipp
calls: a recording's audio and metadata land in the bucket with the bytes the API serves (sha256), the
local copy goes, the API and the signed URL serve it from the bucket (Range too), DELETE removes it from
the bucket; storage down during calls, then back, and a node killed with recordings in its spool: every
recording uploaded, once."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import HttpServer, read_wav, small_filesystem
from s3_server import S3Server, s3_server_fixture, sha256  # noqa: F401  (the session fixture)

from .peers import Engine, free_port, run_sipp, scenario, wait_for
from .test_api import TOKEN, request

EngineFactory = Callable[..., Engine]
SCRIPT = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 1200\n"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[S3Server], None]:
    """Point the engines this test starts at an S3 server (they inherit the environment)."""

    def use(server: S3Server) -> None:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)

    return use


def calls(eng: Engine, work: Path, n: int) -> None:
    """``n`` sipp calls at once, each answered, recorded ~1.2 s and hung up by the engine."""
    xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=15000)
    result = run_sipp(work, xml, eng.port, calls=n)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def spooled(eng: Engine) -> list[str]:
    return sorted(p.name for p in (eng.data / "recordings").glob("*"))


def test_a_recording_goes_to_the_bucket_and_is_served_from_there(
    engine: EngineFactory,
    s3_server: S3Server,
    aws_env: Callable[[S3Server], None],
    http_server: HttpServer,
    tmp_path: Path,
) -> None:
    bucket = s3_server.bucket()
    aws_env(s3_server)
    http = f"127.0.0.1:{free_port()}"
    script = SCRIPT.format(status=http_server.url("/status"))
    eng = engine(script, "--http", http, "--api-token", TOKEN, "--storage", f"s3://{bucket}/node-a")
    calls(eng, tmp_path / "sipp", 1)
    assert wait_for(lambda: len(s3_server.objects(bucket)) == 2, 30), eng.log()[-3000:]
    final = next(r["json"]["params"] for r in http_server.requests if r["json"]["params"]["state"] == "finished")
    rid = final["recording_id"]
    stored = s3_server.objects(bucket, "node-a/")
    audio, meta = stored[f"node-a/{rid}.wav"], json.loads(stored[f"node-a/{rid}.json"])

    # The bucket holds the recording as made: its size, a checksum kept in the metadata and on the object.
    assert len(audio) == final["size"] == meta["size"] == meta["storage"]["size"]
    assert sha256(audio) == meta["storage"]["sha256"] == s3_server.user_metadata(bucket, f"node-a/{rid}.wav")["sha256"]
    assert meta["storage"]["audio"] == f"s3://{bucket}/node-a/{rid}.wav" and meta["state"] == "finished"
    (tmp_path / "got.wav").write_bytes(audio)
    samples, rate = read_wav(tmp_path / "got.wav")
    assert rate == 8000 and abs(len(samples) / rate - final["duration"]) < 0.021
    assert wait_for(lambda: spooled(eng) == [], 10), spooled(eng)  # the local copy is gone

    # The API serves it from the bucket: whole, by range, by the callback's signed URL, headers alone.
    base = f"http://{http}"
    code, headers, body = request("GET", f"{base}/api/recordings/{rid}/audio")
    assert code == 200 and body == audio and headers["content-type"] == "audio/wav"
    code, headers, part = request("GET", f"{base}/api/recordings/{rid}/audio", headers={"Range": "bytes=100-4195"})
    assert code == 206 and part == audio[100:4196] and headers["content-range"] == f"bytes 100-4195/{len(audio)}"
    code, headers, tail = request("GET", final["url"], token=None, headers={"Range": "bytes=-500"})
    assert code == 206 and tail == audio[-500:]
    code, headers, body = request("HEAD", final["url"], token=None)
    assert code == 200 and body == b"" and headers["content-length"] == str(len(audio))
    code, _, _ = request("GET", f"{base}/api/recordings/{rid}/audio", headers={"Range": f"bytes={len(audio)}-"})
    assert code == 416
    code, _, listed = request("GET", f"{base}/api/recordings/{rid}")
    assert code == 200 and json.loads(listed)["storage"]["sha256"] == sha256(audio)

    # DELETE removes it from the bucket too; its signed URL and the API then say 404.
    assert request("DELETE", f"{base}/api/recordings/{rid}")[0] == 204
    assert s3_server.objects(bucket) == {}
    assert request("GET", final["url"], token=None)[0] == 404
    assert request("GET", f"{base}/api/recordings/{rid}")[0] == 404


def test_storage_down_then_back_and_a_node_killed_lose_nothing(
    aws_env: Callable[[S3Server], None], tmp_path: Path
) -> None:
    """A server of this test's own (it is stopped and started: moto then forgets its buckets), and an
    engine of its own (killed, then started again on the same data while the storage is still down).
    While the storage is down, the API answers a download of an uploaded recording 502 saying why."""
    s3 = S3Server(tmp_path)
    s3.start(buckets=("rec",))
    aws_env(s3)
    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT.format(status="http://127.0.0.1:9/none"))
    http = ["--http", f"127.0.0.1:{free_port()}", "--api-token", TOKEN]
    eng = Engine(script, tmp_path / "data", extra=["--storage", "s3://rec/site", *http])
    try:
        eng.start()
        _down_then_back(eng, s3, tmp_path)
    finally:
        if eng.proc is not None and eng.alive():
            eng.proc.kill()
        s3.stop()


def _down_then_back(eng: Engine, s3: S3Server, tmp_path: Path) -> None:

    # Down during two calls: they wait in the spool; back: both go up.
    s3.stop()
    calls(eng, tmp_path / "sipp-1", 2)
    assert wait_for(lambda: "upload of recording" in eng.log(), 20), eng.log()[-3000:]
    assert len([n for n in spooled(eng) if n.endswith(".wav")]) == 2
    s3.start(buckets=("rec",))
    assert wait_for(lambda: len(s3.objects("rec")) == 4, 60), eng.log()[-3000:]
    assert wait_for(lambda: spooled(eng) == [], 10) and "uploads to s3://rec/site work again" in eng.log()
    first = _checked(s3)

    # Down again during two calls, and the node killed with them in its spool: uploaded after its restart.
    s3.stop()
    # Meanwhile an uploaded recording cannot be served: a 502 that says so (it was a 200 with no body).
    audio = f"http://{eng.extra[eng.extra.index('--http') + 1]}/api/recordings/{first[0]}/audio"
    for headers in ({}, {"Range": "bytes=0-99"}):
        code, _, body = request("GET", audio, headers=headers)
        assert code == 502 and f"recording {first[0]} not read from the storage: " in json.loads(body)["detail"]
    calls(eng, tmp_path / "sipp-2", 2)
    assert wait_for(lambda: len([n for n in spooled(eng) if n.endswith(".json")]) == 2, 20)
    assert wait_for(
        lambda: all(json.loads(p.read_text())["end_reason"] for p in (eng.data / "recordings").glob("*.json")), 20
    )
    assert eng.proc is not None
    eng.proc.send_signal(signal.SIGKILL)
    eng.proc.wait()
    # It restarts while the storage is still down (it takes calls all the same), then the storage returns.
    again = Engine(eng.script, eng.data, port=eng.port, extra=eng.extra)
    try:
        again.start()
        assert "recordings wait in the spool until it answers" in again.log()
        s3.start(buckets=("rec",))
        assert wait_for(lambda: len(s3.objects("rec")) == 4, 30), again.log()[-3000:]
        assert wait_for(lambda: spooled(again) == [], 10)
        second = _checked(s3)
    finally:
        assert again.stop() == 0
    assert "Traceback" not in again.log()
    assert not set(first) & set(second)  # four recordings, each once


def test_a_full_spool_disk_fails_the_recordings_not_the_calls(
    engine: EngineFactory, s3_server: S3Server, aws_env: Callable[[S3Server], None], tmp_path: Path
) -> None:
    """The data directory (the spool, the calls' event logs, the index) on a disk that fills up: calls
    are answered and run all the same (they got 500 at the first line of their event log, with
    tracebacks), the log says what is full, and once there is room recordings go up again."""
    bucket = s3_server.bucket()
    aws_env(s3_server)
    with small_filesystem(tmp_path / "data-0", "1m") as data:  # (the engine fixture's first data directory)
        eng = engine(SCRIPT.format(status="http://127.0.0.1:9/none"), "--storage", f"s3://{bucket}/full")
        fd = os.open(data / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(65536))
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        calls(eng, tmp_path / "sipp-full", 1)  # answered, recorded (in vain) and hung up by the engine
        assert "cannot be written (No space left on device)" in eng.log() and "Traceback" not in eng.log()
        (data / "filler").unlink()
        calls(eng, tmp_path / "sipp-room", 1)
        assert wait_for(lambda: any(key.endswith(".wav") for key in s3_server.objects(bucket)), 20), eng.log()
        assert eng.stop() == 0


def _checked(s3: S3Server) -> list[str]:
    """The recordings in the bucket, each audio object matching its metadata's size and sha256."""
    stored = s3.objects("rec", "site/")
    ids = sorted(k.removeprefix("site/").removesuffix(".json") for k in stored if k.endswith(".json"))
    for rid in ids:
        meta = json.loads(stored[f"site/{rid}.json"])
        audio = stored[f"site/{rid}.wav"]
        assert meta["storage"]["sha256"] == hashlib.sha256(audio).hexdigest() and meta["storage"]["size"] == len(audio)
    assert len(stored) == 2 * len(ids)
    return ids


def test_a_bad_storage_value_stops_the_start(
    tmp_path: Path, s3_server: S3Server, aws_env: Callable[[S3Server], None]
) -> None:
    aws_env(s3_server)
    script = tmp_path / "s.yaml"
    script.write_text("version: 1.0.0\nsections:\n  main:\n    - answer\n")
    for value, says in (
        ("s3:/nope", "--storage 's3:/nope': give s3://BUCKET/PREFIX"),
        ("s3://missing-bucket-x/p", "bucket 'missing-bucket-x' not found at http://127.0.0.1:"),
    ):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "swml_engine",
                "serve",
                "--script",
                str(script),
                "--data",
                str(tmp_path / "d"),
                "--sip",
                f"127.0.0.1:{free_port()}",
                "--storage",
                value,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr
