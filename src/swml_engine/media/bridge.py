"""A bridge: the caller and a far party hear each other (``connect``).

While bridged, each tick the caller's listen stream is what its script plays mixed with what the far
party said, and the far party's listen stream is what the caller said mixed with whatever plays on the
far call. Frames go through the calls' own tick (:meth:`Call.media_out` / :meth:`Call.media_in`): each
call hands its speak frame over in ``media_in``, after every call on the loop has sent its frame, and
the other call mixes it in at its next ``media_out``. So the audio crosses in exactly one frame (20 ms)
whatever order the two calls tick in, and every frame crosses once: a frame the far end lost is
silence of its length, as on any call. Legs at different rates (8 kHz PCMU/PCMA, 16 kHz G.722) are
resampled on the way (:mod:`~swml_engine.media.resampler`, adding its filter's fixed delay, under
1.5 ms).

Digits cross too: a digit a party sent as an event (RFC 4733, a simulated key press) is sent on to
the other party in order, one at a time (as an event to a party that takes them, else as tones by its
transport). While such a digit goes out, the party it goes to does not hear the other's voice: the key
replaces it, as on a phone, so a detector at the far end hears the tones alone.
A digit heard as tones in a party's audio is converted as needed: a party that takes events
(:attr:`~swml_engine.transports.base.Transport.takes_dtmf_events`) is sent it as an event (one that
listens for events only would miss it otherwise), and the event takes the place of the rest of the
key's tones as above, so that party gets the key once: what crossed before the detector knew the key
is less than the two whole frames (40 ms) a detector needs, the shortest key ITU-T Q.24 has a receiver
accept. To a party that takes no events an in-band digit is not sent at all: its tones, crossing in the
audio, are the digit, and a copy would be a second key press.
The caller's digits still reach its own listeners first (a recording's terminators).

Either call ending ends the bridge; what follows (the script goes on, the call ends) is the method's.
The recorders need nothing of this: they are taps of the caller's call and see what it hears.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from swml_engine.call import BridgedLeg, Call
from swml_engine.media.frame import Frame
from swml_engine.media.resampler import RateConverter
from swml_engine.transports.base import DtmfPath

#: A bridge's state: created, early (the far party's audio reaches the caller, not the other way:
#: early media before the answer), bridged (both ways), ended.
BridgeState = Literal["created", "early", "bridged", "ended"]
#: Why a bridge ended: the caller's call ended, the far party's did, or the method stopped it.
BridgeEnd = Literal["caller_ended", "far_ended", "stopped"]

#: Digits waiting to cross one way (a far end sending a flood of events cannot grow it).
MAX_PENDING_DIGITS = 32
#: How long a digit sent across lasts (the tone, or the RFC 4733 event).
DIGIT_SECONDS = 0.1


class _Side:
    """One call's end of the bridge: what it hands over and what it takes (:class:`~swml_engine.call.Link`)."""

    def __init__(self, bridge: Bridge, call: Call) -> None:
        self.bridge = bridge
        self.call = call
        self.other: _Side | None = None
        #: This call's speak frame of the last tick, at its own rate, for the other side to take.
        self._spoken: Frame | None = None
        #: This side's frames to the other call's rate (a new filter when a leg's codec changes it).
        self._convert_rate = RateConverter()
        self._digits: asyncio.Queue[str] = asyncio.Queue(MAX_PENDING_DIGITS)
        self._sender: asyncio.Task[None] | None = None
        #: A digit of the other party's is being sent to this call: its key (tones or event) takes the
        #: place of the other party's audio meanwhile, as on a phone, so a DTMF detector hears it clean.
        self._keyed = False

    def sends(self) -> bool:
        """Whether this side's audio and digits reach the other (the far side always, once started;
        the caller's only when bridged both ways)."""
        state = self.bridge.state
        return state == "bridged" or (state == "early" and self.call is self.bridge.far)

    # --- Link: audio ------------------------------------------------------------------------------------

    def seed(self) -> None:
        """This side starts sending: its call's latest frame goes first."""
        self._spoken = self.call.last_speak

    def spoke(self, frame: Frame) -> None:
        self._spoken = frame if self.sends() else None

    def heard(self) -> Frame | None:
        other = self.other
        if other is None or other._spoken is None:
            return None
        frame, other._spoken = other._spoken, None  # taken once: no frame crosses twice
        if self._keyed:
            return None
        return other._convert_rate(frame, other.call.rate, self.call.rate)

    # --- Link: digits -----------------------------------------------------------------------------------

    def pressed(self, digit: str, path: DtmfPath) -> None:
        other = self.other
        if not self.sends() or other is None:
            return
        if path == "inband" and not other.call.transport.takes_dtmf_events:
            return  # its tones, crossing in the audio, are the digit: no second copy
        try:
            self._digits.put_nowait(digit)
        except asyncio.QueueFull:
            self.call.events.emit("warning", where="bridge", message=f"digit {digit} not sent across: too many pending")
            return
        if path == "inband":
            # Keyed from now on, not once the sender task first runs: a loop running late can tick again
            # before it does, and the key's tones would cross meanwhile as a second copy of the digit.
            other._keyed = True
        if self._sender is None:
            self._sender = self.call.loop.create_task(self._send_digits(other.call))

    async def _send_digits(self, to: Call) -> None:
        """In order, one at a time: two RFC 4733 events (or tones) must not overlap. While a digit goes
        out, the other call hears only it: tones played over the bridged voice are missed by detectors,
        and the rest of an in-band key's own tones would be a second copy of an event."""
        receiving = self.other
        assert receiving is not None
        while True:
            digit = await self._digits.get()
            if to.is_ended:
                receiving._keyed = False
                continue
            receiving._keyed = True
            try:
                await to.send_dtmf(digit, DIGIT_SECONDS)
            except Exception as e:  # the other leg's transport failed: the bridge goes on without it
                to.events.emit("error", where="bridge", message=f"digit {digit}: {type(e).__name__}: {e}")
            finally:
                receiving._keyed = False

    def ended(self) -> None:
        self.bridge._end("caller_ended" if self.call is self.bridge.caller else "far_ended")

    def part(self) -> None:
        """The bridge ended: nothing more crosses (digits still waiting are dropped)."""
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        self._spoken = None


