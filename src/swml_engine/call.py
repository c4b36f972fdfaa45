"""A call: a media clock, the *speak* and *listen* streams, taps, players, DTMF and its state.

Every 20 ms the media ticker steps the call in two halves: :meth:`Call.media_out` takes the party's
speak frame from the transport and sends the player's listen frame to it; once every call on the loop
has sent, :meth:`Call.media_in` shows both frames to every tap (recorders, detectors). Recordings
belong to the call, not to the step that started them: the call finalises every one of them when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from swml_engine.dialing import Dialer, FarTransport
from swml_engine.events import EventLog
from swml_engine.fetch import CallFetches
from swml_engine.media.clock import MediaTicker, wall_time
from swml_engine.media.frame import Frame, mix, silence
from swml_engine.media.player import Player
from swml_engine.transports.base import DtmfPath, Transport
from swml_engine.vocabulary import CallState, EndReason, RemoteEnd

#: Who placed the call: ``inbound`` a party called us (answered by the script's ``answer``),
#: ``outbound`` the engine placed it for ``connect`` (answered by the far party: :meth:`Call.on_answered`).
CallDirection = Literal["inbound", "outbound"]

#: Bridges a call remembers for its recordings' metadata (the latest ones; a script dialling in a
#: loop cannot grow it without bound).
MAX_BRIDGES_KEPT = 200

if TYPE_CHECKING:
    from swml_engine.recording.store import RecordingStore

#: answer.mdx: max_duration defaults to 14400 s (4 hours).
DEFAULT_MAX_DURATION = 14400.0
#: How long a far leg's own call may last from its answer: a day, the most connect's ``max_duration``
#: may give its bridge — the dial plan bounds the bridge itself, and the far call must not cut it first
#: (with the default 4 hours, a bridge given 8 ended at 4, as the far party's hang-up).
FAR_LEG_LIMIT = 86400.0

DtmfListener = Callable[[str], None]

#: A transport's word for the party's end → the call's end reason.
_REMOTE_END: dict[RemoteEnd, EndReason] = {
    "hangup": "remote_hangup",
    "cancel": "remote_cancel",
    "rejected": "remote_rejected",
}


class Tap(Protocol):
    """Sees both streams of every frame while attached (recorders, detectors)."""

    def on_frame(self, speak: Frame, listen: Frame) -> None: ...


class Link(Protocol):
    """Another call joined to this one (``media/bridge.py``): each tick the call mixes what the other
    party said into its listen stream, and hands over what its own party said and pressed."""

    def heard(self) -> Frame | None:
        """The other party's audio for this tick, at this call's rate (None: nothing to add)."""
        ...

    def spoke(self, frame: Frame) -> None:
        """This call's speak frame of this tick (the other party hears it on the next tick)."""
        ...

    def pressed(self, digit: str, path: DtmfPath) -> None:
        """A digit this call's party pressed."""
        ...

    def ended(self) -> None:
        """This call ended (either side hanging up ends a bridge)."""
        ...


@dataclass
class BridgedLeg:
    """A far party this call was bridged to (recording metadata ``bridges``): its destination, its
    call id, and when its audio joined and left this call (seconds on this call's clock)."""

    to: str
    call_id: str
    start: float
    end: float | None = None


