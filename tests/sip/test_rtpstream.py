"""Whose packets are the caller's: an RtpStream on a real UDP socket, parties on other loopback addresses.

127.0.0.x are distinct hosts here: the caller on 127.0.0.1 (also its SIP source), an attacker on
127.0.0.5. The caller speaks a 440 Hz tone, the attacker 1 kHz; "recorded" is what the stream hands the
call (``read()``), and "hears" is which socket our packets reach. Time for the grace an unnamed address
waits is a clock the test moves, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from swml_engine.media.frame import silence
from swml_engine.transports.sip.rtp import RtpPacket, parse_rtp
from swml_engine.transports.sip.rtpstream import PROOF_PACKETS, STRANGER_GRACE, RtpStream
from swml_engine.transports.sip.sdp import Media

from .rtp_parties import Party, parties, share

CALLER_TONE, ATTACKER_TONE = 440.0, 1000.0
#: Generous: another engineer's test suite may be loading the machine.
DEADLINE = 20.0


@dataclass
class Clock:
    t: float = 100.0

    def __call__(self) -> float:
        return self.t


class Call:
    """One RtpStream and the frames it has handed the call so far."""

    def __init__(self, rtp: RtpStream, clock: Clock) -> None:
        self.rtp, self.clock = rtp, clock
        self.frames: list[np.ndarray] = []
        self.local = ("127.0.0.1", rtp.local[1])

    def seen(self) -> int:
        s = self.rtp.stats
        return s.received + s.foreign + s.malformed

    async def exchange(self, *turns: tuple[Party, int]) -> None:
        """Each party sends its packets in turn; once the stream has taken them all, a frame per packet
        leaves the jitter buffer as the call's clock would take it (what a recording gets)."""
        before = self.seen()
        total = 0
        for party, packets in turns:
            party.send(self.local, packets)
            total += packets
        await until(lambda: self.seen() >= before + total, "the stream did not take every packet")
        for _ in range(max(packets for _, packets in turns)):
            frame = self.rtp.read()
            if frame is not None:
                self.frames.append(frame)

    def recorded(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)

    async def speak_to_caller(self, frames: int, to: Party) -> None:
        """The call's audio, ``frames`` packets: wait until ``to`` has them (a party that got none of
        them has heard nothing, as every packet goes to one address)."""
        start = to.received()
        for _ in range(frames):
            self.rtp.write(silence(8000))
        await until(lambda: to.received() >= start + frames, f"our packets did not reach {to.host}: sent elsewhere")


