"""service/storage.py without a server: where a recording's audio is taken from, and the byte ranges
answered (the real bucket and HTTP are in tests/interop/test_storage.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import HTTPException, Request

from swml_engine.recording.objectstore import ObjectStore, S3Settings, StorageUrl
from swml_engine.recording.store import RecordingStore
from swml_engine.service.storage import LocalAudio, StoredAudio, audio_response, open_audio

ENV = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}


@dataclass
class Places:
    store: RecordingStore
    bucket: ObjectStore | None = None
    index: None = None


def bucket() -> ObjectStore:
    return ObjectStore(StorageUrl("rec", "site"), S3Settings.from_environment(ENV), env=ENV)


def meta(**more: object) -> dict[str, object]:
    return {"recording_id": "r1", "format": "wav", "end_reason": "hangup", "storage": None, **more}


def test_the_spool_first_then_the_bucket(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    (tmp_path / "r1.wav").write_bytes(b"x" * 10)
    assert open_audio(Places(store, bucket()), meta()) == LocalAudio(tmp_path / "r1.wav", 10)
    (tmp_path / "r1.wav").unlink()
    stored = meta(storage={"audio": "s3://rec/site/r1.wav", "size": 10, "sealed": False})
    source = open_audio(Places(store, bucket()), stored)
    assert isinstance(source, StoredAudio) and (source.key, source.size) == ("r1.wav", 10)


def test_audio_nowhere_says_where_it_is(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    with pytest.raises(HTTPException) as e:  # another node's spool: ask again later
        open_audio(Places(store, bucket()), meta())
    assert e.value.status_code == 503 and e.value.headers == {"Retry-After": "30"}
    assert "still in the spool of the node that recorded it" in e.value.detail
    with pytest.raises(HTTPException) as e:  # no storage at all: gone
        open_audio(Places(store), meta())
    assert e.value.status_code == 404
    with pytest.raises(HTTPException) as e:  # uploaded under another --storage than ours
        open_audio(Places(store, bucket()), meta(storage={"audio": "s3://old/x/r1.wav", "size": 3}))
    assert e.value.status_code == 404 and "s3://old/x/r1.wav, not under --storage s3://rec/site" in e.value.detail


@dataclass
class Bytes:
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        yield self.data[start:end]


def answer(range_: str | None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    headers = [(b"range", range_.encode())] if range_ is not None else []
    request = Request({"type": "http", "method": method, "headers": headers, "path": "/", "query_string": b""})

    async def run() -> tuple[int, dict[str, str], bytes]:
        response = await audio_response(request, Bytes(bytes(range(100))), meta())
        body = b""
        if hasattr(response, "body_iterator"):
            body = b"".join([bytes(chunk) async for chunk in response.body_iterator])  # type: ignore[misc]
        return response.status_code, dict(response.headers), body

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("asked", "status", "span", "content_range"),
    [
        (None, 200, (0, 100), None),
        ("bytes=10-19", 206, (10, 20), "bytes 10-19/100"),
        ("bytes=90-", 206, (90, 100), "bytes 90-99/100"),
        ("bytes=95-200", 206, (95, 100), "bytes 95-99/100"),
        ("bytes=-5", 206, (95, 100), "bytes 95-99/100"),
        ("bytes=0-1,5-6", 200, (0, 100), None),  # several ranges: the whole file
        ("items=1-2", 200, (0, 100), None),
    ],
)
def test_ranges(asked: str | None, status: int, span: tuple[int, int], content_range: str | None) -> None:
    code, headers, body = answer(asked)
    assert code == status and body == bytes(range(100))[span[0] : span[1]]
    assert headers.get("content-range") == content_range and headers["content-length"] == str(span[1] - span[0])
    assert headers["accept-ranges"] == "bytes" and headers["content-type"] == "audio/wav"


def test_a_range_past_the_end_is_416_and_head_has_no_body() -> None:
    code, headers, _ = answer("bytes=100-")
    assert code == 416 and headers["content-range"] == "bytes */100"
    code, headers, body = answer("bytes=0-9", "HEAD")
    assert code == 206 and body == b"" and headers["content-length"] == "10"
