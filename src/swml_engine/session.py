"""Running one document on one call from start to end, and a whole simulated call for ``swml run``/tests."""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from swml_engine.call import Call, CallOptions
from swml_engine.callbacks import CallbackHub
from swml_engine.callbacks import shutdown as give_up_callbacks
from swml_engine.document.model import Document
from swml_engine.events import EventLog, JsonlSink, jsonable
from swml_engine.media.audio import decode
from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.media.frame import Samples
from swml_engine.methods import REGISTRY
from swml_engine.recording.crypt import Keyring
from swml_engine.recording.recovery import recover
from swml_engine.recording.store import RecordingStore
from swml_engine.script.context import Variables
from swml_engine.script.runner import Runner, RunResult
from swml_engine.transports.simulated import (
    PEER_HEARD_NAME,
    CallerScript,
    PeerScript,
    SimulatedDialer,
    SimulatedTransport,
)


def call_scope(call: Call, *, from_: str, to: str, headers: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    """The ``call`` variables (calling-overview.mdx) common to every transport."""
    scope: dict[str, Any] = {
        "call_id": call.call_id,
        "node_id": "swml-engine",
        "segment_id": call.call_id,
        "call_state": "created",
        "direction": "inbound",
        "type": call.transport.kind,
        "from": from_,
        "to": to,
        "headers": headers,
        "project_id": "",
        "space_id": "",
    }
    scope.update(extra)
    return scope


async def run_call(doc: Document, call: Call, variables: Variables) -> RunResult:
    """Start the call, run the script with the engine's methods, end and finalise the call. Never
    raises for script errors."""
    call.options.fetches.bind(call.ended)  # the call's end stops its fetches
    call.start()
    try:
        return await Runner(doc, call, variables, REGISTRY).run()
    finally:
        if not call.is_ended:
            await call.hangup("error")
        await call.finish()


@dataclass
class Simulation:
    """A simulated call's settings (the options of ``swml run``)."""

    caller_audio: Path | Samples | None = None
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    hangup_at: float | None = None
    from_: str = "+15551230000"
    to: str = "+15557890000"
    #: The call's headers in order (a name may repeat, as in a SIP INVITE): pairs, or a mapping of
    #: names to values (each name once).
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    rate: int = 8000
    out: Path | None = None
    realtime: bool = False
    #: The far parties ``connect`` can reach (``--peer``); any other destination is unreachable.
    peers: list[PeerScript] = field(default_factory=list)
    allow_file_urls: bool = True
    on_event: Callable[[dict[str, Any]], None] | None = None
    #: Seconds one status callback attempt may take before it is retried.
    callback_timeout: float = 5.0
    #: Longest wait for status callbacks still being delivered when the call is over (seconds).
    callback_wait: float = 60.0
    #: Write recordings encrypted under its newest key (``--encrypt-key-file``); None: plain.
    keyring: Keyring | None = None
    #: Take SIGINT (Ctrl-C) on the run's loop as this says (``swml run``); None: Python's default.
    ctrl_c: CtrlC | None = None


#: Where a simulated run is, for what a Ctrl-C does there (:class:`CtrlC`): the call (from before its
#: start to its end and the finalising of its recordings), the wait for status callbacks, and after.
RunPhase = Literal["call", "callbacks", "done"]


class CtrlC:
    """SIGINT (Ctrl-C) during ``swml run``, taken on the run's loop (Python's KeyboardInterrupt would cut
    the loop short anywhere: recordings left unfinished, the event file closed under running tasks).

    The first one is the caller hanging up: the script sees it as on a call, recordings end
    (``end_reason: hangup``) and every output is written. One while the run waits for status callbacks
    ends the wait: what is not delivered by then is given up. Any other, later one calls ``stop_now``
    (the process stops at once; recordings it leaves unfinished are repaired at the next run, as after
    a crash)."""

    def __init__(self, stop_now: Callable[[], None]) -> None:
        self.stop_now = stop_now
        self.phase: RunPhase = "call"
        #: A Ctrl-C came (the run ends ``interrupted``).
        self.pressed = False
        #: Call time at which a Ctrl-C hung the call up (None: none did; the call was over already).
        self.hung_up_at: float | None = None
        #: A Ctrl-C ended the wait for status callbacks.
        self.wait_cut = False
        self._call: Call | None = None
        self._caller: SimulatedTransport | None = None
        self._cut = asyncio.Event()

    def received(self) -> None:
        # A call already over is past hanging up: the press is for the wait for callbacks next (the run's
        # "waiting" line comes 2 s after the call's end, maybe before its outputs are written and the wait
        # begins: a press then was taken for a hang-up of a call gone, and the wait went on in full).
        call_over = self._call is not None and self._call.is_ended
        if (self.phase == "callbacks" or (self.phase == "call" and call_over)) and not self.wait_cut:
            self.wait_cut = True
            self._cut.set()
        elif not self.pressed:
            self._hang_up()
        else:
            self.stop_now()
        self.pressed = True

    def attach(self, call: Call, caller: SimulatedTransport) -> None:
        """The call exists, ``caller`` its simulated caller: a Ctrl-C that came while it was being set up
        hangs it up now."""
        self._call, self._caller = call, caller
        if self.pressed:
            self._hang_up()

    def _hang_up(self) -> None:
        call, caller = self._call, self._caller
        if call is None or caller is None or call.is_ended:
            return
        self.hung_up_at = call.now()
        call.events.emit("warning", where="swml run", message="interrupted (Ctrl-C): the caller hung up")
        caller.caller_hangs_up()

    async def wait(self, callbacks: CallbackHub, seconds: float) -> None:
        """Wait for ``callbacks`` still being delivered (up to ``seconds``) unless a Ctrl-C ends it: then
        every retry ends and what is queued is given up (an attempt under way ends within its timeout)."""
        self.phase = "callbacks"
        drained = asyncio.get_running_loop().run_in_executor(None, callbacks.drain, seconds)
        cut = asyncio.ensure_future(self._cut.wait())
        either: set[asyncio.Future[Any]] = {drained, cut}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
        if not drained.done():
            give_up_callbacks(0)
        await drained  # every "given up" callback event is in before the summary counts them
        self.phase = "done"


@dataclass
class SimResult:
    result: RunResult
    events: list[dict[str, Any]]
    vars: dict[str, Any]
    duration: float
    call: Call
    #: The simulated far parties, with every far leg placed (``dialer.placed``).
    dialer: SimulatedDialer


def caller_samples(sim: Simulation) -> Samples | None:
    if sim.caller_audio is None:
        return None
    if isinstance(sim.caller_audio, Path):
        return decode(sim.caller_audio, sim.rate)
    return sim.caller_audio


def simulate(doc: Document, sim: Simulation) -> SimResult:
    """Run a document on a simulated call (virtual clock unless ``realtime``); outputs go to ``sim.out``."""
    loop: asyncio.AbstractEventLoop = asyncio.new_event_loop() if sim.realtime else VirtualTimeLoop()
    if sim.ctrl_c is not None:
        loop.add_signal_handler(signal.SIGINT, sim.ctrl_c.received)
    try:
        return loop.run_until_complete(run_simulation(doc, sim))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        if sim.ctrl_c is not None:
            loop.remove_signal_handler(signal.SIGINT)
        loop.close()


async def run_simulation(doc: Document, sim: Simulation) -> SimResult:
    """A simulated call on the running loop: several at once share the loop, as calls of ``swml serve``
    do (their media ticker, their I/O pools)."""
    out = sim.out
    events = EventLog()
    jsonl = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        jsonl = (out / "events.jsonl").open("w", encoding="utf-8")
        events.sinks.append(JsonlSink(jsonl))
    if sim.on_event is not None:
        events.sinks.append(sim.on_event)
    if out is not None:
        for stale in out.glob("peer-*-heard*.wav"):  # an earlier run's far parties: not this run's
            if PEER_HEARD_NAME.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        for rec in recover(out / "recordings", sim.keyring):  # a previous run into this directory was killed
            events.emit("record.recovered", recording_id=rec.recording_id, duration=rec.duration, note=rec.note)
    try:
        script = CallerScript(caller_samples(sim), list(sim.dtmf), sim.hangup_at, tuple(sim.peers))
        transport = SimulatedTransport(sim.rate, script, out / "heard.wav" if out else None)
        data_dir = out if out is not None else Path(tempfile.mkdtemp(prefix="swml-run-"))
        store = RecordingStore(data_dir / "recordings", keyring=sim.keyring)
        callbacks = CallbackHub(events, timeout=sim.callback_timeout)
        call_id = str(uuid.uuid4())
        dialer = SimulatedDialer(sim.peers, out)
        options = CallOptions(
            data_dir=data_dir,
            allow_file_urls=sim.allow_file_urls,
            url_resolver=store.resolver_for(call_id),
            recording_store=store,
            dialer=dialer,
            extra={"callbacks": callbacks},
        )
        call = Call(transport, call_id=call_id, events=events, options=options)
        if sim.ctrl_c is not None:
            sim.ctrl_c.attach(call, transport)
        pairs = sim.headers.items() if isinstance(sim.headers, Mapping) else sim.headers
        headers = [{"name": k, "value": v} for k, v in pairs]
        variables = Variables(call=call_scope(call, from_=sim.from_, to=sim.to, headers=headers), envs=dict(sim.envs))
        result = await run_call(doc, call, variables)
        for far in dialer.placed:  # a far leg the dial plan left open still writes what it heard
            await far.close()
        duration = call.now()
        if out is not None:  # before the wait for callbacks, which a receiver that is down makes long
            text = json.dumps(jsonable(variables.vars), indent=2, ensure_ascii=False, allow_nan=False)
            (out / "vars.json").write_text(text + "\n")
        # Status callbacks run on real time beside the call; wait for them (bounded) before reporting.
        if sim.ctrl_c is not None:
            await sim.ctrl_c.wait(callbacks, sim.callback_wait)
        else:
            await asyncio.get_running_loop().run_in_executor(None, callbacks.drain, sim.callback_wait)
    finally:
        if jsonl is not None:
            jsonl.close()
    return SimResult(result, events.events, variables.vars, duration, call, dialer)
