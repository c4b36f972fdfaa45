"""How many SIP messages went each way: requests by method, responses by status code.

The core counts every message it reads or writes (:class:`MessageCounts`, one per
:class:`~swml_engine.transports.sip.useragent.UserAgent`); what reads the figures (the service's
``/metrics``) does so when it likes. Counting is a dictionary add per message, nothing per packet of
media. Retransmissions count: these are messages on the wire, not transactions.

The labels a peer can choose are bounded: a method outside :class:`~.message.Method` counts as
``other``, a status outside 100-699 as 0, so a flood of made-up methods cannot grow the tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from swml_engine.transports.sip.message import Method, Request, Response

#: The method label of a request whose method this engine does not know by name.
OTHER_METHOD = "other"
_KNOWN = frozenset(m.value for m in Method)


def method_label(method: str) -> str:
    """``method`` as a bounded label: a known method, else ``other``."""
    return method if method in _KNOWN else OTHER_METHOD


def status_label(status: int) -> int:
    """``status`` as a bounded label: 100-699, else 0."""
    return status if 100 <= status <= 699 else 0


@dataclass
class MessageCounts:
    """Messages read (``in``) and written (``out``), each side: requests by method, responses by status."""

    requests_in: Counter[str] = field(default_factory=Counter)
    responses_in: Counter[int] = field(default_factory=Counter)
    requests_out: Counter[str] = field(default_factory=Counter)
    responses_out: Counter[int] = field(default_factory=Counter)

    def received(self, message: Request | Response) -> None:
        if isinstance(message, Response):
            self.responses_in[status_label(message.status)] += 1
        else:
            self.requests_in[method_label(message.method)] += 1

    def sent(self, message: Request | Response) -> None:
        if isinstance(message, Response):
            self.responses_out[status_label(message.status)] += 1
        else:
            self.requests_out[method_label(message.method)] += 1
