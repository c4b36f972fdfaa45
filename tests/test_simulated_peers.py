"""Simulated far parties (``swml run --peer``): what each spec does when dialled, on the virtual clock,
what its call looks like, what it heard, and the usage errors of a bad spec."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from conftest import read_wav, rms, run_doc, spectrum_peaks, tone, wav_bytes
from swml_engine.call import Call
from swml_engine.dialing import CannotDial, DialFailure, DialTarget
from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.media.frame import samples_per_frame
from swml_engine.transports.simulated import PeerScript, SimulatedDialer, SimulatedFarTransport, parse_peer
from swml_engine.vocabulary import DialState

T = TypeVar("T")


def on_virtual_clock(main: Callable[[], Awaitable[T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@dataclass
class Speech:
    """A tap keeping the speak stream of a call."""

    frames: list[np.ndarray]

    def on_frame(self, speak: np.ndarray, listen: np.ndarray) -> None:
        self.frames.append(speak)


def target(to: str) -> DialTarget:
    return DialTarget(to=to, from_="+15551230000")


async def follow(far: SimulatedFarTransport, until: float) -> list[tuple[float, DialState]]:
    """Every state the far leg reports, with the loop time it came at, for ``until`` seconds or until
    it failed or ended (nothing comes after)."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, DialState]] = []
    end = loop.time() + until
    while loop.time() < end:
        try:
            state = await asyncio.wait_for(far.next_state(), end - loop.time())
        except TimeoutError:
            break
        seen.append((round(loop.time(), 3), state))
        if state in ("failed", "ended"):
            break
    return seen


async def dial(spec: str, until: float) -> tuple[SimulatedFarTransport, Call, list[tuple[float, DialState]]]:
    dialer = SimulatedDialer([parse_peer(spec)])
    far = dialer.place(target(parse_peer(spec).to), 8000)
    call = Call(far)
    call.start()
    far.dial()
    seen = await follow(far, until)
    return far, call, seen


# --- parsing ----------------------------------------------------------------------------------------


def test_peer_specs_say_what_the_far_party_does() -> None:
    p = parse_peer("sip:agent@example.com=answer@3s,audio:agent.wav,hangup@20s,dtmf:4:1#,rate:16000")
    assert p == PeerScript(
        to="sip:agent@example.com",
        outcome="answer",
        at=3.0,
        audio=Path("agent.wav"),
        hangup=20.0,
        dtmf=((4.0, "1"), (4.25, "#")),
        rate=16000,
    )
    assert parse_peer("+15551234567=busy").outcome == "busy"
    assert parse_peer("sip:a@b=reject:603@1.5").code == 603 and parse_peer("sip:a@b=reject:603@1.5").at == 1.5
    assert parse_peer("sip:a@b=no-answer,ring@500ms").ring_at == 0.5
    assert parse_peer("sip:a@b=answer,hangup@end").hangup == "end"
    # A digit's time is written as every other time of a peer (swml run --help: 3s, 500ms).
    assert parse_peer("sip:a@b=answer,dtmf:2s:1,dtmf:2500ms:2").dtmf == ((2.0, "1"), (2.5, "2"))
    # A SIP URI's own parameters stay in the destination: only an '=' before an item ends it.
    assert parse_peer("sip:a@b;transport=tcp=answer@1").to == "sip:a@b;transport=tcp"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("sip:a@b", "write DEST=ITEM"),
        ("=answer", "destination before '=' is empty"),
        ("sip:a@b=answer,busy", "already has an outcome"),
        ("sip:a@b=ring@1", "say what the peer does"),
        ("sip:a@b=reject:200", "from 400 to 699"),
        ("sip:a@b=answer@soon", "'soon' is not a time"),
        ("sip:a@b=answer@99999", "longer than the 14400 s"),
        ("sip:a@b=busy,audio:x.wav", "this peer does not answer"),
        ("sip:a@b=answer,dtmf:x", "is not T:DIGITS"),
        ("sip:a@b=answer,rate:44100", "is not an item"),
        ("sip:a@b=no-answer@3", "takes no time"),
    ],
)
def test_a_bad_peer_spec_says_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_peer(spec)
    assert says in str(e.value)


def test_swml_run_help_names_every_peer_item(capsys: pytest.CaptureFixture[str]) -> None:
    from swml_engine.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    items = ("answer", "busy", "no-answer", "reject:", "unreachable", "ring@", "early:", "audio:", "dtmf:")
    for item in (*items, "hangup@", "rate:", "events"):
        assert item in shown, item
    assert parse_peer("sip:a@b=answer,events").events  # (the one that was missing, as the parser takes it)


