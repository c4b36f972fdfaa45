"""Real peers for interop tests: the engine as a `swml serve` process, sipp scenarios, a loopback sniffer, pcaps."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import PATIENCE, read_jsonl, wait_for

SIPP_PCAPS = Path("/usr/share/sip-tester")
#: RTP ports the engine under test uses, so the sniffer can tell its packets from the peer's.
ENGINE_RTP = (41000, 41999)
#: Where free_port() draws from: under the kernel's ephemeral range (32768-60999), above `swml serve`'s
#: default RTP ports (20000-30000: an engine a test starts without --rtp-ports takes its RTP ports there,
#: whatever port another test was handed), below 31400 (where tests' SIP peers say their RTP is).
FREE_PORTS = (30010, 31300)


def sip_host(host: str) -> str:
    """``host`` as it goes before ``:port`` (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


#: Ports free_port() handed out are leased here (one lock file each) until the test that took them ends,
#: so a test process beside this one (another ``make test``, an xdist worker) never picks the same port
#: in the moment between our check and the engine's bind.
PORT_LEASES = Path(tempfile.gettempdir()) / "swml-test-ports"
_leases: list[int] = []


def _lease(port: int) -> bool:
    """Take ``port``'s lease (False: another test process holds it)."""
    PORT_LEASES.mkdir(exist_ok=True)
    fd = os.open(PORT_LEASES / str(port), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _leases.append(fd)
    return True


def release_ports() -> None:
    """End the leases of the ports this process took (the conftest does it after each test)."""
    while _leases:
        os.close(_leases.pop())


def free_port(span: int = 1) -> int:
    """A port free for both UDP and TCP on loopback; with ``span``, the ``span - 1`` ports above it too
    (baresip listens for TLS on its SIP port + 1). Leased to this test until it ends (``PORT_LEASES``).

    Drawn at random below the kernel's ephemeral range (32768-60999): a port the kernel hands out for
    port 0 is also what it hands to the next outgoing connection of any process (another test suite
    running beside this one, a client of this one), which could take it before the engine binds it."""
    for _ in range(200):
        port = random.randrange(*FREE_PORTS)
        with contextlib.ExitStack() as held:
            try:
                for p in range(port, port + span):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        held.enter_context(socket.socket(socket.AF_INET, kind)).bind(("127.0.0.1", p))
            except OSError:
                continue
            if all(_lease(p) for p in range(port, port + span)):
                return port
    raise RuntimeError("no free port")


@dataclass
class Engine:
    """``swml serve`` in its own process, as an operator runs it."""

    script: Path | None
    data: Path
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    extra: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    #: A limit on open files for the process (soft and hard: it cannot lift it), as ``ulimit -n``.
    nofile: int | None = None

    def start(self) -> Engine:
        self.port = self.port or free_port()
        self.log_path = self.data.parent / f"engine-{self.port}.log"
        log = self.log_path.open("w")
        cmd = [sys.executable, "-m", "swml_engine", "serve", "--sip", f"{sip_host(self.host)}:{self.port}"]
        if self.script is not None:
            cmd += ["--script", str(self.script)]
        cmd += ["--data", str(self.data), "--rtp-ports", f"{ENGINE_RTP[0]}-{ENGINE_RTP[1]}"]
        # A stop hangs up at once, as the tests were written for, and waits little for the answers to its
        # BYEs: a test's peers are gone by then. No overload guard: on a machine busy with other tests the
        # media may run late, and a call (or connect's far leg) refused for it is not what a test checks.
        for option, value in (("--drain-timeout", "0"), ("--stop-grace", "2"), ("--max-lag", "0")):
            if option not in self.extra:
                cmd += [option, value]
        self.proc = subprocess.Popen(
            [*cmd, *self.extra], stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=self._limits
        )
        deadline = time.monotonic() + 2 * PATIENCE
        while time.monotonic() < deadline:
            if "ready" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"swml serve exited: {self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"swml serve did not start: {self.log()}")

    def _limits(self) -> None:
        if self.nofile is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def recordings(self, count: int | None = None, timeout: float = PATIENCE) -> list[dict[str, object]]:
        """The recordings' metadata once ``count`` of them are finalised (the call may end after sipp does)."""
        import json

        def read() -> list[dict[str, object]]:
            return [json.loads(p.read_text()) for p in sorted((self.data / "recordings").glob("*.json"))]

        if count is not None:
            wait_for(lambda: sum(1 for m in read() if m.get("end_reason")) >= count, timeout)
        return read()

    def wait_idle(self, timeout: float = PATIENCE) -> None:
        """Until every call's event log has its final ``call.state: ended`` (a call that never ends fails)."""
        ended = wait_for(lambda: all(any(e.get("state") == "ended" for e in c) for c in self.call_events()), timeout)
        assert ended, "a call's event log never said call.state: ended"

    def rtp_port(self, call: int = 0) -> int:
        """The local RTP port of the ``call``-th call (from its ``sip.invite`` event)."""
        return next(int(str(e["rtp_port"])) for e in self.call_events()[call] if e["type"] == "sip.invite")

    def call_events(self) -> list[list[dict[str, object]]]:
        return [read_jsonl(p) for p in sorted((self.data / "calls").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)]


def run_sipp(
    workdir: Path,
    scenario: str,
    port: int,
    *,
    transport: str = "u1",
    calls: int = 1,
    timeout: float = 60,
    extra: list[str] | None = None,
    host: str = "127.0.0.1",
) -> subprocess.CompletedProcess[str]:
    """Run one sipp scenario (XML text) against the engine; pcaps are found under ``pcap/`` as sipp's own."""
    workdir.mkdir(parents=True, exist_ok=True)
    pcap_dir = workdir / "pcap"
    if not pcap_dir.exists():
        pcap_dir.symlink_to(SIPP_PCAPS)
    path = workdir / "scenario.xml"
    path.write_text(scenario)
    cmd = ["sipp", f"{sip_host(host)}:{port}", "-sf", str(path), "-m", str(calls), "-l", str(calls), "-i", host]
    cmd += ["-p", str(free_port()), "-t", transport, "-nostdin", "-timeout", f"{int(timeout)}s", "-trace_err"]
    cmd += ["-timeout_error", *(extra or [])]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout + 15)


def start_sipp_uas(workdir: Path, scenario: str, port: int, timeout: float = 60) -> subprocess.Popen[str]:
    """sipp as a server (a registrar, say) on ``port``, for one dialogue; wait() gives its exit code."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "scenario.xml"
    path.write_text(scenario)
    cmd = ["sipp", "-sf", str(path), "-p", str(port), "-i", "127.0.0.1", "-m", "1", "-nostdin", "-trace_err"]
    cmd += ["-timeout", f"{int(timeout)}s", "-timeout_error"]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sipp_errors(workdir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in workdir.glob("*_errors.log"))


# --- pcap files (libpcap format, Ethernet/IPv4/UDP, as sipp's bundled ones) ---------------------------


def read_pcap_rtp(path: Path) -> list[tuple[float, bytes]]:
    data = path.read_bytes()
    out: list[tuple[float, bytes]] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ihl = (frame[14] & 0x0F) * 4
        out.append((sec + usec / 1e6, frame[14 + ihl + 8 :]))
    return out


def pcap_speech() -> np.ndarray:
    """The caller's audio in sipp's g711a.pcap (7 s of speech, PCMA in 30 ms packets)."""
    from swml_engine.transports.sip.codecs import Pcma

    return rtp_audio([p for _, p in read_pcap_rtp(SIPP_PCAPS / "g711a.pcap")], Pcma().decode, 8)


def pcma_packets(audio: np.ndarray, ssrc: int = 0x4242) -> list[bytes]:
    """``audio`` (8 kHz) as PCMA RTP packets of 20 ms, payload type 8."""
    from swml_engine.transports.sip.codecs import Pcma
    from swml_engine.transports.sip.rtp import RtpPacket

    codec = Pcma()
    return [
        RtpPacket(8, i, i * 160, ssrc, codec.encode(np.ascontiguousarray(audio[i * 160 : (i + 1) * 160]))).serialize()
        for i in range(len(audio) // 160)
    ]


def write_pcap_rtp(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """Packets (time, RTP bytes) as UDP datagrams; sipp rewrites addresses and ports when it plays them."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for t, rtp in packets:
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
        )
        csum = sum(struct.unpack("!10H", ip))
        csum = (csum & 0xFFFF) + (csum >> 16)
        ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
        frame = b"\x00\x01\x02\x03\x04\x05\x00\x01\x02\x03\x04\x06\x08\x00" + ip + udp
        sec = int(t)
        out.append(struct.pack("<IIII", sec, round((t - sec) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def rtp_audio(
    packets: list[bytes], decode: object, pt: int, *, placed: bool = False, samples_per_unit: int = 1
) -> np.ndarray:
    """Audio of the packets of one payload type, in sequence order: gaps not filled, or (``placed``, for
    one stream) each packet at its RTP timestamp, so a packet lost on the way — or time the sender left
    out, its timestamps jumping — leaves silence in its place and the rest stays where the sender put
    it. ``samples_per_unit``: decoded samples per timestamp unit (2 for G.722: 16 kHz audio, an 8 kHz
    clock)."""
    from swml_engine.transports.sip.rtp import parse_rtp, ts_delta

    parsed = [p for p in (parse_rtp(b) for b in packets) if p is not None and p.payload_type == pt]
    if not parsed:
        return np.zeros(0, np.int16)
    base = parsed[0].sequence
    parsed.sort(key=lambda p: (p.sequence - base) & 0xFFFF)
    chunks = [decode(p.payload) for p in parsed]  # type: ignore[operator]
    if not placed:
        return np.concatenate(chunks)
    offsets = [ts_delta(p.timestamp, parsed[0].timestamp) * samples_per_unit for p in parsed]
    out = np.zeros(max(o + len(c) for o, c in zip(offsets, chunks, strict=True)), np.int16)
    for offset, chunk in zip(offsets, chunks, strict=True):
        if offset >= 0:
            out[offset : offset + len(chunk)] = chunk
    return out


# --- what crosses loopback -------------------------------------------------------------------------


#: Linux's SO_RCVBUFFORCE (a receive buffer beyond rmem_max; root, as the sniffer is).
SO_RCVBUFFORCE = 33
#: Linux's SO_TIMESTAMPNS (the kernel's receive time of each datagram, as a timespec; not in ``socket``).
SO_TIMESTAMPNS = 35
SNIFFER_BUFFER = 32 * 1024 * 1024


class Sniffer:
    """Captures UDP datagrams on ``lo`` (needs CAP_NET_RAW: root, as in CI); ``available`` says if it can."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, int, bytes]] = []  # (source port, destination port, payload)
        #: When each of ``packets`` went through loopback (s, the kernel's clock, not this thread's).
        self.times: list[float] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
            self._sock.bind(("lo", 0))
            self._sock.settimeout(0.2)
            # It takes every datagram on loopback, other tests' too (a make test beside this one): a
            # buffer the size of seconds of that, so a busy machine does not drop the packets a test
            # reads back (a lost one moves a tone's onset a frame: "irregular" pulses that were not).
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SNIFFER_BUFFER)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except (OSError, AttributeError):
            self._sock = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def available(self) -> bool:
        return self._sock is not None

    def __enter__(self) -> Sniffer:
        if self._sock is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sock is not None:
            self._thread.join(2)
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data, ancillary, _, addr = self._sock.recvmsg(65535, 64)
            except (TimeoutError, OSError):
                continue
            if addr[2] != socket.PACKET_HOST or len(data) < 28 or data[9] != 17:
                continue  # UDP as delivered on loopback
            ihl = (data[0] & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", data, ihl)
            stamp = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack_from("qq", value)
                    stamp = sec + nsec / 1e9
            self.times.append(stamp)  # (before its packet: a reader zipping the two never runs short)
            self.packets.append((sport, dport, data[ihl + 8 :]))

    def stall(self, keep: Callable[[int, int], bool], pt: int, clock_rate: int = 8000) -> float:
        """How far (s) an RTP stream — the packets of payload type ``pt`` whose (source, destination)
        ports ``keep`` takes — fell behind its own timestamps on the way in: the most any packet came
        later than the earliest-timed packet before it says it should have. A sender (sipp) that a
        loaded machine stalls for 150 ms and then bursts shows 0.15; a receiver's jitter buffer, when
        such a stall is longer than its delay, drops the late packets and starts its time line again
        that much later — which moves what a recording or a peer hears by that much, through no fault
        of the receiver."""
        worst, best = 0.0, float("inf")
        for (s, d, p), t in zip(self.packets, self.times, strict=False):
            if keep(s, d) and len(p) >= 12 and p[0] >> 6 == 2 and p[1] & 0x7F == pt:
                lateness = t - struct.unpack_from("!I", p, 4)[0] / clock_rate
                best = min(best, lateness)
                worst = max(worst, lateness - best)
        return worst

    def from_engine(self, rtp_port: int | None = None) -> list[bytes]:
        """What engines sent from their RTP ports; with ``rtp_port`` (the call's: its ``sip.invite``
        event has it) only that call's stream. The sniffer sees all of loopback, and a test run beside
        this one (another ``make test``) has engines sending from the same port range."""
        sent = [
            p
            for s, d, p in self.packets
            if ENGINE_RTP[0] <= s <= ENGINE_RTP[1] and not ENGINE_RTP[0] <= d <= ENGINE_RTP[1]
            if rtp_port is None or s == rtp_port
        ]
        if rtp_port is None:
            return sent
        # the port may have served another engine's call just before: keep the stream it sent most of
        streams: dict[bytes, list[bytes]] = {}
        for p in sent:
            streams.setdefault(p[8:12], []).append(p)
        return max(streams.values(), key=len, default=[])


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


#: The caller's default SDP media: PCMA and RFC 2833 events (sipp's pcaps are PCMA).
PCMA_MEDIA = "8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15"


def scenario(name: str | Path, **values: object) -> str:
    """A scenario of scenarios/ (or the file at a path) with its ``{placeholders}`` filled in."""
    path = name if isinstance(name, Path) else Path(__file__).parent / "scenarios" / f"{name}.xml"
    text = path.read_text()
    values = {"media": PCMA_MEDIA, **values}
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), text)


with contextlib.suppress(Exception):
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


# --- junk for the ports -------------------------------------------------------------------------------

_VALID_INVITE = (
    b"INVITE sip:record@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-fz\r\n"
    b"From: <sip:f@127.0.0.1>;tag=1\r\nTo: <sip:record@127.0.0.1>\r\nCall-ID: fuzz-1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: <sip:f@127.0.0.1:5999>\r\nContent-Type: application/sdp\r\nContent-Length: 70\r\n\r\n"
    b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5998 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def junk_packets(rng: random.Random, n: int) -> list[bytes]:
    """Random bytes, truncated and lying SIP, RTP headers whose lengths lie, mutated INVITEs."""
    out: list[bytes] = []
    invite = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKj\r\nCSeq: abc INVITE\r\n"
    for i in range(n):
        kind = i % 7
        if kind == 0:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400))))
        elif kind == 1:
            out.append(invite[: rng.randint(1, len(invite))])
        elif kind == 2:
            out.append(invite + b"Content-Length: 99999\r\n\r\nv=0")
        elif kind == 3:  # RTP header with lengths that lie
            out.append(bytes([0x80 | rng.randint(0, 0x3F), rng.randint(0, 255)]) + bytes(rng.randint(0, 12)))
        elif kind == 4:
            out.append(b"SIP/2.0 200 OK\r\nVia: garbage\r\n\r\n")
        elif kind == 5:
            out.append(
                b"BYE sip:a SIP/2.0\r\nCall-ID: \x00\xff\r\nFrom: <<<\r\nTo: >\r\nVia: ;;;\r\n"
                b"CSeq: 99999999999999999999 BYE\r\n\r\n"
            )
        else:  # a valid INVITE with a few bytes changed: parses, but rarely as meant
            data = bytearray(_VALID_INVITE)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            out.append(bytes(data))
    return out


def flood(port: int, rtp_port: int, seconds: float, rng: random.Random, packets: list[bytes], batch: int) -> int:
    """Throw ``packets`` at the SIP port and an RTP port (UDP), and broken TCP connections at the SIP
    port, for ``seconds``; returns how many were sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while time.monotonic() < deadline:
            for p in packets[:batch]:
                s.sendto(p, ("127.0.0.1", port))
                s.sendto(p, ("127.0.0.1", rtp_port))
                sent += 2
            rng.shuffle(packets)
            # TCP: garbage, a header that never ends, a connection that closes mid-message
            for blob in (
                packets[0],
                b"INVITE " + b"A" * 70000,
                b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 10\r\n\r\nab",
            ):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as t:
                    t.sendall(blob)
                sent += 1
            time.sleep(0.01)
    return sent


# --- a bare SIP client ----------------------------------------------------------------------------------


class SipPeer:
    """A SIP endpoint on a real socket (UDP, or TCP connected to the engine) sending exactly the
    messages a test writes; ``receive`` frames what comes back (Content-Length over TCP)."""

    def __init__(self, port: int, proto: str = "udp", call_id: str | None = None) -> None:
        self.port, self.proto = port, proto
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if proto == "udp":  # room for every answer to a burst (150 INVITEs: 300 answers) before it reads
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 * 1024 * 1024)
        if proto == "tcp":
            self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.local = int(self.sock.getsockname()[1])
        self.call_id = call_id or f"peer-{random.getrandbits(48):x}@127.0.0.1"
        self.tag = f"p{random.getrandbits(32):x}"
        self.messages: list[str] = []
        self._buf = b""

    def request(
        self,
        method: str,
        cseq: int,
        *,
        branch: str | None = None,
        to_tag: str = "",
        body: str = "",
        contact: str | None = None,
        headers: tuple[str, ...] = (),
        uri: str | None = None,
        cseq_method: str | None = None,
        content_type: str = "application/sdp",
    ) -> str:
        """Send a request; returns its Via branch (a CANCEL or a non-2xx ACK reuses the INVITE's)."""
        branch = branch or f"z9hG4bK{random.getrandbits(48):x}"
        lines = [
            f"{method} {uri or f'sip:record@127.0.0.1:{self.port}'} SIP/2.0",
            f"Via: SIP/2.0/{self.proto.upper()} 127.0.0.1:{self.local};branch={branch};rport",
            f"From: <sip:peer@127.0.0.1>;tag={self.tag}",
            f"To: <sip:record@127.0.0.1>{';tag=' + to_tag if to_tag else ''}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
            f"Contact: {contact or f'<sip:peer@127.0.0.1:{self.local};transport={self.proto}>'}",
            "Max-Forwards: 70",
            *headers,
        ]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body.encode())}")
        data = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
        if self.proto == "udp":
            self.sock.sendto(data, ("127.0.0.1", self.port))
        else:
            self.sock.sendall(data)
        return branch

    def reply(self, request: str, code: int = 200, phrase: str = "OK") -> None:
        """Answer a request the engine sent (its Vias, From, To, Call-ID and CSeq copied back)."""
        names = ("Via", "From", "To", "Call-ID", "CSeq")
        lines = [f"SIP/2.0 {code} {phrase}", *(f"{n}: {v}" for n in names for v in header(request, n))]
        data = ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()
        if self.proto == "udp":
            self.sock.sendto(data, ("127.0.0.1", self.port))
        else:
            self.sock.sendall(data)

    def receive(self, seconds: float) -> list[str]:
        """Messages arriving within ``seconds`` (also kept in ``messages``)."""
        out: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, OSError):
                continue
            if self.proto == "udp":
                out.append(data.decode(errors="replace"))
                continue
            if not data:
                break
            self._buf += data
            while (msg := _frame(self)) is not None:
                out.append(msg)
        self.messages += out
        return out

    def wait(self, condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
        """Receive until ``condition()`` holds (True), or ``timeout`` passes (False)."""
        return wait_for(lambda: (self.receive(0.05), condition())[1], timeout)

    def finals(self, method: str = "INVITE") -> list[int]:
        return [s for s in self.statuses(method) if s >= 200]

    def statuses(self, method: str) -> list[int]:
        return [status(m) for m in self.messages if m.startswith("SIP/2.0") and cseq_method(m) == method]

    def final(self, method: str = "INVITE") -> str:
        return next(m for m in self.messages if cseq_method(m) == method and status(m) >= 200)

    def close(self) -> None:
        self.sock.close()


def _frame(peer: SipPeer) -> str | None:
    head, sep, rest = peer._buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    if len(rest) < n:
        return None
    peer._buf = rest[n:]
    return (head + sep + rest[:n]).decode(errors="replace")


def status(msg: str) -> int:
    return int(msg.split()[1]) if msg.startswith("SIP/2.0") else 0


def header(msg: str, name: str) -> list[str]:
    """Every value of a header (each line; compact forms not expanded)."""
    head = msg.split("\r\n\r\n", 1)[0]
    return [m.group(1).strip() for m in re.finditer(rf"(?im)^{re.escape(name)}\s*:\s*(.*)$", head)]


def cseq_method(msg: str) -> str:
    values = header(msg, "CSeq")
    return values[0].split()[-1].upper() if values else ""


def to_tag(msg: str) -> str:
    m = re.search(r";tag=([^;>\s]+)", (header(msg, "To") or [""])[0])
    return m.group(1) if m else ""


def sdp_offer(rtp_port: int, media: str = "0\r\na=rtpmap:0 PCMU/8000") -> str:
    return (
        f"v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP {media}\r\n"
    )


def listen_udp() -> tuple[socket.socket, int]:
    """A UDP socket on loopback for the engine's requests (a Contact, a proxy)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    return s, int(s.getsockname()[1])


def wait_datagram(sock: socket.socket, seconds: float, contains: str = "") -> str | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535).decode(errors="replace")
        except (TimeoutError, OSError):
            continue
        if contains in data:
            return data
    return None


# --- what a call's own events say -------------------------------------------------------------------


def event_time(events: list[dict[str, object]], kind: str, **match: object) -> float:
    """When (seconds on the call's clock) the first event of ``kind`` with these fields came."""
    return next(
        float(str(e["t"])) for e in events if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
    )


def assert_covers(meta: dict[str, object], events: list[dict[str, object]], until: float, at_least: float) -> None:
    """The recording runs from its start to ``until`` on the call's own clock (not on sipp's: a busy
    machine makes sipp's pauses longer, never shorter), and is at least ``at_least`` seconds long."""
    start = event_time(events, "record.state", state="recording")
    assert float(str(meta["duration"])) == pytest.approx(until - start, abs=0.5), (meta["duration"], start, until)
    assert float(str(meta["duration"])) > at_least, meta["duration"]


@contextlib.contextmanager
def engines(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Start ``swml serve`` with a script text; every engine started is stopped (SIGTERM) at the end
    (the ``engine`` fixture of tests/interop and tests/sip)."""
    started: list[Engine] = []

    def start(script: str | None, *extra: str, host: str = "127.0.0.1", nofile: int | None = None) -> Engine:
        """``script`` is the SWML text for --script; None when ``extra`` has --script-url; ``nofile``
        limits the process's open files (as ``ulimit -n``)."""
        path = None
        if script is not None:
            path = tmp_path / f"script-{len(started)}.yaml"
            path.write_text(script)
        eng = Engine(path, tmp_path / f"data-{len(started)}", extra=list(extra), host=host, nofile=nofile).start()
        started.append(eng)
        return eng

    yield start
    for eng in started:
        code = eng.stop()
        assert code == 0, f"swml serve exited {code} on SIGTERM:\n{eng.log()[-3000:]}"
        assert "Traceback" not in eng.log(), eng.log()[-5000:]
