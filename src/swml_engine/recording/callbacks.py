"""Status callbacks: POST JSON to a ``status_url`` in order, retried with backoff, never blocking a call.

Each status URL of a recording gets a channel: a queue and one worker thread that sends its payloads
one after another (so ``recording`` always arrives before ``finished``), on real time, beside the call.
A failed attempt (connection error, timeout, non-2xx) is retried after 0.5, 1, 2, 4 ... s, up to
:data:`MAX_ATTEMPTS`. Every attempt is an event: ``callback`` with url, attempt, status (HTTP code or
the error) and ``delivered``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

import httpx

from swml_engine.events import EventLog
from swml_engine.media.sources.url import split_auth

MAX_ATTEMPTS = 6
TIMEOUT = 5.0
FIRST_BACKOFF = 0.5

_STOP = object()


class CallbackChannel:
    def __init__(self, url: str, events: EventLog, *, attempts: int = MAX_ATTEMPTS, timeout: float = TIMEOUT) -> None:
        self.url, self._auth = split_auth(url)
        self.events = events
        self.attempts = attempts
        self.timeout = timeout
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="swml-callbacks", daemon=True)
        self._thread.start()

    def send(self, payload: dict[str, Any]) -> None:
        self._queue.put(payload)

    def close(self) -> None:
        """No more payloads; the worker ends once the queue is sent."""
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, auth=self._auth) as client:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                assert isinstance(item, dict)
                self._deliver(client, item)

    def _deliver(self, client: httpx.Client, payload: dict[str, Any]) -> None:
        state = payload.get("params", {}).get("state")
        delay = FIRST_BACKOFF
        for attempt in range(1, self.attempts + 1):
            try:
                resp = client.post(self.url, json=payload)
                status: int | str = resp.status_code
                ok = 200 <= resp.status_code < 300
            except httpx.HTTPError as e:
                status, ok = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, False
            self._note(state=state, attempt=attempt, status=status, delivered=ok)
            if ok:
                return
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2

    def _note(self, **fields: Any) -> None:
        # The call may be over and its event file closed while a retry is still going: never let that
        # kill the delivery thread.
        with contextlib.suppress(Exception):
            self.events.emit("callback", url=self.url, **fields)


class CallbackHub:
    """All callback channels of one call (or one service); ``drain`` waits for them, bounded."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.channels: list[CallbackChannel] = []

    def channel(self, url: str) -> CallbackChannel:
        ch = CallbackChannel(url, self.events)
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
