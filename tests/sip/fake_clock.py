"""The SIP core's unit tests move time themselves: this fires a user agent's timers up to a time."""

from __future__ import annotations

from collections.abc import Iterator

from swml_engine.transports.sip.useragent import UserAgent


def fire_timers(ua: UserAgent, now: float, end: float) -> Iterator[float]:
    """Fire each timer of ``ua`` due after ``now`` up to ``end``, each at its own time, and yield that time
    (the caller reads what the timer sent before the next one fires)."""
    while (when := ua.get_timer()) is not None and when <= end:
        now = max(now, when)
        ua.handle_timer(now)
        yield now
