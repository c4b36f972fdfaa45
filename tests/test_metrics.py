"""service/metrics.py without a service: what a scrape shows for given figures and events, the bounds on
what a peer can make it grow, and the rendering cache (a fake clock)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from sip.rtp_parties import parties
from swml_engine.media.clock import MediaTicker
from swml_engine.service.metrics import ServiceMetrics, Snapshot, _render_shared
from swml_engine.transports.sip.counts import MessageCounts
from swml_engine.transports.sip.message import Response, parse_message
from swml_engine.transports.sip.rtpstream import RtpFigures, RtpStream
from swml_engine.transports.sip.sdp import Media
from swml_engine.transports.sip.useragent import Peer, Transport, UserAgent


def scraped(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text, kind = metrics.exposition()
    assert kind.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def request(method: str) -> bytes:
    return (
        f"{method} sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        "From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 "
        f"{method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_scrape_shows_the_figures_sampled_and_the_events_seen() -> None:
    clock = Clock()
    metrics = ServiceMetrics(clock=clock)
    sip = MessageCounts()
    for method in ("INVITE", "INVITE", "BYE", "FROB", "WHATEVER"):
        message = parse_message(request(method))
        sip.received(message)
    sip.sent(
        parse_message(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\n\r\n"
        )
    )
    figures = Snapshot(
        calls=2, far_legs=1, refused=3, recording_states=["recording", "paused", "recording"], sip=[sip],
        rtp=RtpFigures(received=500, sent=490, late=2, concealed=7), uploads_waiting=4, upload_failures=2,
    )  # fmt: skip
    metrics.start(lambda: figures)
    MediaTicker.on_lateness = None  # (this test runs no calls)
    sink = metrics.call_sink()
    sink({"type": "record.state", "state": "recording", "size": 0})
    sink({"type": "record.state", "state": "finished", "size": 16044})
    sink({"type": "callback", "delivered": False})
    sink({"type": "callback", "delivered": True})
    sink({"type": "call.state", "state": "ended", "reason": "remote_hangup"})
    metrics.uploads.uploaded({"recording_id": "r1", "storage": {"size": 16044, "sha256": "..."}})
    seen = scraped(metrics)
    assert seen[("swml_calls_live", ())] == 2
    assert seen[("swml_far_legs_live", ())] == 1
    assert seen[("swml_calls_refused_total", ())] == 3
    assert seen[("swml_calls_total", (("end_reason", "remote_hangup"),))] == 1
    assert seen[("swml_recordings_live", (("state", "recording"),))] == 2
    assert seen[("swml_recordings_live", (("state", "paused"),))] == 1
    assert seen[("swml_recordings_total", (("state", "finished"),))] == 1
    assert seen[("swml_recording_bytes_total", ())] == 16044
    assert seen[("swml_status_callbacks_delivered_total", ())] == 1
    assert seen[("swml_status_callback_failures_total", ())] == 1
    assert seen[("swml_rtp_packets_received_total", ())] == 500
    assert seen[("swml_rtp_frames_lost_total", ())] == 7
    assert seen[("swml_sip_requests_total", (("direction", "in"), ("method", "INVITE")))] == 2
    # Methods a peer makes up share one label: a flood of them cannot grow the scrape.
    assert seen[("swml_sip_requests_total", (("direction", "in"), ("method", "other")))] == 2
    assert seen[("swml_sip_responses_total", (("code", "200"), ("direction", "out")))] == 1
    assert seen[("swml_upload_queue", ())] == 4
    assert seen[("swml_upload_failures_total", ())] == 2
    assert (seen[("swml_uploads_total", ())], seen[("swml_upload_bytes_total", ())]) == (1, 16044)

    # Counters move on by what the keepers counted since; a scrape within RENDER_EVERY gets the same text.
    sip.received(parse_message(request("INVITE")))
    figures.rtp = RtpFigures(received=800, sent=790, late=2, concealed=7)
    clock.now = 0.5
    assert scraped(metrics)[("swml_rtp_packets_received_total", ())] == 500
    clock.now = 1.5
    seen = scraped(metrics)
    assert seen[("swml_rtp_packets_received_total", ())] == 800
    assert seen[("swml_sip_requests_total", (("direction", "in"), ("method", "INVITE")))] == 3


def test_the_media_tick_lateness_is_a_histogram() -> None:
    metrics = ServiceMetrics()
    for late in (0.0005, 0.004, 0.03, 0.3):
        metrics.tick_lateness.observe(late)
    seen = scraped(metrics)
    bucket = "swml_media_tick_lateness_seconds_bucket"
    assert seen[(bucket, (("le", "0.001"),))] == 1
    assert seen[(bucket, (("le", "0.005"),))] == 2
    assert seen[(bucket, (("le", "0.05"),))] == 3
    assert seen[(bucket, (("le", "+Inf"),))] == 4


def test_the_sip_core_counts_what_it_reads_and_writes_retransmissions_included() -> None:
    ua = UserAgent()
    peer = Peer(Transport.UDP, "192.0.2.1", 5060, local=("192.0.2.2", 5060))
    ua.receive(request("OPTIONS"), peer, 0.0)
    ua.receive(request("OPTIONS"), peer, 0.1)  # the same request again: answered again, counted again
    ua.receive(request("FROB"), peer, 0.2)
    ua.receive(b"\x00\xff", peer, 0.3)  # not a message: counted nowhere (the core counts it as malformed)
    sent = [parse_message(d.data) for d in ua.datagrams_to_send()]
    assert [m.status for m in sent if isinstance(m, Response)] == [200, 200, 501]
    assert ua.counts.requests_in == {"OPTIONS": 2, "other": 1}
    assert ua.counts.responses_out == {200: 2, 501: 1}
    assert not ua.counts.requests_out and not ua.counts.responses_in


def dead_pid() -> int:
    """The id of a process that has ended (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write(path: Path, name: str, value: float, labels: dict[str, str] | None = None, kind: str = "counter") -> None:
    """One value in a process's file, as prometheus-client's multiprocess mode writes it."""
    labels = labels or {}
    sample = name + ("_total" if kind == "counter" else "")
    values = MmapedDict(str(path))
    key = mmap_key(name, sample, list(labels), list(labels.values()), "help")
    values.write_value(key, value, 0.0)
    values.close()


def test_workers_that_are_gone_are_folded_into_one_file_and_their_counts_kept(tmp_path: Path) -> None:
    first, second = dead_pid(), dead_pid()
    write(tmp_path / f"counter_{first}.db", "swml_calls", 3, {"end_reason": "remote_hangup"})
    write(tmp_path / f"counter_{os.getpid()}.db", "swml_calls", 2, {"end_reason": "remote_hangup"})
    write(tmp_path / f"gauge_livesum_{first}.db", "swml_calls_live", 5, kind="gauge")
    write(tmp_path / f"gauge_livesum_{os.getpid()}.db", "swml_calls_live", 1, kind="gauge")

    def totals() -> tuple[float, float]:
        families = text_string_to_metric_families(_render_shared(tmp_path).decode())
        seen = {(s.name, tuple(s.labels.items())): s.value for f in families for s in f.samples}
        return seen[("swml_calls_total", (("end_reason", "remote_hangup"),))], seen[("swml_calls_live", ())]

    # The dead worker's count stays in the total; what it had live does not.
    assert totals() == (5, 1)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted(
        ["counter_folded.db", f"counter_{os.getpid()}.db", f"gauge_livesum_{os.getpid()}.db"]
    )
    # Another one gone later is added in; reading again changes nothing.
    write(tmp_path / f"counter_{second}.db", "swml_calls", 4, {"end_reason": "remote_hangup"})
    assert totals() == (9, 1)
    assert totals() == (9, 1)
    assert not (tmp_path / f"counter_{second}.db").exists()


def test_rtp_loss_counts_the_sequence_numbers_that_never_came_not_a_peer_that_sends_nothing() -> None:
    # A caller loses 3 packets, one of them comes late, then it falls silent (hold, silence suppression):
    # swml_rtp_packets_lost_total says 2, while the frames played as silence say far more.
    async def main() -> RtpFigures:
        with parties(("127.0.0.1", 440.0)) as (caller,):
            rtp = RtpStream(8000, lambda d: None, signalling_host="127.0.0.1")
            await rtp.bind("127.0.0.1", (42000, 42999))
            rtp.configure(Media("PCMU", 0, None, 20, caller.addr, "sendrecv"))
            local = ("127.0.0.1", rtp.local[1])

            async def sends(packets: int, seq: int | None = None) -> None:
                caller.seq = caller.seq if seq is None else seq
                goal = rtp.stats.received + packets
                caller.send(local, packets)
                for _ in range(4000):
                    if rtp.stats.received >= goal:
                        return
                    await asyncio.sleep(0.005)
                raise AssertionError("the stream did not take the packets")

            try:
                await sends(10)  # 1000-1009
                await sends(10, seq=1013)  # 1010-1012 lost
                await sends(1, seq=1011)  # late: one gap filled
                await sends(5, seq=1023)
                caller.ssrc += 1  # a new stream (after a hold): its numbering starts anew
                await sends(5, seq=40000)
                for _ in range(100):  # two seconds of the caller sending nothing
                    rtp.read()
            finally:
                rtp.close()
            return RtpFigures(
                received=rtp.stats.received, lost=rtp.stats.lost, concealed=rtp.stats.jitter.concealed_frames
            )

    figures = asyncio.run(main())
    assert figures.lost == 2 and figures.concealed >= 50, figures
    metrics = ServiceMetrics()
    metrics.sample(Snapshot(rtp=figures))
    seen = scraped(metrics)
    assert seen[("swml_rtp_packets_lost_total", ())] == 2
    assert seen[("swml_rtp_frames_lost_total", ())] == figures.concealed
