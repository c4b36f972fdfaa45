"""`swml serve` under floods of idle SIP/TCP connections: calls still come through and are recorded.

Before the connection limits, 1100 idle TCP connections under `ulimit -n 1024` took every descriptor
the process had, and every new call failed with 503 (no RTP socket could be opened)."""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import read_wav

from .peers import Engine, pcap_speech, run_sipp, scenario, sipp_errors, wait_for
from .test_sipp import CALLER_HANGS_UP, best_correlation

EngineFactory = Callable[..., Engine]


def lift_own_limit(need: int) -> None:
    """This process opens the flood's sockets: lift its soft limit on open files if it is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@contextlib.contextmanager
def idle_connections(port: int, sources: list[str], per_source: int) -> Iterator[list[socket.socket]]:
    """Connections to the SIP port that send nothing, ``per_source`` from each address (127.0.0.x are
    all ours on loopback); a connection the engine refuses is closed by it, not here."""
    socks: list[socket.socket] = []
    try:
        for source in sources:
            for _ in range(per_source):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.settimeout(10)
                s.bind((source, 0))
                with contextlib.suppress(OSError):  # a full accept queue: the flood goes on
                    s.connect(("127.0.0.1", port))
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_engine(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def recorded_call(eng: Engine, workdir: Path, transport: str, host: str = "127.0.0.1") -> None:
    """A sipp call (sipp's speech from a pcap) answered, recorded with the caller's words in it."""
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=3000, dtmf="pcap/dtmf_2833_5.pcap", after=300)
    res = run_sipp(workdir, xml, eng.port, transport=transport, host=host)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(workdir) + eng.log()[-3000:]
    [meta] = eng.recordings(1)
    assert meta["end_reason"] == "hangup"
    audio, _ = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert best_correlation(audio[:, 0], pcap_speech()[8000:24000]) > 0.9


def test_idle_tcp_flood_under_ulimit_1024_leaves_calls_answered_and_recorded(
    engine: EngineFactory, tmp_path: Path
) -> None:
    """1100 idle connections from 22 addresses (50 each, under the per-address cap) against an engine
    limited to 1024 open files: it refuses them once only its reserve for calls is left, and a call
    over UDP is answered and recorded."""
    lift_own_limit(1500)
    eng = engine(CALLER_HANGS_UP.replace("{fmt}", "wav"), nofile=1024)
    sources = [f"127.0.0.{n}" for n in range(2, 24)]
    with idle_connections(eng.port, sources, 50) as flood:
        assert wait_for(lambda: "refused" in eng.log(), 30), eng.log()[-3000:]
        refused = [line for line in eng.log().splitlines() if "SIP/TCP connection from" in line and "refused" in line]
        assert "file descriptors in use" in refused[0] and "kept for calls" in refused[0], refused
        assert len(refused) < 10  # the first refusal, then one line per hundred
        assert wait_for(lambda: sum(closed_by_engine(s) for s in flood) > 100, 30)
        recorded_call(eng, tmp_path / "sipp", "u1")


def test_one_address_holding_connections_does_not_keep_tcp_callers_out(engine: EngineFactory, tmp_path: Path) -> None:
    """100 idle connections from one address: 64 (the per-address cap) are kept, the others closed at
    once; a caller from another address calls over TCP and is recorded."""
    eng = engine(CALLER_HANGS_UP.replace("{fmt}", "wav"))
    with idle_connections(eng.port, ["127.0.0.2"], 100) as hog:
        assert wait_for(lambda: sum(closed_by_engine(s) for s in hog) == 36, 30)
        assert "64 connections open from 127.0.0.2, the per-address limit" in eng.log()
        recorded_call(eng, tmp_path / "sipp", "t1")
        assert sum(closed_by_engine(s) for s in hog) == 36  # the others are still held, and harmless
