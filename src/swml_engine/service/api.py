"""The HTTP API of ``swml serve`` (docs/serve.md): recordings and calls, and live control of recordings.

``/api/...`` answers JSON to a bearer token (``auth.py``, checked with the body's size by
``httpd.RequestGuard`` before any body is read) and is described by OpenAPI at ``/openapi.json``
(the bearer scheme included). ``/recordings/<id>.<fmt>`` serves audio to a signed, expiring URL (the
``record_call_url`` a status callback carries) without the token. ``/health`` is open, for load
balancers. Audio is served with Range support, so players can seek and a download can resume; every
GET answers HEAD too.

Whether a recording is live is decided by the workers' live recordings, never by the index alone (a
write the index missed — a full disk — would leave a finished recording "recording" there forever):
a recording no worker records is over, and its row is brought back in line with its metadata file.
Several workers share the HTTP port; a request about a recording whose call another worker runs
(live control, delete) is passed to that worker on its private port (the index says which worker owns
which call), and that worker decides. With a shared index (PostgreSQL) that worker may be on another
node: its private port is then on the address the node's API is on. A read the index cannot answer
(its server away) is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from math import ceil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from swml_engine.connections import GuessLimiter
from swml_engine.fetch import tls_context
from swml_engine.recording.crypt import CryptError
from swml_engine.recording.objectstore import StorageError
from swml_engine.recording.recorder import Recording
from swml_engine.recording.store import MEDIA_TYPES
from swml_engine.service import storage
from swml_engine.service.auth import UrlSigner
from swml_engine.service.console import add_console
from swml_engine.service.events_stream import (
    EventFeed,
    EventStreamResponse,
    StreamCounter,
    call_messages,
    feed_messages,
    log_path,
    resume_offset,
)
from swml_engine.service.httpd import RequestGuard, bearer_refusal
from swml_engine.service.index import MAX_OFFSET, MAX_TEXT, PARTIES, IndexUnavailable, RecordingQuery
from swml_engine.service.sessions import COOKIE, Session, Sessions, cookie_value
from swml_engine.service.waveform import DEFAULT_POINTS, MAX_POINTS, WaveformError, Waveforms

if TYPE_CHECKING:
    from swml_engine.recording.objectstore import ObjectStore
    from swml_engine.recording.store import RecordingStore
    from swml_engine.service.arrival import Arrival
    from swml_engine.service.index import Index

log = logging.getLogger(__name__)

_Handler = Callable[..., Awaitable[Any]]
#: The methods a 405's Allow may name (the API's routes use no others).
_METHODS = ("GET", "HEAD", "POST", "DELETE")
#: The largest time or duration a query may give (seconds; the year 5138): a bound, so no value
#: overflows a database's float or a comparison.
MAX_TIME = 1e11
#: /metrics asked for without any token: refused, and not counted as a guess.
_NO_TOKEN: tuple[int, str, list[tuple[bytes, bytes]]] = (
    401,
    "a bearer token is required",
    [(b"www-authenticate", b"Bearer")],
)


class SignIn(BaseModel):
    #: The API token (--api-token, SWML_API_TOKEN or DIR/api-token).
    token: Annotated[str, Field(max_length=1000)]


class SessionInfo(BaseModel):
    #: Send it back in X-CSRF-Token with every request that changes something.
    csrf_token: str
    #: When the session ends (Unix time).
    expires: float


class PauseRequest(BaseModel):
    #: ``silence`` keeps the paused time in the file as silence; ``skip`` leaves it out.
    behavior: Literal["silence", "skip"] = "silence"


# --- what /openapi.json says the answers are ------------------------------------------------------
# The handlers return plain dicts (the metadata files' own, as the index keeps them); these models only
# describe them in /openapi.json (``responses``), so a client generated from it knows every field and
# every status. tests/interop/test_api_client.py checks real answers against the schema.


class Problem(BaseModel):
    """Every error but a request that does not fit the schema (422, FastAPI's list of what is wrong)."""

    #: What went wrong, and what to do, in words.
    detail: str


class Bridge(BaseModel):
    #: The far party's destination.
    to: str
    #: Its leg's call id.
    call_id: str
    #: When it was bridged and unbridged, on the call's clock (seconds); end null while bridged.
    start: float
    end: float | None


class RecordingInfo(BaseModel):
    """A recording's metadata (docs/recording.md, "Files"), as its metadata file holds it."""

    model_config = ConfigDict(extra="allow")
    recording_id: str
    call_id: str
    control_id: str | None = None
    #: record_call or record.
    method: str | None = None
    #: recording (paused too), finished, no_input or error.
    state: str
    format: Literal["wav", "mp3", "mp4"]
    sample_rate: int
    channels: int
    #: Each channel's content: left/right (stereo) or mono, as speak, listen, speak+listen or silence.
    channel_layout: dict[str, str]
    direction: str | None = None
    stereo: bool | None = None
    #: Seconds of audio (live: so far).
    duration: float
    #: Bytes of audio (live: on disk so far).
    size: int
    start_time: float
    end_time: float | None
    end_reason: str | None
    terminator: str | None = None
    #: The signed URL of its audio (made when shown; valid for --url-ttl from then), or a file:// path.
    url: str | None = None
    call_time: float | None = None
    bridges: list[Bridge] | None = None
    #: With --storage, once uploaded: {audio, size, sha256, sealed, uploaded_at}.
    storage: dict[str, Any] | None = None
    #: The call's From and To (in lists and a call's recordings; null when the index does not know the call).
    caller: str | None = None
    callee: str | None = None
    #: A live recording asked for by id: silence or skip while paused, else null.
    pause_behavior: Literal["silence", "skip"] | None = None


class RecordingList(BaseModel):
    recordings: list[RecordingInfo]
    #: How many match in all (for paging).
    total: int
    limit: int
    offset: int


class CallInfo(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    call_id: str
    sip_call_id: str | None
    from_: str | None = Field(alias="from")
    to: str | None
    #: ringing, early_media, answered or ended.
    state: str
    start_time: float
    answer_time: float | None
    end_time: float | None
    end_reason: str | None


class CallList(BaseModel):
    calls: list[CallInfo]
    #: How many match in all (for paging).
    total: int
    limit: int
    offset: int


class CallWithRecordings(CallInfo):
    recordings: list[RecordingInfo]


class WaveformChannel(BaseModel):
    #: From channel_layout: left, right or mono.
    label: str
    #: What it holds: speak, listen, speak+listen (or silence).
    role: str
    min: list[float]
    max: list[float]


class WaveformInfo(BaseModel):
    duration: float
    points: int
    sample_rate: int
    channels: list[WaveformChannel]


#: What each error status means wherever it is declared (a route may say more).
_PROBLEMS = {
    400: "a body that cannot be read as JSON (not UTF-8, say)",
    401: "no bearer token or session, or a wrong token",
    403: "refused (a signed URL changed or expired; a cookie's request without its X-CSRF-Token)",
    404: "no such recording or call",
    409: "not in a state that allows this",
    415: "the body is not application/json",
    416: "the range starts past the audio's end (Content-Range: bytes */SIZE)",
    422: "audio that cannot be decoded",
    429: "too many wrong tokens from this address (Retry-After)",
    502: "the storage, or the worker running the call, did not answer",
    503: "not now: the index is away, too many streams, or the audio waits in another node's spool (Retry-After)",
}


def problems(*codes: int, **said: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` declaring these error statuses, each a :class:`Problem` (``said``: ``s409=...``
    words a status for this route)."""
    return {code: {"model": Problem, "description": said.get(f"s{code}", _PROBLEMS[code])} for code in codes}


def _body(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
    return {"model": model, "description": description}


_AUDIO_CONTENT = {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}
#: The audio routes' answers: the whole file, or the range asked for.
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the audio (Accept-Ranges: bytes)", "content": _AUDIO_CONTENT},
    206: {"description": "the one range asked for (Content-Range)", "content": _AUDIO_CONTENT},
    **problems(404, 416, 502, 503),
}

#: The waveform's 422: audio that cannot be decoded (a Problem), or a query that does not fit (FastAPI's list).
UNDECODABLE: dict[str, Any] = {
    "description": "audio that cannot be decoded, or points out of 1-2000",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {"$ref": "#/components/schemas/HTTPValidationError"},
                ]
            }
        }
    },
}
#: The live-control routes' declarations: the recording as it stands after the change.
CONTROL: dict[str, Any] = {
    "response_model": None,
    "responses": {
        200: _body(RecordingInfo, "the recording as it stands now"),
        **problems(403, 404, 409, 502, s409="not live, or already in that state (already paused, not paused)"),
    },
}


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

    #: With --storage: the bucket finished recordings are uploaded to.
    @property
    def bucket(self) -> ObjectStore | None: ...

    #: This worker's private URL (live control forwarded between workers comes here).
    @property
    def worker_url(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...

    #: The Prometheus text of /metrics, and its content type.
    def metrics_exposition(self) -> tuple[bytes, str]: ...

    #: Whether /metrics needs the API token (--metrics-auth).
    @property
    def metrics_need_token(self) -> bool: ...

    def live_recording(self, recording_id: str) -> Recording | None: ...

    #: Where the calls' event logs are (DIR/calls), shared by the node's workers.
    @property
    def calls_dir(self) -> Path: ...

    #: serving, draining, stopping or stopped (server.Phase).
    @property
    def phase(self) -> str: ...

    #: Run a browser's call (service/phone.py); raises CallRefused when none is taken now.
    def start_browser_call(self, arrival: Arrival) -> asyncio.Task[None]: ...

    #: The address browsers are offered beside ours (service/phone.py), None without --advertise.
    @property
    def browser_announce(self) -> str | None: ...


def build_app(
    service: ServiceView,
    token: str,
    signer: UrlSigner,
    *,
    body_timeout: float = 10.0,
    forward_timeout: float = 5.0,
    secure_cookies: bool = False,
) -> FastAPI:
    """``secure_cookies``: the session cookie only over HTTPS (the public URL is https)."""
    # Every handler is async: it runs in the service's loop (the index's connection and the live calls
    # belong to that thread), and each does little (a file is streamed by the response itself).
    app = FastAPI(
        title="swml-engine",
        summary="Recordings and calls of swml serve",
        docs_url=None,
        redoc_url=None,
    )
    sessions = Sessions(lambda: index(), secure=secure_cookies)
    limiter = GuessLimiter()
    waveforms = Waveforms()
    streams = StreamCounter()

    def stopping() -> bool:
        return service.phase in ("stopping", "stopped")

    feed = EventFeed(service.calls_dir, lambda: index(), stopping)
    app.add_middleware(RequestGuard, token=token, body_timeout=body_timeout, sessions=sessions, limiter=limiter)

    @app.exception_handler(IndexUnavailable)
    async def index_away(request: Request, e: IndexUnavailable) -> JSONResponse:
        # (a shared index's server is away: the request may be made again; nothing is lost meanwhile)
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, e: StarletteHTTPException) -> Response:
        if e.status_code == 405:
            # Each method of a path is a route of its own, and Starlette's 405 names the methods of the
            # first one only ('Allow: HEAD' for a PUT where GET, HEAD and DELETE work): name them all.
            # (each method asked of every route: included routers are routes of their own that match too)
            allowed = [
                method
                for method in _METHODS
                if any(
                    route.matches({**request.scope, "method": method})[0] == Match.FULL for route in app.router.routes
                )
            ]
            e = StarletteHTTPException(405, e.detail, {**(e.headers or {}), "Allow": ", ".join(allowed)})
        return await http_exception_handler(request, e)

    # Declares the scheme in /openapi.json; the check itself is the guard's (and ``authorized``'s).
    bearer = HTTPBearer(auto_error=False, description="the API token (--api-token, SWML_API_TOKEN or DIR/api-token)")

    def index() -> Index:
        if service.index is None:  # (the service opens it before serving)
            raise HTTPException(503, "the recording index is not open")
        return service.index

    def authorized(request: Request) -> None:
        # (under /api the guard let it in and said how; elsewhere — /metrics — only the token does)
        if getattr(request.state, "principal", None) is not None:
            return
        host = request.client.host if request.client else "?"
        given = request.headers.get("authorization")  # (none given: no guess to count)
        refusal = bearer_refusal(limiter, given, token, host) if given is not None else _NO_TOKEN
        if refusal is not None:
            status, detail, headers = refusal
            raise HTTPException(status, detail, headers={k.decode(): v.decode() for k, v in headers})

    def get(router: FastAPI | APIRouter, path: str, **options: Any) -> Callable[[_Handler], _Handler]:
        """A GET route that answers HEAD too (headers only: a client checks size and type first)."""

        def register(handler: _Handler) -> _Handler:
            router.head(path, **{**options, "summary": f"{options.get('summary', '')} (headers only)"})(handler)
            return router.get(path, **options)(handler)

        return register

    session_cookie = APIKeyCookie(
        name=COOKIE, auto_error=False, description="a session (POST /api/session); with X-CSRF-Token to change anything"
    )
    api = APIRouter(
        prefix="/api",
        dependencies=[Depends(bearer), Depends(session_cookie), Depends(authorized)],
        responses=problems(401, 429, 503),
    )
    # The sign-in is the one /api route without a token or a session: its body carries the token.
    signing_in = APIRouter(prefix="/api")

    @signing_in.post(
        "/session",
        summary="Sign in with the API token: a session cookie (HttpOnly, SameSite=Strict) and a CSRF token",
        responses=problems(400, 401, 415, 429, s401="wrong token"),
    )
    async def sign_in(request: Request, response: Response, body: SignIn) -> SessionInfo:
        now = time.time()
        host = request.client.host if request.client else "?"
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "send the token as JSON (Content-Type: application/json)")
        wait = limiter.wait(host, now)
        if wait > 0:
            raise HTTPException(
                429, f"too many wrong tokens from {host}: wait {wait:.0f} s", headers={"Retry-After": str(ceil(wait))}
            )
        if not hmac.compare_digest(body.token.encode(), token.encode()):
            limiter.failed(host, now)
            raise HTTPException(401, "wrong token")
        value, session = await sessions.open(now)
        response.headers["Set-Cookie"] = sessions.set_cookie(value)
        response.headers["Cache-Control"] = "no-store"
        return SessionInfo(csrf_token=session.csrf, expires=session.expires)

    @get(
        api,
        "/session",
        summary="The session of this cookie: its CSRF token (401: not signed in)",
        responses=problems(401, s401="not signed in (or signed in with the bearer token)"),
    )
    async def session_info(request: Request, response: Response) -> SessionInfo:
        session = getattr(request.state, "session", None)
        if not isinstance(session, Session):
            raise HTTPException(401, "no session: this request came with the bearer token")
        response.headers["Cache-Control"] = "no-store"
        return SessionInfo(csrf_token=session.csrf, expires=session.expires)

    @api.delete(
        "/session",
        status_code=204,
        summary="Sign out: the session ends on every worker and node",
        responses=problems(403),
    )
    async def sign_out(request: Request) -> Response:
        await sessions.end(cookie_value(request.headers.get("cookie")))
        return Response(status_code=204, headers={"Set-Cookie": sessions.cleared_cookie()})

    async def owner_elsewhere(meta: dict[str, Any]) -> str | None:
        """The worker that runs the recording's call, when that is another worker (of this node or, on a
        shared index, of another) and the call goes on."""
        row = await index().call(str(meta.get("call_id")))
        if row is None or row[1] == service.worker_url or row[0].get("state") == "ended":
            return None
        return row[1]

    async def current(meta: dict[str, Any]) -> dict[str, Any] | None:
        """An index row as it stands, or None for a recording that is gone. The index may have missed
        writes (a full disk): a row that says live while no worker records it takes what its metadata
        file — the record of truth — says; a row whose files were deleted is gone. (A shared index
        lists other nodes' recordings, whose files are not here: its rows are taken as they are.)"""
        recording_id = str(meta["recording_id"])
        parties = {key: meta[key] for key in PARTIES if key in meta}  # (the list's, not the file's)
        live = service.live_recording(recording_id)
        if live is not None:  # as it stands now (the index's row is as it began)
            return live.live_metadata() | parties
        if await owner_elsewhere(meta) is not None:
            return meta
        if meta.get("end_reason") is not None:
            # Its files, or the bucket (uploaded, or to be uploaded from another node's spool), or
            # another node (a shared index) have it.
            kept = meta.get("storage") or service.bucket is not None or index().shared
            return meta if kept or service.store.meta_path(recording_id).is_file() else None
        truth = _metadata_file(service.store, recording_id)
        if truth is not None and truth != {key: value for key, value in meta.items() if key not in PARTIES}:
            log.info("recording %s: the index missed its last write; its metadata file says", recording_id)
            index().put_recording(truth)
        return None if truth is None else truth | parties

    async def found(recording_id: str) -> dict[str, Any]:
        live = service.live_recording(recording_id)
        if live is not None:
            return live.live_metadata()
        meta = await index().recording(recording_id)
        if meta is None:  # never indexed (its first write failed)? The file says.
            meta = _metadata_file(service.store, recording_id)
            if meta is not None:
                index().put_recording(meta)
        meta = await current(meta) if meta is not None else None
        if meta is None:
            raise HTTPException(404, f"no recording {recording_id}")
        return meta

    async def listed(rows: list[dict[str, Any]], state: str | None = None) -> list[dict[str, Any]]:
        """Rows as they stand (see ``current``); filtered by ``state`` again, as a row the index had
        wrong leaves the list of its old state (it joins its new one's once the index catches up)."""
        rows = [shown(row) for row in [await current(row) for row in rows] if row is not None]
        return [row for row in rows if state is None or row.get("state") == state]

    def shown(meta: dict[str, Any]) -> dict[str, Any]:
        """Metadata as the API shows it: with a signed URL made now, valid for --url-ttl from now. The
        one its file keeps was made when the recording began and expires --url-ttl after that, so a
        client listing last month's recordings would be handed dead links. Only a URL of this node's
        (under its public base) is made anew: another node's (a shared index) is signed with that
        node's key, and served there."""
        url, store = meta.get("url"), service.store
        if store.public is None or not isinstance(url, str) or not url.startswith(store.public.base + "/"):
            return meta
        return {**meta, "url": store.url_for(str(meta["recording_id"]), str(meta["format"]))}

    async def audio(request: Request, meta: dict[str, Any]) -> Response:
        """From the spool or the bucket, whichever has it (service/storage.py)."""
        return await storage.audio_response(request, storage.open_audio(service, meta), meta)

    @get(app, "/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return service.stats()

    @get(app, "/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # With the token unless --metrics-auth none; either way rendered at most once a second (metrics.py).
        if service.metrics_need_token:
            authorized(request)
        body, media_type = service.metrics_exposition()
        return Response(body, media_type=media_type)

    @get(
        app,
        "/recordings/{name}",
        summary="A recording's audio, by its signed URL (no token)",
        response_class=Response,
        responses={**AUDIO_RESPONSES, **problems(403, s403="the URL was changed, or is past its expiry")},
    )
    async def signed_audio(
        request: Request, name: str, expires: str | None = None, signature: str | None = None
    ) -> Response:
        if not signer.valid(f"/{name}", expires, signature, time.time()):
            raise HTTPException(403, "this recording URL is not valid (changed, or past its expiry)")
        recording_id, _, _fmt = name.rpartition(".")
        return await audio(request, await found(recording_id))

    @get(
        api,
        "/recordings",
        summary="Recordings, newest first, filtered; total: how many match in all",
        response_model=None,
        responses={200: _body(RecordingList)},
    )
    async def list_recordings(
        call_id: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
        state: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
        format: Annotated[str | None, Query(max_length=MAX_TEXT, description="wav, mp3 or mp4")] = None,
        caller: Annotated[str | None, Query(max_length=MAX_TEXT, description="part of the call's From")] = None,
        callee: Annotated[str | None, Query(max_length=MAX_TEXT, description="part of the call's To")] = None,
        from_time: Annotated[float | None, Query(ge=0, le=MAX_TIME, description="started at or after (Unix)")] = None,
        to_time: Annotated[float | None, Query(ge=0, le=MAX_TIME, description="started at or before (Unix)")] = None,
        min_duration: Annotated[float | None, Query(ge=0, le=MAX_TIME, description="seconds")] = None,
        max_duration: Annotated[float | None, Query(ge=0, le=MAX_TIME, description="seconds")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        query = RecordingQuery(
            call_id=call_id,
            state=state,
            format=format,
            caller=caller,
            callee=callee,
            from_time=from_time,
            to_time=to_time,
            min_duration=min_duration,
            max_duration=max_duration,
            limit=limit,
            offset=offset,
        )
        rows, total = await index().search(query)
        return {"recordings": await listed(rows, state), "total": total, "limit": limit, "offset": offset}

    @get(
        api,
        "/recordings/{recording_id}",
        summary="One recording's metadata",
        response_model=None,
        responses={200: _body(RecordingInfo), **problems(404)},
    )
    async def get_recording(recording_id: str) -> dict[str, Any]:
        return shown(await found(recording_id))

    @get(
        api,
        "/recordings/{recording_id}/audio",
        summary="A recording's audio (Range requests work)",
        response_class=Response,
        responses=AUDIO_RESPONSES,
    )
    async def get_audio(request: Request, recording_id: str) -> Response:
        return await audio(request, await found(recording_id))

    @get(
        api,
        "/recordings/{recording_id}/waveform",
        summary="Per channel, the lowest and highest sample of each of N equal spans (labelled from channel_layout)",
        response_model=None,
        responses={200: _body(WaveformInfo), **problems(404, 502), 422: UNDECODABLE},
    )
    async def get_waveform(
        recording_id: str, points: Annotated[int, Query(ge=1, le=MAX_POINTS)] = DEFAULT_POINTS
    ) -> dict[str, Any]:
        meta = await found(recording_id)
        try:
            return await waveforms.of(storage.open_audio(service, meta), meta, points, service.store.root)
        except (WaveformError, CryptError) as e:
            raise HTTPException(422, str(e)) from None
        except StorageError as e:
            raise HTTPException(502, f"recording {recording_id} not read from the storage: {e}") from None

    @api.delete(
        "/recordings/{recording_id}",
        status_code=204,
        summary="Delete a finished recording",
        responses=problems(
            403, 404, 409, 502, 503, s409="the recording is live (stop it first), or on another node's disk"
        ),
    )
    async def delete_recording(request: Request, recording_id: str) -> Response:
        if service.live_recording(recording_id) is not None:
            raise HTTPException(409, "the recording is live: stop it first")
        meta = await found(recording_id)
        worker = await owner_elsewhere(meta)
        if worker is not None:  # that worker knows whether it still records it
            return await _forward(request, worker, token, forward_timeout)
        node, bucket = await storage.held_elsewhere(service, meta), service.bucket
        if node is not None and bucket is None:
            why = f"recording {recording_id} is kept on the disk of node {node} (no --storage)"
            raise HTTPException(409, f"{why}: delete it through that node's API")
        if node is not None and bucket is not None:
            raise HTTPException(
                503,
                f"recording {recording_id} waits in the spool of node {node} to be uploaded to {bucket.url}: "
                "ask again later",
                headers={"Retry-After": str(storage.RETRY_AFTER)},
            )
        try:
            await storage.delete_recording(service, meta)  # spool, bucket, index
        except StorageError as e:
            raise HTTPException(502, f"recording {recording_id} not deleted from the storage: {e}") from None
        return Response(status_code=204)

    async def control(request: Request, recording_id: str, act: Callable[[Recording], Awaitable[bool]]) -> Any:
        """``act`` on the live recording (False: it cannot in the state it is in, which the 409 says)."""
        live = service.live_recording(recording_id)
        if live is not None:
            if not await act(live):
                if live.end_reason is not None:
                    why = "is ending"
                else:
                    why = "is paused already: resume it first" if live.paused is not None else "is not paused"
                raise HTTPException(409, f"recording {recording_id} {why}")
            return shown(live.live_metadata())
        meta = await found(recording_id)
        worker = await owner_elsewhere(meta)
        if worker is not None and meta.get("end_reason") is None:
            return await _forward(request, worker, token, forward_timeout)
        raise HTTPException(409, f"recording {recording_id} is not live (state {meta.get('state')})")

    @api.post("/recordings/{recording_id}/stop", summary="Stop a live recording (as stop_record_call)", **CONTROL)
    async def stop(request: Request, recording_id: str) -> Any:
        async def act(rec: Recording) -> bool:
            if rec.end_reason is not None:
                return False
            await rec.stop("api")
            return True

        return await control(request, recording_id, act)

    @api.post(
        "/recordings/{recording_id}/pause",
        summary="Pause a live recording",
        response_model=None,
        responses={**CONTROL["responses"], **problems(400)},
    )
    async def pause(request: Request, recording_id: str, body: PauseRequest | None = None) -> Any:
        behavior = (body or PauseRequest()).behavior

        async def act(rec: Recording) -> bool:
            return rec.pause(behavior)

        return await control(request, recording_id, act)

    @api.post("/recordings/{recording_id}/resume", summary="Resume a paused recording", **CONTROL)
    async def resume(request: Request, recording_id: str) -> Any:
        async def act(rec: Recording) -> bool:
            return rec.resume()

        return await control(request, recording_id, act)

    @get(api, "/calls", summary="Calls, newest first", response_model=None, responses={200: _body(CallList)})
    async def list_calls(
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        rows = await index().calls(state=state, limit=limit, offset=offset)
        total = await index().count_calls(state=state)
        return {"calls": rows, "total": total, "limit": limit, "offset": offset}

    def stream(request: Request, messages: AsyncIterator[bytes]) -> EventStreamResponse:
        if streams.full:
            raise HTTPException(
                503, f"this worker serves {streams.limit} event streams already", headers={"Retry-After": "5"}
            )
        if getattr(request.state, "principal", None) != "session":
            return EventStreamResponse(messages, streams)
        value = cookie_value(request.headers.get("cookie"))

        async def signed_in() -> bool:
            return await sessions.find(value, time.time()) is not None

        return EventStreamResponse(messages, streams, signed_in=signed_in)

    def event_stream(path: str, summary: str, *errors: int) -> Callable[[_Handler], _Handler]:
        """A route answering Server-Sent Events (described as such in /openapi.json); 503 beyond
        events_stream.MAX_STREAMS, and ``errors``."""
        return api.get(
            path,
            summary=f"Server-Sent Events: {summary}",
            # (the handler answers an EventStreamResponse; a plain class here keeps the errors
            # declared as what they are, JSON, and the 200 as text/event-stream below)
            response_class=Response,
            status_code=200,
            responses={
                200: {
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "Server-Sent Events",
                },
                **problems(*errors, 503, s503="this worker serves its most event streams already (Retry-After)"),
            },
        )

    @event_stream("/events", "the events of every call of this node, from now on (each with its call_id)")
    async def events(request: Request) -> EventStreamResponse:
        return stream(request, feed_messages(feed))

    @event_stream("/calls/{call_id}/events", "a call's events log from its first line, then live, then stream.end", 404)
    async def call_events(request: Request, call_id: str) -> EventStreamResponse:
        row = await index().call(call_id)
        path = log_path(service.calls_dir, call_id)
        if row is None or path is None or not path.is_file():
            raise HTTPException(404, f"no call {call_id} with its events on this node")

        async def over() -> bool:
            now = await index().call(call_id)
            return now is None or now[0].get("state") == "ended"

        since = resume_offset(path, request.headers.get("last-event-id"))
        return stream(request, call_messages(path, over, stopping, since=since))

    @get(
        api,
        "/calls/{call_id}",
        summary="One call, with its recordings",
        response_model=None,
        responses={200: _body(CallWithRecordings), **problems(404)},
    )
    async def get_call(call_id: str) -> dict[str, Any]:
        row = await index().call(call_id)
        if row is None:
            raise HTTPException(404, f"no call {call_id}")
        return {**row[0], "recordings": await listed(await index().recordings(call_id=call_id, limit=1000))}

    # Browser calls' signalling (service/phone.py). A WebSocket route of its own: the guard (httpd.py)
    # checks the token or the session, and the page's Origin, before the handshake is accepted.
    phoning = APIRouter(prefix="/api")

    @phoning.websocket("/phone")
    async def phone(ws: WebSocket) -> None:
        from swml_engine.service.phone import phone_session  # (aiortc is loaded by the first browser call)

        await phone_session(ws, service)

    app.include_router(signing_in)
    app.include_router(api)
    app.include_router(phoning)
    add_console(app)  # the web console at / (service/console/: static files; its data comes from /api)
    return app


def _metadata_file(store: RecordingStore, recording_id: str) -> dict[str, Any] | None:
    """A recording's metadata file, or None when there is none (or it cannot be read)."""
    if not recording_id or "/" in recording_id or recording_id.startswith("."):
        return None
    try:
        meta = store.read_metadata(recording_id)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("recording_id") == recording_id else None


async def _forward(request: Request, worker_url: str, token: str, timeout: float) -> Response:
    """Pass a live-control request to the worker that records it, and its answer back."""
    log.debug("%s %s passed to the worker at %s", request.method, request.url.path, worker_url)
    body = await request.body()
    # The request was let in here (by the token or a session and its CSRF header): the worker is asked
    # with the token, which it takes whatever let the request in.
    headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
    headers["Authorization"] = f"Bearer {token}"
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=tls_context()) as client:  # (no store loaded per request)
            answer = await client.request(request.method, worker_url + request.url.path, content=body, headers=headers)
    except httpx.HTTPError as e:
        return JSONResponse({"detail": f"the worker recording this call did not answer: {e}"}, status_code=502)
    return Response(answer.content, status_code=answer.status_code, media_type="application/json")
