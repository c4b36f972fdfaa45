"""The service: SIP over UDP and TCP on one port, a script per call, recordings under the data dir.

Each INVITE becomes a :class:`~swml_engine.call.Call` on a :class:`SipCallTransport` and runs the
script (a file loaded once at start, or fetched per call from ``--script-url``). A call's trouble —
a bad offer, an unreachable script server, a broken script — ends that call with a SIP error and one
log line; the service and every other call go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from swml_engine import callbacks
from swml_engine.call import Call, CallOptions
from swml_engine.callbacks import CallbackHub
from swml_engine.connections import ConnectionGate, ConnectionLimits, source_of
from swml_engine.document.loader import load_file
from swml_engine.document.model import Document
from swml_engine.document.remote import fetch_remote
from swml_engine.errors import DocumentError
from swml_engine.events import EventLog, JsonlSink
from swml_engine.fetch import FetchStopped
from swml_engine.logs import CallLog, FirstOfEach
from swml_engine.media.clock import MediaTicker
from swml_engine.methods import REGISTRY
from swml_engine.recording.crypt import Keyring
from swml_engine.recording.objectstore import ObjectStore, StorageError, StorageUnreachable
from swml_engine.recording.recorder import Recording, Recordings
from swml_engine.recording.recovery import recover
from swml_engine.recording.store import RecordingStore
from swml_engine.script.context import Variables
from swml_engine.service import storage
from swml_engine.service.api import SignedUrls, build_app
from swml_engine.service.arrival import Arrival, CallRefused
from swml_engine.service.auth import TOKEN_FILE, UrlSigner, api_token, given_token
from swml_engine.service.httpd import ApiServer
from swml_engine.service.index import (
    Index,
    IndexOpenError,
    IndexUnavailable,
    SyncMark,
    keep_alive,
    local_documents,
    node_id,
)
from swml_engine.service.indexes import open_index
from swml_engine.service.metrics import ServiceMetrics, Snapshot
from swml_engine.service.pgindex import retry_delay
from swml_engine.service.retention import Retention, stale_call_logs
from swml_engine.service.uploads import Uploader
from swml_engine.session import call_scope, run_call
from swml_engine.transports.sip.call import SipCallTransport, SipReject
from swml_engine.transports.sip.endpoint import Endpoint
from swml_engine.transports.sip.outbound import SipDialer, Trunk
from swml_engine.transports.sip.refer import ReferUpdate
from swml_engine.transports.sip.registration import RegisterTarget, SipRegistration
from swml_engine.transports.sip.relay import RelaySlot
from swml_engine.transports.sip.rtpstream import TALLY
from swml_engine.transports.sip.sdp import NotAcceptable, negotiate, parse_offer
from swml_engine.transports.sip.useragent import (
    AckReceived,
    ByeReceived,
    CallGone,
    CancelReceived,
    InviteReceived,
    Policy,
    ReInvite,
    RequestFailed,
    ServerCall,
    SipEvent,
    UserAgent,
    WorkerSlot,
)
from swml_engine.urls import redact

log = logging.getLogger(__name__)

#: The core's events that concern one call the service runs.
_CALL_EVENTS = (AckReceived, ByeReceived, CancelReceived, ReInvite, CallGone, RequestFailed)
#: How a CallGone reads in the log.
_GONE = {
    "no_ack": "no ACK for our 200 OK",
    "transport": "its connection failed",
    "session_expired": "no session refresh came in time (RFC 4028)",
    "session_refresh_failed": "our session refresh was refused or not answered",
}

USER_AGENT = "swml-engine"
#: Seconds a stop waits for cancelled calls to unwind (their finally blocks close files).
STOP_CANCEL_WAIT = 5.0
#: At a stop, how long queued status callbacks may take to be delivered before they are given up.
CALLBACK_DRAIN = 5.0
#: At a stop, how long the recordings still queued may take to be uploaded while uploads succeed.
UPLOAD_DRAIN = 5.0
#: How often a drain looks whether the calls have ended.
DRAIN_POLL = 0.1


class Phase(StrEnum):
    """Where the service is in its life (docs/serve.md, "Stopping")."""

    SERVING = "serving"
    #: New calls and OPTIONS probes get 503; the live calls go on until they end or the drain is over.
    DRAINING = "draining"
    #: The calls left are hung up and their recordings finalised; the ports close once every BYE
    #: is answered.
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class ServiceConfig:
    #: Recordings are written encrypted under its newest key (--encrypt-key-file); None: plain.
    keyring: Keyring | None = None
    #: With --workers: this worker's slot and relay socket (the supervisor's): datagrams of the shared SIP
    #: port for another worker's dialogs are handed to it (transports/sip/relay.py).
    relay: RelaySlot | None = None
    sip: tuple[str, int] = ("127.0.0.1", 5060)
    http: tuple[str, int] | None = None
    script: Path | None = None
    script_url: str | None = None
    data: Path = Path("swml-data")
    rtp_ports: tuple[int, int] = (20000, 30000)
    envs: dict[str, str] = field(default_factory=dict)
    fetch_timeout: float = 10.0
    #: Several worker processes share the SIP port (SO_REUSEPORT).
    reuse_port: bool = False
    #: Calls one worker takes at once; beyond, new calls get 503 (0: no limit).
    max_calls: int = 0
    #: New calls get 503 while the media ticks run this late (s): the calls in progress come first.
    max_lag: float = 0.06
    #: Keep an address-of-record registered at a registrar (one worker does it for all).
    register: RegisterTarget | None = None
    #: The host our Contact and SDP give (NAT); None: the bound address, or the one routing to each peer.
    advertise: str | None = None
    #: The HTTP API's bearer token (None: SWML_API_TOKEN, else generated once under ``data``).
    api_token: str | None = None
    #: Where callers of recording URLs reach the HTTP port (e.g. https://rec.example.com); None: derived.
    public_url: str | None = None
    #: How long a signed recording URL works (seconds).
    url_ttl: float = 7 * 86400.0
    #: /metrics needs the API token (False: open, for a Prometheus on a private network).
    metrics_token: bool = True
    #: When the service (all its workers) started: calls the index holds from before are over.
    started_at: float = field(default_factory=time.time)
    #: Caps and time limits of the HTTP port's connections (SIP over TCP may share them).
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Seconds a stop waits for the calls to end once hung up; then what is left is cancelled.
    stop_grace: float = 10.0
    #: At SIGTERM, seconds the live calls may go on by themselves (new ones refused) before they are
    #: hung up: with the BYEs' answers (at most 32 s) and callbacks (5 s), a stop stays within
    #: systemd's default TimeoutStopSec (90 s), after which it would SIGKILL the service.
    drain_timeout: float = 30.0
    #: Where connect sends phone numbers (--trunk); None: phone numbers cannot be dialled.
    trunk: Trunk | None = None
    #: A leg whose far end sends no RTP for this long (not on hold) is taken for gone (0: never).
    rtp_timeout: float = 60.0
    #: The port (UDP and TCP, on the SIP address) the calls connect places go out from: their answers
    #: and the far ends' requests come back there. None: the SIP port itself, unless workers share it
    #: (``reuse_port``: the kernel would hand a far end's answer to any of them), then a port the
    #: system picks for this worker alone; 0: such a port in any case.
    outbound_port: int | None = None
    #: ``--storage s3://bucket/prefix``: finished recordings are uploaded there (the data dir is the spool).
    storage: str | None = None
    #: The index of recordings and calls: a PostgreSQL URL shared by several nodes; None: SQLite under
    #: ``data`` (this node's alone).
    index_url: str | None = None
    #: Recordings that ended more than this many days ago are deleted (0: kept for ever).
    retention_days: float = 0.0


class SipArrival(Arrival):
    def __init__(self, transport: SipCallTransport, rtp_ports: tuple[int, int]) -> None:
        self.transport = self.sip = transport
        self.label = self.sip_call_id = transport.call_id
        self._rtp_ports = rtp_ports

    async def prepare(self) -> None:
        try:
            await self.sip.bind(self._rtp_ports)
        except OSError as e:
            raise SipReject(503, "Service Unavailable", str(e)) from None
        self.sip.ringing()

    def info(self) -> dict[str, Any]:
        return self.sip.call_info()

    def scope(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"sip_data": info["sip_data"], "sip_call_id": self.sip_call_id}

    def started(self, call: Call) -> None:
        offer = self.sip.offer
        call.events.emit(
            "sip.invite",
            sip_call_id=self.sip_call_id,
            source=[self.sip.sip.peer.host, self.sip.sip.peer.port],
            offer=[c.encoding_name or str(c.payload_type) for c in offer.audio.codecs] if offer else None,
            rtp_port=self.sip.rtp.local[1],
        )

    def refuse(self, rejection: SipReject) -> None:
        self.sip.reject(rejection)

    def fail(self) -> None:
        self.sip.end()


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.document: Document | None = None
        self.store = RecordingStore(config.data / "recordings", keyring=config.keyring, on_write=self._on_metadata)
        #: With --storage: the bucket, and what uploads finished recordings to it (started with the service).
        self.bucket: ObjectStore | None = None
        self.uploads: Uploader | None = None
        # OPTIONS probes get 503 whenever a new call would (over --max-calls, media late, stopping).
        relay = config.relay
        slot = WorkerSlot(relay.index, relay.count) if relay is not None else None
        self.ua = UserAgent(Policy(user_agent=USER_AGENT, busy=self._overloaded, worker=slot), relay=slot is not None)
        self.endpoint = self._sip_endpoint(self.ua, config.sip, reuse_port=config.reuse_port, relay=relay)
        #: Where the calls connect places go out from (docs/serve.md, "Calls the engine places"): the SIP
        #: port's endpoint, or one of this worker's own that shares its policy and its TCP caps.
        self.placing = self.endpoint
        own = config.outbound_port
        if own is None and config.reuse_port:
            own = 0
        if own is not None:
            placing_ua = UserAgent(self.ua.policy)
            self.placing = self._sip_endpoint(placing_ua, (config.sip[0], own), gate=self.endpoint.gate)
        #: Live SIP legs by SIP Call-ID (from the INVITE on, before their script runs too).
        self.legs: dict[str, SipCallTransport] = {}
        #: Live browser calls (the /phone page's: service/phone.py), from their offer on.
        self.browser_calls: set[Arrival] = set()
        #: Places the far legs of connect for every call (they count towards --max-calls too).
        self.dialer = SipDialer(
            self.placing,
            rtp_ports=config.rtp_ports,
            trunk=config.trunk,
            rtp_timeout=config.rtp_timeout or None,
            admit=self._overloaded,
        )
        #: The calls whose script runs, by the engine's call id (the HTTP API's live recordings are theirs).
        self.calls: dict[str, Call] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.phase = Phase.SERVING
        #: Per endpoint, the requests already unanswered when the stop began (not waited for).
        self._in_flight: list[set[object]] = []
        self.completed = 0
        self.refused = 0
        #: Which INVITEs refused 488 (an offer we cannot use) are logged: anyone may send them at will.
        self._unusable_offers = FirstOfEach()
        self.registration: SipRegistration | None = None
        self.index: Index | None = None
        self.retention: Retention | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._alive_task: asyncio.Task[None] | None = None
        #: Bringing the index up to date, when it could not be at start (its server away).
        self._sync_task: asyncio.Task[bool] | None = None
        self.api: ApiServer | None = None
        self.worker_url = ""
        #: --advertise as an IP address, offered to browsers beside ours (found at the API's start).
        self.browser_announce: str | None = None
        #: /metrics: this worker's figures (with --workers, in files every worker's scrape adds up).
        self.metrics = ServiceMetrics()

    def _sip_endpoint(
        self,
        ua: UserAgent,
        bind: tuple[str, int],
        *,
        reuse_port: bool = False,
        gate: ConnectionGate | None = None,
        relay: RelaySlot | None = None,
    ) -> Endpoint:
        """An endpoint whose events come to :meth:`_on_sip_event` with it (a call that comes in on it is
        answered through it); ``gate``: another endpoint's, so the TCP connection caps cover both ports."""
        endpoint = Endpoint(
            ua,
            bind,
            on_event=lambda event: self._on_sip_event(event, endpoint),
            reuse_port=reuse_port,
            limits=self.config.connections,
            advertise=self.config.advertise,
            gate=gate,
            relay=relay,
        )
        return endpoint

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if cfg.script is not None:
            self.document = load_file(cfg.script, methods=REGISTRY)  # DocumentError: the caller reports it and exits
        (cfg.data / "calls").mkdir(parents=True, exist_ok=True)
        for rec in recover(cfg.data / "recordings", cfg.keyring):
            log.warning("recovered recording %s after a crash: %.2f s (%s)", rec.recording_id, rec.duration, rec.note)
        if cfg.storage is not None:  # StorageError (a bucket missing, no credentials): the caller reports it
            self.bucket = ObjectStore.from_option(cfg.storage)
            try:
                await self.bucket.check()
            except StorageUnreachable as e:  # down for now: calls go on, recordings wait in the spool
                log.warning("%s; recordings wait in the spool until it answers", e)
        await self.endpoint.start()
        if self.placing is not self.endpoint:
            try:
                await self.placing.start()
            except OSError as e:
                await self.endpoint.stop()
                port = self.placing.bind[1]
                raise OSError(e.errno, f"calls placed from port {port or 'any'}: {e.strerror or e}") from e
        if cfg.http is not None:
            try:
                await self._start_api(cfg.http)
            except IndexOpenError:
                await self.endpoint.stop()
                if self.placing is not self.endpoint:
                    await self.placing.stop()
                raise
        host, port = self.endpoint.local_addr
        log.info("SIP on %s:%s (UDP and TCP), data in %s", host, port, cfg.data)
        if self.placing is not self.endpoint:
            log.info("calls connect places go out from port %s (UDP and TCP)", self.placing_port)
        if cfg.register is not None:
            self.registration = SipRegistration(self.endpoint, cfg.register, USER_AGENT)
            self.registration.start()
        if self.bucket is not None:  # after recovery: what a crash left in the spool goes up too
            # A recording stays local while its call is up (it may be played back): queued at the call's end.
            self.uploads = Uploader(
                self.bucket, lambda: self.store, held=lambda meta: meta.get("call_id") in self.calls
            )
            self.uploads.on_uploaded = self.metrics.uploads.uploaded
            self.uploads.start()
            log.info("finished recordings are uploaded to %s (spool: %s)", self.bucket.url, self.store.root)
            if cfg.http is None:
                log.warning("--storage without --http: recording URLs are file paths in the spool, gone once uploaded")
        self.metrics.start(self._metrics_snapshot)

    @property
    def sip_port(self) -> int:
        return int(self.endpoint.local_addr[1])

    @property
    def placing_port(self) -> int:
        """The port this worker's calls go out from (the SIP port, or one of its own)."""
        return int(self.placing.local_addr[1])

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Refuse new calls (INVITE and OPTIONS get 503) and let the live ones end by themselves, for up
        to ``timeout`` seconds, or until ``hurry`` is set (a second SIGTERM); :meth:`stop` then hangs up
        what is left."""
        await self._refuse_calls(Phase.DRAINING)
        if not self.tasks:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        log.info(
            "draining: %d call(s) up, new calls refused; what is left is hung up in %g s (or at a second signal)",
            len(self.tasks),
            timeout,
        )
        while self.tasks and loop.time() < deadline and not (hurry is not None and hurry.is_set()):
            await asyncio.sleep(DRAIN_POLL)
        if self.tasks:
            why = "at a second signal" if hurry is not None and hurry.is_set() else f"after {timeout:g} s"
            log.info("drain over %s: hanging up %d call(s)", why, len(self.tasks))
        else:
            log.info("drained: every call ended by itself")

    async def _refuse_calls(self, phase: Phase) -> None:
        if self.phase is Phase.SERVING:
            # What was already on its way before the stop is not waited for (its peer may be long gone);
            # what the stop sends, and the calls' own hang-ups during the drain, are (_settle).
            self._in_flight = [endpoint.unanswered() for endpoint in self._endpoints()]
            if self.registration is not None:
                await self.registration.stop()  # first: the registrar stops sending calls here
        self.phase = phase
        self.ua.policy.accepting = False  # new calls (and OPTIONS probes) get 503 from now on

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, hang up the live ones (recordings are finalised), wait for every BYE and
        CANCEL sent to be answered (at most the 32 s of its transaction), close the ports. Calls still
        busy after ``grace`` seconds (default: the config's) are cancelled; the index is closed after
        their last writes."""
        grace = self.config.stop_grace if grace is None else grace
        await self._refuse_calls(Phase.STOPPING)
        loop = asyncio.get_running_loop()
        hung_up = loop.time()
        for call in list(self.calls.values()):
            await call.hangup("shutdown")
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=grace)
            if late:
                log.warning("stopping: %d call(s) still busy after %g s are cancelled", len(late), grace)
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=STOP_CANCEL_WAIT)
        # Far legs left get their CANCEL or BYE, waited for with the callers' below (_settle), not here:
        # the dialer's own wait would hold a stop 5 s for BYEs sent long before it, to peers maybe gone.
        await self.dialer.stop(wait=0)
        await self._settle(max(0.0, hung_up + grace - loop.time()))
        if self.placing is not self.endpoint:
            await self.placing.stop()
        await self.endpoint.stop()
        if self.api is not None:
            await self.api.stop()
        if self.uploads is not None:  # what is not uploaded by then stays in the spool for the next start
            await self.uploads.stop(UPLOAD_DRAIN)
        for chore in (self._retention_task, self._alive_task, self._sync_task):
            if chore is not None:
                chore.cancel()
        if self.index is not None:
            await self.index.close()
        await self.metrics.stop()
        cut = await asyncio.to_thread(callbacks.shutdown, CALLBACK_DRAIN)
        if cut:
            log.warning("stopping: %d status callback receiver(s) still not answering are given up", cut)
        self.phase = Phase.STOPPED

    async def _settle(self, limit: float) -> None:
        """Keep the ports open until every BYE and CANCEL sent since the stop began has its answer
        (retransmitted meanwhile) or its transaction gives up, for at most ``limit`` seconds (what is
        left of --stop-grace; a transaction gives up after 32 s in any case): one lost datagram must not
        leave a caller's call up."""
        endpoints = zip(self._endpoints(), self._in_flight, strict=True)
        waits = [endpoint.settle(limit=limit, since=before) for endpoint, before in endpoints]
        left = sum(await asyncio.gather(*waits))
        if left:
            log.warning("stopping: %d request(s) (BYE, CANCEL, INVITE) still unanswered after %g s", left, limit)

    def _endpoints(self) -> list[Endpoint]:
        return [self.endpoint] if self.placing is self.endpoint else [self.endpoint, self.placing]

    # --- SIP events -------------------------------------------------------------------------------

    def _on_sip_event(self, event: SipEvent, endpoint: Endpoint) -> None:
        if isinstance(event, InviteReceived):
            self._on_invite(event.call, endpoint)
            return
        if self.dialer.on_event(event):  # a call we placed (connect's far legs)
            return
        if isinstance(event, ReferUpdate):  # a caller's transfer (sip_refer)
            leg = self.legs.get(event.call.call_id)
            if leg is not None:
                leg.refer_update(event)
            return
        if not isinstance(event, _CALL_EVENTS):
            if self.registration is not None:
                self.registration.on_event(event)  # the binding's (registered, failed ...)
            return
        transport = self.legs.get(event.call.call_id)
        if transport is None:
            if isinstance(event, RequestFailed):
                self._log(event.call.call_id).warning("%s for %s: %s", event.method, event.call.call_id, event.why)
            return
        if isinstance(event, AckReceived):
            transport.ack(event.body)
        elif isinstance(event, ByeReceived):
            transport.remote_bye()
        elif isinstance(event, CancelReceived):
            transport.remote_cancel()
        elif isinstance(event, ReInvite):
            transport.reinvite(event.request)
        elif isinstance(event, CallGone):
            why = _GONE.get(event.why, event.why)
            self._log(event.call.call_id).info("call %s: %s, call ended", event.call.call_id, why)
            transport.remote_bye()
        elif isinstance(event, RequestFailed):
            self._log(event.call.call_id).warning("%s for %s: %s", event.method, event.call.call_id, event.why)

    def _log(self, sip_call_id: str) -> CallLog:
        """The log for a line about one SIP call: with the engine's call id once its script has one."""
        leg = self.legs.get(sip_call_id)
        call = leg.call if leg is not None else None
        return CallLog(log, call.call_id if call is not None else None, sip_call_id)

    def _on_invite(self, sip: ServerCall, endpoint: Endpoint) -> None:
        """A new call, on the endpoint it came to (the SIP port's, or the port calls are placed from)."""
        sip_call_id = sip.call_id
        ua, now = endpoint.ua, endpoint.now
        existing = self.legs.get(sip_call_id)
        if existing is not None:
            if existing.awaiting_credentials and existing.endpoint is endpoint:
                existing.retry(sip)  # the INVITE again, answering our 401
            else:  # the same Call-ID again by another transport or path: the first one owns it
                ua.reject(sip, 482, now)
            return
        busy = self._overloaded()
        if busy:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                self._log(sip_call_id).warning(
                    "call %s refused 503: %s (%d refused so far)", sip_call_id, busy, self.refused
                )
            ua.reject(sip, 503, now, headers=(("Retry-After", str(ua.policy.retry_after)),))
            return
        offer = None  # no body: a delayed offer, we offer in the 200 OK
        if sip.invite.body:
            try:
                offer = parse_offer(sip.invite.text)
                negotiate(offer, [])  # at least one codec we speak, or 488 now
            except NotAcceptable as e:
                unusable = self._unusable_offers
                if unusable.should_log(source_of(sip.peer.host)):
                    self._log(sip_call_id).info(
                        "call %s rejected 488: %s (%d refused so far)", sip_call_id, e, unusable.count
                    )
                ua.reject(sip, 488, now)
                return
        # RTP binds where SIP does (a wildcard too); the SDP gives the address the caller reaches us by.
        rtp_host = endpoint.local_addr[0]
        sdp_host = sip.peer.local[0]
        transport = SipCallTransport(
            endpoint, sip, offer, rtp_host, sdp_host, rtp_timeout=self.config.rtp_timeout or None
        )
        self.legs[sip_call_id] = transport
        task = asyncio.get_running_loop().create_task(self._run(transport))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _overloaded(self) -> str | None:
        """Why a new call would hurt the calls in progress, if it would."""
        cfg = self.config
        calls = len(self.legs) + len(self.dialer.legs) + len(self.browser_calls)  # (placed legs count too)
        if cfg.max_calls and calls >= cfg.max_calls:
            return f"{calls} calls, the --max-calls limit"
        lag = MediaTicker.lag_of(asyncio.get_running_loop())
        if cfg.max_lag and lag > cfg.max_lag:
            return f"media running {lag * 1000:.0f} ms late (CPU saturated)"
        return None

    # --- one call ---------------------------------------------------------------------------------

    def start_browser_call(self, arrival: Arrival) -> asyncio.Task[None]:
        """Run the script on a browser's call (service/phone.py); CallRefused when, as a SIP call would
        get 503, none is taken now."""
        if self.phase is not Phase.SERVING:
            raise CallRefused(f"the service is {self.phase.value}")
        busy = self._overloaded()
        if busy:
            self.refused += 1
            raise CallRefused(busy)
        self.browser_calls.add(arrival)
        task = asyncio.get_running_loop().create_task(self._run_browser_call(arrival))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run_browser_call(self, arrival: Arrival) -> None:
        try:
            await self.take_call(arrival)
        finally:
            self.browser_calls.discard(arrival)

    async def _run(self, transport: SipCallTransport) -> None:
        sip_call_id = transport.call_id
        try:
            await self.take_call(SipArrival(transport, self.config.rtp_ports))
        finally:
            self.legs.pop(sip_call_id, None)

    async def take_call(self, arrival: Arrival) -> None:
        """Run the script on a call, whatever transport brought it: its event log, index row and
        recordings; its refusal (:class:`SipReject`) or failure told back through ``arrival``."""
        transport = arrival.transport
        clog = CallLog(log, None, arrival.label)
        call: Call | None = None
        events: EventLog | None = None
        events_file: IO[str] | None = None
        try:
            await arrival.prepare()
            call_id = str(uuid.uuid4())
            events = EventLog()
            events.keep = False  # a service keeps events in files, not in memory
            events_file = (self.config.data / "calls" / f"{call_id}.jsonl").open("w", encoding="utf-8")
            # First: a callback delivered after the call's event file is closed still counts.
            events.sinks.append(self.metrics.call_sink())
            events.sinks.append(JsonlSink(events_file))
            hub = CallbackHub(events)
            options = CallOptions(
                data_dir=self.config.data,
                allow_file_urls=False,
                url_resolver=self.store.resolver_for(call_id),  # the call's own recordings only
                fetch_timeout=self.config.fetch_timeout,
                recording_store=self.store,
                dialer=self.dialer,
                extra={"callbacks": hub},
            )
            call = Call(transport, call_id=call_id, events=events, options=options)
            self.calls[call_id] = call
            clog = CallLog(log, call_id, arrival.label)
            info = arrival.info()
            if self.index is not None:
                events.sinks.append(self._call_indexer(call_id, arrival.sip_call_id, info))
            scope = call_scope(call, from_=info["from"], to=info["to"], headers=info["headers"])
            scope.update(arrival.scope(info))
            variables = Variables(call=scope, envs=dict(self.config.envs))
            arrival.started(call)
            doc = self.document or await self._fetch(call, variables)
            if doc is None:  # cancelled during the fetch: the call's log and index row end too
                events.emit("call.state", state="ended", reason=call.end_reason or "remote_cancel")
                return
            clog.info("call %s (%s) from %s to %s", call_id, arrival.label, info["from"], info["to"])
            result = await run_call(doc, call, variables)
            self.completed += 1
            clog.info(
                "call %s ended after %.1f s: %s%s",
                call_id,
                call.now(),
                call.end_reason or result.reason,
                f" ({result.error})" if result.error else "",
            )
            for channel in hub.channels:
                channel.close()  # deliveries finish in their threads
        except SipReject as e:  # the one place a refusal of ours becomes the call's answer
            arrival.refuse(e)
            if events is not None:
                events.emit("call.state", state="ended", reason="error")
        except Exception:
            clog.exception("call %s failed", arrival.label)
            with contextlib.suppress(Exception):
                arrival.fail()
        finally:
            if call is not None:
                self.calls.pop(call.call_id, None)
                if self.uploads is not None and isinstance(call.recordings, Recordings):
                    for rec in call.recordings.all:  # held while the call was up
                        self.uploads.add(rec.recording_id)
            await transport.close()
            if events_file is not None:
                with contextlib.suppress(OSError):  # (a full disk: its sink has said so)
                    events_file.close()

    async def _fetch(self, call: Call, variables: Variables) -> Document | None:
        """The call's script from --script-url; None when the caller cancelled meanwhile (its 487 was
        the answer); SipReject 500 when the script cannot be had or used."""
        url = self.config.script_url
        assert url is not None
        payload = {"call": variables.call, "params": {}, "vars": {}, "envs": variables.envs}
        call.options.fetches.bind(call.ended)  # a CANCEL stops the fetch
        try:
            return await fetch_remote(url, payload, call.options, REGISTRY)
        except FetchStopped:
            return None
        except DocumentError as e:
            problems = "; ".join(str(err) for err in (e.errors or e.unsupported)) or str(e)
            call.events.emit("error", where="script_url", message=problems)
            shown = redact(url)  # never the password of --script-url in a log line
            why = f"the script from {shown} is not usable: {problems}"
            raise SipReject(500, "Server Internal Error", why) from None

    # --- HTTP API ----------------------------------------------------------------------------------

    async def _start_api(self, http: tuple[str, int]) -> None:
        cfg = self.config
        # Absolute: audio is served by path, and a relative one cannot become the file URL the store maps.
        data = cfg.data.absolute()
        # SecretError (an empty or short token or key; one that cannot be written): the caller reports it.
        token, generated = api_token(data, given_token(cfg.api_token, os.environ.get("SWML_API_TOKEN")))
        if generated:  # once, by the one process that made it
            print(f"swml serve: API token (kept in {data / TOKEN_FILE}): {token}", file=sys.stderr, flush=True)
        signer = UrlSigner(data)
        # IndexOpenError (a bad --index, a newer schema): the caller reports it. A PostgreSQL server that
        # does not answer is no reason to refuse calls: the index starts behind (pgindex.py).
        self.index = await open_index(cfg.index_url, data, node_id(data), away_ok=True)
        shared = _listen(http, reuse_port=cfg.reuse_port)
        # Live control passed on by other workers, on loopback; with a shared index also by other nodes,
        # on the API's own address (the same token guards it).
        private_host = http[0] if self.index.shared else "127.0.0.1"
        private = _listen((private_host, 0), reuse_port=False)
        url_host = _url_host(private_host, cfg.advertise)
        self.worker_url = f"http://{url_host}:{private.getsockname()[1]}"
        if cfg.advertise is not None:
            self.browser_announce = await _address_of(cfg.advertise)
        base = cfg.public_url or f"http://{_url_host(http[0], cfg.advertise)}:{shared.getsockname()[1]}"
        self.store = RecordingStore(
            data / "recordings",
            public=SignedUrls(base.rstrip("/") + "/recordings", signer, cfg.url_ttl),
            on_write=self._on_metadata,
            keyring=cfg.keyring,
        )
        # This node's own recordings only (all of a shared index's: `swml index rebuild`); to a shared
        # index, only those changed since this node's last start (unless its database is new).
        if not await self._bring_index_up_to_date(data):
            self._sync_task = asyncio.get_running_loop().create_task(
                self._bring_index_up_to_date(data, again=True), name="index catch-up"
            )
        secure = base.lower().startswith("https:")  # the session cookie only over HTTPS then
        app = build_app(self, token, signer, body_timeout=cfg.connections.header_timeout, secure_cookies=secure)
        self.api = ApiServer(app, [shared, private], cfg.connections)
        await self.api.start()
        log.info("HTTP API on %s:%s, recording URLs under %s/recordings", http[0], shared.getsockname()[1], base)
        # (the calls of a node killed for good are ended by the others: index.keep_alive)
        self._alive_task = asyncio.get_running_loop().create_task(keep_alive(self.index), name="node alive")
        if cfg.retention_days:
            self.retention = Retention(
                self.index,
                self._retire,
                lambda recording_id: self.live_recording(recording_id) is not None,
                cfg.retention_days,
                own=self.bucket is None,  # local storage: no other node's files are within reach
                delete_call=self._delete_call,
                call_logs=lambda before, limit: asyncio.to_thread(
                    stale_call_logs, self.calls_dir, before, limit, frozenset(self.calls)
                ),
            )
            self._retention_task = asyncio.get_running_loop().create_task(self.retention.run(), name="retention")

    async def _bring_index_up_to_date(self, data: Path, *, again: bool = False) -> bool:
        """The index given this node's recordings changed since its last start, and its calls a stopped
        process left live marked ended. At start once; when the index cannot be read then, ``again``:
        until it can (with growing pauses), so a node started while its index was away catches up."""
        index, started = self.index, self.config.started_at
        assert index is not None and self.store is not None
        failures = 0
        while True:
            mark = SyncMark(data, index.where)
            since = mark.since() if index.shared and not index.fresh else None
            try:
                await index.rebuild(local_documents(self.store.root, changed_since=since))
                await index.end_orphaned_calls(started)
                if index.shared:
                    mark.mark(started)
                if failures:
                    log.warning("index %s brought up to date with this node's recordings", index.where)
                return True
            except IndexUnavailable as e:
                failures += 1
                if not again:
                    log.warning("index not brought up to date at start (%s): tried again until it is", e)
                    return False
            await asyncio.sleep(retry_delay(failures))

    async def _retire(self, meta: dict[str, Any]) -> None:
        """A recording past its retention, removed as DELETE does (spool, bucket, index) — but one that
        waits in another node's spool: deleted from here, its upload would bring it back (tried again at
        the next pass; its own node's retention deletes it meanwhile)."""
        node = await storage.held_elsewhere(self, meta)
        if node is not None:
            raise StorageError(f"it waits in the spool of node {node}, to be uploaded or deleted there")
        await storage.delete_recording(self, meta)

    async def _delete_call(self, call_id: str) -> None:
        """One of this node's ended calls, at the end of retention: its event log, then its index row."""
        if call_id and "/" not in call_id and not call_id.startswith("."):  # (a row's value, not a path)
            (self.config.data / "calls" / f"{call_id}.jsonl").unlink(missing_ok=True)
        if self.index is not None:
            self.index.delete_call(call_id)

    def _on_metadata(self, meta: dict[str, Any]) -> None:
        """A recording's metadata was written: index it; upload it once it has ended."""
        if self.index is not None:  # a write that fails waits for the next one (index.py)
            self.index.put_recording(meta)
        if self.uploads is not None:
            self.uploads.on_metadata(meta)

    def _call_indexer(self, call_id: str, sip_call_id: str, info: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        """An event sink keeping the call's row in the index as it rings, is answered and ends."""
        row: dict[str, Any] = {
            "call_id": call_id,
            "sip_call_id": sip_call_id,
            "from": info["from"],
            "to": info["to"],
            "state": "ringing",
            "start_time": time.time(),
            "answer_time": None,
            "end_time": None,
            "end_reason": None,
        }

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] != "call.state" or self.index is None:
                return
            state = event.get("state")
            if state == "answered":
                row.update(state="answered", answer_time=time.time())
            elif state == "ended":
                row.update(state="ended", end_time=time.time(), end_reason=event.get("reason"))
            elif state != "ringing":
                row["state"] = str(state)
            self.index.put_call(row, self.worker_url)  # never raises; late ones after close are dropped

        return on_event

    @property
    def calls_dir(self) -> Path:
        """The calls' event logs (the API streams them: service/events_stream.py)."""
        return self.config.data / "calls"

    def live_recording(self, recording_id: str) -> Recording | None:
        for call in self.calls.values():
            recordings = call.recordings
            if isinstance(recordings, Recordings):
                for rec in recordings.live():
                    if rec.recording_id == recording_id:
                        return rec
        return None

    def stats(self) -> dict[str, Any]:
        lag = MediaTicker.lag_of(asyncio.get_running_loop())
        return {
            "status": "ok",
            "state": self.phase.value,
            "calls": len(self.legs),
            "far_legs": len(self.dialer.legs),
            "completed": self.completed,
            "refused": self.refused,
            "media_lag_ms": round(lag * 1000, 1),
            **({"index": self.index.state.value} if self.index is not None else {}),
            **({"registration": self.registration.status()} if self.registration is not None else {}),
            **({"uploads": self.uploads.stats()} if self.uploads is not None else {}),
            **({"relay": self.endpoint.relays.as_dict()} if self.config.relay is not None else {}),
        }

    def _metrics_snapshot(self) -> Snapshot:
        """What this worker's tables and counters say now, for /metrics."""
        states = [
            "paused" if rec.paused is not None else rec.state
            for call in self.calls.values()
            if isinstance(call.recordings, Recordings)
            for rec in call.recordings.live()
        ]
        agents = {id(endpoint.ua): endpoint.ua for endpoint in (self.endpoint, self.placing)}
        return Snapshot(
            calls=len(self.legs),
            far_legs=len(self.dialer.legs),
            refused=self.refused,
            recording_states=states,
            sip=[ua.counts for ua in agents.values()],
            rtp=TALLY.figures(),
            uploads_waiting=len(self.uploads.queue) if self.uploads is not None else None,
            upload_failures=self.uploads.failures if self.uploads is not None else 0,
        )

    def metrics_exposition(self) -> tuple[bytes, str]:
        return self.metrics.exposition()

    @property
    def metrics_need_token(self) -> bool:
        return self.config.metrics_token


def _listen(addr: tuple[str, int], *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket (shared between workers with SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"HTTP on {addr[0]}:{addr[1]}: {e.strerror}") from e
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def _address_of(host: str) -> str | None:
    """``--advertise`` as the IP address a browser's ICE checks go to (a name is looked up once, at
    start); None, with a warning, when it cannot be."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host.strip("[]")))
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM), 5)
    except (OSError, TimeoutError) as e:
        log.warning("--advertise %s: no address for browsers' calls (%s): they get our own addresses only", host, e)
        return None
    return str(infos[0][4][0])


def _url_host(bound: str, advertise: str | None) -> str:
    """The host for recording URLs when --public-url is not given."""
    host = bound if bound not in ("0.0.0.0", "::", "") else advertise or socket.getfqdn()
    return f"[{host}]" if ":" in host else host
