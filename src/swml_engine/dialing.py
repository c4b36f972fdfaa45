"""Placing calls: what ``connect`` asks of whatever can reach a far party.

A far party is a :class:`~swml_engine.call.Call` of its own (its own clock position, events, taps),
whose transport is a :class:`FarTransport`. The dial plan (``methods/connect.py``) asks the caller's
:class:`Dialer` for one far transport per destination, starts it, and follows its :class:`DialState`
until one is answered (then it bridges the two calls) or every one failed.

Two dialers exist: the simulated far parties of ``swml run --peer`` (``transports/simulated.py``)
and the SIP dialer of ``swml serve`` (outbound SIP legs on the SIP core's ``uac.py``). Each knows only
how to reach a destination; the dial plan (serial, parallel, timeouts, confirm, cancelling the losers)
is the method's and is the same for both.

This module imports nothing of the call: transports and methods both use it.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from dataclasses import dataclass
from typing import Protocol

from swml_engine.transports.base import Transport
from swml_engine.vocabulary import DialState, FailReason


@dataclass(frozen=True, kw_only=True)
class DialTarget:
    """One destination as the dial plan resolved it (per-destination values over the top-level ones)."""

    #: A ``sip:``/``sips:`` URI or an E.164 number (``+15551234567``).
    to: str
    #: The caller ID we present (a number or a SIP URI's user part).
    from_: str
    from_name: str | None = None
    #: Digest credentials for a far end that challenges (401/407); SIP URIs only.
    username: str | None = None
    password: str | None = None
    #: Extra SIP headers for the INVITE (``connect.headers``), in order.
    headers: tuple[tuple[str, str], ...] = ()
    #: Codecs to offer, in order of preference (``connect.codecs``); empty = all we speak.
    codecs: tuple[str, ...] = ()
    #: ``connect.session_timeout``: ask for RFC 4028 session timers of this many seconds.
    session_timeout: int | None = None
    #: The engine id of the call that places this one (logs, metadata).
    caller_call_id: str = ""
    #: Hops the INVITE may take (its Max-Forwards, at most 70): the caller's less one, so a loop through
    #: the engine ends; None when the caller's call came with no hop count (a fresh 70).
    max_forwards: int | None = None


@dataclass(frozen=True)
class DialFailure:
    """Why a far leg was not answered. ``code``/``text``: the SIP status and reason when there was one."""

    reason: FailReason
    code: int | None = None
    text: str = ""


class CannotDial(Exception):
    """A dialer cannot even try this destination (no route, a scheme it does not serve)."""

    def __init__(self, failure: DialFailure) -> None:
        super().__init__(failure.text or failure.reason)
        self.failure = failure


class FarTransport(Transport):
    """The transport of a call the engine places.

    Besides moving frames like any transport, it dials: :meth:`dial` starts placing the call, the
    transport reports each step with :meth:`report` (``ringing``, ``early_media`` when the far end's
    audio flows before the answer, ``answered``, ``failed`` with a :class:`DialFailure`, ``ended``
    when an answered far party hung up — it also tells its call, ``on_remote_hangup``), and
    :meth:`cancel` gives up a leg that is no longer wanted. The dial plan reads every reported step,
    in order, with :meth:`next_state` (none is lost between two reads).
    """

    kind = "sip"

    def __init__(self, target: DialTarget) -> None:
        self.target = target
        self.state: DialState = "created"
        self.failure: DialFailure | None = None
        self._steps: asyncio.Queue[DialState] = asyncio.Queue()

    # --- what the transport does -------------------------------------------------------------------

    @abstractmethod
    def dial(self) -> None:
        """Start placing the call (returns at once; progress comes through :meth:`report`)."""

    @abstractmethod
    def cancel(self, *, elsewhere: bool = False) -> None:
        """The leg is no longer wanted: before the answer stop ringing it (SIP CANCEL), after it hang
        up (SIP BYE). Reports ``failed`` (reason ``cancelled``) or ``ended`` when done. ``elsewhere``:
        another leg took the call — the far party's phone is told so (it logs no missed call then)."""

    async def answer(self) -> None:
        """A far leg is answered by the far party, never by us."""

    # --- progress ----------------------------------------------------------------------------------

    def report(self, state: DialState, failure: DialFailure | None = None) -> None:
        """Move to ``state`` (called by the transport itself); :meth:`next_state` will give it. On
        ``answered`` the transport's call is answered too (``Call.on_answered``), before the dial plan reads it."""
        self.state = state
        if failure is not None:
            self.failure = failure
        if state == "answered" and self.call is not None:
            self.call.on_answered()
        self._steps.put_nowait(state)

    async def next_state(self) -> DialState:
        """The next state reported (at once when one is waiting to be read)."""
        return await self._steps.get()

    @property
    def heard_from(self) -> bool:
        """The far end answered anything yet (a provisional, even 100 Trying; a challenge, a redirect):
        it is there. A leg given up at its timeout without a word from it was not reached
        (``unreachable``), rather than not answered. True where the transport cannot tell."""
        return True

    @property
    def settled(self) -> bool:
        """Answered or done: nothing more happens to it before the bridge."""
        return self.state in ("answered", "failed", "ended")


class Dialer(Protocol):
    """Whoever places the calls of one caller's call (``CallOptions.dialer``)."""

    def place(self, target: DialTarget, rate: int) -> FarTransport:
        """A far transport for ``target`` (not dialled yet); ``rate`` is the caller's, a hint for the
        far leg's codec choice. Raises :class:`CannotDial` for a destination it cannot try."""
        ...
