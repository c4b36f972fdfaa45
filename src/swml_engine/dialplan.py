"""``connect``'s dial plan: far legs placed group by group, raced, confirmed, and one bridged to the caller.

A group's destinations are dialled at once (``serial`` is groups of one). Each far leg is a
:class:`~swml_engine.call.Call` of its own, on a :class:`~swml_engine.dialing.FarTransport` the
caller's :class:`~swml_engine.dialing.Dialer` gives; a :class:`Leg` follows what its transport
reports until the leg is over, then ends and finishes its call. The first leg answered (and, with
``confirm``, confirmed by a script run on it) is chosen; the others are cancelled. A leg's timeout
gives it up as ``no_answer``; the caller hanging up gives every leg up as ``cancelled``.

Nothing of a far leg is written as ``call.state`` into the caller's events (the service ends the
caller's call on that): each step of a leg is a ``connect.leg`` event there, with the leg's call id.
Its ``call_state_url`` gets ``calling.call.state`` callbacks as connect.mdx shows.

While the legs ring the caller hears :class:`Ringback`; once one is chosen, :meth:`DialPlan.bridge`
joins the two calls (``media/bridge.py``) until either hangs up or ``max_duration`` is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from swml_engine.call import Call, CallOptions
from swml_engine.callbacks import NODE_ID, StatusReporter
from swml_engine.dialing import CannotDial, DialFailure, DialTarget, FarTransport
from swml_engine.document.model import Block, Document, Step
from swml_engine.document.params import shorten
from swml_engine.document.remote import fetch_remote
from swml_engine.errors import DocumentError, ParamError, SwmlError
from swml_engine.events import EventLog, Sink
from swml_engine.fetch import CallFetches, FetchStopped
from swml_engine.media.bridge import Bridge
from swml_engine.media.frame import Frame
from swml_engine.media.playlist import PlayFailed, Playlist
from swml_engine.media.sources import Sound
from swml_engine.media.sources.tones import ring_frames
from swml_engine.media.sources.tts import Voice
from swml_engine.methods.base import Method
from swml_engine.script.context import Variables
from swml_engine.script.flow import Flow
from swml_engine.script.runner import Runner
from swml_engine.script.step import SectionRun
from swml_engine.vocabulary import DialState, DisconnectReason, FailReason, LegEndReason
from swml_engine.waiting import unless

#: The methods a ``confirm`` list may use (the schema's ValidConfirmMethods that this engine runs):
#: what makes sense on a far leg before the bridge. No flow across sections, no nested ``connect``.
CONFIRM_METHODS = frozenset(
    {
        "cond",
        "set",
        "unset",
        "hangup",
        "play",
        "prompt",
        "record",
        "record_call",
        "stop_record_call",
        "send_digits",
        "denoise",
        "stop_denoise",
        "sleep",  # not in the schema's list; harmless on a far leg (a pause before a prompt)
        # In the schema's list but not run by this engine: the loader reports them "not supported".
        "tap",
        "stop_tap",
        "stream",
        "stop_stream",
        "send_sms",
    }
)

#: Where a far leg is in the plan (its transport's DialState says what its far end did).
LegStage = Literal[
    "dialling",  # placed, not answered yet
    "confirming",  # answered; its confirm script runs
    "chosen",  # the one bridged to the caller
    "dropping",  # given up by us (cancelled, timed out, not confirmed, bridge over): waiting for its end
    "done",  # failed or ended; its call is finished
]

#: How long a leg given up may take to report its end (a CANCEL unanswered ends by Timer B, 32 s).
DROP_GRACE = 40.0
#: The ring tone when neither ringback nor early media is given.
RING_COUNTRY = "us"

#: A far leg's failure as a ``calling.call.state`` end_reason (connect.mdx's list).
_END_REASON: dict[FailReason, LegEndReason] = {
    "busy": "busy",
    "no_answer": "no_answer",
    "rejected": "declined",
    "unreachable": "error",
    "cancelled": "cancel",
    "not_confirmed": "hangup",
    "error": "error",
}


@dataclass(frozen=True)
class LegSettings:
    """One destination with the top-level values filled in, as the method resolved it."""

    to: str
    #: What to dial; None when the destination cannot be dialled (``problem`` says why).
    target: DialTarget | None
    #: ``sip`` or ``phone`` (``device.type`` in callbacks).
    device: str
    timeout: float
    confirm: Block | str | None
    confirm_timeout: float
    call_state_url: str | None
    call_state_events: tuple[str, ...]
    #: Where the destination is written (``sections.main[0].connect.parallel[1]``): errors name it.
    where: str
    problem: str | None = None


def check_confirm_steps(steps: list[Step]) -> None:
    """ParamError naming the first step a ``confirm`` script may not run (inline, or fetched from its URL),
    at any depth: the steps of a ``cond`` in it run on the far leg too."""
    for step in steps:
        if step.method not in CONFIRM_METHODS:
            allowed = ", ".join(sorted(CONFIRM_METHODS))
            raise ParamError(step.where, f"{step.method} cannot run in confirm (on the far leg); use one of {allowed}")
        for block in _blocks_in(step.params):
            check_confirm_steps(block.steps)


def _blocks_in(params: object) -> Iterator[Block]:
    """The step lists nested in a step's prepared parameters (a ``cond``'s ``then`` and ``else``)."""
    if isinstance(params, Block):
        yield params
    elif isinstance(params, dict | list | tuple):
        for value in params.values() if isinstance(params, dict) else params:
            yield from _blocks_in(value)


class StepFailures:
    """Watches a script's events for a step that could not run: the runner reports one with an ``error``
    event at the step's place, then its ``step.end`` with result ``failed``. ``on_failed`` is called at
    the first."""

    def __init__(self, on_failed: Callable[[], object]) -> None:
        self.on_failed = on_failed
        self.failed = False
        self._errors: set[str] = set()

    def see(self, event: dict[str, Any]) -> None:
        if event["type"] == "error":
            self._errors.add(str(event.get("where")))
            return
        step = f"{event.get('path')}.{event.get('method')}"
        if event["type"] == "step.end" and event.get("result") == "failed" and step in self._errors:
            if not self.failed:
                self.on_failed()
            self.failed = True


class Leg:
    """One far leg: its call, what its far end did, and where the plan is with it."""

    def __init__(self, settings: LegSettings, call: Call | None, transport: FarTransport | None) -> None:
        self.settings = settings
        self.call = call
        self.transport = transport
        self.stage: LegStage = "dialling" if transport is not None else "done"
        #: Why it failed, when the plan decided (no_answer, cancelled, not_confirmed) before its end came.
        self.reason: FailReason | None = None
        #: How it ended (None while it is not over, or when it was bridged and then ended).
        self.failure: DialFailure | None = None
        self.was_chosen = False
        self.follower: asyncio.Task[None] | None = None
        self.confirmer: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.rang = False
        #: Its ``call_state_url`` callbacks (None without one).
        self.reporter: StatusReporter | None = None
        #: Set when a leg given up has not said it ended within DROP_GRACE: it is counted gone.
        self.abandoned = asyncio.Event()
        self.grace: asyncio.TimerHandle | None = None

    @property
    def call_id(self) -> str | None:
        return self.call.call_id if self.call is not None else None

    def device(self) -> dict[str, Any]:
        """``device`` of its callbacks (connect.mdx)."""
        target = self.settings.target
        from_number = target.from_ if target is not None else ""
        return {"type": self.settings.device, "params": {"from_number": from_number, "to_number": self.settings.to}}


class DialPlan:
    """The far legs of one ``connect`` on ``caller``: :meth:`dial` the groups, :meth:`bridge` the
    chosen leg, :meth:`close` every leg left (always, in a ``finally``)."""

    def __init__(self, caller: Call, variables: Variables, methods: Mapping[str, Method[Any]], where: str) -> None:
        self.caller = caller
        self.variables = variables
        self.methods = methods
        self.where = where
        self.legs: list[Leg] = []
        self.chosen: Leg | None = None
        #: Why the plan failed: the last leg to fail, or ``cancelled`` when the caller hung up.
        self.failure: FailReason = "error"
        self.ringback: Ringback | None = None
        self._changed = asyncio.Event()
        self._warned = False

    # --- dialling --------------------------------------------------------------------------------------

    async def dial(self, groups: list[list[LegSettings]]) -> Leg | None:
        """Each group in turn until a leg is chosen (returned) or none is left (None; see :attr:`failure`)."""
        for group in groups:
            legs = [self._place(s) for s in group]
            chosen = await self._race(legs)
            if chosen is not None or self.caller.is_ended:
                return chosen
        return None

    async def _race(self, legs: list[Leg]) -> Leg | None:
        while True:
            if self.caller.is_ended:
                self.failure = "cancelled"
                for leg in legs:
                    self._drop(leg, "cancelled")
                return None
            if self.chosen is not None:
                for leg in legs:
                    if leg is not self.chosen:
                        self._drop(leg, "cancelled", elsewhere=True)
                return self.chosen
            if all(leg.stage == "done" for leg in legs):
                return None
            self._changed.clear()
            await _first(self._changed.wait(), self.caller.ended.wait())

    def _place(self, settings: LegSettings) -> Leg:
        """Start dialling one destination; a destination that cannot be dialled is a failed leg at once."""
        dialer = self.caller.options.dialer
        failure: DialFailure | None = None
        transport: FarTransport | None = None
        if settings.problem is not None or settings.target is None:
            failure = DialFailure("error", text=settings.problem or "cannot be dialled")
            self.caller.events.emit("error", where=f"{settings.where}.to", message=failure.text)
        elif dialer is None:
            failure = DialFailure("unreachable", text="this call cannot place calls")
            if not self._warned:
                self._warned = True
                self.caller.events.emit(
                    "warning",
                    where=self.where,
                    message="this call cannot place calls: every destination is unreachable "
                    "(swml run: give the far parties with --peer; swml serve: see docs/serve.md)",
                )
        else:
            try:
                transport = dialer.place(settings.target, self.caller.rate)
            except CannotDial as e:
                failure = e.failure
        if transport is None:
            leg = Leg(settings, None, None)
            self.legs.append(leg)
            self._over(leg, failure or DialFailure("error"))
            return leg
        events = EventLog()
        # Kept in memory only where the caller's are (swml run): a service writes events to files, and a far
        # leg's list grew with every digit crossing the bridge (or sent by the far end) while the call lasted.
        events.keep = self.caller.events.keep
        call = Call(transport, events=events, options=self._far_options())
        call.options.fetches.bind(call.ended)
        # A confirm script's errors are the caller's to see, and the far leg's RTP figures (its rtp.stats,
        # with leg: its call_id); nothing else of the far leg is written there.
        call.events.sinks.append(self._forward(settings, call.call_id))
        leg = Leg(settings, call, transport)
        if settings.call_state_url is not None:  # ("": substituted to nothing, which the reporter says)
            where = f"{settings.where}.call_state_url"
            leg.reporter = StatusReporter(self.caller, settings.call_state_url, "calling.call.state", None, where)
        self.legs.append(leg)
        call.start()
        self._report(leg, "created")
        leg.timer = self.caller.loop.call_later(settings.timeout, self._timed_out, leg)
        leg.follower = self.caller.loop.create_task(self._follow(leg))
        transport.dial()
        return leg

    def _far_options(self) -> CallOptions:
        # The caller's storage, callbacks and fetch limits; fetches of its own, stopped when it ends; no
        # dialer (a confirm script does not place calls).
        return dataclasses.replace(self.caller.options, fetches=CallFetches(), dialer=None)

    def _forward(self, settings: LegSettings, call_id: str) -> Sink:
        def sink(event: dict[str, Any]) -> None:
            if event["type"] == "error":
                where = f"{settings.where} ({shorten(settings.to, 80)}): {event.get('where', '')}"
                self.caller.events.emit("error", where=where, message=event.get("message", ""))
            elif event["type"] == "rtp.stats":
                fields = {k: v for k, v in event.items() if k not in ("t", "type")}
                self.caller.events.emit("rtp.stats", leg=call_id, **fields)

        return sink

    async def _follow(self, leg: Leg) -> None:
        """Read what the leg's transport reports until it is over; then end and finish its call."""
        transport, call = leg.transport, leg.call
        assert transport is not None and call is not None
        state: DialState = transport.state
        try:
            while state not in ("failed", "ended"):
                state = await self._next_state(leg, transport)
                if state in ("ringing", "early_media", "answered"):
                    self._progress(leg, state)
            self._over(leg, self._failure_of(leg, state))
        finally:
            if leg.grace is not None:
                leg.grace.cancel()
            if leg.confirmer is not None:
                leg.confirmer.cancel()
            if not call.is_ended:
                await call.hangup("hangup")
            await call.finish()
            leg.stage = "done"
            self._changed.set()

    async def _next_state(self, leg: Leg, transport: FarTransport) -> DialState:
        """The next state the transport reports; ``failed`` when a leg given up never says it ended."""
        state = await unless(leg.abandoned, transport.next_state())
        return "failed" if state is None else state

    def _failure_of(self, leg: Leg, state: DialState) -> DialFailure | None:
        """How the leg ended: its transport's failure (the plan's reason first), or ``not_confirmed``
        for a leg answered and ended before it was chosen; None once it was bridged."""
        reported = leg.transport.failure if leg.transport is not None else None
        if state == "failed":
            if leg.reason is not None or reported is None:
                # The plan gave it up (its CANCEL's 487 says nothing of the far end).
                return DialFailure(leg.reason or "error")
            return reported
        if leg.was_chosen:
            return None
        return DialFailure(leg.reason or "not_confirmed")

    def _progress(self, leg: Leg, state: DialState) -> None:
        self._report(leg, state)
        if state in ("ringing", "early_media") and not leg.rang:
            leg.rang = True
            self._callback(leg, "ringing")
        if state == "early_media" and self.ringback is not None:
            self.ringback.early_media(leg)
        if state != "answered" or leg.stage != "dialling":
            return
        if leg.timer is not None:
            leg.timer.cancel()
        self._callback(leg, "answered")
        if self.chosen is not None:
            self._drop(leg, "cancelled")
        elif leg.settings.confirm is not None:
            leg.stage = "confirming"
            if self.ringback is not None:
                # What it says while asked to accept (a screened call, a voicemail that picked up) is
                # not early media: the caller hears the ring again until it accepts.
                self.ringback.leg_over(leg)
            leg.confirmer = self.caller.loop.create_task(self._confirm(leg))
        else:
            self._choose(leg)

    def _choose(self, leg: Leg) -> None:
        if self.chosen is None and leg.stage in ("dialling", "confirming"):
            leg.stage = "chosen"
            leg.was_chosen = True
            self.chosen = leg
            self._changed.set()
        else:
            self._drop(leg, "cancelled")

    def _timed_out(self, leg: Leg) -> None:
        if leg.stage == "dialling":
            # Not a word from it (not even 100 Trying, which a SIP server sends within 200 ms): not reached.
            heard = leg.transport is None or leg.transport.heard_from
            self._drop(leg, "no_answer" if heard else "unreachable")

    def _drop(self, leg: Leg, reason: FailReason | None, *, elsewhere: bool = False) -> None:
        """Give the leg up: CANCEL before its answer, BYE after. Its follower sees it end. ``elsewhere``:
        another leg took the call (its CANCEL says so: the phone logs no missed call)."""
        if leg.stage in ("dropping", "done"):
            return
        leg.stage = "dropping"
        leg.reason = leg.reason or reason
        leg.grace = self.caller.loop.call_later(DROP_GRACE, leg.abandoned.set)
        if leg.timer is not None:
            leg.timer.cancel()
        if leg.confirmer is not None:
            leg.confirmer.cancel()
        if leg.transport is not None:
            leg.transport.cancel(elsewhere=elsewhere)
        self._changed.set()

    def _over(self, leg: Leg, failure: DialFailure | None) -> None:
        """The leg is over: say how (events, callbacks) and remember the plan's failure reason."""
        leg.failure = failure
        if leg.timer is not None:
            leg.timer.cancel()
        if self.ringback is not None:
            self.ringback.leg_over(leg)
        if failure is None:
            self._report(leg, "ended")
            self._callback(leg, "ended", end_reason="hangup")
            return
        self.failure = failure.reason
        fields: dict[str, Any] = {"reason": failure.reason}
        if failure.code is not None:
            fields["code"] = failure.code
        if failure.text:
            fields["text"] = shorten(failure.text, 200)
        self._report(leg, "failed", **fields)
        if leg.call is not None:
            self._callback(leg, "ended", end_reason=_END_REASON[failure.reason])

    # --- confirm ---------------------------------------------------------------------------------------

    async def _confirm(self, leg: Leg) -> None:
        """Run the leg's confirm script; the leg is chosen when the script ends with the far party still on."""
        call = leg.call
        assert call is not None
        try:
            await asyncio.wait_for(self._run_confirm(leg, call), leg.settings.confirm_timeout)
        except TimeoutError:
            self.caller.events.emit(
                "warning",
                where=f"{leg.settings.where}.confirm",
                message=f"{shorten(leg.settings.to, 80)}: confirm did not end in {leg.settings.confirm_timeout:g} s",
            )
            self._drop(leg, "not_confirmed")
            return
        if call.is_ended or leg.stage != "confirming":
            self._drop(leg, "not_confirmed")
        else:
            self._choose(leg)

    async def _run_confirm(self, leg: Leg, call: Call) -> None:
        settings = leg.settings
        variables = Variables(call=self._far_scope(leg, call), envs=dict(self.variables.envs))
        confirm = settings.confirm
        try:
            if isinstance(confirm, Block):
                doc = Document({"main": confirm.steps}, source=f"{settings.where}.confirm")
            else:
                assert confirm is not None
                doc = await fetch_remote(confirm, variables.payload(), call.options, self.methods)
                for steps in doc.sections.values():
                    check_confirm_steps(steps)  # as an inline confirm's are when the document loads
        except FetchStopped:
            return
        except (DocumentError, ParamError) as e:
            self.caller.events.emit("error", where=f"{settings.where}.confirm", message=str(e))
            self._drop(leg, "not_confirmed")
            return
        runner = Runner(doc, call, variables, self.methods)
        # A step that cannot run (its error event) ends the confirm: the far party was not asked, or not
        # heard, so it is not confirmed (the runner itself goes on to the next step, as in any script).
        failures = StepFailures(lambda: self.caller.loop.call_soon(self._drop, leg, "not_confirmed"))
        call.events.sinks.append(failures.see)
        try:
            await runner.run_section(SectionRun(doc, "main", doc.labels("main")))
        except Flow:
            pass  # return, or the far leg hung up: judged by whether it is still on
        except SwmlError as e:
            self.caller.events.emit("error", where=f"{settings.where}.confirm", message=str(e))
            self._drop(leg, "not_confirmed")
        finally:
            call.events.sinks.remove(failures.see)
            runner.js.close()
        if failures.failed:
            self._drop(leg, "not_confirmed")

    def _far_scope(self, leg: Leg, call: Call) -> dict[str, Any]:
        """The ``call`` variables a confirm script sees: the far leg's."""
        target = leg.settings.target
        return {
            "call_id": call.call_id,
            "node_id": NODE_ID,
            "segment_id": call.call_id,
            "call_state": call.state,
            "direction": "outbound",
            "type": leg.settings.device,
            "from": target.from_ if target is not None else "",
            "to": leg.settings.to,
            "headers": [],
            "project_id": self.variables.call.get("project_id", ""),
            "space_id": self.variables.call.get("space_id", ""),
        }

    # --- the bridge ------------------------------------------------------------------------------------

    async def bridge(self, leg: Leg, max_duration: float, early: Bridge | None) -> DisconnectReason:
        """Join the caller and the chosen leg until either hangs up or ``max_duration`` passes; the far
        leg is hung up unless it hung up itself. ``early``: the bridge its early media came through."""
        far = leg.call
        assert far is not None
        bridge = early or Bridge(self.caller, far, leg.settings.to)
        bridge.start(both_ways=True)
        try:
            how = await asyncio.wait_for(bridge.wait(), max_duration)
        except TimeoutError:
            how = None
        finally:
            await bridge.close()
        if how is None:
            reason: DisconnectReason = "max_duration"
        elif self.caller.is_ended:
            reason = "caller_hangup"
        else:
            reason = "far_hangup"
        self._drop(leg, None)
        return reason

    async def close(self) -> None:
        """Give up every leg still on and wait for each to be over (bounded by its drop grace)."""
        for leg in self.legs:
            self._drop(leg, "cancelled")
        followers = [leg.follower for leg in self.legs if leg.follower is not None]
        if followers:
            await asyncio.wait(followers)

    # --- what the caller's events and the leg's callbacks say ---------------------------------------

    def _report(self, leg: Leg, state: DialState, **fields: Any) -> None:
        self.caller.events.emit(
            "connect.leg", to=shorten(leg.settings.to, 200), call_id=leg.call_id, state=state, **fields
        )
        if state == "created":
            self._callback(leg, "created")

    def _callback(self, leg: Leg, state: str, end_reason: LegEndReason | None = None) -> None:
        if leg.reporter is None or leg.call is None or state not in leg.settings.call_state_events:
            return
        leg.reporter.send(
            {
                "call_id": leg.call.call_id,
                "node_id": NODE_ID,
                "call_state": state,
                "direction": "outbound",
                "device": leg.device(),
                "end_reason": end_reason,
            }
        )


