"""A bridge on `swml serve` (connect), end to end on loopback: our own caller (a SIP UAC sending a tone
over RTP) calls the service, whose script connects it to our own far party (far_party.py, a tone of its
own). What is checked is what a user would: what each party hears on the wire, the SIP each gets, the
digits each receives, the stereo recording (the caller left, the far party right) and its metadata.

The service runs in the test's event loop; every wait is polled with a generous deadline (a busy machine
is slower, never wrong), and audio is judged by its frequencies, never by packet counts against time."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import dtmf_tones, read_jsonl, read_wav, tone
from swml_engine.call import Call
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.service.server import Service
from swml_engine.transports.sip.codecs import SUPPORTED
from swml_engine.transports.sip.message import Response
from swml_engine.transports.sip.sdp import parse_offer

from .far_party import EVENT_PT, FarParty, running_service, until
from .rtp_parties import seam, share

#: The caller's tone and the far party's: each channel of a recording says whose audio it holds.
CALLER_HZ, FAR_HZ = 600.0, 1000.0


class Caller(FarParty):
    """The caller: calls the service (an INVITE with our offer), ACKs each 2xx, and from its answer on
    talks as a far party does (a tone over RTP, digits, hold, BYE; far_party.py). Its in-dialog requests
    go to the engine's Contact, with the dialog's tags."""

    def __init__(
        self, service: Service, *, codec: str = "PCMA", freq: float = CALLER_HZ, max_forwards: int = 70, **kwargs: Any
    ) -> None:
        super().__init__((), codec=codec, freq=freq, **kwargs)
        self.max_forwards = max_forwards
        self.service_port = service.sip_port
        self.call_id = f"caller-{random.getrandbits(48):x}@127.0.0.1"
        #: The engine's 200 to our INVITE (its To tag, Contact and SDP answer).
        self.ok: Response | None = None

    @property
    def uri(self) -> str:
        return f"sip:alice@127.0.0.1:{self.port}"

    async def call(self, timeout: float = 20.0) -> None:
        """INVITE the service and wait for its 200 (ACKed); our tone starts to its SDP address."""
        self.engine = ("127.0.0.1", self.service_port)
        self.invite = self.in_dialog("INVITE", next(self._cseq), body=self.sdp())
        self._send(self.invite)
        assert await until(lambda: self.ok is not None, timeout), [r.status for r in self.responses]
        assert self.ok is not None
        self.engine_rtp = parse_offer(self.ok.text).remote
        self.answered.set()
        self.resume_rtp()

    def _dialog(self) -> tuple[str, str, str, str]:
        ours = f"<sip:alice@127.0.0.1>;tag={self.tag}"
        ok = self.ok
        if ok is None:  # the INVITE: no dialog yet
            service = f"sip:record@127.0.0.1:{self.service_port}"
            return service, ours, f"<{service}>", self.call_id
        return str(ok.contacts()[0].uri), ours, ok.headers.get("to") or "", self.call_id

    def _on_response(self, response: Response) -> None:
        if self.ok is None and response.cseq.method == "INVITE" and 200 <= response.status < 300:
            self.ok = response
        super()._on_response(response)


Body = Callable[[Service, Caller, FarParty], Awaitable[None]]


def run(
    body: Body,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    far: dict[str, Any] | None = None,
    caller: dict[str, Any] | None = None,
    record: str = "{stereo: true, format: wav}",
    after: str = "",
    **config: Any,
) -> None:
    """``body`` with our far party (``far``: FarParty's arguments), a service whose script answers,
    starts ``record_call: record``, connects to it and goes on with ``after`` (YAML step lines), and our
    caller (``caller``: Caller's arguments), in an event loop of its own."""

    async def main() -> None:
        async with FarParty(**({"freq": FAR_HZ} | (far or {}))) as party:
            script = "\n".join(
                [
                    "version: 1.0.0",
                    "sections:",
                    "  main:",
                    "    - answer",
                    f"    - record_call: {record}",
                    f"    - connect: {{to: '{party.uri}'}}",
                    after,
                ]
            )
            async with (
                running_service(tmp_path, monkeypatch, script, **config) as service,
                Caller(service, **(caller or {})) as calling,
            ):
                await body(service, calling, party)

    asyncio.run(main())


def the_call(service: Service) -> Call:
    """The one caller's call (while its script runs)."""
    [call] = service.calls.values()
    return call


async def bridged(service: Service, caller: Caller, far: FarParty) -> Call:
    """Call, and wait until each party hears the other (the bridge is up)."""
    await caller.call()
    assert await until(far.acked.is_set), far.methods()
    assert await until(lambda: hears(caller, FAR_HZ))
    assert await until(lambda: hears(far, CALLER_HZ))
    return the_call(service)


def hears(party: FarParty, freq: float, since: int = 0) -> bool:
    """Whether the last 0.2 s ``party`` got (of what came from ``heard[since]`` on) is mostly ``freq``."""
    rate = party.info.rate
    audio = party.heard_audio(since)[-rate // 5 :]
    return len(audio) == rate // 5 and share(audio, freq, rate) > 0.8


@dataclass(frozen=True)
class Sides:
    """The party a test acts with on one leg, the one on the other leg, and the tone each says."""

    party: FarParty
    other: FarParty
    said: float
    heard: float


def sides(caller: Caller, far: FarParty, who: str) -> Sides:
    """``who`` (``caller`` or ``far party``) acting, the other party listening."""
    if who == "caller":
        return Sides(caller, far, CALLER_HZ, FAR_HZ)
    return Sides(far, caller, FAR_HZ, CALLER_HZ)


async def hear_each_other(s: Sides) -> None:
    """Each party hears the other from now on (what came before, such as a hold, does not count)."""
    since, other_since = len(s.party.heard), len(s.other.heard)
    assert await until(lambda: hears(s.party, s.heard, since))
    assert await until(lambda: hears(s.other, s.said, other_since))


async def hang_up(caller: Caller, far: FarParty) -> None:
    """The caller hangs up; the far party gets the engine's BYE."""
    caller.hang_up()
    assert await until(far.bye.is_set)


def keys_in(audio: np.ndarray) -> list[str]:
    """The DTMF keys a detector hears in 8 kHz audio, in order."""
    detector = InbandDtmfDetector(8000)
    return [d for i in range(0, len(audio) - 159, 160) if (d := detector.feed(audio[i : i + 160]))]


def events_of(tmp_path: Path) -> list[dict[str, Any]]:
    """The events of the (one) call the service ran."""
    [path] = (tmp_path / "data" / "calls").glob("*.jsonl")
    return read_jsonl(path)


async def finished_recording(tmp_path: Path) -> dict[str, Any]:
    """The (one) recording's metadata, once it is finalised."""

    def read() -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in (tmp_path / "data" / "recordings").glob("*.json")]

    assert await until(lambda: any(m.get("end_reason") for m in read()))
    [meta] = read()
    return meta


def channels(meta: dict[str, Any], rate: int = 8000) -> tuple[np.ndarray, np.ndarray]:
    """The stereo recording's left and right channels (at ``rate``)."""
    audio, got = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert got == rate and audio.shape[1] == 2
    return audio[:, 0], audio[:, 1]


def at(samples: np.ndarray, start: float, end: float, rate: int = 8000) -> np.ndarray:
    """Seconds ``start`` to ``end`` of a recording's channel."""
    return samples[round(start * rate) : round(end * rate)]


def level(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


# --- 1. hold and re-INVITEs keep the bridge --------------------------------------------------------------


async def reinvite(party: FarParty, direction: str, address: str = "127.0.0.1") -> Response:
    """``party`` sends a re-INVITE with its SDP (its current RTP port, ``direction``, ``c=address``):
    the engine's 200."""
    request = party.request("INVITE", body=party.sdp(direction).replace("c=IN IP4 127.0.0.1", f"c=IN IP4 {address}"))
    assert await until(lambda: bool(party.answers_to(request)))
    [answer] = party.answers_to(request)
    assert answer.status == 200, answer.status
    return answer


@pytest.mark.parametrize("holder", ["caller", "far party"])
def test_hold_resume_and_a_new_rtp_port_on_either_leg_keep_the_bridge(
    holder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks: dict[str, float] = {}
    holds_left = holder == "caller"  # whose channel of the recording goes quiet while it holds silently

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        acting = sides(caller, far, holder)
        party, other, said, heard = acting.party, acting.other, acting.said, acting.heard
        await asyncio.sleep(1.0)

        # hold, sendonly (music on hold: its tone goes on): answered recvonly, nothing sent to it meanwhile
        assert "a=recvonly" in (await reinvite(party, "sendonly")).text
        marks["hold"] = call.now()
        await asyncio.sleep(0.3)
        since, other_since = len(party.heard), len(other.heard)
        await asyncio.sleep(1.0)
        assert len(party.heard_audio(since)) == 0
        assert hears(other, said, other_since)  # its hold music still crosses

        # hold, inactive, silent for twice the RTP timeout: the bridge stays, nobody gets a BYE
        assert "a=inactive" in (await reinvite(party, "inactive")).text
        party.stop_rtp()
        marks["silent"] = call.now()
        await asyncio.sleep(2.0)
        assert not caller.bye.is_set() and not far.bye.is_set() and not call.is_ended

        # off hold: each hears the other again
        assert "a=sendrecv" in (await reinvite(party, "sendrecv")).text
        party.resume_rtp()
        marks["resumed"] = call.now()
        await hear_each_other(acting)
        await asyncio.sleep(1.0)

        # a new RTP port: the engine sends there, and takes the party's audio from there
        await party.move_rtp()
        await reinvite(party, "sendrecv")
        marks["moved"] = call.now()
        await hear_each_other(acting)
        await asyncio.sleep(1.0)
        assert not call.is_ended and not far.bye.is_set()
        marks["bye"] = call.now()
        await hang_up(caller, far)
        meta = await finished_recording(tmp_path)

        # the recording: the whole call, the caller left and the far party right before and after
        start = float(meta["call_time"])
        assert float(meta["duration"]) == pytest.approx(marks["bye"] - start, abs=0.3), (meta, marks)
        left, right = channels(meta)
        for name in ("hold", "silent", "moved", "bye"):
            window = (marks[name] - start - 0.7, marks[name] - start - 0.1)
            assert share(at(left, *window), CALLER_HZ) > 0.8, name
            assert share(at(right, *window), FAR_HZ) > 0.8, name
        # while the party held silently its channel is silence of that length, the other one goes on
        silent = (marks["silent"] - start + 0.3, marks["resumed"] - start - 0.3)
        quiet, talking = (left, right) if holds_left else (right, left)
        assert level(at(quiet, *silent)) < 100
        assert share(at(talking, *silent), heard) > 0.8
        [leg] = meta["bridges"]
        assert leg["to"] == far.uri and leg["end"] is not None

    run(body, tmp_path, monkeypatch, rtp_timeout=1.0)


@pytest.mark.parametrize("holder", ["caller", "far party"])
def test_a_hold_the_old_way_on_either_leg_is_not_taken_for_a_vanished_peer(
    holder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 2543's hold: the SDP address 0.0.0.0 (still sendrecv); the holder sends nothing either."""

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        acting = sides(caller, far, holder)
        party = acting.party
        await reinvite(party, "sendrecv", address="0.0.0.0")
        party.stop_rtp()
        await asyncio.sleep(0.3)
        since = len(party.heard)
        await asyncio.sleep(2.0)  # twice the RTP timeout
        assert len(party.heard) == since  # nothing sent to it
        assert not call.is_ended and not caller.bye.is_set() and not far.bye.is_set()
        await reinvite(party, "sendrecv")
        party.resume_rtp()
        await hear_each_other(acting)
        await hang_up(caller, far)

    run(body, tmp_path, monkeypatch, rtp_timeout=1.0)


@pytest.mark.parametrize("mover", ["caller", "far party"])
def test_an_offerless_reinvite_whose_ack_moves_the_media_keeps_the_bridge(
    mover: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        acting = sides(caller, far, mover)
        party = acting.party
        await party.move_rtp()
        reoffer = party.request("INVITE")  # no SDP: the engine offers its session, our ACK answers (new port)
        assert await until(lambda: bool(party.answers_to(reoffer)))
        [ok] = party.answers_to(reoffer)
        assert ok.status == 200 and "a=sendrecv" in ok.text
        [m] = [line for line in ok.text.splitlines() if line.startswith("m=audio")]
        assert m.split()[3] == str(party.info.static_pt)  # the codec in use, first
        await hear_each_other(acting)
        assert not call.is_ended
        await hang_up(caller, far)

    run(body, tmp_path, monkeypatch)


def test_a_far_party_changing_codec_and_rate_by_reinvite_stays_heard_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks: dict[str, float] = {}

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(0.5)
        far.use_codec("G722")  # from PCMU at 8 kHz to G.722 at 16 kHz, mid-bridge
        answer = await reinvite(far, "sendrecv")
        assert "a=rtpmap:9 G722/8000" in answer.text
        marks["changed"] = call.now()
        since, far_since = len(caller.heard), len(far.heard)
        assert await until(lambda: hears(far, CALLER_HZ, far_since))  # in G.722 now
        await asyncio.sleep(1.0)
        assert hears(caller, FAR_HZ, since)
        marks["bye"] = call.now()
        await hang_up(caller, far)
        meta = await finished_recording(tmp_path)
        start = float(meta["call_time"])
        left, right = channels(meta)
        window = (marks["changed"] - start + 0.2, marks["bye"] - start - 0.1)
        assert share(at(left, *window), CALLER_HZ) > 0.8 and share(at(right, *window), FAR_HZ) > 0.8

    run(body, tmp_path, monkeypatch)


@pytest.mark.parametrize(("first", "then"), [("PCMU", "G722"), ("G722", "PCMU")])
def test_a_caller_changing_codec_and_rate_mid_bridge_is_heard_and_recorded_without_a_seam(
    first: str, then: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recording keeps the call at its first rate; the caller's new codec runs at the other one.
    Each frame converted on its own left a step at every frame's edge (a 50 Hz buzz) in what the caller
    heard and in the recording's left channel."""
    marks: dict[str, float] = {}

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(0.5)
        caller.use_codec(then)
        await reinvite(caller, "sendrecv")
        marks["changed"] = call.now()
        since = len(caller.heard)
        await asyncio.sleep(1.5)
        marks["bye"] = call.now()
        heard, rate = caller.heard_audio(since), caller.info.rate
        await hang_up(caller, far)
        assert call.rate == SUPPORTED[first].rate  # (the recording held it)
        assert seam(heard[rate // 5 :], FAR_HZ, rate) < 0.06
        meta = await finished_recording(tmp_path)
        start, recorded = float(meta["call_time"]), SUPPORTED[first].rate
        left, right = channels(meta, recorded)
        window = (marks["changed"] - start + 0.3, marks["bye"] - start - 0.1)
        assert seam(at(left, *window, rate=recorded), CALLER_HZ, recorded) < 0.06
        assert share(at(right, *window, rate=recorded), FAR_HZ, recorded) > 0.8

    run(body, tmp_path, monkeypatch, caller={"codec": first})


def test_a_far_party_changing_between_pcmu_and_pcma_leaves_no_hole_in_its_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new codec of the same rate: the audio already waiting was dropped with the old jitter buffer
    and the new one started after its delay (60 ms of silence in the far party's voice)."""
    marks: dict[str, float] = {}

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(0.5)
        marks["before"] = call.now()
        far.use_codec("PCMA")
        await reinvite(far, "sendrecv")
        await asyncio.sleep(1.0)
        marks["bye"] = call.now()
        await hang_up(caller, far)
        meta = await finished_recording(tmp_path)
        start = float(meta["call_time"])
        _, right = channels(meta)
        heard = at(right, marks["before"] - start, marks["bye"] - start - 0.1)
        assert share(heard, FAR_HZ) > 0.8 and silent_runs(heard) == []

    run(body, tmp_path, monkeypatch)


def test_a_wideband_caller_bridged_to_a_narrowband_far_party_is_recorded_at_16_khz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        assert call.rate == 16000
        invite = far.invite
        assert invite is not None  # the far leg was offered G.722 first: the caller's is wideband
        [m] = [line for line in invite.text.splitlines() if line.startswith("m=audio")]
        assert m.split()[3] == "9"
        await asyncio.sleep(1.5)
        marks = (call.now() - 1.2, call.now() - 0.2)
        await hang_up(caller, far)
        meta = await finished_recording(tmp_path)
        start = float(meta["call_time"])
        left, right = channels(meta, 16000)
        window = (marks[0] - start, marks[1] - start)
        assert share(at(left, *window, rate=16000), CALLER_HZ, 16000) > 0.8
        assert share(at(right, *window, rate=16000), FAR_HZ, 16000) > 0.8

    run(body, tmp_path, monkeypatch, caller={"codec": "G722"})


def test_a_caller_gone_without_bye_mid_bridge_ends_both_legs_after_the_rtp_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(0.5)
        caller.stop_rtp()  # its phone lost power: no packet, no BYE
        gone = call.now()
        assert await until(caller.bye.is_set) and await until(far.bye.is_set)
        [bye] = [r for r in caller.requests if r.method == "BYE"]
        assert "RTP timeout" in (bye.headers.get("reason") or "")
        meta = await finished_recording(tmp_path)
        [leg] = meta["bridges"]
        assert leg["end"] == pytest.approx(gone + 1.0, abs=0.5)
        assert float(meta["call_time"]) + float(meta["duration"]) == pytest.approx(leg["end"], abs=0.3)

    run(body, tmp_path, monkeypatch, rtp_timeout=1.0)


def silent_runs(samples: np.ndarray, rate: int = 8000) -> list[int]:
    """The lengths, in 20 ms frames, of each run of silent frames in ``samples``."""
    n = rate // 50
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    runs, current = [], 0
    for frame in frames:
        if level(frame) < 50:
            current += 1
        elif current:
            runs, current = [*runs, current], 0
    return [*runs, current] if current else runs


@pytest.mark.parametrize("loser", ["caller", "far party"])
def test_packets_lost_on_one_leg_are_silence_of_their_length_across_the_bridge(
    loser: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        acting = sides(caller, far, loser)
        party, other = acting.party, acting.other
        await asyncio.sleep(0.5)
        since = len(other.heard)
        began = call.now()
        party.lose(5)  # 100 ms of its audio lost on the way
        await asyncio.sleep(1.0)
        ended = call.now()
        heard = other.heard_audio(since)
        await hang_up(caller, far)
        meta = await finished_recording(tmp_path)
        # the other party heard a gap of exactly those five frames in the tone, nothing else missing
        assert max(silent_runs(heard)) == 5, silent_runs(heard)
        start = float(meta["call_time"])
        left, right = channels(meta)
        first = int((began - start) * 50) / 50  # (on the recording's 20 ms frame boundaries)
        lost = at(left if loser == "caller" else right, first, ended - start)
        assert max(silent_runs(lost)) == 5, silent_runs(lost)  # the recording: the same gap, in its place
        assert float(meta["duration"]) == pytest.approx(call.now() - start, abs=0.5)

    run(body, tmp_path, monkeypatch)


def test_a_wideband_far_partys_reordered_packets_are_heard_and_recorded_without_a_click(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """G.722 decodes with state from packet to packet: decoded as they arrived, each swapped pair threw
    the decoder off for a few frames (clicks at 40% of the tone in the recording's right channel)."""
    marks: dict[str, float] = {}

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(0.5)
        marks["swapped"] = call.now()
        far.reorder(20)  # 0.8 s of its audio, every pair swapped on the way
        await asyncio.sleep(1.2)
        marks["bye"] = call.now()
        await hang_up(caller, far)
        meta = await finished_recording(tmp_path)
        start = float(meta["call_time"])
        _, right = channels(meta, 16000)
        window = at(right, marks["swapped"] - start, marks["bye"] - start - 0.1, rate=16000)
        assert seam(window, FAR_HZ, 16000) < 0.06

    run(body, tmp_path, monkeypatch, caller={"codec": "G722"}, far={"codec": "G722"})


# --- 2. DTMF across the bridge -----------------------------------------------------------------------------


def test_rfc_4733_digits_cross_the_bridge_both_ways_once_each_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        await bridged(service, caller, far)
        for digit in "147":  # pressed quickly one after the other: they cross one at a time, in order
            caller.send_digit(digit)
        assert await until(lambda: len(far.digit_events()) >= 3)
        for digit in "258":
            far.send_digit(digit)
        assert await until(lambda: len(caller.digit_events()) >= 3)
        await asyncio.sleep(0.5)  # (nothing more comes: no digit doubled)
        assert far.digit_events() == ["1", "4", "7"]
        assert caller.digit_events() == ["2", "5", "8"]
        # each event's end packet three times, a packet interval apart (RFC 4733 §2.5.1.4), not in a burst
        # one loss could take whole: other packets (the next key's, the voice) come between them
        for party, digits in ((far, "147"), (caller, "258")):
            for digit in digits:
                code = "0123456789*#".index(digit)
                ends = [i for i, (pt, p) in enumerate(party.heard) if pt == EVENT_PT and p[0] == code and p[1] & 0x80]
                assert len(ends) == 3 and ends[2] - ends[0] > 2, (digit, ends)
        # the far leg's events (its digits, both ways) are not kept in memory while the call lasts: a long
        # call's far leg once held every one of them
        [leg] = service.dialer.legs
        assert leg.call is not None and leg.call.events.events == []
        await hang_up(caller, far)
        await finished_recording(tmp_path)
        digits = [(e["direction"], e["digit"]) for e in events_of(tmp_path) if e["type"] == "dtmf"]
        # the caller's call saw its own keys, and the far party's sent to it
        assert digits == [("received", d) for d in "147"] + [("sent", d) for d in "258"]

    run(body, tmp_path, monkeypatch)


def test_a_far_leg_without_telephone_events_gets_the_callers_digits_as_tones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        await bridged(service, caller, far)
        since = len(far.heard)
        for digit in "147":
            caller.send_digit(digit)
        await asyncio.sleep(1.5)
        # each key's two tones, in what the far party hears
        assert keys_in(far.heard_audio(since)) == ["1", "4", "7"]
        assert far.event_packets == []
        assert hears(far, CALLER_HZ)  # and the caller still, after them
        await hang_up(caller, far)

    run(body, tmp_path, monkeypatch, far={"telephone_event": False})


def test_a_callers_hash_ends_its_recording_mid_bridge_and_the_bridge_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(1.0)
        caller.send_digit("#")
        pressed = call.now()
        meta = await finished_recording(tmp_path)
        assert meta["end_reason"] == "terminator"
        assert float(meta["call_time"]) + float(meta["duration"]) == pytest.approx(pressed, abs=0.3)
        [leg] = meta["bridges"]
        assert leg["to"] == far.uri and leg["end"] is None  # (still bridged when the recording ended)
        since, far_since = len(caller.heard), len(far.heard)
        await asyncio.sleep(1.0)
        assert hears(caller, FAR_HZ, since) and hears(far, CALLER_HZ, far_since)
        assert far.digit_events() == ["#"] and not call.is_ended
        await hang_up(caller, far)

    run(body, tmp_path, monkeypatch, record="{stereo: true, format: wav, terminators: '#'}")


def test_a_callers_hash_in_band_ends_its_recording_mid_bridge_and_reaches_the_far_party_as_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller without telephone-events: its key is tones in its audio, 2 s after its answer."""
    voice = tone(CALLER_HZ, 2.0)
    keyed = np.concatenate([voice, dtmf_tones("#", on=0.1, off=0.0, level=0.4), tone(CALLER_HZ, 8.0)])

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        answered = call.now()
        meta = await finished_recording(tmp_path)
        assert meta["end_reason"] == "terminator"
        assert float(meta["call_time"]) + float(meta["duration"]) == pytest.approx(answered + 2.1, abs=0.5)
        await asyncio.sleep(1.0)
        # the far party (it takes telephone-events) got the key as one event, in place of its tones
        assert far.digit_events() == ["#"] and keys_in(far.heard_audio()) == []
        assert hears(far, CALLER_HZ) and hears(caller, FAR_HZ) and not call.is_ended  # the bridge goes on
        await hang_up(caller, far)
        digits = [(e["direction"], e["digit"]) for e in events_of(tmp_path) if e["type"] == "dtmf"]
        assert digits == [("received", "#")]

    run(
        body,
        tmp_path,
        monkeypatch,
        caller={"telephone_event": False, "audio": keyed},
        record="{stereo: true, format: wav, terminators: '#'}",
    )


def key_presses(digits: str, voice: float, rate: int = 8000) -> np.ndarray:
    """A phone sending its keys as tones: ``voice`` Hz for 2 s (the bridge is up by then), then each key
    (100 ms) with 0.5 s of that voice after it, then the voice for 8 s more."""
    parts = [tone(voice, 2.0, rate)]
    for digit in digits:
        parts += [dtmf_tones(digit, rate, on=0.1, off=0.0, level=0.4), tone(voice, 0.5, rate)]
    return np.concatenate([*parts, tone(voice, 8.0, rate)])


@pytest.mark.parametrize("who", ["caller", "far party"])
def test_keys_pressed_as_tones_reach_a_party_that_takes_events_as_one_event_each_in_order(
    who: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One party's phone has no telephone-event and sends its keys as tones; the other's took
    telephone-event and listens for events: it gets each key once, as an event, and not as tones."""
    caller_tones = who == "caller"
    pressing_hz = CALLER_HZ if caller_tones else FAR_HZ

    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        await bridged(service, caller, far)
        s = sides(caller, far, who)
        assert await until(lambda: len(s.other.digit_events()) >= 3)
        await asyncio.sleep(1.0)  # (nothing more comes: no key doubled)
        assert s.other.digit_events() == ["1", "4", "7"]
        assert keys_in(s.other.heard_audio()) == []  # the rest of each key's tones gave way to its event
        assert hears(s.other, s.said)  # and the voice goes on after them
        await hang_up(caller, far)

    pressing = {"telephone_event": False, "audio": key_presses("147", pressing_hz), "freq": pressing_hz}
    run(
        body,
        tmp_path,
        monkeypatch,
        caller=pressing if caller_tones else None,
        far=None if caller_tones else pressing,
    )


# --- 3. either side hanging up -------------------------------------------------------------------------------

#: After connect: a prompt the caller should hear (425 Hz, 1 s), then the script hangs up.
PROMPT_HZ = 425.0
AFTER = "    - play: {url: 'ring:de'}\n    - hangup\n"


def test_the_far_partys_bye_returns_to_the_script_which_the_caller_then_hears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(1.0)
        since = len(caller.heard)
        far.stop_rtp()
        bye = far.request("BYE")
        hung_up = call.now()
        assert await until(lambda: hears(caller, PROMPT_HZ, since))  # the script's next step, to the caller
        assert not caller.bye.is_set()
        assert await until(caller.bye.is_set)  # then its hangup
        assert [r.status for r in far.answers_to(bye)] == [200]
        meta = await finished_recording(tmp_path)
        [leg] = meta["bridges"]
        assert leg["to"] == far.uri and leg["end"] == pytest.approx(hung_up, abs=0.3)
        start = float(meta["call_time"])
        assert float(meta["duration"]) > leg["end"] - start + 0.8  # the prompt after the bridge is in it
        left, right = channels(meta)
        assert share(at(right, leg["end"] - start - 0.6, leg["end"] - start - 0.1), FAR_HZ) > 0.8
        assert share(at(right, leg["end"] - start + 0.2, leg["end"] - start + 0.8), PROMPT_HZ) > 0.8
        assert share(at(left, leg["end"] - start - 0.6, leg["end"] - start + 0.8), CALLER_HZ) > 0.8
        events = events_of(tmp_path)
        assert [e["state"] for e in events if e["type"] == "connect.state"] == [
            "connecting",
            "connected",
            "disconnected",
        ]
        assert {e["name"]: e["value"] for e in events if e["type"] == "vars.set"}["connect_result"] == "connected"
        assert [e["reason"] for e in events if e["type"] == "call.state" and e["state"] == "ended"] == ["hangup"]
        # who was on the right channel, and when: the far leg's call id (as its connect.leg events name it)
        [answered] = [e for e in events if e["type"] == "connect.leg" and e["state"] == "answered"]
        [connected] = [e for e in events if e["type"] == "connect.state" and e["state"] == "connected"]
        assert leg["call_id"] == answered["call_id"] and leg["start"] == pytest.approx(connected["t"], abs=0.1)

    run(body, tmp_path, monkeypatch, after=AFTER)


def test_the_callers_bye_ends_the_far_leg_with_a_bye_and_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        call = await bridged(service, caller, far)
        await asyncio.sleep(1.0)
        bye = caller.request("BYE")
        caller.stop_rtp()
        hung_up = call.now()
        assert await until(lambda: bool(caller.answers_to(bye)))
        assert await until(far.bye.is_set)  # the engine's BYE to the far party
        [far_bye] = [r for r in far.requests if r.method == "BYE"]
        assert far.invite is not None and far_bye.call_id == far.invite.call_id
        assert [r.status for r in caller.answers_to(bye)] == [200]
        meta = await finished_recording(tmp_path)
        [leg] = meta["bridges"]
        assert leg["to"] == far.uri and leg["end"] == pytest.approx(hung_up, abs=0.3)
        start = float(meta["call_time"])
        assert float(meta["call_time"]) + float(meta["duration"]) == pytest.approx(hung_up, abs=0.3)
        left, right = channels(meta)
        window = (leg["end"] - start - 0.6, leg["end"] - start - 0.1)
        assert share(at(left, *window), CALLER_HZ) > 0.8 and share(at(right, *window), FAR_HZ) > 0.8
        events = events_of(tmp_path)
        assert [e.get("reason") for e in events if e["type"] == "connect.state"][-1] == "caller_hangup"
        assert [e["reason"] for e in events if e["type"] == "call.state" and e["state"] == "ended"] == ["remote_hangup"]
        assert await until(lambda: not service.calls and not service.dialer.legs)  # nothing left over
        assert not caller.bye.is_set()  # (the script did not go on to its hangup)

    run(body, tmp_path, monkeypatch, after=AFTER)


def test_a_bye_answered_is_no_longer_pending_for_a_stopping_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        await bridged(service, caller, far)
        await hang_up(caller, far)  # the engine's BYE to the far party, which answers 200 at once
        assert await until(lambda: bool(far.sent) and far.sent[-1].cseq.method == "BYE")
        assert await until(lambda: service.endpoint.ua.pending("BYE") == 0, timeout=3.0)

    run(body, tmp_path, monkeypatch)


# --- hop counts: a loop through the engine ends ---------------------------------------------------------


def test_the_far_legs_invite_carries_the_callers_hop_count_less_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        await bridged(service, caller, far)
        [invite] = [r for r in far.requests if r.method == "INVITE"]
        assert invite.headers.get("max-forwards") == "4"
        await hang_up(caller, far)

    run(body, tmp_path, monkeypatch, caller={"max_forwards": 5})


def test_a_call_with_no_hops_left_places_no_far_leg_and_the_script_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Max-Forwards 0: the engine is the request's end (it answers), but dials no further.
    async def body(service: Service, caller: Caller, far: FarParty) -> None:
        await caller.call()

        def failed() -> list[dict[str, Any]]:
            return [e for e in events_of(tmp_path) if e["type"] == "connect.leg" and e["state"] == "failed"]

        assert await until(lambda: bool(failed()))
        [leg] = failed()
        assert leg["reason"] == "error" and "Max-Forwards 0" in leg["text"], leg
        assert not far.requests  # never dialled
        assert await until(
            lambda: any(e["type"] == "step.start" and e["method"] == "play" for e in events_of(tmp_path))
        )
        caller.hang_up()

    run(body, tmp_path, monkeypatch, caller={"max_forwards": 0}, after="    - play: 'silence:30'")
