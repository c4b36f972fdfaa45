"""Session timers (RFC 4028): the arithmetic and the header text, without I/O and without policy.

A session timer makes one end re-INVITE (or UPDATE) every half interval so that both ends — and the
proxies on the way — learn when the other has gone without a BYE. This module reads ``Session-Expires``
(with ``refresher=uac|uas``) and ``Min-SE``, decides as a UAS what to accept or to refuse with 422
(:func:`answer_request`, RFC 4028 §9), builds a UAC's offer and reads the answer or a 422
(:class:`TimerOffer`, §7), and says when a refresh is due and when the session has expired without one
(:class:`SessionTimer`, §10). Intervals and times (``since``, the results) are in seconds, as the headers
write them and as the core's clock (the transactions') gives them.

:class:`SessionClock` keeps those times for a running session (the calls we answer, useragent.py, and
those we place, uac.py). Whether to use timers at all, the refresh request and the BYE
themselves stay outside this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from swml_engine.transports.sip.dialog import Role
from swml_engine.transports.sip.message import BadHeader, Message, Response
from swml_engine.transports.sip.uri import UriError, parse_params

#: The smallest interval RFC 4028 §5 allows anyone to ask for, and ours (seconds).
MIN_SE = 90
#: The interval RFC 4028 §4 recommends (seconds).
DEFAULT_INTERVAL = 1800
#: Largest interval read or written (delta-seconds: RFC 3261 §25.1 bounds them to 32 bits).
MAX_INTERVAL = 2**32 - 1
#: The option tag of the extension (Supported, Require).
TIMER = "timer"
#: RFC 4028 §10: the BYE goes this long before the session would expire at most (seconds), or a
#: third of the interval when that is shorter.
BYE_MARGIN = 32
#: A failed refresh of ours is tried again halfway to the expiry while more than this is left (seconds).
REFRESH_RETRY_MIN = 10.0


class SessionTimerError(ValueError):
    """A timer that cannot be offered or an answer that cannot be used; the message says why."""


def _delta(header: str, text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > MAX_INTERVAL:
        raise BadHeader(header, f"{text[:20]!r} is not a number of seconds (0 to {MAX_INTERVAL})")
    return int(text)


def _one(message: Message, name: str) -> str | None:
    values = message.headers.get_all(name)
    if len(values) > 1:
        raise BadHeader(name, f"given {len(values)} times")
    return values[0] if values else None


@dataclass(frozen=True)
class SessionExpires:
    """A ``Session-Expires`` value: the interval (s) and who refreshes, when said."""

    interval: int
    refresher: Role | None = None

    def __str__(self) -> str:
        return f"{self.interval};refresher={self.refresher}" if self.refresher else str(self.interval)


def read_session_expires(message: Message) -> SessionExpires | None:
    """The message's Session-Expires (also written ``x``), None when absent. Raises BadHeader."""
    value = _one(message, "Session-Expires")
    if value is None:
        return None
    number, _, rest = value.partition(";")
    interval = _delta("Session-Expires", number)
    try:
        params = parse_params(rest)
    except UriError as e:
        raise BadHeader("Session-Expires", str(e)) from None
    refresher: Role | None = None
    for name, given in params:
        if name.lower() == "refresher":
            if given is None or given.lower() not in ("uac", "uas"):
                raise BadHeader("Session-Expires", f"refresher={given} (uac or uas)")
            refresher = Role(given.lower())
    return SessionExpires(interval, refresher)


def read_min_se(message: Message) -> int | None:
    """The message's Min-SE (seconds), None when absent. Raises BadHeader."""
    value = _one(message, "Min-SE")
    return None if value is None else _delta("Min-SE", value.partition(";")[0])


def supports_timer(message: Message) -> bool:
    """Whether the sender understands session timers (``timer`` in Supported or Require)."""
    return TIMER in message.option_tags("supported") or TIMER in message.option_tags("require")


