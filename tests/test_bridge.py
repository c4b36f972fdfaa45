"""The bridge (media/bridge.py): a caller and a simulated far party hear each other, on the virtual
clock; the caller's recordings hold the conversation; digits cross; either side hanging up ends it.

Until ``connect`` drives it, a test plays the dial plan's part: it places the far leg through the
simulated dialer, follows it and bridges it, beside a script running on the caller's call."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import read_wav, rms, spectrum_peaks, tone, window
from swml_engine.call import Call, CallOptions
from swml_engine.callbacks import CallbackHub
from swml_engine.dialing import DialTarget
from swml_engine.document.loader import load_text
from swml_engine.events import EventLog
from swml_engine.media.bridge import Bridge, BridgeEnd
from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.media.frame import samples_per_frame
from swml_engine.media.resampler import StreamResampler
from swml_engine.methods import REGISTRY
from swml_engine.script.context import Variables
from swml_engine.session import call_scope, run_call
from swml_engine.transports.simulated import (
    CallerScript,
    PeerScript,
    SimulatedDialer,
    SimulatedFarTransport,
    SimulatedTransport,
)

FRAME = 0.02


@dataclass
class Tape:
    """A tap keeping each tick's two frames of a call, by the loop's time."""

    call: Call
    ticks: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def on_frame(self, speak: np.ndarray, listen: np.ndarray) -> None:
        self.ticks[round(self.call.loop.time(), 3)] = (speak.copy(), listen.copy())


@dataclass
class Bridged:
    """What a bridged run left: the caller's events, the far leg's, the bridge, the outputs."""

    out: Path
    events: list[dict[str, object]]
    far_events: list[dict[str, object]] = field(default_factory=list)
    caller: Call | None = None
    far: Call | None = None
    bridge: Bridge | None = None
    how: BridgeEnd | None = None
    caller_digits: list[str] = field(default_factory=list)
    far_digits: list[str] = field(default_factory=list)
    caller_tape: Tape | None = None
    far_tape: Tape | None = None
    #: Each recording's metadata file as it was once the bridge started.
    meta_while_bridged: list[dict[str, object]] = field(default_factory=list)

    def recordings(self) -> list[dict[str, object]]:
        """Every recording's metadata, in the order they started."""
        metas = [json.loads(p.read_text()) for p in (self.out / "recordings").glob("*.json")]
        return sorted(metas, key=lambda m: m["call_time"])

    def recording(self) -> tuple[np.ndarray, int, dict[str, object]]:
        (meta,) = self.recordings()
        audio, rate = read_wav(self.out / "recordings" / f"{meta['recording_id']}.wav")
        return audio, rate, meta

    def record_started(self) -> float:
        return next(float(e["t"]) for e in self.events if e["type"] == "record.state" and e["state"] == "recording")  # type: ignore[arg-type]


def run_bridged(
    tmp_path: Path,
    doc: str,
    peer: PeerScript,
    *,
    dial_at: float = 0.0,
    caller_audio: np.ndarray | None = None,
    caller_rate: int = 8000,
    dtmf: list[tuple[float, str]] | None = None,
    hangup_at: float | None = None,
    early: bool = True,
    far_first: bool = False,
) -> Bridged:
    """Run ``doc`` on a simulated caller; at ``dial_at`` dial ``peer`` and bridge it (its early media
    first when ``early``), until either side ends. ``far_first``: the far call ticks before the caller."""
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    loop = VirtualTimeLoop()

    async def main() -> Bridged:
        events = EventLog()
        script = CallerScript(caller_audio, sorted(dtmf or []), hangup_at)
        transport = SimulatedTransport(caller_rate, script, out / "heard.wav")
        dialer = SimulatedDialer([peer], out)
        target = DialTarget(to=peer.to, from_="+15551230000")
        far_transport = dialer.place(target, caller_rate)
        far = Call(far_transport, events=EventLog())
        if far_first:  # the far call joins the media ticker first: it ticks before the caller
            far.start()
        options = CallOptions(data_dir=out, dialer=dialer, extra={"callbacks": CallbackHub(events)})
        caller = Call(transport, events=events, options=options)
        result = Bridged(out, events.events, far.events.events, caller, far)
        result.caller_tape, result.far_tape = Tape(caller), Tape(far)
        caller.add_tap(result.caller_tape)
        far.add_tap(result.far_tape)

        async def dial_and_bridge() -> None:
            await asyncio.sleep(dial_at)
            if not far_first:
                far.start()
            far_transport.dial()
            bridge = result.bridge = Bridge(caller, far, peer.to)
            while far_transport.state != "answered":
                state = await far_transport.next_state()
                if state == "early_media" and early:
                    bridge.start(both_ways=False)
                if state == "failed":
                    return
            bridge.start()
            result.meta_while_bridged = result.recordings()
            result.how = await bridge.wait()
            await far.hangup()
            await far.finish()

        joining = asyncio.get_running_loop().create_task(dial_and_bridge())
        variables = Variables(call=call_scope(caller, from_="+15551230000", to="+15557890000", headers=[]))
        await run_call(load_text(doc, methods=REGISTRY), caller, variables)
        await joining
        result.caller_digits = transport.sent_digits
        result.far_digits = far_transport.sent_digits
        return result

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def first_sound(samples: np.ndarray, after: int = 0) -> int:
    """Index of the first non-zero sample at or after ``after``."""
    return after + int(np.flatnonzero(samples[after:])[0])