def test_swml_run_refuses_a_bad_peer_with_a_usage_error(tmp_path: Path) -> None:
    doc = tmp_path / "a.yaml"
    doc.write_text("sections: {main: [answer]}")

    def swml(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(tmp_path / "o"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    r = swml("--peer", "sip:a@b=answer,bogus")
    assert r.returncode == 2 and r.stderr.startswith("swml run: --peer 'bogus' is not an item"), r.stderr
    r = swml("--peer", f"sip:a@b=answer,audio:{tmp_path / 'missing.wav'}")
    assert r.returncode == 2 and "no such file" in r.stderr and "--peer" in r.stderr
    r = swml("--peer", "sip:a@b=answer@1,hangup@2")
    assert r.returncode == 0, r.stderr


# --- dialling ---------------------------------------------------------------------------------------


def test_a_destination_without_a_peer_is_unreachable_and_says_to_add_one() -> None:
    dialer = SimulatedDialer([parse_peer("sip:agent@example.com=answer")])
    with pytest.raises(CannotDial) as e:
        dialer.place(target("sip:other@example.com"), 8000)
    assert e.value.failure.reason == "unreachable"
    assert "--peer 'sip:other@example.com=answer@1s'" in e.value.failure.text


def test_an_answering_peer_rings_then_answers_and_its_call_is_answered() -> None:
    async def main() -> None:
        far, call, seen = await dial("sip:agent@example.com=answer@3s", 10)
        assert seen == [(0.0, "ringing"), (3.0, "answered")]
        assert call.direction == "outbound" and call.answered and call.answered_at == 3.0
        assert [e["state"] for e in call.events.events if e["type"] == "call.state"] == ["ringing", "answered"]
        assert not call.is_ended  # it stays until someone hangs up
        await call.hangup()
        assert far.state == "ended"
        await call.finish()

    on_virtual_clock(main)


@pytest.mark.parametrize(
    ("spec", "failure", "at"),
    [
        ("sip:a@b=busy@1", DialFailure("busy", 486, "Busy Here"), 1.0),
        ("sip:a@b=reject:603@2", DialFailure("rejected", 603, "Decline"), 2.0),
        ("sip:a@b=reject:480", DialFailure("no_answer", 480, "Temporarily Unavailable"), 0.0),
        ("sip:a@b=reject:600", DialFailure("busy", 600, "Busy Everywhere"), 0.0),
    ],
)
def test_a_peer_that_does_not_answer_fails_with_its_reason(spec: str, failure: DialFailure, at: float) -> None:
    async def main() -> None:
        far, call, seen = await dial(spec, 10)
        assert seen == [(at, "failed")]
        assert far.failure == failure and not call.answered
        await call.hangup()
        await call.finish()

    on_virtual_clock(main)


def test_a_peer_that_never_answers_rings_until_cancelled() -> None:
    async def main() -> None:
        far, call, seen = await dial("sip:a@b=no-answer,ring@0.5", 30)
        assert seen == [(0.5, "ringing")]
        far.cancel()
        assert far.state == "failed" and far.failure == DialFailure("cancelled", 487, "Request Terminated")
        await call.hangup()
        await call.finish()

    on_virtual_clock(main)


def test_a_peer_hangs_up_and_presses_digits_after_its_answer() -> None:
    async def main() -> None:
        _, call, seen = await dial("sip:a@b=answer@2,dtmf:1:5#,hangup@3", 10)
        assert seen == [(0.0, "ringing"), (2.0, "answered"), (5.0, "ended")]
        digits = [(e["t"], e["digit"]) for e in call.events.events if e["type"] == "dtmf"]
        assert digits == [(3.0, "5"), (3.25, "#")]
        assert call.is_ended and call.end_reason == "remote_hangup"
        await call.finish()

    on_virtual_clock(main)


def test_the_peer_speaks_from_its_answer_and_what_it_hears_is_written(tmp_path: Path) -> None:
    """Its audio starts at the answer (early media before, from the ring); what it hears goes to
    peer-1-heard.wav from its call's first frame."""
    rate = 8000
    voice, ringback = tone(1000, 1.0), tone(425, 5.0)

    async def main() -> list[np.ndarray]:
        peer = PeerScript(to="sip:a@b", at=1.0, ring_at=0.2, early=ringback, audio=voice, hangup="end")
        dialer = SimulatedDialer([peer], tmp_path)
        far = dialer.place(target("sip:a@b"), rate)
        call = Call(far)
        # What the far party hears: a 300 Hz tone the whole time (its call's own player).
        call.player.start(iter([tone(300, 0.02)] * 200))
        sent: list[np.ndarray] = []
        call.add_tap(Speech(sent))  # what the far party says, as its call's taps see it
        call.start()
        far.dial()
        seen = await follow(far, 5)
        assert [s for _, s in seen] == ["ringing", "early_media", "answered", "ended"]
        assert seen[-1][0] == 2.0  # hangup@end: the 1 s of audio played
        await call.finish()
        return sent

    sent = np.concatenate(on_virtual_clock(main))
    n = samples_per_frame(rate)
    assert rms(sent[: 10 * n]) == 0  # nothing before the ring at 0.2 s
    assert rms(sent[10 * n : 50 * n]) > 5000 and np.array_equal(sent[10 * n : 50 * n], ringback[: 40 * n])
    assert np.array_equal(sent[50 * n : 100 * n], voice)  # from the answer at 1.0 s, every sample
    heard, heard_rate = read_wav(tmp_path / "peer-1-heard.wav")
    assert heard_rate == rate and abs(len(heard) - 100 * n) <= n  # 2 s of call from its first frame, within a frame
    assert rms(heard) > 5000


def test_a_peer_dialled_twice_writes_a_file_for_each_dial(tmp_path: Path) -> None:
    async def main() -> None:
        dialer = SimulatedDialer([parse_peer("sip:x@y=busy"), parse_peer("sip:a@b=answer,rate:16000")], tmp_path)
        for _ in range(2):
            far = dialer.place(target("sip:a@b"), 8000)
            assert far.rate == 16000  # rate:16000, a wideband (G.722) far party whatever the caller's
            call = Call(far)
            call.start()
            far.dial()
            await asyncio.sleep(0.1)
            await call.hangup()
            await call.finish()

    on_virtual_clock(main)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peer-2-heard-2.wav", "peer-2-heard.wav"]


def test_swml_run_passes_its_peers_to_the_call(tmp_path: Path) -> None:
    audio = tmp_path / "agent.wav"
    audio.write_bytes(wav_bytes(tone(1000, 1.0)))
    res = run_doc("sections: {main: [answer]}", tmp_path, peers=[parse_peer(f"sip:a@b=answer,audio:{audio}")])
    assert res.call.options.dialer is res.dialer
    far = res.dialer.place(target("sip:a@b"), 8000)
    assert far.heard_path == tmp_path / "out" / "peer-1-heard.wav"


def test_swml_run_connects_the_caller_to_its_peer(tmp_path: Path) -> None:
    """A user's run: `swml run --peer` with a connect script; the caller's recording holds both
    parties, the peer heard the caller, and the summary names the peer's file."""
    (tmp_path / "agent.wav").write_bytes(wav_bytes(tone(1000, 3.0)))
    (tmp_path / "caller.wav").write_bytes(wav_bytes(tone(440, 10.0)))
    doc = tmp_path / "call.yaml"
    doc.write_text(
        "sections: {main: [answer, {record_call: {stereo: true}}, {connect: {to: 'sip:agent@example.com'}}, hangup]}"
    )
    out = tmp_path / "out"
    peer = f"sip:agent@example.com=answer@2s,audio:{tmp_path / 'agent.wav'},hangup@end"
    cmd = [sys.executable, "-m", "swml_engine", "run", str(doc), "--out", str(out), "--peer", peer]
    r = subprocess.run(
        [*cmd, "--caller-audio", str(tmp_path / "caller.wav")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "heard.wav, peer-1-heard.wav" in r.stdout
    (meta_path,) = (out / "recordings").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert [(b["to"], b["start"], b["end"]) for b in meta["bridges"]] == [("sip:agent@example.com", 2.0, 5.0)]
    audio, rate = read_wav(meta_path.with_suffix(".wav"))
    assert spectrum_peaks(audio[round(2.5 * rate) : round(4.5 * rate), 1], rate, 1) == [pytest.approx(1000, abs=5)]
    assert spectrum_peaks(audio[round(2.5 * rate) : round(4.5 * rate), 0], rate, 1) == [pytest.approx(440, abs=5)]
    heard, heard_rate = read_wav(out / "peer-1-heard.wav")
    assert spectrum_peaks(heard[round(2.5 * rate) : round(4.5 * rate)], heard_rate, 1) == [pytest.approx(440, abs=5)]
