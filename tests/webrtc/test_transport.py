"""WebRtcCallTransport with real aiortc peers: a real Call runs a real SWML script on the transport while
an RTCPeerConnection in the test plays the browser — it sends a tone from a microphone of its own and
decodes what it receives.

ICE: aioice never gathers loopback (127.0.0.1), so both peers meet on this machine's other addresses
(eth0, 192.0.2.2 here) without naming them; a machine with only loopback cannot run these tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aioice.ice import get_host_addresses
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs.g711 import PcmuEncoder
from aiortc.codecs.opus import OpusEncoder

from conftest import PATIENCE, read_wav, spectrum_peaks, tone, wav_bytes
from swml_engine.call import Call, CallOptions
from swml_engine.document.loader import load_text
from swml_engine.events import EventLog
from swml_engine.media.audio import frames_of, resample
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.methods import REGISTRY
from swml_engine.script.context import Variables
from swml_engine.session import call_scope, run_call
from swml_engine.transports.webrtc import (
    MAX_CANDIDATE_LINES,
    MAX_CANDIDATES,
    MAX_LISTEN_FRAMES,
    MAX_SPEAK_FRAMES,
    ListenTrack,
    SpeakBuffer,
    WebRtcCallTransport,
    WebRtcGone,
    WebRtcReject,
    check_offer,
)

from .nat import one_to_one_nat
from .peer import MIC_HZ, BeyondNatBrowser, Browser, NamingBrowser, wait_until

PROMPT_HZ = 1000.0
PROMPT_SECONDS = 1.2


@dataclass
class Outcome:
    call: Call
    transport: WebRtcCallTransport
    browser: Browser
    events: EventLog
    vars: dict[str, Any]

    def recording(self) -> tuple[np.ndarray, int]:
        (wav,) = (self.call.options.data_dir or Path()).glob("recordings/*.wav")
        return read_wav(wav)


async def _call(
    tmp_path: Path,
    script: str,
    browser: Browser,
    during: Callable[[WebRtcCallTransport, Browser], Awaitable[None]] | None = None,
    **options: Any,
) -> Outcome:
    transport = WebRtcCallTransport(await browser.offer(), browser.signal, peer="test browser", **options)
    await transport.prepare()
    events = EventLog()
    call = Call(transport, events=events, options=CallOptions(data_dir=tmp_path, allow_file_urls=True))
    variables = Variables(call=call_scope(call, from_="browser", to="engine", headers=[]))
    doc = load_text(script.replace("TONE", (tmp_path / "prompt.wav").as_uri()), methods=REGISTRY)
    running = asyncio.ensure_future(run_call(doc, call, variables))
    try:
        if during is not None:
            await during(transport, browser)
        await asyncio.wait_for(running, PATIENCE)
    finally:
        await browser.close()
    # The call's end released everything of the transport: no task of its peer connection is left running.
    await wait_until(lambda: asyncio.all_tasks() == {asyncio.current_task()}, "every task of the call ended")
    return Outcome(call, transport, browser, events, variables.vars)


def run(
    tmp_path: Path,
    script: str,
    browser: Browser | None = None,
    during: Callable[[WebRtcCallTransport, Browser], Awaitable[None]] | None = None,
    **options: Any,
) -> Outcome:
    (tmp_path / "prompt.wav").write_bytes(wav_bytes(tone(PROMPT_HZ, PROMPT_SECONDS, 16000, level=0.4), 16000))
    return asyncio.run(_call(tmp_path, script, browser or Browser(), during, **options))


RECORDED = """
sections:
  main:
    - answer
    - record_call: {stereo: true, format: wav}
    - play: {url: 'TONE'}
    - hangup
