"""Audio codecs of SIP calls: G.711 (PCMU, PCMA) by table lookup and G.722 through PyAV (FFmpeg).

A codec turns one packet's payload into int16 samples at its own rate and back. G.711 is the hot path
of every call, so both directions are a single numpy ``take`` on tables built once at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import av
import numpy as np
import numpy.typing as npt

from swml_engine.media.frame import Samples, silence

_SILENCE = silence(8000)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _encode_table(decode: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """For every int16 value, the code whose decoded value is nearest (exact inverse of the decode table).

    Built by sorting the 256 decoded levels and picking the nearest one for each of the 65536 inputs,
    so encoding then decoding is the best G.711 can do and never wraps around at the extremes.
    """
    order = np.argsort(decode, kind="stable")
    levels = decode[order].astype(np.int32)
    values = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(levels, values), 1, len(levels) - 1)
    lower = levels[idx - 1]
    upper = levels[idx]
    nearest = np.where(values - lower <= upper - values, idx - 1, idx)
    table = order[nearest].astype(np.uint8)
    # Index by the int16 value reinterpreted as uint16: rotate so table[v & 0xFFFF] is the code of v.
    return np.roll(table, -32768)


class Codec:
    """One direction-independent codec instance per call (G.722 keeps state between packets)."""

    name: ClassVar[str]
    #: Sample rate of the codec's audio (G.722 is 16 kHz although its RTP clock says 8000).
    rate: ClassVar[int]
    #: RTP timestamp units per second (RFC 3551).
    clock_rate: ClassVar[int] = 8000
    static_pt: ClassVar[int]
    #: Whether decoding keeps state from packet to packet (ADPCM): then packets are decoded in
    #: timestamp order, when played (the jitter buffer's :class:`Coded`), not as they arrive.
    stateful: ClassVar[bool] = False

    def decode(self, payload: bytes) -> Samples:
        raise NotImplementedError

    def samples_in(self, payload: bytes) -> int:
        """How many samples ``payload`` decodes to (without decoding it)."""
        raise NotImplementedError

    def encode(self, samples: Samples) -> bytes:
        raise NotImplementedError

    def timestamp_units(self, samples: int) -> int:
        """RTP timestamp increment for ``samples`` of audio at the codec's rate."""
        return samples * self.clock_rate // self.rate


class _G711(Codec):
    rate = 8000
    _decode_table: ClassVar[npt.NDArray[np.int16]]
    _encode_table: ClassVar[npt.NDArray[np.uint8]]

    def __init__(self) -> None:
        self._silent_payload = bytes(self._encode_table[_SILENCE.view(np.uint16)])

    def decode(self, payload: bytes) -> Samples:
        out: Samples = self._decode_table[np.frombuffer(payload, dtype=np.uint8)]
        return out

    def samples_in(self, payload: bytes) -> int:
        return len(payload)

    def encode(self, samples: Samples) -> bytes:
        if samples is _SILENCE:  # the shared silent frame: what a call sends whenever nothing plays
            return self._silent_payload
        return bytes(self._encode_table[samples.view(np.uint16)])


class Pcmu(_G711):
    name = "PCMU"
    static_pt = 0
    _decode_table = _ulaw_decode_table()
    _encode_table = _encode_table(_decode_table)


class Pcma(_G711):
    name = "PCMA"
    static_pt = 8
    _decode_table = _alaw_decode_table()
    _encode_table = _encode_table(_decode_table)


class G722(Codec):
    """G.722 via FFmpeg's adpcm_g722: 16 kHz audio, 64 kbit/s, RTP clock 8000 (RFC 3551's historic error)."""

    name = "G722"
    rate = 16000
    static_pt = 9
    stateful = True

    def __init__(self) -> None:
        self._enc = av.CodecContext.create("g722", "w")
        self._enc.sample_rate = 16000
        self._enc.format = "s16"
        self._enc.layout = "mono"
        self._enc.open()
        self._dec = av.CodecContext.create("g722", "r")
        self._dec.sample_rate = 16000
        self._dec.layout = "mono"
        self._dec.open()
        self._pts = 0

    def decode(self, payload: bytes) -> Samples:
        frames = self._dec.decode(av.Packet(payload))
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)

    def samples_in(self, payload: bytes) -> int:
        return 2 * len(payload)  # 64 kbit/s: a byte is two 16 kHz samples

    def encode(self, samples: Samples) -> bytes:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = self._pts
        self._pts += len(samples)
        return b"".join(bytes(p) for p in self._enc.encode(frame))


@dataclass(frozen=True)
class CodecInfo:
    name: str
    rate: int
    static_pt: int
    factory: type[Codec]


#: Codecs this engine speaks, in our order of preference when the offer does not decide.
SUPPORTED: dict[str, CodecInfo] = {c.name: CodecInfo(c.name, c.rate, c.static_pt, c) for c in (G722, Pcmu, Pcma)}
