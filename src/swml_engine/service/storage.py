"""A recording wherever it is — the local spool or object storage: its audio for the HTTP API, and
deleting it everywhere (the DELETE route and retention both call :func:`delete_recording`).

The API streams audio through from either place (not a redirect to a presigned URL): the same signed
URL and bearer token work wherever the audio is, Range works the same, the storage endpoint may be one
the clients cannot reach, and audio stored encrypted can be decrypted on the way.
:func:`open_audio` is the one step that decides where the bytes come from.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Send

from swml_engine.recording.crypt import CryptError, Keyring, SealedAudio, SealedObject, is_sealed
from swml_engine.recording.objectstore import ObjectStore, StorageError
from swml_engine.recording.store import MEDIA_TYPES

if TYPE_CHECKING:
    from swml_engine.recording.store import RecordingStore
    from swml_engine.service.index import Index

log = logging.getLogger(__name__)

#: Bytes read from a local file at a time while streaming it.
CHUNK = 64 * 1024
#: What a client is told to wait before asking again for audio another node has not uploaded yet (s).
RETRY_AFTER = 30

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class Places(Protocol):
    """Where a service keeps recordings (the service itself)."""

    @property
    def store(self) -> RecordingStore: ...

    @property
    def bucket(self) -> ObjectStore | None: ...

    @property
    def index(self) -> Index | None: ...


class AudioSource(Protocol):
    """A recording's audio as the API serves it: its length, and any span of its bytes."""

    size: int

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive), in pieces."""
        ...


@dataclass
class LocalAudio:
    """A file in the spool (a live WAV too: its size when opened)."""

    path: Path
    size: int

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        with self.path.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                block = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not block:
                    return
                left -= len(block)
                yield block


@dataclass
class StoredAudio:
    """An object in the bucket."""

    bucket: ObjectStore
    key: str
    size: int

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        return self.bucket.read(self.key, start, end)


def open_audio(places: Places, meta: dict[str, Any]) -> AudioSource:
    """Where the recording's audio is now: the spool, else the bucket. HTTPException 404 when it is
    nowhere, 503 when it waits in another node's spool (not uploaded yet)."""
    recording_id, fmt = str(meta["recording_id"]), str(meta["format"])
    path = places.store.resolve(places.store.audio_path(recording_id, fmt).as_uri())
    if path is not None:
        with contextlib.suppress(FileNotFoundError):  # (uploaded and removed this instant: ask again)
            return _local(path, places.store.keyring, meta)
    storage = meta.get("storage")
    bucket = places.bucket
    if isinstance(storage, dict) and storage.get("audio"):
        key = f"{recording_id}.{fmt}"
        if bucket is None or storage["audio"] != bucket.url.url_of(key):
            where = "no --storage" if bucket is None else f"--storage {bucket.url}"
            raise HTTPException(
                404, f"the audio of recording {recording_id} is at {storage['audio']}, not under {where}"
            )
        stored = int(storage.get("size") or 0)
        sealed = storage.get("sealed")
        if sealed is None:  # (uploaded before uploads said): its metadata gives the audio's size, not the object's
            sealed = int(meta.get("size") or 0) != stored
        if sealed:
            keyring = _keyring(places.store.keyring, recording_id)
            return SealedObject(partial(bucket.read, key), keyring, key, int(meta.get("size") or 0), stored)
        return StoredAudio(bucket, key, stored)
    if bucket is not None and meta.get("end_reason") is not None:
        raise HTTPException(
            503,
            f"the audio of recording {recording_id} is still in the spool of the node that recorded it (not "
            f"uploaded to {bucket.url} yet): ask again later",
            headers={"Retry-After": str(RETRY_AFTER)},
        )
    raise HTTPException(404, f"the audio of recording {recording_id} is gone")


def _local(path: Path, keyring: Keyring | None, meta: dict[str, Any]) -> AudioSource:
    """A file in the spool; a sealed one (--encrypt-key-file) decrypted on the way."""
    recording_id = str(meta["recording_id"])
    if not is_sealed(path):
        return LocalAudio(path, path.stat().st_size)
    try:
        sealed = SealedAudio.open(path, _keyring(keyring, recording_id))
    except CryptError as e:
        log.error("recording %s: %s", recording_id, e)
        raise HTTPException(500, f"the audio of recording {recording_id} cannot be decrypted: {e}") from None
    if meta.get("end_reason") is not None and not sealed.finished:
        # Its last block was altered or cut off (a finished file ends with a final block; a crash's is
        # sealed again at the repair). Its whole length is announced, so the download ends short of it.
        held = max(sealed.size, int(meta.get("size") or 0))
        log.error(
            "recording %s: %s does not end with its final block (its last block altered, or the file cut): "
            "the %d bytes before it are served, of %d",
            recording_id,
            path.name,
            sealed.size,
            held,
        )
        sealed.size = held
    return sealed


def _keyring(keyring: Keyring | None, recording_id: str) -> Keyring:
    if keyring is None:
        raise HTTPException(500, f"the audio of recording {recording_id} is encrypted: start with --encrypt-key-file")
    return keyring