RECORD_STEREO = "sections: {main: [answer, {record_call: {stereo: true}}, {sleep: %d000}, hangup]}"


def test_the_stereo_recording_holds_the_caller_left_and_the_far_party_right(tmp_path: Path) -> None:
    """Caller 440 Hz, far party 1000 Hz for 3 s after ringback: the left channel is the caller the whole
    call, the right is silence, the far end's ringback (early media), then the far party, every sample
    of it in order, one frame after it was sent; the recording keeps the call's time line."""
    rate = 8000
    voice, ringback = tone(1000, 3.0), tone(425, 1.0, level=0.2)
    ringback[ringback == 0] = 1  # so its first sample shows where it starts
    peer = PeerScript(to="sip:agent@example.com", at=1.0, early=ringback, audio=voice, hangup=3.5)
    res = run_bridged(tmp_path, RECORD_STEREO % 8, peer, dial_at=1.0, caller_audio=tone(440, 10.0))
    audio, file_rate, meta = res.recording()
    assert (
        file_rate == rate and meta["channels"] == 2 and meta["channel_layout"] == {"left": "speak", "right": "listen"}
    )
    t0 = res.record_started()
    left, right = audio[:, 0], audio[:, 1]
    assert abs(len(left) / rate - (8.0 - t0)) <= FRAME  # the whole call after record_call, to a frame
    assert spectrum_peaks(window(left, rate, 0.5, 7.5), rate, 1) == [pytest.approx(440, abs=5)]

    def at(t: float) -> int:  # call time → index in the recording
        return round((t - t0) * rate)

    assert rms(right[: at(1.0)]) == 0  # before the dial: nothing
    ring_start = first_sound(right)
    # It rings at once (1.0 s): its first frame is the tick then or the next, heard a frame later.
    assert at(1.0 + FRAME) <= ring_start <= at(1.0 + 2 * FRAME)
    assert spectrum_peaks(window(right, rate, 1.2 - t0, 1.9 - t0), rate, 1) == [pytest.approx(425, abs=5)]
    # The far party from its answer (2.0 s) plus one frame: every sample, in order (none lost or doubled).
    n = samples_per_frame(rate)
    starts = [
        i
        for i in range(at(2.0 + FRAME), at(2.0 + 2 * FRAME) + 1, n)
        if np.array_equal(right[i : i + len(voice)], voice)
    ]
    assert len(starts) == 1
    start = starts[0]
    assert np.array_equal(right[ring_start:start], ringback[: start - ring_start])  # the ringback until then
    assert rms(right[start + len(voice) :]) == 0  # it hung up: silence after
    assert res.how == "far_ended"
    assert res.bridge is not None and res.bridge.leg is not None
    assert res.bridge.leg.start == 1.0 and res.bridge.leg.end == 5.5