@dataclass(frozen=True)
class SessionTimer:
    """An agreed session timer. ``local``: our end of the transaction that agreed it (a refresh the
    peer sends makes it the UAC of that one), so ``refresher == local`` means we refresh."""

    interval: int
    refresher: Role
    local: Role
    #: The largest Min-SE seen in the session: our refreshes must not ask for less (§7.4).
    min_se: int = MIN_SE

    @property
    def we_refresh(self) -> bool:
        return self.refresher is self.local

    def refresh_at(self, since: float) -> float | None:
        """When we send the refresh, counting from ``since`` (when the 2xx that agreed the interval
        went or came): half the interval (§10). None when the peer refreshes."""
        return since + self.interval / 2 if self.we_refresh else None

    def expires_at(self, since: float) -> float:
        """When the session is over without a refresh: the interval less 32 s or a third of it,
        whichever is less (§10), so our BYE goes before the peer's own timer fires."""
        return since + self.interval - min(BYE_MARGIN, self.interval / 3)

    def refresh_offer(self) -> TimerOffer:
        """What our refresh request carries (§7.4): the same interval, ourselves as refresher."""
        return TimerOffer(interval=self.interval, min_se=self.min_se, refresher=Role.UAC)


@dataclass(frozen=True)
class TimerOffer:
    """A UAC's request for a session timer (§7.1). ``refresher`` None leaves the choice to the UAS, as
    the RFC recommends for an initial INVITE."""

    interval: int = DEFAULT_INTERVAL
    min_se: int = MIN_SE
    refresher: Role | None = None

    def __post_init__(self) -> None:
        if not MIN_SE <= self.min_se <= self.interval <= MAX_INTERVAL:
            raise SessionTimerError(
                f"a session interval of {self.interval} s with Min-SE {self.min_se} s: give"
                f" {MIN_SE} <= Min-SE <= interval <= {MAX_INTERVAL} (RFC 4028 §4, §5)"
            )

    def headers(self) -> list[tuple[str, str]]:
        """The headers of our INVITE (or refresh)."""
        return [
            ("Supported", TIMER),
            ("Session-Expires", str(SessionExpires(self.interval, self.refresher))),
            ("Min-SE", str(self.min_se)),
        ]

    def after_422(self, response: Response) -> TimerOffer:
        """The offer to retry with after a 422 (§7.3): at least the 422's Min-SE, and that Min-SE
        carried from now on. Raises SessionTimerError when the 422 gives no larger minimum (a retry
        would be refused again) or is not a 422."""
        if response.status != 422:
            raise SessionTimerError(f"a {response.status} is not a 422 (Session Interval Too Small)")
        try:
            theirs = read_min_se(response)
        except BadHeader as e:
            raise SessionTimerError(f"the 422's {e}") from None
        if theirs is None or theirs <= self.interval:
            given = "no Min-SE" if theirs is None else f"Min-SE {theirs}"
            raise SessionTimerError(f"a 422 with {given} to our interval {self.interval}: a retry would loop")
        return TimerOffer(interval=theirs, min_se=max(self.min_se, theirs), refresher=self.refresher)

    def agreed(self, response: Response) -> SessionTimer | None:
        """The timer a 2xx to our offer sets (§7.2); None when it has no Session-Expires (the far end,
        or the proxies, do without: no refreshes, no expiry). A Session-Expires without ``refresher``
        (a proxy put it in for a UAS that does not do timers) makes us the refresher."""
        if not 200 <= response.status < 300:
            raise SessionTimerError(f"a {response.status} agrees no timer (a 2xx does)")
        try:
            answered = read_session_expires(response)
        except BadHeader as e:
            raise SessionTimerError(f"the answer's {e}") from None
        if answered is None:
            return None
        # a peer below RFC 4028's floor would have us refresh every few seconds: keep to the floor
        interval = max(answered.interval, MIN_SE)
        return SessionTimer(interval, answered.refresher or Role.UAC, Role.UAC, self.min_se)


@dataclass(frozen=True)
class TooSmall:
    """Answer 422 with our minimum: the request asked for a shorter interval than we take."""

    min_se: int
    status: ClassVar[int] = 422

    def headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


