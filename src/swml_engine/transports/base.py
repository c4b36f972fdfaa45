"""The transport interface: what a call needs from whatever carries it (simulated, SIP/RTP, ...).

A transport only moves frames and events; it knows nothing of SWML. Once a tick the call asks it for
the party's next *speak* frame and gives it the next *listen* frame. The transport reports DTMF and a
remote hangup to the call (``call.on_dtmf``, ``call.on_remote_hangup``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from swml_engine.media.frame import Frame
from swml_engine.vocabulary import EndReason

if TYPE_CHECKING:
    from swml_engine.call import Call


class Transport(ABC):
    #: Sample rate of the call's frames (8000 for G.711, 16000 for G.722 and ``--rate 16000``).
    rate: int = 8000
    #: ``call.type`` in the call scope: sip, phone or webrtc.
    kind: str = "phone"
    call: Call | None = None

    def attach(self, call: Call) -> None:
        self.call = call

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