def test_the_far_party_hears_the_caller_one_frame_later(tmp_path: Path) -> None:
    """What the far party heard (peer-1-heard.wav, from its dial) is the caller's audio, sample for
    sample, from the answer plus one frame, and nothing of it before (early media goes one way)."""
    rate = 8000
    ramp = (np.arange(10 * rate) % 30000 + 100).astype(np.int16)  # a ramp: any lost or doubled frame shows
    peer = PeerScript(to="sip:a@b", at=1.5, early=tone(425, 3.0), hangup=2.0)
    res = run_bridged(tmp_path, "sections: {main: [answer, {sleep: 6000}]}", peer, dial_at=0.5, caller_audio=ramp)
    heard, heard_rate = read_wav(res.out / "peer-1-heard.wav")
    assert heard_rate == rate
    start = first_sound(heard)
    first = int(heard[start]) - 100  # the caller's sample it heard first
    # Dialled at 0.5 s, answered at 2.0 s: it hears the caller from then (a frame later: the test above).
    assert abs(first / rate - 2.0) <= 2 * FRAME and abs(0.5 + start / rate - (2.0 + FRAME)) <= 2 * FRAME
    # Until it hung up (at 4.0 s), all of it, in order.
    end = start + int(np.flatnonzero(heard[start:] == 0)[0])
    assert abs((end - start) / rate - 2.0) <= 2 * FRAME
    assert np.array_equal(heard[start:end], ramp[first : first + end - start])


@pytest.mark.parametrize("far_first", [False, True])
def test_the_crossing_takes_one_frame_whatever_order_the_calls_tick_in(tmp_path: Path, far_first: bool) -> None:
    """At every tick of the bridge, what each party hears is exactly what the other said on the tick
    before, whichever call the media ticker steps first."""
    rate = 8000
    voice = (np.arange(3 * rate) % 1000 + 1).astype(np.int16)
    peer = PeerScript(to="sip:a@b", at=1.0, audio=voice, hangup=2.0)
    ramp = (np.arange(6 * rate) % 3000 - 1500).astype(np.int16)
    res = run_bridged(tmp_path, RECORD_STEREO % 4, peer, caller_audio=ramp, far_first=far_first)
    assert res.caller_tape is not None and res.far_tape is not None and res.bridge is not None
    caller, far = res.caller_tape.ticks, res.far_tape.ticks
    leg = res.bridge.leg
    assert leg is not None and leg.start == 1.0 and leg.end is not None
    ticks = [t for t in sorted(caller) if leg.start + FRAME <= t < leg.end and round(t - FRAME, 3) in far]
    assert len(ticks) >= 99  # the 2 s of the bridge
    for t in ticks:
        before = round(t - FRAME, 3)
        assert np.array_equal(caller[t][1], far[before][0]), t  # the caller hears the far party
        assert np.array_equal(far[t][1], caller[before][0]), t  # the far party hears the caller
    heard = np.concatenate([caller[t][1] for t in ticks])
    assert np.count_nonzero(heard) > 0.9 * len(heard)


@pytest.mark.parametrize(("caller_rate", "far_rate"), [(8000, 16000), (16000, 8000)])
def test_legs_at_different_rates_are_resampled_both_ways(tmp_path: Path, caller_rate: int, far_rate: int) -> None:
    peer = PeerScript(to="sip:a@b", at=1.0, audio=tone(1000, 3.0, rate=far_rate), hangup="end", rate=far_rate)
    res = run_bridged(
        tmp_path, RECORD_STEREO % 5, peer, caller_audio=tone(440, 10.0, rate=caller_rate), caller_rate=caller_rate
    )
    audio, rate, _ = res.recording()
    assert rate == caller_rate
    left, right = audio[:, 0], audio[:, 1]
    t0 = res.record_started()
    assert spectrum_peaks(window(left, rate, 0.5, 4.5), rate, 1) == [pytest.approx(440, abs=5)]
    assert spectrum_peaks(window(right, rate, 1.2 - t0, 3.8 - t0), rate, 1) == [pytest.approx(1000, abs=5)]
    assert 0.4 * 32767 * 0.5**0.5 < rms(window(right, rate, 1.2 - t0, 3.8 - t0)) < 0.55 * 32767 * 0.5**0.5
    # The far party's audio lasts 3 s in the recording too, from its answer + a frame + the filter.
    start = first_sound(right, round((1.0 - t0) * rate))
    delay = StreamResampler(far_rate, caller_rate).delay  # the filter's first taps lead its centre
    assert 1.0 + FRAME <= start / rate + t0 <= 1.0 + FRAME + delay
    assert rms(window(right, rate, start / rate + 3.0 + FRAME, 4.9 - t0)) < 100
    heard, heard_rate = read_wav(res.out / "peer-1-heard.wav")
    assert heard_rate == far_rate
    assert spectrum_peaks(window(heard, far_rate, 1.2, 3.8), far_rate, 1) == [pytest.approx(440, abs=5)]