"""


def dominant(samples: np.ndarray, rate: int) -> float:
    return spectrum_peaks(samples, rate, count=1)[0]


def assert_recorded_both_ways(out: Outcome, rate: int) -> None:
    """The recording is at ``rate``: the browser's tone on the left, the script's on the right; and the
    browser heard the script's tone."""
    audio, wav_rate = out.recording()
    assert wav_rate == rate and audio.shape[1] == 2
    assert abs(dominant(audio[:, 0], rate) - MIC_HZ) < 15, "the left channel (speak) is the browser's tone"
    assert abs(dominant(audio[:, 1], rate) - PROMPT_HZ) < 15, "the right channel (listen) is the prompt"
    heard = np.concatenate(out.browser.heard)
    assert len(heard) > out.browser.heard_rate * PROMPT_SECONDS / 2, "the browser heard at least half the prompt"
    assert abs(dominant(heard, out.browser.heard_rate) - PROMPT_HZ) < 15


def test_an_opus_call_is_recorded_at_16_khz_both_ways(tmp_path: Path) -> None:
    out = run(tmp_path, RECORDED)
    assert out.transport.codec == "opus" and out.call.rate == 16000
    assert_recorded_both_ways(out, 16000)
    assert [m["type"] for m in out.browser.messages] == ["answer", "ended"]
    assert out.browser.of("answer")[0]["early"] is False and out.browser.of("ended")[0]["reason"] == "hangup"
    states = [e["connection"] for e in out.events.of_type("webrtc.state")]
    assert "connected" in states


def test_a_pcmu_only_offer_is_recorded_at_8_khz(tmp_path: Path) -> None:
    out = run(tmp_path, RECORDED, Browser(codecs=("audio/PCMU",)))
    assert out.transport.codec == "PCMU" and out.call.rate == 8000
    assert_recorded_both_ways(out, 8000)


def test_answer_codecs_narrow_the_answer_to_pcma(tmp_path: Path) -> None:
    out = run(tmp_path, RECORDED.replace("- answer", "- answer: {codecs: PCMA}"))
    answer = out.browser.of("answer")[0]["sdp"]
    assert "PCMA/8000" in answer and "opus" not in answer and "PCMU" not in answer
    assert out.transport.codec == "PCMA" and out.call.rate == 8000
    assert_recorded_both_ways(out, 8000)


def test_answer_codecs_with_none_the_browser_can_use_end_the_call(tmp_path: Path) -> None:
    out = run(tmp_path, "sections: {main: [{answer: {codecs: 'G729,AMR-WB'}}, {play: {url: 'silence:20'}}]}")
    assert out.call.end_reason == "remote_rejected" and out.call.now() < 15
    assert out.browser.messages == [{"type": "ended", "reason": "remote_rejected"}]
    (error,) = out.events.of_type("error")
    assert error["where"] == "webrtc.answer" and "no codec in common" in error["message"]


def test_keypad_digits_reach_the_scripts_prompt(tmp_path: Path) -> None:
    async def press(transport: WebRtcCallTransport, browser: Browser) -> None:
        await wait_until(lambda: browser.of("answer"))
        await asyncio.sleep(0.3)
        transport.press("5")

    script = """
sections:
  main:
    - answer
    - prompt: {play: 'silence:10', max_digits: 1}
    - set: {pressed: '${prompt_value}'}
"""
    out = run(tmp_path, script, during=press)
    assert out.vars["pressed"] == "5" and out.vars["prompt_result"] == "match_digits"
    assert [e["digit"] for e in out.events.of_type("dtmf")] == ["5"]


def test_a_browser_that_closes_its_peer_connection_ends_the_call(tmp_path: Path) -> None:
    async def leave(transport: WebRtcCallTransport, browser: Browser) -> None:
        await wait_until(lambda: transport.call is not None and transport.call.state == "answered")
        await asyncio.sleep(1.0)
        await browser.pc.close()

    script = RECORDED.replace("TONE", "silence:60")
    out = run(tmp_path, script, during=leave)
    assert out.call.end_reason == "remote_hangup"
    assert out.call.now() < 30, "the call ended when the browser left, not at the end of its script"
    (meta,) = [e for e in out.events.of_type("record.state") if e["state"] == "finished"]
    assert meta["end_reason"] == "hangup"
    audio, rate = out.recording()
    assert len(audio) / rate > 0.8 and abs(dominant(audio[:, 0], rate) - MIC_HZ) < 15


