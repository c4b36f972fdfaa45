"""Parties on loopback addresses that send RTP to the engine and count what it sends them back.

127.0.0.x are distinct hosts on Linux loopback, so a caller on 127.0.0.1 and an attacker on 127.0.0.5
are told apart by address, as on a real network. Each speaks a tone, so what a recording holds says whose
audio it is.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import numpy as np

from conftest import tone
from swml_engine.transports.sip.codecs import Pcmu
from swml_engine.transports.sip.rtp import RtpPacket


class Party:
    """A UDP socket on one loopback address sending a tone as PCMU, 20 ms a packet."""

    def __init__(self, host: str, freq: float, ssrc: int) -> None:
        self.host, self.ssrc = host, ssrc
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.audio = tone(freq, 10.0, 8000)
        self.codec = Pcmu()
        self.seq = 1000  # the next packet's sequence number (a test may make it jump)
        self.sent = 0
        self.heard = 0

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, int(self.sock.getsockname()[1]))

    def send(self, to: tuple[str, int], packets: int = 1) -> None:
        for _ in range(packets):
            i = self.sent % 500
            payload = self.codec.encode(np.ascontiguousarray(self.audio[i * 160 : (i + 1) * 160]))
            self.sock.sendto(RtpPacket(0, self.seq & 0xFFFF, self.sent * 160, self.ssrc, payload).serialize(), to)
            self.seq += 1
            self.sent += 1

    def received(self) -> int:
        """How many packets have reached this party so far."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(2048)
                self.heard += 1
        return self.heard


@contextlib.contextmanager
def parties(*specs: tuple[str, float]) -> Iterator[list[Party]]:
    """Parties for (host, tone) pairs, each with its own SSRC; their sockets are closed at the end."""
    made = [Party(host, freq, 0x1000 + i) for i, (host, freq) in enumerate(specs)]
    try:
        yield made
    finally:
        for p in made:
            p.sock.close()


def share(samples: np.ndarray, freq: float, rate: int = 8000) -> float:
    """Share of the audio's energy within 30 Hz of ``freq``."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(freqs - freq) < 30].sum() / max(spectrum.sum(), 1e-9))


def seam(samples: np.ndarray, freq: float, rate: int) -> float:
    """The worst departure of a tone from a clean sinusoid, as a share of its amplitude: each 10 ms is
    fitted with a sine of ``freq`` (a click or a step at a frame's edge stands out of the fit)."""
    n = rate // 100
    t = np.arange(n) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    worst = 0.0
    for i in range(0, len(samples) - n + 1, n // 2):
        piece = samples[i : i + n].astype(np.float64)
        fit, *_ = np.linalg.lstsq(basis, piece, rcond=None)
        worst = max(worst, float(np.max(np.abs(piece - basis @ fit)) / max(np.hypot(*fit), 1.0)))
    return worst
