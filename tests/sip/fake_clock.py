"""The SIP core's unit tests move time themselves: :class:`Driver` holds a user agent on a fake clock
(seconds from 0), feeds it, fires its timers each at its own time, and keeps what it sent and told."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from swml_engine.transports.sip.message import Request, Response, parse_message
from swml_engine.transports.sip.useragent import Datagram, Peer, SipEvent, UserAgent


@dataclass
class Driver:
    """A user agent on a fake clock, and what it sent (parsed, with its datagram) and told, in order."""

    ua: UserAgent = field(default_factory=lambda: UserAgent(rng=random.Random(7)))
    now: float = 0.0
    sent: list[tuple[Request | Response, Datagram]] = field(default_factory=list)
    events: list[SipEvent] = field(default_factory=list)

    def receive(self, data: bytes, peer: Peer) -> None:
        """``data`` arrives from ``peer`` now."""
        self.ua.receive(data, peer, self.now)
        self.collect()

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer due on the way, each at its own time (what one timer sends
        is collected before the next fires)."""
        end = self.now + seconds
        while (when := self.ua.get_timer()) is not None and when <= end:
            self.now = max(self.now, when)
            self.ua.handle_timer(self.now)
            self.collect()
        self.now = end

    def collect(self) -> None:
        """Take what the user agent has to send and to tell (after the test's own calls into it too)."""
        for datagram in self.ua.datagrams_to_send():
            self.on_sent(parse_message(datagram.data), datagram)
        while (event := self.ua.next_event()) is not None:
            self.events.append(event)

    def on_sent(self, message: Request | Response, datagram: Datagram) -> None:
        self.sent.append((message, datagram))