async def until(predicate: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, what
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def stream(
    sdp: tuple[str, int], sip_host: str = "127.0.0.1", ptime: int = 20, events: int | None = None
) -> AsyncIterator[Call]:
    clock = Clock()
    rtp = RtpStream(8000, lambda d: None, signalling_host=sip_host, clock=clock)
    await rtp.bind("127.0.0.1", (42000, 42999))
    rtp.configure(Media("PCMU", 0, events, ptime, sdp, "sendrecv"))
    try:
        yield Call(rtp, clock)
    finally:
        rtp.close()


def test_an_attacker_sending_before_the_caller_is_neither_recorded_nor_heard() -> None:
    """Issue 11, item 2: a second host sending PCMU to our port before the caller's first packet was
    recorded as the caller and got the call's audio; the caller's own packets were dropped."""

    async def main() -> None:
        with parties(("127.0.0.1", CALLER_TONE), ("127.0.0.5", ATTACKER_TONE)) as (caller, attacker):
            async with stream(caller.addr) as call:
                call.clock.t += STRANGER_GRACE / 2  # the caller's first packet is not there yet
                await call.exchange((attacker, 4 * PROOF_PACKETS))
                for _ in range(40):  # then both send, all call long
                    await call.exchange((attacker, 3), (caller, 3))
                await call.speak_to_caller(50, caller)
                assert attacker.received() == 0
                assert call.rtp.stats.foreign == 4 * PROOF_PACKETS + 40 * 3
                recorded = call.recorded()
                assert len(recorded) >= 100 * 160
                assert share(recorded, CALLER_TONE) > 0.5
                assert share(recorded, ATTACKER_TONE) < 0.001

    asyncio.run(main())


def test_a_caller_behind_a_nat_sends_from_another_port_and_is_recorded_and_heard() -> None:
    async def main() -> None:
        with parties(("127.0.0.1", CALLER_TONE), ("127.0.0.5", ATTACKER_TONE)) as (caller, attacker):
            # The SDP names a port nothing sends from; the NAT gave the caller another one.
            async with stream(("127.0.0.1", 9)) as call:
                await call.exchange((caller, 2))
                assert call.rtp.stats.received == 0  # not proved yet: nothing recorded, nothing moved
                for _ in range(20):
                    await call.exchange((caller, 3), (attacker, 1))
                await call.speak_to_caller(50, caller)
                assert attacker.received() == 0
                # the packets of the proof are kept and played: the caller's first packet is recorded
                assert call.rtp.stats.received == 62 and call.rtp.stats.moves == 1
                assert share(call.recorded(), CALLER_TONE) > 0.5
                assert share(call.recorded(), ATTACKER_TONE) < 0.001

    asyncio.run(main())


def test_a_caller_whose_sdp_names_a_private_address_is_found_at_its_sip_source() -> None:
    async def main() -> None:
        with parties(("127.0.0.1", CALLER_TONE)) as (caller,):
            async with stream(("10.0.0.99", 4000), sip_host="127.0.0.1") as call:
                for _ in range(20):
                    await call.exchange((caller, 3))
                await call.speak_to_caller(50, caller)
                assert share(call.recorded(), CALLER_TONE) > 0.5

    asyncio.run(main())


def test_the_callers_silence_mid_call_does_not_hand_the_call_to_an_attacker() -> None:
    """Hold without re-INVITE, silence suppression: the caller stops sending; the old rule let any
    address take over after 2 s of silence."""

    async def main() -> None:
        with parties(("127.0.0.1", CALLER_TONE), ("127.0.0.5", ATTACKER_TONE)) as (caller, attacker):
            async with stream(caller.addr) as call:
                for _ in range(10):
                    await call.exchange((caller, 3))
                call.clock.t += 3600.0  # an hour of the caller's silence
                call.frames.clear()
                for _ in range(20):  # a steady stream, one SSRC, in sequence
                    await call.exchange((attacker, 5))
                await call.speak_to_caller(50, caller)
                assert attacker.received() == 0 and call.rtp.stats.moves == 0
                assert share(call.recorded(), ATTACKER_TONE) < 0.001
                # the caller comes back (a new SSRC after hold) and is recorded again
                caller.ssrc += 1
                call.frames.clear()
                for _ in range(10):
                    await call.exchange((caller, 3), (attacker, 3))
                assert share(call.recorded(), CALLER_TONE) > 0.5

    asyncio.run(main())


def test_an_address_nothing_names_is_taken_only_after_the_grace_and_a_proof() -> None:
    """A caller behind a NAT whose SDP names its private address and whose SIP comes through a proxy:
    its media comes from an address nothing in the signalling names."""

    async def main() -> None:
        with parties(("127.0.0.7", CALLER_TONE)) as (caller,):
            async with stream(("10.0.0.99", 4000), sip_host="127.0.0.9") as call:
                await call.exchange((caller, 10))  # within the grace: ignored, however steady
                assert call.rtp.stats.received == 0
                call.clock.t += STRANGER_GRACE
                await call.exchange((caller, PROOF_PACKETS - 1))
                assert call.rtp.stats.received == 0  # not proved yet
                for _ in range(20):
                    await call.exchange((caller, 3))
                await call.speak_to_caller(20, caller)
                assert call.rtp.stats.moves == 1
                assert share(call.recorded(), CALLER_TONE) > 0.5

    asyncio.run(main())


def test_a_single_packet_or_a_broken_sequence_proves_nothing() -> None:
    async def main() -> None:
        with parties(("127.0.0.1", CALLER_TONE)) as (caller,):
            async with stream(("127.0.0.1", 9)) as call:
                for _ in range(3 * PROOF_PACKETS):  # sequence numbers jumping: not one steady sender
                    caller.seq += 7
                    await call.exchange((caller, 1))
                assert call.rtp.stats.received == 0 and call.rtp.stats.moves == 0
                await call.exchange((caller, PROOF_PACKETS))
                assert call.rtp.stats.moves == 1

    asyncio.run(main())


def test_a_new_sdp_address_in_a_reinvite_moves_the_expected_source() -> None:
    async def main() -> None:
        with parties(("127.0.0.1", CALLER_TONE), ("127.0.0.6", ATTACKER_TONE)) as (first, second):
            async with stream(first.addr) as call:
                await call.exchange((first, 5))
                call.rtp.configure(Media("PCMU", 0, None, 20, second.addr, "sendrecv"))
                call.frames.clear()
                await call.exchange((second, 1))
                assert call.rtp.stats.received == 6  # the new SDP address is the source at once
                for _ in range(10):  # the old address (the SIP source's host) goes on: it is not the source
                    await call.exchange((second, 3), (first, 3))
                await call.speak_to_caller(10, second)
                assert first.received() == 0
                assert call.rtp.stats.received == 36 and call.rtp.stats.moves == 0
                assert share(call.recorded(), ATTACKER_TONE) > 0.5  # (the second party's tone)
                assert share(call.recorded(), CALLER_TONE) < 0.001

    asyncio.run(main())


def test_out_of_file_descriptors_says_so_rather_than_no_free_port() -> None:
    """Issue 11, item 3: every new call failed with "no free RTP port" when the process had no
    descriptors left."""

    limit = len(os.listdir("/proc/self/fd")) + 32

    async def main() -> str:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        held: list[socket.socket] = []
        rtp = RtpStream(8000, lambda d: None)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            with contextlib.suppress(OSError):
                while True:
                    held.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            with pytest.raises(OSError) as caught:
                await rtp.bind("127.0.0.1", (42000, 42999))
            return str(caught.value)
        finally:
            for s in held:
                s.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    message = asyncio.run(main())
    assert message.startswith(f"no file descriptors left: {limit} open of limit {limit}"), message
    assert "ulimit" in message


class Listener:
    """The caller's side of what we send: every packet as it arrived."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.packets: list[RtpPacket] = []

    async def take(self, count: int) -> list[RtpPacket]:
        """The next ``count`` packets (waiting for them)."""

        def arrived() -> bool:
            with contextlib.suppress(BlockingIOError):
                while True:
                    packet = parse_rtp(self.sock.recv(2048))
                    assert packet is not None
                    self.packets.append(packet)
            return len(self.packets) >= count

        await until(arrived, f"{count} packets did not arrive ({len(self.packets)} did)")
        taken, self.packets = self.packets[:count], self.packets[count:]
        return taken


def steps(packets: list[RtpPacket]) -> list[tuple[int, int, bool]]:
    """Between each packet and the one before it: how far the sequence number and the timestamp moved,
    and whether the later one is marked."""
    return [
        ((b.sequence - a.sequence) & 0xFFFF, (b.timestamp - a.timestamp) & 0xFFFFFFFF, b.marker)
        for a, b in itertools.pairwise(packets)
    ]


def test_ticks_the_loop_skipped_leave_a_gap_in_time_in_what_the_caller_gets() -> None:
    """A loop more than 200 ms late skips ticks (MediaTicker.MAX_LATE). What follows is stamped that much
    later, so the caller's phone plays it when it happened rather than early by the gap: seen as the
    far party's pulses reaching the caller 0.24 s early from a stall on (a side-by-side test run).
    Sequence numbers go on without a gap (no packet was lost) and the first packet after is marked."""

    async def main() -> None:
        listener = Listener()
        try:
            async with stream(listener.addr) as call:
                for _ in range(3):
                    call.rtp.write(silence(8000))
                call.rtp.skip(12)
                for _ in range(3):
                    call.rtp.write(silence(8000))
                packets = await listener.take(6)
                assert steps(packets) == [(1, 160, False)] * 2 + [(1, 13 * 160, True)] + [(1, 160, False)] * 2
                assert packets[0].marker  # (the stream's first packet)
        finally:
            listener.sock.close()

    asyncio.run(main())


def test_a_gap_with_a_longer_ptime_drops_the_part_packet_it_held_and_counts_its_time() -> None:
    """With 30 ms packets, 20 ms ticks leave part of a packet queued; at a gap it is stale (it belongs
    before the gap): not sent, but its time counts, so what follows is placed exactly."""

    async def main() -> None:
        listener = Listener()
        try:
            async with stream(listener.addr, ptime=30) as call:
                for _ in range(2):
                    call.rtp.write(silence(8000))  # 320 samples: one 240-sample packet goes, 80 wait
                [first] = await listener.take(1)
                call.rtp.skip(10)
                for _ in range(3):
                    call.rtp.write(silence(8000))  # 480 samples: two packets
                packets = [first, *await listener.take(2)]
                assert steps(packets) == [(1, 240 + 80 + 10 * 160, True), (1, 240, False)]
        finally:
            listener.sock.close()

    asyncio.run(main())


def test_a_key_down_through_a_gap_is_held_that_long_and_the_voice_after_it_is_in_time() -> None:
    """A digit (RFC 4733) being sent when ticks are skipped: the key was down all that time, so its
    duration grows by the gap and the audio after it starts where the key was let go."""

    async def main() -> None:
        listener = Listener()
        try:
            async with stream(listener.addr, events=101) as call:
                done = call.rtp.send_digit("5", 0.1)  # 5 steps of 20 ms
                call.rtp.write(silence(8000))
                call.rtp.write(silence(8000))
                call.rtp.skip(10)
                while not done.done():
                    call.rtp.write(silence(8000))
                    await asyncio.sleep(0)
                call.rtp.write(silence(8000))  # the voice again (with the end packet's first repeat)
                packets = await listener.take(5)
                events = [p for p in packets if p.payload_type == 101]
                voice = [p for p in packets if p.payload_type == 0]
                durations = [struct.unpack_from("!BBH", p.payload)[2] for p in events]
                # 2 steps, a gap of 10, then steps to the length asked for and past it: the key was down
                # for 13 steps (it ends at the first step on or after its 5)
                assert durations == [160, 320, 13 * 160, 13 * 160], durations
                assert len({p.timestamp for p in events}) == 1
                assert voice[0].timestamp == (events[0].timestamp + 13 * 160) & 0xFFFFFFFF
        finally:
            listener.sock.close()

    asyncio.run(main())