def test_no_frame_is_lost_or_doubled_across_a_resampling_bridge(tmp_path: Path) -> None:
    """A 16 kHz far party sending a click every 37 ms (never on a frame boundary twice in a row): in the
    8 kHz caller's heard.wav every click is there, each exactly 37 ms after the one before."""
    far_rate = 16000
    clicks = np.zeros(3 * far_rate, dtype=np.int16)
    period = round(0.037 * far_rate)
    clicks[period // 2 :: period] = 20000
    peer = PeerScript(to="sip:a@b", at=1.0, audio=clicks, hangup=3.5, rate=far_rate)
    res = run_bridged(tmp_path, "sections: {main: [answer, {sleep: 5000}]}", peer)
    heard, _ = read_wav(res.out / "heard.wav")
    first = first_sound(heard)
    count = len(clicks[period // 2 :: period])
    found = []
    for k in range(count):
        expected = first + k * period // 2
        lo = max(0, expected - 20)
        found.append(lo + int(np.argmax(np.abs(heard[lo : lo + 40].astype(np.int32)))))
    steps = np.diff(found)
    assert set(steps.tolist()) <= {period // 2}, steps


def test_the_resampler_is_seamless_across_frames() -> None:
    """Frame by frame gives the same samples as one long block: nothing at the frame edges."""
    for a, b in ((8000, 16000), (16000, 8000)):
        x = tone(1000, 1.0, rate=a)
        whole = StreamResampler(a, b)(x)
        r = StreamResampler(a, b)
        n = samples_per_frame(a)
        framed = np.concatenate([r(x[i : i + n]) for i in range(0, len(x), n)])
        assert len(framed) == len(x) * b // a and np.array_equal(framed, whole)
        assert StreamResampler(a, b).delay < 0.0015


def test_digits_cross_both_ways_and_in_band_ones_are_not_sent_twice(tmp_path: Path) -> None:
    peer = PeerScript(to="sip:a@b", at=1.0, dtmf=((1.0, "5"), (1.25, "*")), hangup=3.0)
    res = run_bridged(
        tmp_path, "sections: {main: [answer, {sleep: 5000}]}", peer, dtmf=[(0.5, "9"), (2.5, "1"), (2.75, "#")]
    )
    assert res.far_digits == ["1", "#"]  # not the 9, pressed before the bridge
    assert res.caller_digits == ["5", "*"]
    sent = [(e["t"], e["digit"]) for e in res.events if e["type"] == "dtmf" and e["direction"] == "sent"]
    assert sent == [(2.0, "5"), (2.25, "*")]  # as the far party pressed them (1 s, 1.25 s after answering)

    async def inband() -> list[str]:
        caller = Call(SimulatedTransport())
        far_transport = SimulatedDialer([peer]).place(DialTarget(to="sip:a@b", from_="x"), 8000)
        far = Call(far_transport)
        bridge = Bridge(caller, far, "sip:a@b")
        bridge.start()
        caller.on_dtmf("7", "inband")  # its tones are in the caller's audio, already crossing
        caller.on_dtmf("8", "event")
        await asyncio.sleep(0.5)
        bridge.stop()
        return far_transport.sent_digits

    loop = VirtualTimeLoop()
    try:
        assert loop.run_until_complete(inband()) == ["8"]
    finally:
        loop.close()


def test_a_caller_terminator_ends_its_recording_mid_bridge(tmp_path: Path) -> None:
    doc = "sections: {main: [answer, {record_call: {terminators: '#', stereo: true}}, {sleep: 6000}, hangup]}"
    peer = PeerScript(to="sip:a@b", at=1.0, audio=tone(1000, 4.0))
    res = run_bridged(tmp_path, doc, peer, caller_audio=tone(440, 10.0), dtmf=[(3.0, "#")])
    (meta,) = res.recordings()
    assert meta["end_reason"] == "terminator" and meta["terminator"] == "#"
    assert abs(float(meta["duration"]) - (3.0 - res.record_started())) <= FRAME  # type: ignore[arg-type]
    assert res.far_digits == ["#"]  # the far party got the digit too
    assert res.how == "caller_ended"


def test_the_far_party_hanging_up_ends_the_bridge_and_the_recording_goes_on(tmp_path: Path) -> None:
    doc = RECORD_STEREO % 6
    peer = PeerScript(to="sip:a@b", at=1.0, audio=tone(1000, 10.0), hangup=2.0)
    res = run_bridged(tmp_path, doc, peer, caller_audio=tone(440, 10.0))
    assert res.how == "far_ended"
    assert res.bridge is not None and res.bridge.leg is not None and res.bridge.leg.end == pytest.approx(3.0, abs=FRAME)
    audio, rate, meta = res.recording()
    t0 = res.record_started()
    assert meta["end_reason"] == "hangup" and abs(float(meta["duration"]) - (6.0 - t0)) <= FRAME  # type: ignore[arg-type]
    right = audio[:, 1]
    assert rms(window(right, rate, 1.5 - t0, 2.9 - t0)) > 5000
    assert rms(window(right, rate, 3.1 - t0, 5.9 - t0)) == 0  # the far party is gone
    assert rms(window(audio[:, 0], rate, 3.1 - t0, 5.9 - t0)) > 5000  # the caller is still recorded


def test_the_caller_hanging_up_ends_the_bridge(tmp_path: Path) -> None:
    peer = PeerScript(to="sip:a@b", at=1.0, audio=tone(1000, 10.0))
    res = run_bridged(tmp_path, "sections: {main: [answer, {sleep: 10000}]}", peer, hangup_at=4.0)
    assert res.how == "caller_ended"
    assert res.bridge is not None and res.bridge.leg is not None and res.bridge.leg.end == 4.0
    assert res.far is not None and res.far.is_ended  # the test's dial plan hung it up after


def test_metadata_names_the_bridges_the_recording_overlapped(tmp_path: Path) -> None:
    """One recording from the start (the bridge in it, open while bridged, closed after), one started
    during the bridge, one after it ended (none)."""
    doc = """
sections:
  main:
    - answer
    - record_call: {stereo: true, control_id: whole}
    - sleep: 2000
    - record_call: {stereo: true, control_id: during}
    - sleep: 2000
    - record_call: {stereo: true, control_id: after}
    - sleep: 2000
    - hangup
"""
    peer = PeerScript(to="sip:agent@example.com", at=0.5, audio=tone(1000, 10.0), hangup=2.5)
    res = run_bridged(tmp_path, doc, peer, dial_at=0.5, caller_audio=tone(440, 10.0))
    assert res.far is not None
    leg = {"to": "sip:agent@example.com", "call_id": res.far.call_id, "start": 1.0}  # answered 0.5 s after the dial
    (live,) = res.meta_while_bridged  # the first recording, rewritten when the bridge started
    assert live["state"] == "recording" and live["bridges"] == [{**leg, "end": None}]
    whole, during, after = res.recordings()
    assert [m["control_id"] for m in (whole, during, after)] == ["whole", "during", "after"]
    assert whole["bridges"] == during["bridges"] == [{**leg, "end": 3.5}]
    # (each starts at the first frame after its step: that instant's frame may have gone by already)
    assert after["bridges"] == [] and after["call_time"] in (4.0, 4.02) and during["call_time"] in (2.0, 2.02)
    # The recording started during the bridge has the far party on the right from its first frame,
    # until the bridge ended at 3.5 s (1.5 s into it).
    audio, rate = read_wav(tmp_path / "out" / "recordings" / f"{during['recording_id']}.wav")
    assert spectrum_peaks(window(audio[:, 1], rate, 0.0, 1.4), rate, 1) == [pytest.approx(1000, abs=5)]
    assert rms(window(audio[:, 1], rate, 0.0, 0.02)) > 5000 and rms(window(audio[:, 1], rate, 1.6, 2.0)) == 0
    audio, rate = read_wav(tmp_path / "out" / "recordings" / f"{after['recording_id']}.wav")
    assert rms(audio[:, 1]) == 0 and rms(audio[:, 0]) > 5000


@pytest.mark.parametrize(("direction", "heard"), [("both", [440, 1000]), ("listen", [1000]), ("speak", [440])])
def test_a_mono_recording_of_a_bridge_follows_its_direction(tmp_path: Path, direction: str, heard: list[int]) -> None:
    doc = f"sections: {{main: [answer, {{record_call: {{direction: {direction}}}}}, {{sleep: 4000}}, hangup]}}"
    peer = PeerScript(to="sip:a@b", at=1.0, audio=tone(1000, 10.0, level=0.3))
    res = run_bridged(tmp_path, doc, peer, caller_audio=tone(440, 10.0, level=0.3))
    audio, rate, meta = res.recording()
    assert meta["channels"] == 1
    peaks = spectrum_peaks(window(audio, rate, 1.5, 3.5), rate, 2)
    strong = [p for p in peaks if rms(window(audio, rate, 1.5, 3.5)) > 1000]
    assert sorted(round(p, -1) for p in strong[: len(heard)]) == heard
    if len(heard) == 1:  # the other side is not in it at all
        other = 1000 if heard == [440] else 440
        x = window(audio, rate, 1.5, 3.5).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(x))
        bins = np.fft.rfftfreq(len(x), 1 / rate)
        assert spectrum[np.argmin(np.abs(bins - other))] < 1e-3 * spectrum.max()


def test_record_is_refused_while_the_call_is_bridged(tmp_path: Path) -> None:
    doc = "sections: {main: [answer, {sleep: 2000}, {record: {}}, {sleep: 1000}]}"
    peer = PeerScript(to="sip:a@b", at=0.5, audio=tone(1000, 10.0))
    res = run_bridged(tmp_path, doc, peer, caller_audio=tone(440, 10.0))
    errors = [e for e in res.events if e["type"] == "error"]
    assert [e["message"] for e in errors] == [
        "sections.main[2].record: cannot record in the foreground while the call is bridged (connect); use record_call"
    ]
    assert [
        (e["name"], e["value"]) for e in res.events if e["type"] == "vars.set" and e["name"] == "record_result"
    ] == [("record_result", "failed")]
    states = [e["state"] for e in res.events if e["type"] == "record.state"]
    assert states == ["error"] and not (tmp_path / "out" / "recordings").exists()


def test_a_frame_the_far_end_lost_is_silence_of_its_length(tmp_path: Path) -> None:
    """A far leg whose transport has nothing for five ticks (packets lost): the caller hears five
    frames of silence there, and every frame before and after in its place."""
    rate = 8000
    n = samples_per_frame(rate)
    voice = (np.arange(2 * rate) % 1000 + 1).astype(np.int16)

    class Lossy(SimulatedFarTransport):
        reads = 0

        def read_speak(self) -> np.ndarray | None:
            frame = super().read_speak()
            if frame is not None:
                self.reads += 1
                if 20 < self.reads <= 25:
                    return None  # lost on the way
            return frame

    async def main() -> np.ndarray:
        caller = Call(SimulatedTransport(rate, CallerScript(), tmp_path / "heard.wav"))
        caller.start()
        await caller.answer()
        peer = PeerScript(to="sip:a@b", at=0.5, audio=voice, hangup=3.0)
        far_transport = Lossy(DialTarget(to="sip:a@b", from_="x"), peer, rate, audio=voice)
        far = Call(far_transport)
        far.start()
        far_transport.dial()
        while await far_transport.next_state() != "answered":
            pass
        bridge = Bridge(caller, far, "sip:a@b")
        bridge.start()
        tape = Tape(caller)
        caller.add_tap(tape)
        await asyncio.sleep(2.5)
        bridge.stop()
        await far.hangup()
        await far.finish()
        await caller.hangup()
        await caller.finish()
        return np.concatenate([listen for _, listen in (tape.ticks[t] for t in sorted(tape.ticks))])

    loop = VirtualTimeLoop()
    try:
        heard = loop.run_until_complete(main())
    finally:
        loop.close()
    start = first_sound(heard)
    got = heard[start : start + len(voice)]
    expected = voice.copy()
    expected[20 * n : 25 * n] = 0
    assert np.array_equal(got, expected)