def test_early_media_then_the_answer_and_digits_heard_as_tones(tmp_path: Path) -> None:
    """A play before the answer is early media (the answer says early, ``answered`` follows); the
    script's send_digits reaches the browser as the key's two tones in its audio."""
    script = """
sections:
  main:
    - play: {url: 'TONE', auto_answer: false}
    - answer
    - send_digits: {digits: '7'}
    - play: {url: 'silence:0.5'}
    - hangup
"""
    out = run(tmp_path, script)
    assert [m["type"] for m in out.browser.messages] == ["answer", "answered", "ended"]
    assert out.browser.of("answer")[0]["early"] is True
    heard = resample(np.concatenate(out.browser.heard).astype(np.int16), out.browser.heard_rate, 8000)
    detector = InbandDtmfDetector(8000)
    assert [d for frame in frames_of(heard, 8000) if (d := detector.feed(frame))] == ["7"]
    assert abs(dominant(heard[:8000], 8000) - PROMPT_HZ) < 15, "the early media was heard"


def test_a_browser_that_names_its_addresses_by_mdns_only_after_our_answer_is_heard_both_ways(
    tmp_path: Path,
) -> None:
    """As Firefox: its host candidates are ``<uuid>.local`` names it answers for only once it has our
    answer. The service asks for them again after its answer, and ICE does not give up before."""
    browser = NamingBrowser()
    out = run(tmp_path, RECORDED, browser)
    assert "connected" in [e["connection"] for e in out.events.of_type("webrtc.state")]
    assert_recorded_both_ways(out, 16000)
    assert browser.responder is not None and set(browser.names.values()) <= set(browser.responder.asked)


def test_a_service_behind_a_one_to_one_nat_is_reached_at_its_advertised_address(tmp_path: Path) -> None:
    """A service on a cloud host (its interface has a private address; a one-to-one NAT forwards the
    public one) and a browser behind a NAT of its own: neither reaches the other's own addresses. With
    ``--advertise`` the answer offers the public address beside ours, the browser's checks reach us
    through the NAT, and the call is heard and recorded both ways (without it, ICE never connects)."""
    [private, *_] = get_host_addresses(use_ipv4=True, use_ipv6=False)
    with one_to_one_nat(private) as nat:
        browser = BeyondNatBrowser(nat=nat)
        out = run(tmp_path, RECORDED, browser, announce=nat.public)
        [answer] = browser.of("answer")
        assert f" {nat.public} " in answer["sdp"] and "typ srflx" in answer["sdp"]
    assert_recorded_both_ways(out, 16000)


def test_a_browser_that_never_connects_ends_the_call(tmp_path: Path) -> None:
    script = "sections: {main: [answer, {play: {url: 'silence:30'}}]}"
    out = run(tmp_path, script, Browser(takes_answer=False), connect_timeout=1.0)
    assert out.call.end_reason == "remote_hangup" and out.call.now() < 15
    assert any("not connected (ICE and DTLS) within 1 s" in e["message"] for e in out.events.of_type("warning"))
    assert out.browser.of("ended") == [{"type": "ended", "reason": "remote_hangup"}]


def test_a_script_that_hangs_up_before_answering_tells_the_page_why(tmp_path: Path) -> None:
    async def close_again(transport: WebRtcCallTransport, browser: Browser) -> None:
        await wait_until(lambda: transport.state == "closed")
        await transport.close()  # a second close changes nothing, says nothing

    out = run(tmp_path, "sections: {main: [{hangup: {reason: busy}}]}", during=close_again)
    assert out.browser.messages == [{"type": "ended", "reason": "busy"}]
    assert out.call.end_reason == "busy" and out.transport.codec is None


# --- offers that cannot be taken ---------------------------------------------------------------------


