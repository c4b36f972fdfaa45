"""A sender whose clock runs fast or slow against ours, for a minute: what the listener hears keeps its
latency, and loses or gains at most a frame at a time.

Found with a far party whose RTP clock ran 0.5% fast across a bridge: the latency grew from 95 ms to
275 ms over 40 s, then 200 ms of its audio were cut at once (jitterbuffer.max_depth), and again; one
running 0.5% slow lost packets as late every few seconds and started its timeline again (a gap of
120 ms each time)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import tone
from swml_engine.transports.sip.codecs import G722
from swml_engine.transports.sip.jitterbuffer import Coded, JitterBuffer

from .rtp_parties import seam

FRAME = 160  # 20 ms at 8 kHz


def listen(clock: float, seconds: float = 60.0) -> tuple[list[float], list[int | None]]:
    """Packets of 20 ms of the sender's clock, packet ``i`` arriving at ``i * 0.02 * clock`` s; a frame
    taken every 20 ms of ours (10 ms after each tick's packets). Each packet's samples hold its number,
    so each frame says which packet was heard: the latency of each heard packet (s) and, per frame, the
    packet heard (None: silence)."""
    jb = JitterBuffer(8000)
    arrivals = [i * 0.02 * clock for i in range(int(seconds / 0.02 / clock))]
    latencies: list[float] = []
    heard: list[int | None] = []
    sent = 0
    for k in range(int(seconds / 0.02)):
        now = k * 0.02 + 0.01
        while sent < len(arrivals) and arrivals[sent] <= now:
            jb.push(1, sent * FRAME, np.full(FRAME, sent + 1, np.int16))
            sent += 1
        frame = jb.pop()
        packet = int(frame[0]) - 1 if frame is not None and frame[0] else None
        heard.append(packet)
        if packet is not None:
            latencies.append(now - arrivals[packet])
    return latencies, heard


@pytest.mark.parametrize("clock", [0.995, 1.005], ids=["fast", "slow"])
def test_a_drifting_sender_keeps_its_latency_and_loses_or_gains_a_frame_at_a_time(clock: float) -> None:
    latencies, heard = listen(clock)
    first = latencies[50]  # (once the first second is played)
    assert max(latencies[50:]) - first <= 0.041, f"the latency grew from {first:.3f} to {max(latencies):.3f} s"
    assert first - min(latencies[50:]) <= 0.041, f"the latency fell from {first:.3f} to {min(latencies):.3f} s"
    packets = [p for p in heard[50:] if p is not None]
    skipped = np.diff(packets) - 1
    assert skipped.max() <= 1, f"{skipped.max()} packets cut at once"
    silent = [i for i, p in enumerate(heard[50:]) if p is None]
    assert all(b - a > 1 for a, b in itertools.pairwise(silent)), "two frames of silence in a row"
    if clock > 1:  # a slow sender loses nothing: every packet it sent is heard
        assert skipped.max() == 0


def test_a_wideband_sender_running_fast_loses_whole_frames_without_a_click() -> None:
    """G.722 keeps state from packet to packet: a frame dropped to follow a fast sender is still decoded
    (not played), so the next one decodes as the sender meant it. A 1 kHz tone is whole cycles in 20 ms:
    with the decoder in step, a frame less leaves no mark in it."""
    encoder, decoder = G722(), G722()
    voice = tone(1000, 1.0, 16000)
    jb = JitterBuffer(16000, 8000, decode=lambda packet: decoder.decode(packet.payload))
    heard, sent = [], 0
    for k in range(20 * 50):  # 20 s of ours; the sender's 20 ms take 19.9 ms (0.5% fast)
        while sent * 0.02 * 0.995 <= k * 0.02 + 0.01:
            at = sent % 50 * 320
            payload = encoder.encode(np.ascontiguousarray(voice[at : at + 320]))
            jb.push(1, sent * 160, Coded(payload, 2 * len(payload)))
            sent += 1
        frame = jb.pop()
        heard.append(frame if frame is not None else np.zeros(320, np.int16))
    assert jb.stats.drift_dropped >= 4  # (a frame every four seconds)
    worst = seam(np.concatenate(heard[100:]), 1000, 16000)
    assert worst < 0.06, f"a click at {worst:.0%} of the tone"


def test_a_loop_running_late_for_seconds_is_not_taken_for_a_drifting_sender() -> None:
    """Our ticks 50 ms late for 5 s (a busy machine), the sender on time: more audio waits at each late
    take, but that is our lateness, not the sender running ahead — nothing is dropped, and nothing
    filled when the ticks are on time again (it dropped 3 frames, then played 2 of silence)."""
    jb = JitterBuffer(8000)
    sent = 0
    for k in range(30 * 50):
        late = 0.05 if 10 * 50 <= k < 15 * 50 else 0.0
        while sent * 0.02 + 0.005 <= k * 0.02 + late:
            jb.push(1, sent * FRAME, np.full(FRAME, sent + 1, np.int16))
            sent += 1
        jb.pop(late)
    assert (jb.stats.drift_dropped, jb.stats.drift_filled) == (0, 0)
