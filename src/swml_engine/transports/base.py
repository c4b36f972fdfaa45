"""Where a call and its transport meet: :class:`Transport`, what a call needs from whatever carries it
(simulated, SIP/RTP, ...), and :class:`CallSide`, what a transport may use of its call.

A transport only moves frames and events; it knows nothing of SWML. Once a tick the call asks it for
the party's next *speak* frame and gives it the next *listen* frame. The transport reports DTMF and a
remote hangup to the call (``call.on_dtmf``, ``call.on_remote_hangup``).

This module imports neither side: ``swml_engine.call.Call`` is a CallSide (mypy checks it where a call
attaches itself), and transports import only this module, never the call.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from swml_engine.events import EventLog
from swml_engine.media.frame import Frame
from swml_engine.vocabulary import EndReason, ReferState, RemoteEnd

#: How a digit came from the party: ``event`` (RFC 4733, simulated key presses) or ``inband`` (tones
#: heard in its audio). A bridge sends an in-band digit on only to a party that takes events
#: (:attr:`Transport.takes_dtmf_events`): to any other its tones, crossing in the audio, are the digit.
DtmfPath = Literal["event", "inband"]


class CallSide(Protocol):
    """The call as its transport sees it."""

    call_id: str
    #: The call's event loop: a transport's callbacks from other contexts come back through it.
    loop: asyncio.AbstractEventLoop
    #: Sample rate of the frames the call moves (a transport may ask to change it: change_rate).
    rate: int
    events: EventLog
    #: Codecs the script allows (``answer.codecs``); empty = any the transport supports.
    codecs: list[str]
    #: ``answer.username``/``password``: the party must authenticate before the answer.
    credentials: tuple[str, str] | None
    #: Why the call ended (None while it runs): a transport that tells its party so reads it here.
    end_reason: EndReason | None

    def now(self) -> float:
        """Seconds since the call started."""
        ...

    def on_dtmf(self, digit: str, path: DtmfPath = "event") -> None:
        """A digit from the party (``inband``: its tones were heard in the party's audio)."""
        ...

    def on_remote_hangup(self, reason: RemoteEnd = "hangup") -> None:
        """The party ended the call."""
        ...

    def on_answered(self) -> None:
        """The far party answered a call the engine placed (``dialing.FarTransport`` reports it)."""
        ...

    def change_rate(self, rate: int) -> bool:
        """Run at ``rate`` from now on; False when audio at the old rate is already in flight."""
        ...

    async def play_frames(
        self, frames: Iterator[Frame], volume_db: float = 0.0, stop: asyncio.Event | None = None
    ) -> str:
        """Play to the party (in-band DTMF tones, say) until the frames run out."""
        ...

    async def hangup(self, reason: EndReason = "hangup") -> None:
        """End the call from our side (the service at shutdown)."""
        ...


@dataclass(frozen=True)
class ReferStatus:
    """Where a transfer by REFER is (:meth:`Transport.refer`). ``refer_code``: the party's answer to the
    REFER (202 ...); ``notify_code``: the answer the party got from the target, as its NOTIFYs told (100,
    180, 200, 486 ...); each None until one came. ``reason``: why it failed, for a person to read."""

    state: ReferState
    refer_code: int | None = None
    notify_code: int | None = None
    reason: str = ""


class CannotRefer(Exception):
    """This transport cannot transfer its party (a SIP caller is sent a REFER; others cannot be)."""


class Transport(ABC):
    #: Sample rate of the call's frames (8000 for G.711, 16000 for G.722 and ``--rate 16000``).
    rate: int = 8000
    #: ``call.type`` in the call scope: sip, phone or webrtc.
    kind: str = "phone"
    #: Whether the party takes digits as events (a SIP leg that negotiated RFC 4733 telephone-event; it
    #: may change at a re-INVITE). A bridge sends such a party the other party's in-band digits as
    #: events too; a party that takes none gets them only as the tones crossing in the audio.
    takes_dtmf_events: bool = False
    call: CallSide | None = None

    def attach(self, call: CallSide) -> None:
        self.call = call

    def hops_left(self) -> int | None:
        """The Max-Forwards of the request that brought the party (a SIP caller's INVITE), None when
        there was none. A call the engine places from this one may go one hop less: a loop through
        the engine (a far end redirecting to it, scripts dialling each other) ends."""
        return None

    def on_call_start(self) -> None:
        """The call's media has started (schedule simulated input, start RTP, ...)."""

    @abstractmethod
    def read_speak(self) -> Frame | None:
        """The party's next 20 ms (None: silence). Never blocks; called once a tick."""

    @abstractmethod
    def write_listen(self, frame: Frame) -> None:
        """What the party hears for this tick. Never blocks."""

    def skip(self, frames: int) -> None:
        """The call skipped ``frames`` ticks (an overloaded loop); drop what was due in them."""

    @abstractmethod
    async def answer(self) -> None:
        """Answer the call (SIP: 200 OK)."""

    async def early_media(self) -> None:
        """Start media before answering (SIP: 183 with SDP). Default: nothing to do."""

    @abstractmethod
    async def hangup(self, reason: EndReason) -> None:
        """End the call from our side (SIP: BYE, or a final error response before answer)."""

    @abstractmethod
    async def send_dtmf(self, digit: str, duration: float) -> None:
        """Send one digit to the party (RFC 4733 events on a SIP call)."""

    async def close(self) -> None:
        """Release resources once the call has ended."""

    async def refer(
        self, to_uri: str, credentials: tuple[str, str] | None, progress: Callable[[ReferStatus], None]
    ) -> ReferStatus:
        """Ask the party to call ``to_uri`` in our place (SIP REFER: a blind transfer), answering a challenge
        with ``credentials``; ``progress`` hears each step (``pending`` as the party calls the target);
        returns the outcome, ``success`` or ``failed``. The call is not ended here: the caller of this
        decides. Cancelling the wait stops listening for the outcome. Default: :class:`CannotRefer`."""
        name = type(self).__name__
        raise CannotRefer(f"this call ({name}) cannot be transferred: its transport cannot send a REFER")
