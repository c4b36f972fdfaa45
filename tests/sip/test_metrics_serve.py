"""``/metrics`` and ``--log-format json`` on ``swml serve`` as an operator runs it: real calls from our own
SIP peer on loopback (RTP included), a status callback receiver, and Prometheus's own parser reading
what the HTTP port answers. With ``--workers 2``, callers on ports of their own until both workers ran
calls: any scrape shows the whole service's figures, and still does once a worker is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import small_filesystem, wait_for
from http_peers import http_peer
from http_peers import status as answer_status
from interop.peers import Engine, SipPeer, free_port, sdp_offer, to_tag
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (the session fixture)

EngineFactory = Callable[..., Engine]
TOKEN = "metrics-test-token-0123456789"
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: The caller talks for a second (50 RTP packets) and hangs up while the script still plays.
CALL_SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true, format: wav{callback}}}
    - play: {{urls: ['silence:30']}}
"""
PACKETS = 50
#: A worker's line for each call it runs: "<date> <time> <pid> INFO [<call id>] ...: call <id> (<SIP Call-ID>) from".
CALL_LINE = re.compile(r"^\S+ \S+ (\d+) INFO \[[^\]]*\] swml_engine\.service\.server: call \S+ \(\S+\) from ", re.M)


def scrape(base: str, token: str | None = TOKEN) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{base}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(seen: Scrape, name: str, **labels: str) -> float:
    return seen.get((name, tuple(sorted(labels.items()))), 0.0)


