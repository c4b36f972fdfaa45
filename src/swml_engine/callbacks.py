"""Status callbacks: POST JSON to a ``status_url`` in order, retried with backoff, never blocking a call.

``record_call``/``record``, ``play`` and ``prompt`` take a ``status_url``; each step that has one gets a
:class:`StatusReporter`, which wraps its states in the envelope the SWML pages show (``event_type``,
``event_channel``, ``timestamp``, ``params`` with ``call_id``, ``node_id``, ``control_id``).

Each status URL of a call gets a channel: a queue whose payloads are sent one after another (so
``recording`` always arrives before ``finished``, and one step's events before the next step's), on
real time, beside the call, by a thread of a pool shared by every call of the process — a service with
hundreds of recording calls does not run hundreds of threads, and connections to the same receiver
are reused. A failed attempt (connection error,
timeout, non-2xx) is retried after 0.5, 1, 2, 4 ... s, up to :data:`MAX_ATTEMPTS`. Every attempt is an
event: ``callback`` with url, attempt, status (HTTP code or the error) and ``delivered``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from swml_engine.events import EventLog
from swml_engine.fetch import no_cookies, tls_context
from swml_engine.urls import HttpTarget, UrlError, parse_http_url

if TYPE_CHECKING:
    from swml_engine.call import Call

#: ``params.node_id`` of every callback: the engine that handled the call.
NODE_ID = "swml-engine"

MAX_ATTEMPTS = 6
TIMEOUT = 5.0
FIRST_BACKOFF = 0.5
#: Payloads not yet delivered or given up, in every channel of the process, at most: beyond, a new one is
#: given up at once (its ``callback`` event says so). With a receiver down each payload holds a delivery
#: thread for its attempts (about 45 s), while the calls go on queueing theirs: 250 calls in 40 s once
#: left 470 payloads waiting, growing for as long as the receiver stayed down, delivered ever later.
MAX_WAITING = 5000
#: Channels delivering at the same time (a slow receiver holds one while it retries).
POOL_SIZE = 32


class _Pool:
    """The process's delivery threads and one HTTP client (connection reuse across calls; no cookies:
    a ``Set-Cookie`` from one call's receiver must never ride along with another call's callbacks)."""

    _lock = threading.Lock()
    _executor: ThreadPoolExecutor | None = None
    _client: httpx.Client | None = None
    #: Channels with payloads still to deliver.
    busy: ClassVar[set[CallbackChannel]] = set()
    #: Set when the process stops: retries end, and what is still queued is given up (see :func:`shutdown`).
    stopping: ClassVar[threading.Event] = threading.Event()
    #: Payloads sent and not yet delivered or given up (at most MAX_WAITING).
    waiting: ClassVar[int] = 0

    @classmethod
    def take(cls) -> bool:
        """Count one payload more as waiting, if there is room (False: give it up)."""
        with cls._lock:
            if cls.waiting >= MAX_WAITING:
                return False
            cls.waiting += 1
            return True

    @classmethod
    def done(cls) -> None:
        with cls._lock:
            cls.waiting -= 1

    @classmethod
    def get(cls) -> tuple[ThreadPoolExecutor, httpx.Client]:
        with cls._lock:
            if cls._executor is None or cls._client is None:
                cls._executor = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="swml-callbacks")
                cls._client = httpx.Client(
                    limits=httpx.Limits(max_connections=POOL_SIZE * 2), cookies=no_cookies(), verify=tls_context()
                )
            return cls._executor, cls._client


#: The status of a callback given up because the process stops (swml serve's stop, Ctrl-C in swml run).
STOPPING = "given up: stopping"


def shutdown(timeout: float) -> int:
    """The process is stopping: wait up to ``timeout`` seconds for queued callbacks to be delivered,
    then end every retry and give up what is left (an attempt in flight ends within its own timeout).
    Without this, the delivery threads — joined when the interpreter exits — would hold a stopping
    service for as long as a dead receiver's retries last. Returns how many channels were cut short."""
    deadline = time.monotonic() + timeout
    for channel in list(_Pool.busy):
        channel.join(max(0.0, deadline - time.monotonic()))
    left = len(_Pool.busy)
    _Pool.stopping.set()
    return left


class CallbackChannel:
    def __init__(
        self, target: HttpTarget, events: EventLog, *, attempts: int = MAX_ATTEMPTS, timeout: float = TIMEOUT
    ) -> None:
        self.target = target
        #: Where payloads go (credentials taken out: they travel as basic auth, never in events).
        self.url, self._auth = target.url, target.auth
        self.events = events
        self.attempts = attempts
        self.timeout = timeout
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._busy = False
        self._idle = threading.Event()
        self._idle.set()

    def send(self, payload: dict[str, Any]) -> None:
        if not _Pool.take():
            status = f"given up: {MAX_WAITING} callbacks of this process waiting already"
            self._note(state=_state_of(payload), attempt=0, status=status, delivered=False)
            return
        with self._lock:
            self._queue.append(payload)
            if self._busy:
                return  # the running drain takes it, in order
            self._busy = True
            self._idle.clear()
            _Pool.busy.add(self)
        executor, _ = _Pool.get()
        executor.submit(self._drain)

    def close(self) -> None:
        """No more payloads (kept for symmetry: the channel holds no thread of its own)."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything sent so far was delivered or gave up."""
        return self._idle.wait(timeout)

    def _drain(self) -> None:
        _, client = _Pool.get()
        while True:
            with self._lock:
                if not self._queue:
                    self._busy = False
                    self._idle.set()
                    _Pool.busy.discard(self)
                    return
                payload = self._queue.popleft()
            try:
                if _Pool.stopping.is_set():
                    self._note(state=_state_of(payload), attempt=0, status=STOPPING, delivered=False)
                    continue
                self._deliver(client, payload)
            except Exception as e:  # never lose the channel to one bad payload
                self._note(state=_state_of(payload), attempt=0, status=str(e), delivered=False)
            finally:
                _Pool.done()

    def _deliver(self, client: httpx.Client, payload: dict[str, Any]) -> None:
        state = _state_of(payload)
        delay = FIRST_BACKOFF
        for attempt in range(1, self.attempts + 1):
            try:
                auth = self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT
                with client.stream(
                    "POST", self.url, json=payload, auth=auth, timeout=self.timeout, headers=_NOT_COMPRESSED
                ) as resp:
                    status: int | str = resp.status_code
                    ok = 200 <= resp.status_code < 300
                    _skim(resp, time.monotonic() + self.timeout)
            except httpx.HTTPError as e:
                status, ok = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, False
            self._note(state=state, attempt=attempt, status=status, delivered=ok)
            if ok:
                return
            if attempt < self.attempts:
                if _Pool.stopping.wait(delay):
                    self._note(state=state, attempt=attempt, status=STOPPING, delivered=False)
                    return
                delay *= 2

    def _note(self, **fields: Any) -> None:
        # The call may be over and its event file closed while a retry is still going: never let that
        # kill the delivery thread.
        with contextlib.suppress(Exception):
            self.events.emit("callback", url=self.url, **fields)