class Ringback:
    """What the caller hears while the far legs ring: the script's ``ringback`` sounds looped, else the
    early media of the first far leg that sends some, else a ring tone.

    :meth:`stop` ends it and hands back the early media's bridge, if any, for the chosen leg to reuse.
    """

    def __init__(self, caller: Call, sounds: list[tuple[str, Sound]], voice: Voice, where: str) -> None:
        self.caller = caller
        self.where = where
        self.sounds = sounds
        self.voice = voice
        self.early: tuple[Leg, Bridge] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_tone = asyncio.Event()
        self._playlist: Playlist | None = None
        self._stopped = False
        self._resume = asyncio.Event()

    def start(self) -> None:
        self._task = self.caller.loop.create_task(self._play())

    async def _play(self) -> None:
        sounds = self.sounds
        while not self._stopped and not self.caller.is_ended:
            if self.early is not None:
                self._resume.clear()
                await _first(self._resume.wait(), self.caller.ended.wait())
                continue
            began = self.caller.now()
            if sounds:
                first = self._playlist is None
                self._playlist = Playlist(self.caller, sounds, voice=self.voice, where=self.where, warn_voice=first)
                try:
                    await self._playlist.play()
                except PlayFailed as e:
                    self.caller.events.emit("error", where=self.where, message=f"{e}; a ring tone instead")
                    sounds = []  # a ring tone instead
                if self.caller.now() <= began:
                    sounds = []  # sounds that take no time would loop forever
            else:
                self._stop_tone.clear()
                await self.caller.play_frames(_ringing(self.caller.rate), stop=self._stop_tone)

    def _pause(self) -> None:
        self._stop_tone.set()
        if self._playlist is not None:
            self._playlist.stop()

    def early_media(self, leg: Leg) -> None:
        """A far leg's audio flows before its answer: the caller hears it (unless ringback sounds are given)."""
        if self.sounds or self.early is not None or self._stopped or leg.call is None:
            return
        bridge = Bridge(self.caller, leg.call, leg.settings.to)
        bridge.start(both_ways=False)
        self.early = (leg, bridge)
        self._pause()

    def leg_over(self, leg: Leg) -> None:
        """The leg whose early media the caller hears is over, or answered and asked to confirm: back to
        the ring tone."""
        if self.early is not None and self.early[0] is leg:
            self.early[1].stop()
            self.early = None
            self._resume.set()

    async def stop(self, chosen: Leg | None) -> Bridge | None:
        """Stop; the early media's bridge when it is the chosen leg's (else it is closed)."""
        self._stopped = True
        self._pause()
        self._resume.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        early, self.early = self.early, None
        if early is None:
            return None
        leg, bridge = early
        if leg is chosen and not bridge.ended:
            return bridge
        await bridge.close()
        return None


def _ringing(rate: int) -> Iterator[Frame]:
    """The ring tone, ringing until stopped."""
    return itertools.chain.from_iterable(ring_frames(RING_COUNTRY, None, rate) for _ in itertools.count())


async def _first(*waits: Any) -> None:
    """Until the first of ``waits`` (coroutines) completes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