def _real_offer(kind: str = "audio") -> str:
    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(kind, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def _many_candidates(sdp: str, n: int = MAX_CANDIDATE_LINES + 1) -> str:
    line = next(x for x in sdp.splitlines() if x.startswith("a=candidate:"))
    return sdp.replace(line, "\r\n".join([line] * n))


def _named_host(sdp: str, name: str = "intranet.example.com") -> str:
    """The first candidate's address replaced by a DNS name (field 5 of a=candidate)."""
    line = next(x for x in sdp.splitlines() if x.startswith("a=candidate:"))
    fields = line.split(" ")
    fields[4] = name
    return sdp.replace(line, " ".join(fields))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: "hello, I am not SDP", "no media stream"),
        (lambda: "v=0\r\nm=audio x\r\n", "not SDP that can be read"),
        (lambda: _real_offer("video"), "video streams; exactly one audio stream is taken"),
        (
            lambda: (
                _real_offer()
                .replace("opus/48000/2", "AMR/8000")
                .replace("PCMU/8000", "X/8000")
                .replace("PCMA", "Y")
                .replace("G722", "Z")
            ),
            "no codec in common",
        ),
        (lambda: _many_candidates(_real_offer()), f"at most {MAX_CANDIDATE_LINES} are read"),
        (
            lambda: "\r\n".join(x for x in _real_offer().splitlines() if not x.startswith("a=candidate")),
            "no ICE candidates",
        ),
        (lambda: _named_host(_real_offer()), "not an IP address nor an mDNS name"),
        # (aioice resolves one label and .local only: it took this one for an address, at every round)
        (lambda: _named_host(_real_offer(), "printer%s.office.local"), "not an IP address nor an mDNS name"),
    ],
    ids=[
        "garbage",
        "broken",
        "video only",
        "no common codec",
        "too many candidates",
        "trickle",
        "named host",
        "not mDNS",
    ],
)
def test_offers_that_cannot_be_taken_are_refused_with_a_reason(make: Callable[[], str], message: str) -> None:
    offer = make()

    async def prepare() -> None:
        await WebRtcCallTransport(offer, lambda m: None, peer="test").prepare()

    with pytest.raises(WebRtcReject, match=message):
        asyncio.run(prepare())


def test_a_page_gone_before_its_call_starts_is_refused_as_gone_not_as_a_fault() -> None:
    """The page's WebSocket closes before the call began (its tab closed at once): prepare() says so,
    before or while it made the peer connection — it raised IllegalMove, logged as the call failing."""
    offer = _real_offer()

    async def hang_up(while_preparing: bool) -> WebRtcCallTransport:
        transport = WebRtcCallTransport(offer, lambda m: None, peer="test")
        if not while_preparing:
            transport.remote_hangup()
        preparing = asyncio.ensure_future(transport.prepare())
        if while_preparing:
            await asyncio.sleep(0)  # prepare() has begun making the peer connection
            transport.remote_hangup()
        with pytest.raises(WebRtcGone, match="hung up before its call started"):
            await preparing
        await transport.close()
        return transport

    for while_preparing in (False, True):
        assert asyncio.run(hang_up(while_preparing)).ended


def test_keypad_messages_take_only_keypad_digits() -> None:
    transport = WebRtcCallTransport("", lambda m: None, peer="test")
    for bad in ("", "5x", "1" * 33, "\u0665"):
        with pytest.raises(WebRtcReject, match="keypad digits"):
            transport.press(bad)


# --- bounds on the audio held ----------------------------------------------------------------------------


def test_a_burst_from_the_browser_is_held_to_200_ms_and_the_rest_counted() -> None:
    """A second of the browser's audio at once (a stalled network catching up) is not a second of delay:
    the newest 200 ms are kept, the older frames dropped and counted; a stream that runs dry waits for
    40 ms again before it is handed out."""
    buffer = SpeakBuffer(16000)
    buffer.push(np.arange(16000, dtype=np.int16))
    frames = []
    while (frame := buffer.pop()) is not None:
        frames.append(frame)
    assert len(frames) == MAX_SPEAK_FRAMES and buffer.dropped == 50 - MAX_SPEAK_FRAMES
    assert frames[-1][-1] == 15999, "the newest audio is kept"
    buffer.push(np.zeros(320, dtype=np.int16))
    assert buffer.pop() is None, "one frame after running dry is not enough to start again"
    buffer.push(np.zeros(320, dtype=np.int16))
    assert buffer.pop() is not None