@dataclass
class CallOptions:
    #: Where recordings and their metadata go.
    data_dir: Path | None = None
    #: Allow ``file://`` play URLs (``swml run`` only: a remote script must not read server files).
    allow_file_urls: bool = False
    #: Maps a URL to a local file (the engine's own recording URLs) so it plays with no network trip.
    url_resolver: Callable[[str], Path | None] | None = None
    #: Seconds a fetched play URL or remote document may take in all (connect, redirects, every
    #: read: one deadline, real time) before it fails.
    fetch_timeout: float = 10.0
    #: Largest audio file a play URL may download.
    max_fetch_bytes: int = 64 * 1024 * 1024
    #: The call's network fetches: a few at once, stopped when the call ends (bound by who makes the call).
    fetches: CallFetches = field(default_factory=CallFetches)
    #: The recording store to use (the service's, with its public URLs and index); else one under data_dir.
    recording_store: RecordingStore | None = None
    #: Who places the calls of ``connect`` (simulated far parties, SIP); None: connect fails its legs.
    dialer: Dialer | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Call:
    """One party's call. An inbound call is answered by the script (:meth:`answer`); an outbound one,
    a far leg the engine placed for ``connect`` (its transport a ``dialing.FarTransport``), is answered
    by the far party: its transport reports ``answered`` and the call follows (:meth:`on_answered`)."""

    def __init__(
        self,
        transport: Transport,
        *,
        call_id: str | None = None,
        info: dict[str, Any] | None = None,
        events: EventLog | None = None,
        options: CallOptions | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.direction: CallDirection = "outbound" if isinstance(transport, FarTransport) else "inbound"
        self.rate = transport.rate
        self.call_id = call_id or str(uuid.uuid4())
        self.info: dict[str, Any] = info or {}
        self.options = options or CallOptions()
        self.events = events or EventLog()
        self.t0 = self.loop.time()
        self.events.bind_clock(self.now)
        self.state: CallState = "created"
        self.player = Player(self.rate)
        self.taps: list[Tap] = []
        self.dtmf_listeners: list[DtmfListener] = []
        self.ended = asyncio.Event()
        self.end_reason: EndReason | None = None
        self.answered_at: float | None = None
        self.frame_index = 0
        #: The call joined to this one (a bridge), while it is.
        self.link: Link | None = None
        #: The far parties this call was bridged to, oldest first (the latest MAX_BRIDGES_KEPT).
        self.bridges: deque[BridgedLeg] = deque(maxlen=MAX_BRIDGES_KEPT)
        #: Coroutines run once when the call ends (recordings register theirs here).
        self.finalizers: list[Callable[[], Awaitable[None]]] = []
        self._max_duration: asyncio.TimerHandle | None = None
        self._ticking = False
        self._frame: tuple[Frame, Frame] = (silence(self.rate), silence(self.rate))
        self.recordings: Any = None  # set by the recording layer (recording.manager.Recordings)
        #: Codecs the script allows (`answer.codecs`); empty = any the transport supports.
        self.codecs: list[str] = []
        #: `answer.username`/`password`: the caller must authenticate (SIP digest) before the answer.
        self.credentials: tuple[str, str] | None = None
        transport.attach(self)

    # --- time -------------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the call started (the ``t`` of every event)."""
        return self.loop.time() - self.t0

    def wall(self) -> float:
        """Unix time on the call's clock."""
        return wall_time(self.loop)

    def next_frame_at(self) -> float:
        """Seconds since the call started at which the next frame the taps see begins: a tap attached
        now (a recording) starts there, not now — the frame of this instant may have gone by already,
        or, when the loop runs late, not have been ticked yet (its start is then before now)."""
        if not self._ticking:
            return self.now()
        return MediaTicker.for_loop(self.loop).next_due() - self.t0

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._enter("ringing", call_id=self.call_id)
        MediaTicker.for_loop(self.loop).add(self)
        self._ticking = True
        # A call is never endless: the default max_duration runs from the start until an answer
        # sets its own (a script that never answers and sleeps forever still ends).
        self._limit(DEFAULT_MAX_DURATION)
        self.transport.on_call_start()

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @property
    def is_ended(self) -> bool:
        return self.ended.is_set()

    async def answer(self, max_duration: float | None = None) -> None:
        if self.answered or self.is_ended:
            return
        await self.transport.answer()
        if self.is_ended:  # the transport could not answer (SIP 488 on answer.codecs, say)
            return
        self.answered_at = self.now()
        self._enter("answered")
        self._limit(max_duration if max_duration is not None and max_duration > 0 else DEFAULT_MAX_DURATION)

    def on_answered(self) -> None:
        """The far party answered a call the engine placed (called through its transport's report of
        ``answered``). The call is answered from now on, as :meth:`answer` makes an inbound one, bounded
        by :data:`FAR_LEG_LIMIT` (the dial plan bounds the bridge itself, by its ``max_duration``)."""
        if self.answered or self.is_ended:
            return
        self.answered_at = self.now()
        self._enter("answered")
        self._limit(FAR_LEG_LIMIT)

    def change_rate(self, rate: int) -> bool:
        """Run at ``rate`` from now on (a transport whose codec is chosen at answer time). Refused (False)
        once audio at the old rate is in flight: a tap (recording, detector) or a sound playing."""
        if rate == self.rate:
            return True
        if self.taps or self.player.playbacks:
            return False
        self.rate = rate
        self.player.rate = rate
        self._frame = (silence(rate), silence(rate))
        return True

    def _limit(self, seconds: float) -> None:
        """(Re)arm the hangup after ``seconds`` from now."""
        if self._max_duration is not None:
            self._max_duration.cancel()
        self._max_duration = self.loop.call_later(seconds, self._on_max_duration)

    async def early_media(self) -> None:
        if self.answered or self.is_ended or self.state == "early_media":
            return
        await self.transport.early_media()
        if self.is_ended:
            return
        self._enter("early_media")

    def _on_max_duration(self) -> None:
        if not self.is_ended:
            self.events.emit("call.max_duration")
            self.loop.create_task(self.hangup("max_duration"))

    async def hangup(self, reason: EndReason = "hangup") -> None:
        """End the call from the script's side."""
        if self.is_ended:
            return
        self._mark_ended(reason)
        with contextlib.suppress(Exception):
            await self.transport.hangup(reason)

    def on_remote_hangup(self, reason: RemoteEnd = "hangup") -> None:
        """The party hung up (called by the transport)."""
        if not self.is_ended:
            self._mark_ended(_REMOTE_END[reason])

    def _enter(self, state: CallState, **fields: object) -> None:
        """Move to ``state`` and say so in a ``call.state`` event (``ended``'s comes from finish())."""
        self.state = state
        self.events.emit("call.state", state=state, **fields)

    def _mark_ended(self, reason: EndReason) -> None:
        self.end_reason = reason
        self.state = "ended"
        if self._max_duration is not None:
            self._max_duration.cancel()
        self.player.stop_all()
        self.ended.set()
        if self.link is not None:
            self.link.ended()

    async def finish(self) -> None:
        """After the script and the call are over: finalise recordings, stop media, close the transport."""
        for fin in self.finalizers:
            try:
                await fin()
            except Exception as e:  # a failing finaliser must not keep the others from running
                self.events.emit("error", where="call.finish", message=f"{type(e).__name__}: {e}")
        self.finalizers.clear()
        if self._ticking:
            MediaTicker.for_loop(self.loop).remove(self)
            self._ticking = False
        # The state changed at _mark_ended; the event waits for the recordings' own end events.
        self.events.emit("call.state", state="ended", reason=self.end_reason or "hangup")
        await self.transport.close()

    def on_media_error(self, error: BaseException) -> None:
        """The media tick raised: end the call cleanly rather than leave it silent."""
        self._ticking = False
        self.events.emit("error", where="media", message=f"{type(error).__name__}: {error}")
        if not self.is_ended:
            self._mark_ended("media_error")

    # --- media --------------------------------------------------------------------------------------

    def media_out(self) -> None:
        """First half of a tick: what the party hears goes out (sent early in the tick: steady pacing)."""
        speak = self.transport.read_speak()
        if speak is None:
            speak = silence(self.rate)
        listen = self.player.next_frame()
        if self.link is not None:
            joined = self.link.heard()
            if joined is not None:  # the other party, mixed with whatever plays to this one
                listen = joined if listen is silence(self.rate) else mix(listen, joined)
        self.transport.write_listen(listen)
        self._frame = (speak, listen)

    @property
    def last_speak(self) -> Frame:
        """The party's frame of the latest tick (silence before the first)."""
        return self._frame[0]

    def media_in(self) -> None:
        """Second half: every tap (recorders, detectors) sees both streams of this frame."""
        speak, listen = self._frame
        for tap in tuple(self.taps):
            tap.on_frame(speak, listen)
        if self.link is not None:
            # Handed over after every call of the loop has sent this tick's frame: the other party
            # hears it on the next tick, whatever order the calls tick in (one frame, always).
            self.link.spoke(speak)
        self.frame_index += 1

    def media_skip(self, frames: int) -> None:
        """The loop fell too far behind: ``frames`` ticks are skipped. Recordings get silence of that
        length (never a shorter file), the transport drops the audio it holds for that time."""
        self.frame_index += frames
        self.transport.skip(frames)
        for tap in tuple(self.taps):
            on_gap = getattr(tap, "on_gap", None)
            if on_gap is not None:
                on_gap(frames)

    def media_tick(self) -> None:
        self.media_out()
        self.media_in()

    def add_tap(self, tap: Tap) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        with contextlib.suppress(ValueError):
            self.taps.remove(tap)

    async def play_frames(
        self, frames: Iterator[Frame], volume_db: float = 0.0, stop: asyncio.Event | None = None
    ) -> str:
        """Play until the frames run out (``finished``), ``stop`` is set (``stopped``) or hangup (``hangup``)."""
        if self.is_ended:
            return "hangup"
        pb = self.player.start(frames, volume_db)
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.ended.wait())}
        if stop is not None:
            waits.add(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait({pb.done, *waits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            if not pb.done.done():
                pb.stop()
        result = pb.done.result()
        if self.is_ended and result != "finished":
            return "hangup"
        return result

    # --- bridges --------------------------------------------------------------------------------------

    def bridges_changed(self) -> None:
        """A bridge started or ended (:attr:`bridges` changed): live recordings rewrite their metadata."""
        if self.recordings is not None:
            self.recordings.bridges_changed()

    # --- DTMF ---------------------------------------------------------------------------------------

    def on_dtmf(self, digit: str, path: DtmfPath = "event") -> None:
        """A digit from the party (called by the transport; ``path``: how it came)."""
        if self.is_ended:
            return
        self.events.emit("dtmf", digit=digit, direction="received")
        for listener in tuple(self.dtmf_listeners):
            listener(digit)
        if self.link is not None:
            self.link.pressed(digit, path)

    async def send_dtmf(self, digit: str, duration: float = 0.1) -> None:
        self.events.emit("dtmf", digit=digit, direction="sent")  # when the tone starts, as received ones
        await self.transport.send_dtmf(digit, duration)
