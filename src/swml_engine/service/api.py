"""The HTTP API of ``swml serve`` (DESIGN §2): recordings and calls, and live control of recordings.

``/api/...`` answers JSON to a bearer token (``auth.py``) and is described by OpenAPI at
``/openapi.json``. ``/recordings/<id>.<fmt>`` serves audio to a signed, expiring URL (the
``record_call_url`` a status callback carries) without the token. ``/health`` is open, for load
balancers. Audio is served with Range support, so players can seek and a download can resume.

Several workers share the HTTP port; a request for live control of a recording another worker records
is passed to that worker on its private loopback port (the index says which worker owns which call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from swml_engine.recording.recorder import Recording
from swml_engine.service.auth import UrlSigner, token_matches

if TYPE_CHECKING:
    from swml_engine.recording.store import RecordingStore
    from swml_engine.service.index import Index

log = logging.getLogger("swml.api")

MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "mp4": "audio/mp4"}


class PauseRequest(BaseModel):
    #: ``silence`` keeps the paused time in the file as silence; ``skip`` leaves it out.
    behavior: Literal["silence", "skip"] = "silence"


class SignedUrls:
    """``<base>/<id>.<fmt>?expires=..&signature=..``: the store's public URLs under ``swml serve``."""

    def __init__(self, base: str, signer: UrlSigner, ttl: float) -> None:
        self.base = base.rstrip("/")
        self.signer = signer
        self.ttl = ttl

    def url(self, name: str) -> str:
        expires = int(time.time() + self.ttl)
        return self.base + self.signer.sign(f"/{name}", expires)


class ServiceView(Protocol):
    """What the API needs of the service (kept narrow, so the API can be read on its own)."""

    @property
    def store(self) -> RecordingStore: ...

    @property
    def index(self) -> Index | None: ...

    #: This worker's private URL (live control forwarded between workers comes here).
    @property
    def worker_url(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...

    def live_recording(self, recording_id: str) -> Recording | None: ...


def build_app(service: ServiceView, token: str, signer: UrlSigner, forward_timeout: float = 5.0) -> FastAPI:
    # Every handler is async: it runs in the service's loop (the index's connection and the live calls
    # belong to that thread), and each does little (a file is streamed by the response itself).
    app = FastAPI(
        title="swml-engine",
        summary="Recordings and calls of swml serve",
        docs_url=None,
        redoc_url=None,
    )

    def index() -> Index:
        if service.index is None:  # (the service opens it before serving)
            raise HTTPException(503, "the recording index is not open")
        return service.index

    def authorized(request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), token):
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    api = APIRouter(prefix="/api", dependencies=[Depends(authorized)])

    def found(recording_id: str) -> dict[str, Any]:
        live = service.live_recording(recording_id)
        meta = live.metadata() if live is not None else index().recording(recording_id)
        if meta is None:
            raise HTTPException(404, f"no recording {recording_id}")
        return meta

    def audio(meta: dict[str, Any]) -> FileResponse:
        path = service.store.resolve(service.store.audio_path(meta["recording_id"], meta["format"]).as_uri())
        if path is None:
            raise HTTPException(404, f"the audio of recording {meta['recording_id']} is gone")
        name = f"{meta['recording_id']}.{meta['format']}"
        return FileResponse(path, media_type=MEDIA_TYPES.get(str(meta["format"])), filename=name)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return service.stats()

    @app.get("/recordings/{name}", summary="A recording's audio, by its signed URL (no token)")
    async def signed_audio(name: str, expires: str | None = None, signature: str | None = None) -> FileResponse:
        if not signer.valid(f"/{name}", expires, signature, time.time()):
            raise HTTPException(403, "this recording URL is not valid (changed, or past its expiry)")
        recording_id, _, _fmt = name.rpartition(".")
        return audio(found(recording_id))

    @api.get("/recordings", summary="Recordings, newest first")
    async def list_recordings(
        call_id: str | None = None,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        rows = index().recordings(call_id=call_id, state=state, limit=limit, offset=offset)
        return {"recordings": rows, "limit": limit, "offset": offset}

    @api.get("/recordings/{recording_id}", summary="One recording's metadata")
    async def get_recording(recording_id: str) -> dict[str, Any]:
        return found(recording_id)

    @api.get("/recordings/{recording_id}/audio", summary="A recording's audio (Range requests work)")
    async def get_audio(recording_id: str) -> FileResponse:
        return audio(found(recording_id))

    @api.delete("/recordings/{recording_id}", status_code=204, summary="Delete a finished recording")
    async def delete_recording(recording_id: str) -> Response:
        meta = found(recording_id)
        if meta.get("state") == "recording":
            raise HTTPException(409, "the recording is live: stop it first")
        service.store.delete(recording_id, str(meta["format"]))
        index().delete_recording(recording_id)
        return Response(status_code=204)

    async def control(request: Request, recording_id: str, act: Callable[[Recording], Awaitable[bool]]) -> Any:
        live = service.live_recording(recording_id)
        if live is not None:
            if not await act(live):
                raise HTTPException(409, "the recording is not in a state that allows this")
            return live.metadata()
        meta = index().recording(recording_id)
        if meta is None:
            raise HTTPException(404, f"no recording {recording_id}")
        owner = index().call(str(meta.get("call_id")))
        if meta.get("state") == "recording" and owner is not None and owner[1] != service.worker_url:
            return await _forward(request, owner[1], forward_timeout)
        raise HTTPException(409, f"recording {recording_id} is not live (state {meta.get('state')})")

    @api.post("/recordings/{recording_id}/stop", summary="Stop a live recording (as stop_record_call)")
    async def stop(request: Request, recording_id: str) -> Any:
        async def act(rec: Recording) -> bool:
            if rec.end_reason is not None:
                return False
            await rec.stop("api")
            return True

        return await control(request, recording_id, act)

    @api.post("/recordings/{recording_id}/pause", summary="Pause a live recording")
    async def pause(request: Request, recording_id: str, body: PauseRequest | None = None) -> Any:
        behavior = (body or PauseRequest()).behavior

        async def act(rec: Recording) -> bool:
            return rec.pause(behavior)

        return await control(request, recording_id, act)

    @api.post("/recordings/{recording_id}/resume", summary="Resume a paused recording")
    async def resume(request: Request, recording_id: str) -> Any:
        async def act(rec: Recording) -> bool:
            return rec.resume()

        return await control(request, recording_id, act)

    @api.get("/calls", summary="Calls, newest first")
    async def list_calls(
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        return {"calls": index().calls(state=state, limit=limit, offset=offset), "limit": limit, "offset": offset}

    @api.get("/calls/{call_id}", summary="One call, with its recordings")
    async def get_call(call_id: str) -> dict[str, Any]:
        row = index().call(call_id)
        if row is None:
            raise HTTPException(404, f"no call {call_id}")
        return {**row[0], "recordings": index().recordings(call_id=call_id, limit=1000)}

    app.include_router(api)
    return app


async def _forward(request: Request, worker_url: str, timeout: float) -> Response:
    """Pass a live-control request to the worker that records it, and its answer back."""
    log.debug("%s %s passed to the worker at %s", request.method, request.url.path, worker_url)
    body = await request.body()
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            answer = await client.request(request.method, worker_url + request.url.path, content=body, headers=headers)
    except httpx.HTTPError as e:
        return JSONResponse({"detail": f"the worker recording this call did not answer: {e}"}, status_code=502)
    return Response(answer.content, status_code=answer.status_code, media_type="application/json")
