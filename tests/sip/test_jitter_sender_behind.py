"""A sender that falls behind the playout and stays behind (it paused and went on where it was, without a
burst) must be heard again after a moment, not dropped as late for the rest of the call.

Found by bench/load_sip.py --bridge on a shared 2-core machine: a stall of the whole machine made the
engine skip ticks (MediaTicker.MAX_LATE) while sipp's streams paused too; afterwards every packet of
every call on that worker came 60-160 ms "late", was dropped (jitter.late), and the recordings held
silence from then to the end (both channels): the jitter buffer re-anchored only on a new SSRC or a
jump beyond its capacity (1 s). It now starts the sender's timeline again after a run of late packets
(jitterbuffer.LATE_RUN); a single late packet is still jitter, dropped."""

from __future__ import annotations

import numpy as np

from swml_engine.transports.sip.jitterbuffer import JitterBuffer

FRAME = 160
#: How long the audio may stay lost once the sender is steady again (the buffer's delay and a bit).
RECOVERY_FRAMES = 10


def heard(jb: JitterBuffer, ts: int, ticks: int) -> tuple[list[bool], int]:
    """A packet then a tick, ``ticks`` times; which frames had the sender's audio, and the next timestamp."""
    out = []
    for _ in range(ticks):
        jb.push(1, ts, np.full(FRAME, 1000, np.int16))
        ts += FRAME
        frame = jb.pop()
        out.append(frame is not None and bool(frame.any()))
    return out, ts


def test_after_a_stall_the_engine_skipped_the_sender_is_heard_again() -> None:
    jb = JitterBuffer(8000)
    before, ts = heard(jb, 0, 50)
    assert all(before[5:])
    jb.skip(10)  # the loop was 200 ms late: ticks skipped; the sender sent nothing meanwhile
    after, _ = heard(jb, ts, 500)
    assert all(after[RECOVERY_FRAMES:]), f"{after.count(False)} of 500 frames silent after the stall"


def test_a_sender_that_fell_behind_by_100_ms_is_heard_again() -> None:
    jb = JitterBuffer(8000)
    before, ts = heard(jb, 0, 50)
    assert all(before[5:])
    for _ in range(5):  # 100 ms with no packet (the sender stalled), then it goes on where it was
        jb.pop()
    after, _ = heard(jb, ts, 500)
    assert all(after[RECOVERY_FRAMES:]), f"{after.count(False)} of 500 frames silent after the stall"


def test_one_late_packet_is_jitter_and_does_not_move_the_timeline() -> None:
    jb = JitterBuffer(8000)
    _, ts = heard(jb, 0, 50)
    jb.push(1, ts - 20 * FRAME, np.full(FRAME, 1000, np.int16))  # a straggler from 400 ms ago
    after, _ = heard(jb, ts, 50)
    assert jb.stats.late == 1 and jb.stats.resyncs == 0
    assert all(after)  # the timeline did not move: no gap
