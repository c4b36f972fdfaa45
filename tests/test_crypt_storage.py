"""Encrypted recordings in object storage (--storage with --encrypt-key-file), against a real S3-speaking
server (moto, its own process): the API's audio step decrypts a sealed object on the way, whole and by
Range, from a few ranged reads; a node without the key answers 500 and says why."""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response

from s3_server import S3Server, s3_server_fixture  # noqa: F401  (the session fixture)
from swml_engine.recording.crypt import Keyring, SealedFile, SealedObject
from swml_engine.recording.encoders import open_writer
from swml_engine.recording.objectstore import ObjectStore
from swml_engine.recording.store import RecordingStore
from swml_engine.service.index import Index
from swml_engine.service.storage import audio_response, open_audio


@dataclass
class Node:
    """What the audio step needs of a service (storage.Places)."""

    store: RecordingStore
    bucket: ObjectStore | None
    index: Index | None = None


def test_a_sealed_object_is_served_decrypted_with_range(s3_server: S3Server, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {base64.b64encode(os.urandom(32)).decode()}\n")
    keyring = Keyring.load(keys)
    store = RecordingStore(tmp_path / "spool", keyring=keyring)
    store.ensure()
    path = store.audio_path("r1", "wav")
    writer = open_writer("wav", path, 8000, 1, keyring)
    writer.write(np.random.default_rng(3).integers(-8000, 8000, 20 * 8000, dtype=np.int16))  # 20 s
    writer.close()
    with SealedFile.open(path, keyring) as f:
        audio = f.read()
    bucket = ObjectStore.from_option(f"s3://{s3_server.bucket()}/site", s3_server.env)
    asyncio.run(bucket.put_file("r1.wav", path, {"Content-Type": "audio/wav"}))
    stored = path.stat().st_size
    path.unlink()  # uploaded: the spool copy is gone, as after the uploader's confirmation
    meta = {
        "recording_id": "r1",
        "format": "wav",
        "size": len(audio),
        "end_reason": "hangup",
        "storage": {"audio": bucket.url.url_of("r1.wav"), "size": stored},
    }

    def app(node: Node) -> FastAPI:
        api = FastAPI()

        @api.get("/audio")
        async def get_audio(request: Request) -> Response:
            return await audio_response(request, open_audio(node, meta), meta)

        return api

    async def fetch(node: Node, headers: dict[str, str] | None = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.get("/audio", headers=headers or {})

    node = Node(store, bucket)
    assert isinstance(open_audio(node, meta), SealedObject)
    whole = asyncio.run(fetch(node))
    assert whole.status_code == 200 and whole.content == audio and whole.headers["content-length"] == str(len(audio))
    span = asyncio.run(fetch(node, {"Range": "bytes=100000-250000"}))
    assert span.status_code == 206 and span.content == audio[100000:250001]
    assert span.headers["content-range"] == f"bytes 100000-250000/{len(audio)}"

    keyless = Node(RecordingStore(tmp_path / "spool"), bucket)  # a node started without --encrypt-key-file
    refused = asyncio.run(fetch(keyless))
    assert refused.status_code == 500 and "start with --encrypt-key-file" in refused.json()["detail"]