def gone(pid: int) -> bool:
    """The process has exited (a zombie, or reaped)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


class Caller:
    """A call from our own SIP peer: INVITE (retransmitted as a phone does: one datagram can be lost),
    200, ACK; then RTP packets of PCMU, and BYE."""

    def __init__(self, port: int) -> None:
        self.peer = SipPeer(port)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        offer = sdp_offer(self.rtp.getsockname()[1])
        branch = self.peer.request("INVITE", 1, body=offer)
        self.invites = 1  # sent, retransmissions included
        for _ in range(5):  # Timer A
            if self.peer.wait(lambda: bool(self.peer.statuses("INVITE")), 2):
                break
            self.peer.request("INVITE", 1, body=offer, branch=branch)
            self.invites += 1
        assert self.peer.wait(lambda: 200 in self.peer.statuses("INVITE")), self.peer.messages
        self.ok = self.peer.final()
        self.peer.request("ACK", 1, to_tag=to_tag(self.ok))

    def talk(self, packets: int) -> None:
        media = re.search(r"m=audio (\d+)", self.ok)
        assert media is not None, self.ok
        for seq in range(packets):  # paced as a phone sends them: 20 ms apart
            header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234)
            self.rtp.sendto(header + b"\xff" * 160, ("127.0.0.1", int(media.group(1))))
            time.sleep(0.02)

    def hang_up(self) -> None:
        self.peer.request("BYE", 2, to_tag=to_tag(self.ok))
        assert self.peer.wait(lambda: 200 in self.peer.statuses("BYE")), self.peer.messages

    def close(self) -> None:
        self.peer.close()
        self.rtp.close()


def call(port: int, *, talk: int = 0) -> int:
    """One call: answered, ``talk`` RTP packets, hung up by the caller; the INVITEs it took."""
    caller = Caller(port)
    try:
        caller.talk(talk)
        caller.hang_up()
    finally:
        caller.close()
    return caller.invites


def test_a_call_shows_in_metrics_and_in_json_log_lines(engine: EngineFactory) -> None:
    with http_peer() as receiver:
        receiver.routes["/cb"] = answer_status(200)
        http = free_port()
        callback = f", status_url: '{receiver.url('/cb')}'"
        eng = engine(
            CALL_SCRIPT.format(callback=callback),
            *("--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--log-format", "json"),
        )
        base = f"http://127.0.0.1:{http}"
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401  # the token, as /api

        invites = call(eng.port, talk=PACKETS)

        def ended() -> Scrape | None:
            seen = scrape(base)
            done = value(seen, "swml_calls_total", end_reason="remote_hangup") == 1
            delivered = value(seen, "swml_status_callbacks_delivered_total") == 2  # recording, finished
            return seen if done and delivered else None

        assert wait_for(ended), scrape(base)
        seen = ended()
        assert seen is not None
        assert value(seen, "swml_calls_live") == 0
        assert 1 <= value(seen, "swml_sip_requests_total", direction="in", method="INVITE") <= invites
        assert value(seen, "swml_sip_requests_total", direction="in", method="BYE") == 1
        assert value(seen, "swml_sip_responses_total", direction="out", code="200") >= 2  # INVITE's, BYE's
        assert value(seen, "swml_recordings_total", state="finished") == 1
        assert value(seen, "swml_recordings_live", state="recording") == 0
        meta = eng.recordings(1)[0]
        assert value(seen, "swml_recording_bytes_total") == meta["size"] > 44  # its file's size
        (stats,) = [e for e in eng.call_events()[0] if e["type"] == "rtp.stats"]  # the call's own figures
        assert value(seen, "swml_rtp_packets_received_total") == stats["received"] == PACKETS, stats
        assert value(seen, "swml_rtp_packets_sent_total") > 0
        assert value(seen, "swml_media_tick_lateness_seconds_count") > 0
        assert value(seen, "swml_status_callback_failures_total") == 0
        assert value(seen, "swml_rtp_packets_lost_total") == stats["lost"] == 0

    # Requests that are not HTTP get 400 and leave no line in the log (a flood of them would flood it).
    for junk in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", http), timeout=10) as raw:
            raw.sendall(junk)
            assert raw.recv(100).startswith(b"HTTP/1.1 400"), junk
    # Every log line is one JSON object; the lines about the call carry its id.
    call_id = str(meta["call_id"])
    lines = [line for line in eng.log().splitlines() if not line.startswith("swml serve:")]  # the CLI's own
    records = [json.loads(line) for line in lines]
    assert not [r for r in records if "Invalid HTTP request" in r["message"]], records
    about = [r for r in records if r["call_id"] == call_id]
    assert any(r["message"].startswith(f"call {call_id} (") for r in about), records
    assert any(r["message"].startswith(f"call {call_id} ended after") for r in about), records
    assert eng.proc is not None
    assert all(r["worker"] == 0 and r["pid"] == eng.proc.pid for r in about), about


def test_with_two_workers_a_scrape_adds_up_every_worker_even_one_killed(engine: EngineFactory) -> None:
    http = free_port()
    eng = engine(
        CALL_SCRIPT.format(callback=""), "--workers", "2", "--http", f"127.0.0.1:{http}", "--metrics-auth", "none"
    )
    base = f"http://127.0.0.1:{http}"

    def workers() -> set[int]:
        return {int(pid) for pid in CALL_LINE.findall(eng.log())}

    calls = invites = killed = 0
    while calls < 4 or (len(workers()) < 2 and calls < 16):  # the kernel spreads callers by their port
        invites += call(eng.port)
        calls += 1
        assert wait_for(lambda n=calls: len(CALL_LINE.findall(eng.log())) == n), eng.log()
    assert len(workers()) == 2, f"{calls} calls all reached one worker"

    def figures(seen: Scrape) -> tuple[float, ...]:
        return (
            value(seen, "swml_calls_total", end_reason="remote_hangup"),
            value(seen, "swml_recordings_total", state="finished"),
            value(seen, "swml_sip_requests_total", direction="in", method="INVITE"),
            value(seen, "swml_calls_live"),
        )

    def whole(seen: Scrape) -> bool:
        ended, recorded, invited, live = figures(seen)
        # Every call's INVITE came (one lost and sent again counts once: hence a range).
        return (ended, recorded, live) == (calls, calls, 0) and calls + killed <= invited <= invites

    # Each scrape is a new connection, which the kernel hands to either worker: every one sees the whole.
    for _ in range(4):
        assert wait_for(lambda: whole(scrape(base, token=None))), (calls, invites, figures(scrape(base, token=None)))

    # The worker of a call in progress killed: what it counted stays in the totals (a counter never goes
    # back), its call leaves the live gauge. One more call shows the scrape is rendered after the kill.
    up = Caller(eng.port)
    invites += up.invites
    line = re.compile(rf"^\S+ \S+ (\d+) INFO .*: call \S+ \({re.escape(up.peer.call_id)}\) from ", re.M)
    assert wait_for(lambda: line.search(eng.log()) is not None), eng.log()

    def sampled_up(seen: Scrape) -> bool:
        # A worker writes its SIP counts for the others to read once a second (SAMPLE_EVERY): the kill
        # comes after the one that has the call's INVITE, which is what the kill may not take back.
        invited = value(seen, "swml_sip_requests_total", direction="in", method="INVITE")
        return value(seen, "swml_calls_live") == 1 and invited >= calls + 1

    assert wait_for(lambda: sampled_up(scrape(base, token=None))), scrape(base, token=None)
    found = line.search(eng.log())
    assert found is not None
    worker = int(found.group(1))
    os.kill(worker, signal.SIGKILL)
    killed = 1
    up.close()
    assert wait_for(lambda: gone(worker))  # its SIP socket closed: a datagram sent before could be lost
    invites += call(eng.port)
    calls += 1
    assert wait_for(lambda: whole(scrape(base, token=None))), (calls, invites, figures(scrape(base, token=None)))


#: Requests outside a call, each answered by the worker that gets it (200, 405, 481, 501): each method a
#: label of its own, each answer a status, so new keys in the workers' metric files.
OUTSIDE_A_CALL = ("OPTIONS", "INFO", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "UPDATE", "BYE", "FOO")
#: A worker's own line at its start: "<date> <time> <pid> INFO [-] swml_engine.service.server: HTTP API on".
WORKER_LINE = re.compile(r"^\S+ \S+ (\d+) INFO \[-\] swml_engine\.service\.server: HTTP API on ", re.M)


def test_a_full_disk_kills_no_worker_through_its_metrics(engine: EngineFactory, tmp_path: Path) -> None:
    """With --workers the figures are in memory-mapped files under DIR/metrics: a page of such a file
    first written when the disk was full was a SIGBUS, which killed the worker (and every worker started
    again in its place, at once). The files' space is now taken when a worker starts; a worker started
    when there is none keeps its figures in memory (out of the scrapes) and runs."""
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    with small_filesystem(tmp_path / "data-0", "2m") as data:  # (the engine fixture's first data directory)
        eng = engine(CALL_SCRIPT.format(callback=""), "--workers", "2", "--http", f"127.0.0.1:{http}",
                     "--metrics-auth", "none")  # fmt: skip
        fd = os.open(data / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(65536))
        except OSError:
            pass  # the disk is full
        finally:
            os.close(fd)

        def every_request_answered(peers: int) -> None:
            for n in range(peers):  # callers on ports of their own: the kernel spreads them over the workers
                peer = SipPeer(eng.port)
                try:
                    for cseq, method in enumerate(OUTSIDE_A_CALL, 1):
                        peer.request(method, cseq)
                    answered = peer.wait(lambda p=peer: all(p.statuses(m) for m in OUTSIDE_A_CALL))  # type: ignore[misc]
                    # (a text, not a tuple: pytest cuts a tuple's repr short, and the log is what tells why)
                    assert answered, f"peer {n}: {peer.messages}\n{eng.log()[-4000:]}"
                finally:
                    peer.close()

        every_request_answered(8)

        def counted() -> float:
            return value(scrape(base, None), "swml_sip_requests_total", direction="in", method="INFO")

        assert wait_for(lambda: counted() == 8), counted()  # (both workers' figures, written on a full disk)
        worker = int(WORKER_LINE.findall(eng.log())[-1])
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: "no room for this worker's figures" in eng.log(), 30), eng.log()[-3000:]
        every_request_answered(8)  # the new worker included
        assert scrape(base, None) and "SIGBUS" not in eng.log(), eng.log()[-3000:]
        (data / "filler").unlink()
        assert eng.stop() == 0


def test_an_upload_to_object_storage_shows_in_metrics(
    engine: EngineFactory,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, setting in s3_server.env.items():
        monkeypatch.setenv(name, setting)  # the engine inherits them
    bucket = s3_server.bucket()
    http = free_port()
    script = CALL_SCRIPT.format(callback="")
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--storage", f"s3://{bucket}/m")
    base = f"http://127.0.0.1:{http}"
    call(eng.port)
    assert wait_for(lambda: value(scrape(base), "swml_uploads_total") == 1), scrape(base)
    seen = scrape(base)
    (audio,) = [data for key, data in s3_server.objects(bucket, "m/").items() if key.endswith(".wav")]
    assert value(seen, "swml_upload_bytes_total") == len(audio)  # what the bucket holds
    assert value(seen, "swml_upload_failures_total") == 0
    assert value(seen, "swml_upload_queue") == 0
