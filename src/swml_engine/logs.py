"""Log lines about one call carry that call's ids.

Every module logs through ``logging.getLogger(__name__)`` (the logger's name is the module's, so an
operator filters by package: ``swml_engine.service``, ``swml_engine.transports.sip``). A line about
one call goes through :class:`CallLog`, which puts the call's ids on the record as attributes
(``call_id``, the engine's id: the events file, the HTTP API; ``sip_call_id`` when the call came over
SIP) and leaves the message text as it is. :class:`CallIdFilter` gives every other record ``"-"`` for
both, so a handler's format may show ``%(call_id)s`` on every line. :class:`JsonFormatter` writes each
record as one JSON object a line (``swml serve --log-format json``) for a log collector; :class:`TextFormatter`
the text lines.

A line may quote what a caller sent (a Call-ID, a From URI): either format writes a character that is not
printable escaped, so that no caller can start a line of its own or send escapes to the terminal that shows
the log (the SIP parser takes such characters in a Call-ID or a URI, as it reads liberally).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

#: The record attributes a CallLog sets.
CALL_FIELDS = ("call_id", "sip_call_id")


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """``logger`` for the lines about one call. ``call_id`` None: the call has no engine id yet (a SIP
    call refused before its script starts); its record shows ``"-"`` as the filter's do."""

    def __init__(self, logger: logging.Logger, call_id: str | None, sip_call_id: str | None = None) -> None:
        super().__init__(logger, {"call_id": call_id or "-", "sip_call_id": sip_call_id or "-"})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        # The default replaces a caller's ``extra``; here the call's ids are added to it.
        given: Mapping[str, Any] = kwargs.get("extra") or {}
        kwargs["extra"] = {**(self.extra or {}), **given}
        return msg, kwargs


class CallIdFilter(logging.Filter):
    """Put on a handler: records about no call get ``call_id`` and ``sip_call_id`` ``"-"``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CALL_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, "-")
        return True


#: The attributes every LogRecord has: anything else on a record came with ``extra=`` (or a CallLog).
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", *CALL_FIELDS}
#: Bounds on what one line carries from ``extra``: fields, and characters of each value.
MAX_EXTRA_FIELDS, MAX_VALUE_CHARS = 20, 1000
#: Characters of a line's message (as written: escaped). A caller's Call-ID may be 60,000 characters long,
#: and a log pipeline cuts a longer line into several (journald at 48 KiB): the rest of it would read as a
#: line of its own, beginning with the caller's text.
MAX_MESSAGE_CHARS = 4000


class FirstOfEach:
    """Which lines of one kind to write when anyone can cause them at will (a datagram each): the first
    from each source — at most ``sources`` of them remembered — and then one in ``every``, so that one
    address, or many forged ones, cannot write the log at the rate it sends. :attr:`count` counts them all."""

    def __init__(self, sources: int = 1000, every: int = 100) -> None:
        self.sources, self.every = sources, every
        self.count = 0
        self._seen: set[str] = set()

    def should_log(self, source: str) -> bool:
        self.count += 1
        if source not in self._seen and len(self._seen) < self.sources:
            self._seen.add(source)
            return True
        return self.count % self.every == 0


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most] + "…"


def printable(text: str, escape: Callable[[str], str]) -> str:
    """``text`` with every character that is not printable — line breaks, terminal escapes (``ESC``, the
    C1 controls), bidirectional overrides — written as ``escape`` writes it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else escape(c) for c in text)


def _as_python(c: str) -> str:
    return repr(c)[1:-1]  # \x1b, \u202e, \n: as a Python string literal writes it


def _as_json(c: str) -> str:
    return json.dumps(c)[1:-1]  # \u001b: read back as the character itself


class TextFormatter(logging.Formatter):
    """A text line (``swml serve``'s default format): its message, and each line of a traceback, on one
    printable line each (see the module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        shown = _cut(printable(record.message, _as_python), MAX_MESSAGE_CHARS)
        if shown is not record.message:
            record = logging.makeLogRecord({**record.__dict__, "message": shown})
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join(printable(line, _as_python) for line in super().formatException(ei).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``worker`` (which
    of ``--workers``), ``pid``, ``call_id`` and ``sip_call_id`` (null for a line about no call),
    ``logger``, ``message`` (the text line's message, at most MAX_MESSAGE_CHARS), ``exception`` (a traceback,
    when there is one), and the fields a line was given with ``extra=``, bounded in number and length.
    A line never breaks: a value JSON cannot hold is written as its text."""

    #: The worker this process is (set once per process at start: the formatter is made before the fork);
    #: None in the process that supervises the workers of ``--workers N``.
    worker: int | None = None

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z"
        line: dict[str, object] = {
            "time": stamp,
            "level": record.levelname,
            "worker": self.worker,
            "pid": record.process,
            "call_id": _id(getattr(record, "call_id", None)),
            "sip_call_id": _bounded(_id(getattr(record, "sip_call_id", None))),
            "logger": record.name,
            "message": _cut(record.getMessage(), MAX_MESSAGE_CHARS),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        extra = [(k, v) for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")]
        for name, value in extra[:MAX_EXTRA_FIELDS]:
            if name not in line:
                line[name] = _bounded(value)
        # (JSON escapes the C0 controls itself; the others — C1, U+2028, bidirectional overrides — so too)
        return printable(json.dumps(line, ensure_ascii=False, default=str), _as_json)


def _id(value: object) -> str | None:
    return None if value in (None, "-") else str(value)


def _bounded(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return _cut(value if isinstance(value, str) else str(value), MAX_VALUE_CHARS)