@dataclass(frozen=True)
class Agreed:
    """The request's interval taken (``timer``), or no timer (None). ``require``: the UAC does timers,
    so our 2xx says ``Require: timer`` (it must when the UAC refreshes, §9)."""

    timer: SessionTimer | None
    require: bool = False

    def headers(self) -> list[tuple[str, str]]:
        """The headers of our 2xx."""
        if self.timer is None:
            return []
        out = [("Session-Expires", str(SessionExpires(self.timer.interval, self.timer.refresher)))]
        return [*out, ("Require", TIMER)] if self.require else out


def answer_request(message: Message, *, min_se: int = MIN_SE, prefer: Role = Role.UAC) -> Agreed | TooSmall:
    """As the UAS of an INVITE or refresh (RFC 4028 §9): the interval we take, or a 422.

    - No Session-Expires: no timer (the caller may still not want one: that is policy).
    - Shorter than ``min_se``: 422 when the UAC does timers; when it does not (a proxy asked for the
      timer), the interval is raised to our minimum and we refresh (RFC 4028 erratum 1687) — a 422 would
      only fail the call.
    - Otherwise the interval as asked (never raised, §9); the refresher the request names, else
      ``prefer`` (the UAC refreshing costs us nothing but answering its re-INVITEs); always us when the
      UAC does not do timers.

    Raises BadHeader for unreadable headers or an interval below the request's own Min-SE (answer 400).
    """
    if min_se < MIN_SE:
        raise SessionTimerError(f"a minimum of {min_se} s: RFC 4028 §5 allows {MIN_SE} s at the least")
    asked = read_session_expires(message)
    their_min = read_min_se(message)
    if asked is None:
        return Agreed(None)
    if their_min is not None and asked.interval < their_min:
        raise BadHeader("Session-Expires", f"{asked.interval} is below the request's own Min-SE {their_min}")
    supported = supports_timer(message)
    floor = max(min_se, their_min or 0)
    if asked.interval < min_se:
        if supported:
            return TooSmall(min_se)
        return Agreed(SessionTimer(floor, Role.UAS, Role.UAS, floor))
    refresher = (asked.refresher or prefer) if supported else Role.UAS
    return Agreed(SessionTimer(asked.interval, refresher, Role.UAS, floor), require=supported)


#: What a session's clock says is due: our refresh, or its end (no refresh came in time).
Due = Literal["refresh", "expire"]


class SessionClock:
    """A running session timer: when we refresh (if we do) and when the session is over without a
    refresh (§10), counted from the 2xx that agreed it. ``restart`` with each 2xx that agrees the timer
    anew (a refresh, either way); a refresh of ours that fails is tried again halfway to the expiry."""

    def __init__(self, timer: SessionTimer, now: float) -> None:
        self.timer = timer
        self.refresh_at: float | None = None
        self.expires_at = 0.0
        self.restart(timer, now)

    def restart(self, timer: SessionTimer, now: float) -> None:
        self.timer = timer
        self.refresh_at = timer.refresh_at(now)
        self.expires_at = timer.expires_at(now)

    def next_timer(self) -> float:
        return self.expires_at if self.refresh_at is None else min(self.refresh_at, self.expires_at)

    def due(self, now: float) -> Due | None:
        """What is due at ``now``: the end first; a refresh once (it is in flight until ``restart`` or
        ``refresh_failed``)."""
        if now >= self.expires_at:
            return "expire"
        if self.refresh_at is not None and now >= self.refresh_at:
            self.refresh_at = None
            return "refresh"
        return None

    def refresh_failed(self, now: float, *, retry_in: float | None = None) -> None:
        """Our refresh was refused: try again after ``retry_in`` seconds (a 491's wait), else halfway to
        the expiry — while enough time is left (the gap halves down to :data:`REFRESH_RETRY_MIN`)."""
        left = self.expires_at - now
        if retry_in is not None and retry_in < left:
            self.refresh_at = now + retry_in
        elif left > REFRESH_RETRY_MIN:
            self.refresh_at = now + left / 2