def validators(meta: dict[str, Any], size: int) -> dict[str, str]:
    """The audio's ``ETag`` (strong) and, once it is finished, its ``Last-Modified``: what a client
    resuming a download sends back in ``If-Range``. A finished recording's bytes never change (wherever
    they are kept, encrypted or not), so its tag is made of its id, its end and its size, the same on
    every worker and after a restart; a live WAV's grows with it (and its header is rewritten as it
    grows), so its tag changes with its size."""
    end_time = meta.get("end_time") if meta.get("end_reason") is not None else None
    version = f"{meta['recording_id']}:{end_time if isinstance(end_time, int | float) else 'live'}:{size}"
    found = {"etag": f'"{hashlib.sha256(version.encode()).hexdigest()[:32]}"'}
    if isinstance(end_time, int | float):
        found["last-modified"] = formatdate(end_time, usegmt=True)
    return found


def _range_applies(request: Request, tags: dict[str, str]) -> bool:
    """Whether the ``Range`` is to be served: without ``If-Range``, or with one naming the audio as it is
    now (RFC 9110 13.1.5: an entity tag compared strongly, or a date equal to ``Last-Modified``). Else
    the client's bytes are of another version — a live WAV since grown — and it gets the whole file."""
    condition = request.headers.get("if-range")
    if condition is None:
        return True
    condition = condition.strip()
    return condition in (tags["etag"], tags.get("last-modified"))


async def audio_response(request: Request, source: AudioSource, meta: dict[str, Any]) -> Response:
    """The audio, whole (200) or the one byte range asked for (206; 416 past its end), with its
    validators (an ``If-Range`` that names another version gets the whole file). Several ranges in one
    request are answered with the whole file, as RFC 9110 allows."""
    name = f"{meta['recording_id']}.{meta['format']}"
    size = source.size
    tags = validators(meta, size)
    headers = {
        "accept-ranges": "bytes",
        "content-disposition": f'attachment; filename="{name}"',
        "content-type": MEDIA_TYPES.get(str(meta["format"]), "application/octet-stream"),
        # A call's audio: no shared cache keeps it (a signed URL carries no Authorization to stop one,
        # and the validators would let it serve the file past the URL's expiry or the recording's
        # deletion); a browser asks again each time (a live WAV grows).
        "cache-control": "private, no-cache",
        **tags,
    }
    start, end, status = 0, size, 200
    asked = _RANGE.fullmatch(request.headers.get("range", "").strip()) if _range_applies(request, tags) else None
    if asked is not None and (asked[1] or asked[2]):
        first, last = asked[1], asked[2]
        if first:
            start, end = int(first), min(size, int(last) + 1) if last else size
        else:  # the last N bytes
            start, end = max(0, size - int(last)), size
        if start >= size or start >= end:
            return Response(status_code=416, headers={**headers, "content-range": f"bytes */{size}"})
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    headers["content-length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    chunks = source.chunks(start, end)
    recording_id = str(meta["recording_id"])
    try:
        # Read before the head goes out: storage that cannot be read at all (down, refusing us) is a
        # 502 saying so, not a 200 whose body never comes.
        opening = await anext(chunks, b"")
    except StorageError as e:
        log.warning("recording %s: its audio cannot be read from the storage: %s", recording_id, e)
        raise HTTPException(502, f"recording {recording_id} not read from the storage: {e}") from None
    except OSError as e:  # (its spool file removed this instant, uploaded: it is in the bucket now)
        log.warning("recording %s: its audio cannot be read from the spool: %s", recording_id, e)
        raise HTTPException(
            503, f"recording {recording_id}: its audio was not read ({e.strerror}): ask again", {"Retry-After": "1"}
        ) from None
    return AudioStream(_guarded(recording_id, opening, chunks), status_code=status, headers=headers)


async def _guarded(recording_id: str, first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body, whose first piece is read already. A read that fails mid-way ends it early (logged),
    never with a traceback."""
    if first:
        yield first
    try:
        async for chunk in chunks:
            yield chunk
    except (StorageError, OSError) as e:
        log.warning("recording %s: its audio download was cut short: %s", recording_id, e)


class AudioStream(StreamingResponse):
    """A body of announced length. One that ends early (a block that fails authentication, storage
    failing mid-way) is left unfinished: the connection closes short of the Content-Length, which is how
    HTTP/1.1 tells the client the body is incomplete. (Ending the body would have the HTTP server refuse
    to frame it, with a traceback, and close the connection all the same.)"""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        sent = 0
        async for chunk in self.body_iterator:
            body = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
            sent += len(body)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if sent >= int(self.headers.get("content-length", sent)):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def held_elsewhere(places: Places, meta: dict[str, Any]) -> str | None:
    """The other node (a shared index) whose disk alone holds the recording: its files, without
    --storage; its spool, with it, while it waits to be uploaded (deleted from here, its upload would
    bring it back). None: this node's, or in the bucket."""
    index = places.index
    if index is None or not index.shared or meta.get("storage"):
        return None
    node = await index.keeper(str(meta["recording_id"]))
    return node if node is not None and node != index.node else None


async def delete_recording(places: Places, meta: dict[str, Any]) -> None:
    """Remove a recording from every place: the spool, the bucket, then the index (last, so a failure
    part-way leaves it listed and the delete can be asked again). StorageError: the bucket refused or
    was not reached."""
    recording_id, fmt = str(meta["recording_id"]), str(meta["format"])
    places.store.remove_local(recording_id, fmt)  # (an upload in progress sees it and removes its objects)
    if places.bucket is not None:
        await places.bucket.delete(f"{recording_id}.{fmt}")
        await places.bucket.delete(f"{recording_id}.json")
    if places.index is not None:
        places.index.delete_recording(recording_id)