class Bridge:
    """The caller and a far party joined (see the module docstring).

    ``start(both_ways=False)`` lets the far party's audio (early media, ringback) reach the caller
    only; ``start()`` joins both ways (it may follow the first). ``stop()`` parts them. Either call
    ending ends the bridge; :meth:`wait` says which (a :data:`BridgeEnd`). The caller's
    :attr:`Call.bridges` gets one :class:`~swml_engine.call.BridgedLeg` from the first start to the
    end (its recordings' metadata).
    """

    def __init__(self, caller: Call, far: Call, to: str) -> None:
        self.caller = caller
        self.far = far
        self.to = to
        self.state: BridgeState = "created"
        self.leg: BridgedLeg | None = None
        self._sides = (_Side(self, caller), _Side(self, far))
        self._sides[0].other, self._sides[1].other = self._sides[1], self._sides[0]
        self._done: asyncio.Future[BridgeEnd] = caller.loop.create_future()

    def start(self, both_ways: bool = True) -> None:
        """Join the calls (``both_ways=False``: the far party's audio reaches the caller, nothing goes back)."""
        if self.state == "ended":
            return
        if self.caller.is_ended or self.far.is_ended:
            self._end("caller_ended" if self.caller.is_ended else "far_ended")
            return
        sending = [side.sends() for side in self._sides]
        if self.state == "created":
            for call in (self.caller, self.far):
                if call.link is not None:
                    raise RuntimeError(f"call {call.call_id} is already bridged")
            self.caller.link, self.far.link = self._sides
            self.leg = BridgedLeg(to=self.to, call_id=self.far.call_id, start=round(self.caller.now(), 3))
            self.caller.bridges.append(self.leg)
            self.caller.bridges_changed()
        if both_ways or self.state == "created":
            self.state = "bridged" if both_ways else "early"
        for side, sent in zip(self._sides, sending, strict=True):
            if side.sends() and not sent:
                # Its call's latest frame was spoken before this side sent: it crosses on the next
                # tick like the ones after it (a far party's first words come at its answer, and
                # the dial plan bridges a moment later).
                side.seed()

    def stop(self) -> None:
        """Part the calls now (neither is hung up)."""
        self._end("stopped")

    async def close(self) -> None:
        """Done with it: part the calls if still joined (as :meth:`stop`)."""
        self._end("stopped")

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    async def wait(self) -> BridgeEnd:
        """Until the bridge ends: which side ended it, or ``stopped``."""
        return await asyncio.shield(self._done)

    def _end(self, how: BridgeEnd) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        for call, side in zip((self.caller, self.far), self._sides, strict=True):
            if call.link is side:
                call.link = None
            side.part()
        if self.leg is not None:
            self.leg.end = round(self.caller.now(), 3)
            self.caller.bridges_changed()
        if not self._done.done():
            self._done.set_result(how)
