"""`swml serve` as an operator sees it: remote scripts, refusals, early media, limits, bad networks, junk."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import PATIENCE, HttpServer, read_wav, spectrum_peaks, tone
from swml_engine.transports.sip.rtp import RtpPacket, parse_rtp

from .peers import (
    Engine,
    Sniffer,
    assert_covers,
    event_time,
    flood,
    free_port,
    junk_packets,
    pcma_packets,
    run_sipp,
    scenario,
    sipp_errors,
    wait_for,
    write_pcap_rtp,
)

EngineFactory = Callable[..., Engine]


def check(res: object, workdir: Path, eng: Engine) -> None:
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(workdir) + eng.log()[-3000:]  # type: ignore[attr-defined]


# --- --script-url -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["application/json", "application/yaml"])
def test_script_url_gets_the_call_payload(
    ctype: str, engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    doc = {"version": "1.0.0", "sections": {"main": ["answer", {"set": {"caller": "${call.from}"}}, {"hangup": {}}]}}
    import yaml

    body = json.dumps(doc) if ctype.endswith("json") else yaml.safe_dump(doc)
    http_server.files["/swml"] = (body.encode(), ctype)
    eng = engine(None, "--script-url", http_server.url("/swml"))
    xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
    res = run_sipp(tmp_path / "sipp", xml, eng.port)
    check(res, tmp_path / "sipp", eng)
    [req] = [r for r in http_server.requests if r["path"] == "/swml"]
    payload = req["json"]
    assert set(payload) == {"call", "params", "vars", "envs"}
    call = payload["call"]
    assert call["type"] == "sip" and call["direction"] == "inbound"
    assert call["from"].startswith("sip:sipp@127.0.0.1") and call["to"].startswith("sip:record@127.0.0.1")
    assert call["sip_data"]["sip_req_user"] == "record" and call["sip_data"]["sip_from_user"] == "sipp"
    assert {"name": "X-Customer-Id", "value": "4242"} in call["headers"]
    eng.wait_idle()
    sets = [e for e in eng.call_events()[0] if e["type"] == "vars.set" and e["name"] == "caller"]
    assert sets and sets[0]["value"] == call["from"]
    # A log line about the call carries its id (the name of its event log); others carry "-".
    call_id = next((eng.data / "calls").glob("*.jsonl")).stem
    assert f" [{call_id}] swml_engine.service.server: call {call_id} (" in eng.log()
    assert " [-] swml_engine.service.server: SIP on " in eng.log()


@pytest.mark.parametrize(
    ("reply", "status", "log"),
    [
        (b"version: 1.0.0\nsections:\n  main:\n    - play: {volume: 99}\n", 200, "volume"),
        (b"<html>oops</html>", 200, "not usable"),
        (b"", 503, "HTTP 503"),
    ],
)
def test_bad_script_url_reply_rejects_the_call_and_the_service_goes_on(
    reply: bytes, status: int, log: str, engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    if status == 200:
        http_server.files["/swml"] = (reply, "application/yaml")
    else:
        http_server.failures["/swml"] = [status] * 5
    eng = engine(None, "--script-url", http_server.url("/swml"))
    res = run_sipp(tmp_path / "sipp", scenario("rejected", status=500), eng.port)
    check(res, tmp_path / "sipp", eng)
    assert wait_for(lambda: "rejected 500" in eng.log(), 5)
    line = next(x for x in eng.log().splitlines() if "rejected 500" in x)
    assert log in line and http_server.url("/swml") in line
    # the SIP leg's line names the engine's call (the one of the event log), not only its SIP Call-ID
    [events] = (eng.data / "calls").glob("*.jsonl")
    assert f" [{events.stem}] swml_engine.transports.sip.call: call " in line, line
    # the service still takes calls
    http_server.failures.pop("/swml", None)
    http_server.files["/swml"] = (
        b"version: 1.0.0\nsections:\n  main:\n    - answer\n    - hangup\n",
        "application/yaml",
    )
    res = run_sipp(tmp_path / "sipp2", scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000), eng.port)
    check(res, tmp_path / "sipp2", eng)


# --- offer/answer -------------------------------------------------------------------------------------


def test_no_common_codec_is_488(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n")
    res = run_sipp(tmp_path / "sipp", scenario("rejected", status=488, media="18\na=rtpmap:18 G729/8000"), eng.port)
    check(res, tmp_path / "sipp", eng)
    assert "no common codec" in eng.log()


def test_answer_codecs_restricts_the_choice(engine: EngineFactory, tmp_path: Path) -> None:
    offer = "9 0 8 101\na=rtpmap:9 G722/8000\na=rtpmap:101 telephone-event/8000"
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer: {codecs: 'PCMA,PCMU'}\n    - hangup\n")
    xml = scenario("answered_then_engine_bye", media=offer, expect="m=audio [0-9]+ RTP/AVP 0 101", bye_timeout=10000)
    check(run_sipp(tmp_path / "sipp", xml, eng.port), tmp_path / "sipp", eng)
    # with no restriction the offer's first codec, G.722 (a 16 kHz call), is taken
    eng2 = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - sleep: 500\n")
    xml = scenario("answered_then_engine_bye", media=offer, expect="m=audio [0-9]+ RTP/AVP 9 101", bye_timeout=10000)
    check(run_sipp(tmp_path / "sipp2", xml, eng2.port), tmp_path / "sipp2", eng2)
    [meta] = eng2.recordings(1)
    assert meta["sample_rate"] == 16000
    # answer.codecs that the offer lacks: 488 at answer time, the call ends, nothing is recorded
    eng3 = engine("version: 1.0.0\nsections:\n  main:\n    - answer: {codecs: PCMU}\n    - record_call: {}\n")
    res = run_sipp(tmp_path / "sipp3", scenario("rejected", status=488), eng3.port)
    check(res, tmp_path / "sipp3", eng3)


def test_early_media_then_answer(engine: EngineFactory, tmp_path: Path) -> None:
    script = (
        "version: 1.0.0\nsections:\n  main:\n"
        "    - play: {url: 'silence:1', auto_answer: false}\n    - answer\n    - hangup\n"
    )
    eng = engine(script)
    check(run_sipp(tmp_path / "sipp", scenario("early_media", bye_timeout=10000), eng.port), tmp_path / "sipp", eng)
    eng.wait_idle()
    states = [e["state"] for e in eng.call_events()[0] if e["type"] == "call.state"]
    assert states[:3] == ["ringing", "early_media", "answered"]


def test_max_duration_hangs_up(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer: {max_duration: 2}\n    - play: {url: 'silence:30'}\n"
    )
    started = time.monotonic()
    check(
        run_sipp(tmp_path / "sipp", scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000), eng.port),
        tmp_path / "sipp",
        eng,
    )
    assert 1.8 < time.monotonic() - started < 5
    eng.wait_idle()
    ended = [e for e in eng.call_events()[0] if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended[0]["reason"] == "max_duration"


def test_options_and_health(engine: EngineFactory, tmp_path: Path) -> None:
    http = free_port()
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n", "--http", f"127.0.0.1:{http}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.sendto(options(port, eng.port).encode(), ("127.0.0.1", eng.port))
        reply = s.recv(4096).decode()
    assert reply.startswith("SIP/2.0 200") and "INVITE" in reply
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=3) as r:
        assert json.loads(r.read())["status"] == "ok"


def options(local_port: int, port: int, branch: str = "z9hG4bK-opt1") -> str:
    return (
        f"OPTIONS sip:record@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:record@127.0.0.1>\r\n"
        f"Call-ID: opt-{branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )


# --- a bad network ------------------------------------------------------------------------------------


def lossy_tone_pcap(path: Path, seconds: float, loss: float, reorder: float, seed: int = 1) -> tuple[int, int]:
    """A 440 Hz caller in PCMA 20 ms packets with ``loss`` of them missing and ``reorder`` swapped with the next."""
    rng = random.Random(seed)
    packets = pcma_packets(tone(440, seconds, 8000, level=0.5))
    times = [i * 0.02 for i in range(len(packets))]
    for i in range(len(packets) - 1):
        if rng.random() < reorder:
            packets[i], packets[i + 1] = packets[i + 1], packets[i]
    kept = [(t, p) for t, p in zip(times, packets, strict=True) if rng.random() >= loss]
    write_pcap_rtp(path, [(1_700_000_000 + t, p) for t, p in kept])
    return len(packets), len(kept)


def test_lossy_reordered_call_still_records_full_length(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - play: {url: 'silence:60'}\n"
    )
    work = tmp_path / "sipp"
    work.mkdir()
    sent, kept = lossy_tone_pcap(work / "lossy.pcap", 8.0, loss=0.2, reorder=0.05)
    xml = scenario("caller_hangs_up", pcap="lossy.pcap", pause=8000, dtmf="pcap/dtmf_2833_1.pcap", after=1000)
    check(run_sipp(work, xml, eng.port), work, eng)
    [meta] = eng.recordings(1)
    # ACK → BYE is 9 s: the recording is that long although a fifth of the packets never came
    assert 8.7 < float(meta["duration"]) < 9.6, meta["duration"]
    audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    left = audio[:, 0]
    for start in np.arange(0.5, 7.5, 1.0):  # the tone is there all along, in place
        assert spectrum_peaks(left[int(start * rate) : int((start + 1) * rate)], rate, 1)[0] == pytest.approx(
            440, abs=3
        )
    assert wait_for(lambda: any(e["type"] == "rtp.stats" for e in eng.call_events()[0]), 5)
    stats = next(e for e in eng.call_events()[0] if e["type"] == "rtp.stats")
    assert stats["received"] >= kept and stats["received"] < sent  # (+ the digit's packets)
    assert stats["jitter"]["concealed_frames"] >= (sent - kept) * 0.8


# --- junk at the ports ----------------------------------------------------------------------------------


def test_junk_flood_does_not_stop_the_service(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - play: {url: 'silence:60'}\n"
    )
    work = tmp_path / "sipp"
    result: dict[str, object] = {}
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=8000, dtmf="pcap/dtmf_2833_1.pcap", after=500)
    caller = threading.Thread(target=lambda: result.update(res=run_sipp(work, xml, eng.port)))
    caller.start()
    assert wait_for(lambda: eng.call_events() and any(e["type"] == "sip.invite" for e in eng.call_events()[0]), 10)
    rtp_port = next(e for e in eng.call_events()[0] if e["type"] == "sip.invite")["rtp_port"]
    rng = random.Random(3)
    sent = flood(eng.port, rtp_port, 5.0, rng, junk_packets(rng, 3000), batch=300)
    caller.join(30)
    check(result["res"], work, eng)
    assert sent > 600  # at least a whole batch of junk, whatever the machine's speed
    # (a mutated INVITE that still parses is a call of its own; the caller's call is the one from sipp)
    eng.recordings(1)

    def sipp_call() -> list[dict[str, object]]:
        [events] = [c for c in eng.call_events() if any(e["type"] == "dtmf" for e in c)]
        return events

    call_id = next(e["call_id"] for e in sipp_call() if e["type"] == "call.state")
    assert wait_for(lambda: any(m["call_id"] == call_id and m["end_reason"] for m in eng.recordings()), 10)
    [meta] = [m for m in eng.recordings() if m["call_id"] == call_id]
    # Its log read again once it has the call's end: the recording's end may be written a moment before it.
    ended = {"type": "call.state", "state": "ended"}
    assert wait_for(lambda: any(ended.items() <= e.items() for e in sipp_call()), 10)
    events = sipp_call()
    # the call in progress kept going, full length: to its end on its own clock, at least sipp's 8 s pause
    assert_covers(meta, events, until=event_time(events, "call.state", state="ended"), at_least=8.0)
    assert eng.alive()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # and the service still answers
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.sendto(options(s.getsockname()[1], eng.port, "z9hG4bK-after").encode(), ("127.0.0.1", eng.port))
        assert s.recv(4096).startswith(b"SIP/2.0 200")


def test_send_digits_go_out_as_rfc4733_events(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n    - send_digits: {digits: '12#'}\n    - hangup\n")
    xml = scenario("answered_then_engine_bye", expect="telephone-event", bye_timeout=10000)
    with Sniffer() as sniffer:
        check(run_sipp(tmp_path / "sipp", xml, eng.port), tmp_path / "sipp", eng)
    if not sniffer.available:
        pytest.skip("capturing on loopback needs CAP_NET_RAW")
    events = [
        p
        for p in (parse_rtp(b) for b in sniffer.from_engine(eng.rtp_port()))
        if p is not None and p.payload_type == 101
    ]
    by_event: dict[int, list[RtpPacket]] = {}
    for p in events:
        by_event.setdefault(p.timestamp, []).append(p)
    digits = ["0123456789*#"[ps[0].payload[0]] for ps in by_event.values()]
    assert digits == ["1", "2", "#"]
    for ps in by_event.values():
        assert ps[0].marker and sum(1 for p in ps if p.payload[1] & 0x80) == 3  # marker first, end sent 3 times
        assert {p.payload[0] for p in ps} == {ps[0].payload[0]}


def test_workers_share_the_sip_port(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - sleep: 1500\n", "--workers", "2"
    )
    assert wait_for(lambda: eng.log().count("ready") >= 2, 20)
    xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
    # -t un: one socket (source port) per call, so the kernel spreads the calls over the workers
    res = run_sipp(tmp_path / "sipp", xml, eng.port, transport="un", calls=12, extra=["-r", "12", "-max_socket", "100"])
    check(res, tmp_path / "sipp", eng)
    recs = eng.recordings(12)
    assert len(recs) == 12 and all(r["end_reason"] in ("hangup", "script_end") for r in recs)
    pids = {
        line.split()[2]
        for line in eng.log().splitlines()
        if " swml_engine.service.server: call " in line and " from " in line
    }
    assert len(pids) == 2, eng.log()


def test_recording_survives_sigkill_of_the_service(engine: EngineFactory, tmp_path: Path) -> None:
    script = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - play: {url: 'silence:60'}\n"
    eng = engine(script)
    work = tmp_path / "sipp"
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=8000, dtmf="pcap/dtmf_2833_1.pcap", after=1000)
    caller = threading.Thread(target=lambda: run_sipp(work, xml, eng.port, timeout=20))
    caller.start()
    assert wait_for(lambda: any(e["type"] == "record.state" for c in eng.call_events() for e in c), 10)
    time.sleep(4.0)
    assert eng.proc is not None
    eng.proc.kill()  # SIGKILL: no finalising, no header rewrite
    eng.proc.wait()
    eng.proc = None  # (killed on purpose: the fixture's exit-code check is for the restarted one)
    caller.join(40)
    # the next start repairs the file, marks it, and logs it
    again = Engine(eng.script, eng.data, port=eng.port).start()
    try:
        assert "recovered recording" in again.log()
        [meta] = again.recordings()
        assert meta["end_reason"] == "recovered"
        audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
        # at most 1 s before the kill is lost; the caller's speech is there
        assert 3.0 <= len(audio) / rate <= 4.3, len(audio) / rate
        assert np.sqrt(np.mean(audio[:, 0].astype(float) ** 2)) > 300
    finally:
        assert again.stop() == 0


def test_max_calls_refuses_with_503_and_keeps_the_call_in_progress(engine: EngineFactory, tmp_path: Path) -> None:
    http = free_port()
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - sleep: 3000\n",
        "--max-calls",
        "1",
        "--http",
        f"127.0.0.1:{http}",
    )
    first: dict[str, object] = {}
    xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
    caller = threading.Thread(target=lambda: first.update(res=run_sipp(tmp_path / "sipp1", xml, eng.port)))
    caller.start()
    assert wait_for(
        lambda: any(e["type"] == "call.state" and e["state"] == "answered" for c in eng.call_events() for e in c), 10
    )
    check(run_sipp(tmp_path / "sipp2", scenario("rejected", status=503), eng.port), tmp_path / "sipp2", eng)
    caller.join(20)
    check(first["res"], tmp_path / "sipp1", eng)
    assert "refused 503" in eng.log() and "--max-calls" in eng.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=3) as r:
        health = json.loads(r.read())
    assert health["refused"] == 1 and health["completed"] == 1


class RawUac:
    """A bare SIP client on a UDP socket, to send exactly the retransmissions a test needs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.3)
        self.local = self.sock.getsockname()[1]
        self.replies: list[str] = []

    def send(self, method: str, cseq: int, branch: str, to_tag: str = "", body: str = "") -> None:
        headers = [
            f"{method} sip:record@127.0.0.1:{self.port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.local};branch={branch};rport",
            "From: <sip:raw@127.0.0.1>;tag=raw1",
            f"To: <sip:record@127.0.0.1>{';tag=' + to_tag if to_tag else ''}",
            "Call-ID: raw-call-1@127.0.0.1",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:raw@127.0.0.1:{self.local}>",
            "Max-Forwards: 70",
        ]
        if body:
            headers.append("Content-Type: application/sdp")
        headers.append(f"Content-Length: {len(body)}")
        self.sock.sendto(("\r\n".join(headers) + "\r\n\r\n" + body).encode(), ("127.0.0.1", self.port))

    def collect(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.replies.append(self.sock.recv(65535).decode())
        return self.replies

    def statuses(self, method: str) -> list[int]:
        return [int(r.split()[1]) for r in self.replies if r.startswith("SIP/2.0") and f" {method}\r\n" in r]


def test_retransmitted_invite_and_bye_are_absorbed(engine: EngineFactory) -> None:
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n    - sleep: 5000\n")
    uac = RawUac(eng.port)
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"
    try:
        uac.send("INVITE", 1, "z9hG4bK-inv1", body=sdp)
        uac.collect(0.3)
        uac.send("INVITE", 1, "z9hG4bK-inv1", body=sdp)  # the same INVITE again: a retransmission
        uac.collect(0.7)
        ok = next(r for r in uac.replies if r.startswith("SIP/2.0 200"))
        to_tag = ok.split("To:")[1].split("tag=")[1].split("\r\n")[0].split(";")[0]
        uac.send("ACK", 1, "z9hG4bK-ack1", to_tag)
        uac.send("BYE", 2, "z9hG4bK-bye1", to_tag)
        uac.collect(0.4)
        uac.send("BYE", 2, "z9hG4bK-bye1", to_tag)  # our 200 was "lost": the BYE comes again
        uac.collect(0.6)
    finally:
        uac.sock.close()
    assert uac.statuses("BYE") == [200, 200]  # the same answer, not 481 or 500
    assert 200 in uac.statuses("INVITE") and not [s for s in uac.statuses("INVITE") if s >= 300]
    eng.wait_idle()
    assert len(eng.call_events()) == 1  # one call, not two
    ended = [e for e in eng.call_events()[0] if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended[0]["reason"] == "remote_hangup"


def test_status_callbacks_from_a_sip_call(engine: EngineFactory, http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.url("/status")
    http_server.failures["/status"] = [500]  # the first attempt fails: retried on the shared pool
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{url}'}}\n    - sleep: 1000\n"
    eng = engine(script)
    xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
    check(run_sipp(tmp_path / "sipp", xml, eng.port), tmp_path / "sipp", eng)
    assert wait_for(lambda: sum(1 for r in http_server.requests if r["path"] == "/status") >= 3, 10)
    posts = [r["json"] for r in http_server.requests if r["path"] == "/status"]
    assert [p["params"]["state"] for p in posts] == ["recording", "recording", "finished"]
    call_id = next(e["call_id"] for e in eng.call_events()[0] if e["type"] == "call.state")
    assert all(p["event_type"] == "calling.call.record" and p["params"]["call_id"] == call_id for p in posts)
    # As long as the call was recorded: the sleep's second at least, and what a loaded machine added to it
    # (pair 23: the sleep ended 0.36 s late on a machine running two suites) — never more than the time
    # from its start to its finished state, which also holds the file's finishing (60 ms in pair 24).
    states = [e for e in eng.call_events()[0] if e["type"] == "record.state"]
    took = float(states[-1]["t"]) - float(states[0]["t"])  # type: ignore[arg-type]
    duration = float(posts[-1]["params"]["duration"])
    assert 0.98 <= duration <= took + 0.045, (duration, took)


# --- a hostile or broken --script-url server (docs/documents.md, "Remote documents") ------------------


def vm_peak_mb(eng: Engine) -> float:
    """The service's peak resident memory so far (VmHWM), in MB."""
    assert eng.proc is not None
    for line in Path(f"/proc/{eng.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def rejected_500(eng: Engine, workdir: Path, reason: str) -> str:
    """One call refused 500; returns the log line that says why (it must name ``reason``)."""
    before = eng.log().count("rejected 500")
    check(run_sipp(workdir, scenario("rejected", status=500), eng.port, timeout=30), workdir, eng)
    assert wait_for(lambda: eng.log().count("rejected 500") > before, 10)
    line = [x for x in eng.log().splitlines() if "rejected 500" in x][before]
    assert reason in line, line
    return line


def test_an_alias_bomb_or_an_endless_reply_costs_one_call_not_the_service(
    engine: EngineFactory, tmp_path: Path
) -> None:
    from http_peers import alias_bomb, endless, http_peer, swml

    with http_peer() as peer:
        peer.routes["/swml"] = swml(alias_bomb())
        eng = engine(None, "--script-url", peer.url("/swml"))
        rejected_500(eng, tmp_path / "bomb", "once its YAML aliases are expanded")
        peer.routes["/swml"] = endless(limit=1500 << 20)  # 1.5 GB, chunked, as fast as it is read
        rejected_500(eng, tmp_path / "endless", "larger than 4 MiB")
        assert peer.stats["sent"] < 64 << 20
        assert vm_peak_mb(eng) < 400  # the reply was never held in memory
        peer.routes["/swml"] = swml({"sections": {"main": ["answer", "hangup"]}})
        xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
        check(run_sipp(tmp_path / "after", xml, eng.port), tmp_path / "after", eng)
    # (the fixture then stops the service with SIGTERM and wants exit code 0, no traceback)


def test_sigterm_stops_the_service_while_a_script_server_drips(engine: EngineFactory, tmp_path: Path) -> None:
    from http_peers import drip, http_peer

    with http_peer() as peer:
        peer.routes["/swml"] = drip(total=100_000, every=0.3, ctype="application/yaml")
        eng = engine(None, "--script-url", peer.url("/swml"))
        caller = threading.Thread(
            target=lambda: run_sipp(tmp_path / "sipp", scenario("rejected", status=500), eng.port, timeout=20)
        )
        caller.start()
        assert wait_for(lambda: peer.stats["sent"] > 0, 10)  # the call is ringing, its script dripping in
        assert eng.stop() == 0, eng.log()[-3000:]  # SIGTERM: out in time, not killed after 20 s
        assert "Traceback" not in eng.log()
        caller.join(40)


def test_script_url_redirects_stay_on_their_origin(engine: EngineFactory, tmp_path: Path) -> None:
    from http_peers import http_peer, redirect, swml

    with http_peer() as a, http_peer() as b:
        b.routes["/swml"] = swml({"sections": {"main": ["answer", "hangup"]}})
        a.routes["/swml"] = redirect(b.url("/swml"), 307)
        eng = engine(None, "--script-url", a.url("/swml"), "--env", "API_KEY=k-123")
        line = rejected_500(eng, tmp_path / "cross", "redirected to another origin")
        assert b.url("/swml") in line
        assert b.requests == []  # the call's payload, envs included, never reached it
        # the same origin is followed, the payload sent again with the 307/308
        a.routes["/swml"] = redirect("/v2/swml", 308)
        a.routes["/v2/swml"] = swml({"sections": {"main": ["answer", "hangup"]}})
        xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
        check(run_sipp(tmp_path / "same", xml, eng.port), tmp_path / "same", eng)
        [moved] = a.hits("/v2/swml")
        assert json.loads(moved["body"])["envs"] == {"API_KEY": "k-123"}


def test_script_url_credentials_and_an_ipv6_host(engine: EngineFactory, tmp_path: Path) -> None:
    import base64

    from http_peers import http_peer, status, swml

    with http_peer("::1") as peer:
        peer.routes["/swml"] = status(503)
        url = peer.url("/swml", "user:secretpw")  # http://user:secretpw@[::1]:PORT/swml
        eng = engine(None, "--script-url", url)
        line = rejected_500(eng, tmp_path / "down", "HTTP 503")
        assert peer.url("/swml", "***") in line
        # the refused call's log ends like any call's (the index row too: it is not left "ringing")
        assert wait_for(lambda: eng.call_events()[0][-1]["type"] == "rtp.stats")
        [ended] = [e for e in eng.call_events()[0] if e["type"] == "call.state" and e["state"] == "ended"]
        assert ended["reason"] == "error"
        peer.routes["/swml"] = swml({"sections": {"main": ["answer", {"set": {"ok": "yes"}}, "hangup"]}})
        xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
        check(run_sipp(tmp_path / "up", xml, eng.port), tmp_path / "up", eng)
        eng.wait_idle()
        assert peer.requests[-1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"user:secretpw").decode()
        assert "secretpw" not in eng.log()
        assert all("secretpw" not in json.dumps(events) for events in eng.call_events())
        assert any(e["type"] == "error" and "***@" in e["message"] for c in eng.call_events() for e in c)


def test_a_call_plays_its_own_recording_but_not_another_calls(engine: EngineFactory, tmp_path: Path) -> None:
    from http_peers import http_peer, swml

    http = free_port()
    with http_peer() as peer:
        peer.routes["/swml"] = swml(
            {"sections": {"main": ["answer", {"record_call": {}}, {"play": "silence:1"}, "hangup"]}}
        )
        eng = engine(None, "--script-url", peer.url("/swml"), "--http", f"127.0.0.1:{http}")
        xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
        check(run_sipp(tmp_path / "first", xml, eng.port), tmp_path / "first", eng)
        [first] = eng.recordings(1)
        signed = str(first["url"])
        assert "signature=" in signed
        unsigned = signed.split("?")[0]
        forged = signed.split("signature=")[0] + "signature=" + "0" * 64
        on_disk = (eng.data / "recordings" / f"{first['recording_id']}.wav").resolve().as_uri()
        theirs = [unsigned, forged, on_disk]
        peer.routes["/swml"] = swml(
            {
                "sections": {
                    "main": [
                        "answer",
                        *({"play": u} for u in theirs),
                        {"record_call": {}},
                        {"play": "silence:0.5"},
                        "stop_record_call",
                        {"play": "${record_call_url}"},
                        "hangup",
                    ]
                }
            }
        )
        check(run_sipp(tmp_path / "second", xml, eng.port), tmp_path / "second", eng)
        eng.recordings(2)
        eng.wait_idle()
        [second] = [c for c in eng.call_events() if any(e["type"] == "error" for e in c)]
        ends = [(e["url"], e["result"]) for e in second if e["type"] == "play.end"]
        # the other call's recording: refused three times; then silence:0.5 and its own recording played
        assert [r for _, r in ends] == ["error", "error", "error", "finished", "finished"], ends
        assert ends[-1][0].startswith(eng_recordings_base(signed)) and "signature=" in ends[-1][0]
        messages = [e["message"] for e in second if e["type"] == "error"]
        assert sum("HTTP 403" in m for m in messages) == 2 and any(
            "file:// URLs are not allowed" in m for m in messages
        )


def eng_recordings_base(url: str) -> str:
    """``http://HOST:PORT/recordings/`` of a recording URL."""
    return url.rsplit("/", 1)[0] + "/"


def test_sigterm_is_not_held_by_status_callbacks_to_a_receiver_that_never_answers(
    engine: EngineFactory, tmp_path: Path
) -> None:
    """A stalled status_url receiver makes every attempt wait out its timeout (6 attempts of 5 s plus
    backoff, about 45 s): a stop gives queued callbacks a few seconds, then gives them up, so the service
    exits in time instead of being killed."""
    from http_peers import hang, http_peer

    with http_peer() as receiver:
        receiver.routes["/status"] = hang()
        script = (
            "version: 1.0.0\nsections:\n  main:\n    - answer\n"
            f"    - record_call: {{status_url: '{receiver.url('/status')}'}}\n    - sleep: 500\n    - hangup\n"
        )
        eng = engine(script)
        xml = scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=10000)
        check(run_sipp(tmp_path / "sipp", xml, eng.port), tmp_path / "sipp", eng)
        assert wait_for(lambda: receiver.stats["completed"] > 0, PATIENCE)  # an attempt is stalled now
        assert eng.stop() == 0, eng.log()[-3000:]  # SIGTERM: out in time, not killed after 20 s
        assert "status callback receiver(s) still not answering are given up" in eng.log()
        assert "Traceback" not in eng.log()
