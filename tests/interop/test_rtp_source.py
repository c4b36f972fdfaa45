"""Whose RTP a `swml serve` call records and where it sends its own, with an attacker on another host.

Issue 11, item 2, as it was found: after the 200 OK, a second host sending PCMU to the engine's SDP port
before the caller's first packet was recorded as the caller and received the call's audio, and the
caller's own packets were dropped as `foreign`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np

from conftest import read_wav, tone
from swml_engine.transports.sip.codecs import Pcmu
from swml_engine.transports.sip.rtp import RtpPacket

from .peers import Engine, SipPeer, sdp_offer, to_tag, wait_for

EngineFactory = Callable[..., Engine]

RECORDED_CALL = (
    "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n"
    "    - play: {urls: ['silence:30']}\n"
)


class Sender:
    """A UDP socket on one loopback address sending a tone as PCMU, 20 ms a packet, and counting what
    reaches it."""

    def __init__(self, host: str, freq: float, ssrc: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.audio, self.ssrc, self.sent, self.heard = tone(freq, 10.0, 8000), ssrc, 0, 0
        self.codec = Pcmu()

    def send(self, to: tuple[str, int]) -> None:
        i = self.sent % 500
        payload = self.codec.encode(np.ascontiguousarray(self.audio[i * 160 : (i + 1) * 160]))
        self.sock.sendto(RtpPacket(0, self.sent, self.sent * 160, self.ssrc, payload).serialize(), to)
        self.sent += 1

    def receive(self) -> int:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(2048)
                self.heard += 1
        return self.heard


@contextlib.contextmanager
def senders(*specs: tuple[str, float]) -> Iterator[list[Sender]]:
    made = [Sender(host, freq, 0x5000 + i) for i, (host, freq) in enumerate(specs)]
    try:
        yield made
    finally:
        for s in made:
            s.sock.close()


def share(samples: np.ndarray, freq: float) -> float:
    """Share of the audio's energy within 30 Hz of ``freq``."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    return float(spectrum[np.abs(freqs - freq) < 30].sum() / max(spectrum.sum(), 1e-9))


def test_an_attacker_sending_first_from_another_host_is_not_recorded_and_hears_nothing(
    engine: EngineFactory,
) -> None:
    eng = engine(RECORDED_CALL)
    peer = SipPeer(eng.port)
    with senders(("127.0.0.1", 440.0), ("127.0.0.5", 1000.0)) as (caller, attacker):
        try:
            peer.request("INVITE", 1, body=sdp_offer(caller.port))
            assert wait_for(lambda: peer.receive(0.1) is not None and 200 in peer.statuses("INVITE"), 10)
            ok = peer.final()
            ours = ("127.0.0.1", int(next(x for x in ok.split("\r\n") if x.startswith("m=audio")).split()[1]))
            peer.request("ACK", 1, to_tag=to_tag(ok))
            for _ in range(4):  # the attacker is first ...
                attacker.send(ours)
            for _ in range(100):  # ... and goes on beside the caller for 2 s
                caller.send(ours)
                attacker.send(ours)
                time.sleep(0.02)
            assert wait_for(lambda: caller.receive() >= 50, 20), "the caller does not hear the call"
            peer.request("BYE", 2, to_tag=to_tag(ok))
            [meta] = eng.recordings(1, timeout=20)
        finally:
            peer.close()
        assert attacker.receive() == 0  # not one packet of the call's audio
    samples, rate = read_wav(eng.data / "recordings" / f"{meta['recording_id']}.wav")
    speak = samples[:, 0]
    assert rate == 8000 and len(speak) > rate  # (the caller's 2 s are in the left channel)
    assert share(speak, 440.0) > 0.5, "the caller is not what was recorded"
    assert share(speak, 1000.0) < 0.001, "the attacker was recorded"
    eng.wait_idle()
    [events] = eng.call_events()
    [stats] = [e for e in events if e["type"] == "rtp.stats"]
    assert 100 <= stats["foreign"] <= 104 and stats["moves"] == 0  # the attacker's, none of the caller's