def test_what_the_browser_hears_is_held_to_200_ms_when_the_sender_falls_behind() -> None:
    async def scenario() -> tuple[list[int], int]:
        track = ListenTrack(8000)
        for i in range(50):
            track.put(np.full(160, i, dtype=np.int16))
        sent = [int((await track.recv()).to_ndarray()[0, 0]) for _ in range(MAX_LISTEN_FRAMES)]
        return sent, track.dropped

    sent, dropped = asyncio.run(scenario())
    assert sent == list(range(50 - MAX_LISTEN_FRAMES, 50)) and dropped == 50 - MAX_LISTEN_FRAMES


@pytest.mark.parametrize(("encoder", "rate", "clock"), [(PcmuEncoder, 8000, 8000), (OpusEncoder, 16000, 48000)])
def test_ticks_the_loop_skipped_and_frames_dropped_still_pass_in_the_browsers_time_line(
    encoder: Callable[[], Any], rate: int, clock: int
) -> None:
    """What the browser hears is stamped with when it is in the call: 12 ticks the loop skipped (it was
    more than 200 ms late) and a frame the sender fell behind on pass in the RTP timestamps aiortc's
    encoder makes of our frames, so the browser plays what follows in time rather than early."""
    frame = rate // 50

    async def scenario() -> list[int]:
        track, enc = ListenTrack(rate), encoder()
        stamps: list[int] = []

        async def send(n: int) -> None:
            for _ in range(n):
                _, timestamp = enc.encode(await track.recv())
                if timestamp is not None:  # (Opus holds its first frame back)
                    stamps.append(timestamp)

        for _ in range(4):
            track.put(np.zeros(frame, dtype=np.int16))
        track.gap(12 * frame)
        track.put(np.zeros(frame, dtype=np.int16))
        await send(5)
        for _ in range(MAX_LISTEN_FRAMES + 1):  # one more than the sender may fall behind: the oldest goes
            track.put(np.zeros(frame, dtype=np.int16))
        await send(MAX_LISTEN_FRAMES)
        assert track.dropped == 1
        return stamps

    stamps = asyncio.run(scenario())
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    tick = clock // 50
    jumps = {i: step // tick for i, step in enumerate(steps) if step != tick}
    assert sorted(jumps.values()) == [2, 13], steps  # the dropped frame, and the 12 skipped ticks
    assert len(steps) >= MAX_LISTEN_FRAMES + 2


def test_an_offer_from_a_machine_with_many_interfaces_is_taken_with_its_first_udp_candidates() -> None:
    """A browser on a machine with many interfaces (Docker bridges, VPNs) offers dozens of candidates, TCP
    ones too: the call is taken with the first 32 UDP ones (a browser lists them best first)."""
    offer = _real_offer()
    line = next(x for x in offer.splitlines() if x.startswith("a=candidate:"))
    fields = line.split(" ")
    tcp = " ".join([*fields[:2], "TCP", *fields[3:], "tcptype", "active"])
    udp = [" ".join([f"a=candidate:{n}", *fields[1:4], f"10.{n}.0.1", *fields[5:]]) for n in range(1, 41)]
    many = offer.replace(line, "\r\n".join([line, *[tcp] * 20, *udp]))
    checked = check_offer(many)
    kept = [x for x in checked.sdp.splitlines() if x.startswith("a=candidate:")]
    assert len(kept) == MAX_CANDIDATES and all(" udp " in x.lower() for x in kept)
    assert kept[0] == line and kept[-1].split(" ")[4] == f"10.{MAX_CANDIDATES - 1}.0.1"

    async def prepare() -> None:
        await WebRtcCallTransport(many, lambda m: None, peer="test").prepare()

    asyncio.run(prepare())  # (refused before: "at most 32 are taken")