#: The most of a receiver's answer read (its body is not used): a small one is read to its end, so the
#: connection is reused; a larger one — a receiver may answer with gigabytes — closes the connection.
MAX_ANSWER = 64 * 1024
#: Compressed answers are not asked for (a few KiB of gzip can inflate to gigabytes).
_NOT_COMPRESSED = {"Accept-Encoding": "identity"}


def _skim(resp: httpx.Response, deadline: float) -> None:
    """Read what little the answer's body is, by ``deadline`` (each read within the client's timeout)."""
    taken = 0
    for chunk in resp.iter_raw(16 * 1024):
        taken += len(chunk)
        if taken > MAX_ANSWER or time.monotonic() > deadline:
            return  # (leaving the stream unread closes its connection)


def _state_of(payload: dict[str, Any]) -> Any:
    """The state a payload reports, for its ``callback`` events: a step's ``state``, connect's
    ``connect_state``, a leg's ``call_state``."""
    params = payload.get("params", {})
    if not isinstance(params, dict):
        return None
    return params.get("state") or params.get("connect_state") or params.get("call_state")


class CallbackHub:
    """All callback channels of one call (or one service); ``drain`` waits for them, bounded."""

    def __init__(self, events: EventLog, *, timeout: float = TIMEOUT) -> None:
        self.events = events
        #: Seconds one attempt may take before it counts as failed (and is retried).
        self.timeout = timeout
        self.channels: list[CallbackChannel] = []

    def channel(self, target: HttpTarget) -> CallbackChannel:
        """The channel to ``target``: one per URL, so a receiver gets the call's events in the order they
        happened even when several steps report to it (a play's ``finished`` before the next one's
        ``playing``)."""
        for ch in self.channels:
            if ch.target == target:
                return ch
        ch = CallbackChannel(target, self.events, timeout=self.timeout)
        self.channels.append(ch)
        return ch

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every queued payload was delivered or gave up; False if time ran out."""
        deadline = time.monotonic() + timeout
        for ch in self.channels:
            ch.close()
        done = True
        for ch in self.channels:
            done = ch.join(max(0.0, deadline - time.monotonic())) and done
        return done


def hub_of(call: Call) -> CallbackHub:
    """The call's callback hub (the session or service puts one in the call options; else one is made)."""
    hub = call.options.extra.get("callbacks")
    if not isinstance(hub, CallbackHub):
        hub = CallbackHub(call.events)
        call.options.extra["callbacks"] = hub
    return hub


def callback_target(events: EventLog, url: str | None, where: str) -> HttpTarget | None:
    """Where a step's callbacks go, or None: no URL, or one that does not parse (said by an ``error``
    event at ``where``; the step goes on without callbacks), or one a substitution left empty (said too)."""
    if url == "":
        events.emit("error", where=where, message=f"{where}: came out empty; no status callbacks are sent for it")
        return None
    if url is None:
        return None
    try:
        return parse_http_url(url)
    except UrlError as e:
        events.emit("error", where=where, message=f"{where}: {e}; no status callbacks are sent for it")
        return None


class StatusReporter:
    """The status callbacks of one step: one ordered channel to its ``status_url`` (nothing without one).
    ``control_id``: the step's, in every payload's ``params``; None for payloads that have none
    (``calling.call.connect``, ``calling.call.state``).

    A URL that does not parse (a substituted value; literal ones are refused when the document loads)
    drops the step's callbacks with an ``error`` event at ``where``: the step itself goes on.
    """

    def __init__(
        self, call: Call, url: str | None, event_type: str, control_id: str | None, where: str = "status_url"
    ) -> None:
        self.call = call
        self.event_type = event_type
        self.control_id = control_id
        target = callback_target(call.events, url, where)
        self.channel = hub_of(call).channel(target) if target is not None else None

    def send(self, params: dict[str, Any]) -> None:
        if self.channel is None:
            return
        call = self.call
        ids: dict[str, Any] = {"call_id": call.call_id, "node_id": NODE_ID}
        if self.control_id is not None:
            ids["control_id"] = self.control_id
        self.channel.send(
            {
                "event_type": self.event_type,
                "event_channel": f"swml:{call.call_id}",
                "timestamp": call.wall(),
                "project_id": "",
                "space_id": "",
                "params": {**ids, **params},
            }
        )
