"""Log lines about one call carry that call's ids.

Every module logs through ``logging.getLogger(__name__)`` (the logger's name is the module's, so an
operator filters by package: ``swml_engine.service``, ``swml_engine.transports.sip``). A line about
one call goes through :class:`CallLog`, which puts the call's ids on the record as attributes
(``call_id``, the engine's id: the events file, the HTTP API; ``sip_call_id`` when the call came over
SIP) and leaves the message text as it is. :class:`CallIdFilter` gives every other record ``"-"`` for
both, so a handler's format may show ``%(call_id)s`` on every line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
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
