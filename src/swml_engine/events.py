"""The call's event log: ``events.jsonl`` lines ``{"t": seconds from call start, "type": ..., ...}``.

The types are listed in :data:`swml_engine.vocabulary.EventType` (and docs/methods.md).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from typing import IO, Any

from swml_engine.vocabulary import EventType

log = logging.getLogger(__name__)
Sink = Callable[[dict[str, Any]], None]


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON can hold it: NaN and infinities become null, as JSON.stringify does."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class EventLog:
    """Collects a call's events and hands each to its sinks (a JSONL file, a list, a logger)."""

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._now = now or (lambda: 0.0)
        self.sinks: list[Sink] = []
        self.events: list[dict[str, Any]] = []
        self.keep = True
        # Callback deliveries report from their own threads.
        self._lock = threading.Lock()

    def bind_clock(self, now: Callable[[], float]) -> None:
        self._now = now

    def emit(self, type_: EventType, **fields: Any) -> dict[str, Any]:
        with self._lock:
            event: dict[str, Any] = {"t": round(self._now(), 3), "type": type_}
            event.update(jsonable(fields))
            if self.keep:
                self.events.append(event)
            for sink in self.sinks:
                sink(event)
            return event

    def of_type(self, type_: EventType) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


class JsonlSink:
    """Writes one JSON object a line, flushed at once so a crash loses no event.

    A write the disk refuses (full) costs the log lines, never the call: the emitting code (a call's
    answer, its media, its end) goes on. What did not reach the disk stays in the file's buffer and goes
    out with a later flush once there is room, whole lines in order; past the buffer's size, events are
    left out of the file. Logged at the first failure."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        #: Events whose write or flush failed (some of them may still reach the file).
        self.failed = 0

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self.stream.write(json.dumps(event, ensure_ascii=False) + "\n")
            self.stream.flush()
        except OSError as e:
            self.failed += 1
            if self.failed == 1:
                log.error(
                    "event log %s cannot be written (%s): the call goes on, its events may be missing from the "
                    "file: free space on that disk",
                    getattr(self.stream, "name", "?"),
                    e.strerror or e,
                )
