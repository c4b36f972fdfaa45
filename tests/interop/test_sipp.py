"""`swml serve` against sipp: real SIP over UDP and TCP, G.711 audio from pcaps, RFC 2833 digits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import HttpServer, dtmf_tones, read_wav, rms, spectrum_peaks, tone, wav_bytes
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.transports.sip.codecs import Pcma

from .peers import (
    Engine,
    Sniffer,
    assert_covers,
    event_time,
    pcap_speech,
    pcma_packets,
    rtp_audio,
    run_sipp,
    scenario,
    sipp_errors,
    write_pcap_rtp,
)

EngineFactory = Callable[..., Engine]


def best_correlation(haystack: np.ndarray, needle: np.ndarray) -> float:
    """Highest normalised cross-correlation of ``needle`` anywhere in ``haystack`` (1.0 = identical shape)."""
    a = haystack.astype(np.float64)
    b = needle.astype(np.float64)
    if len(a) < len(b):
        a, b = b, a
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)[: len(a) - len(b) + 1]
    windows = np.sqrt(np.maximum(np.convolve(a**2, np.ones(len(b)), "valid"), 0))
    norm = np.linalg.norm(b)
    # a near-silent stretch matches nothing (instead of dividing by almost zero)
    score = np.where(windows > 0.01 * norm, corr / (windows * norm + 1e-9), 0.0)
    return float(np.max(score))


RECORD_AND_PLAY_BACK = """
version: 1.0.0
sections:
  main:
    - answer
    - record_call:
        beep: true
        terminators: '#'
        stereo: true
    - play:
        urls:
          - '{prompt}'
          - 'silence:7'
    - stop_record_call: {{}}
    - play:
        urls:
          - '${{record_call_url}}'
    - hangup
"""


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_record_and_play_back_with_sipp(
    transport: str, engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    http_server.files["/prompt.wav"] = (wav_bytes(tone(1000, 2.0)), "audio/wav")
    eng = engine(RECORD_AND_PLAY_BACK.format(prompt=http_server.url("/prompt.wav")))
    xml = scenario(
        "engine_hangs_up",
        pcap="pcap/g711a.pcap",
        pause=7600,
        dtmf="pcap/dtmf_2833_pound.pcap",
        after=0,
        bye_timeout=40000,
    )
    with Sniffer() as sniffer:
        res = run_sipp(tmp_path / "sipp", xml, eng.port, transport=transport)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]

    [meta] = eng.recordings(1)
    assert meta["end_reason"] == "terminator" and meta["terminator"] == "#"
    assert meta["channels"] == 2 and meta["channel_layout"] == {"left": "speak", "right": "listen"}
    audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert rate == 8000
    eng.wait_idle()
    events = eng.call_events()[0]
    # '#' comes 7.6 s (or, on a busy machine, a little more) after the ACK; the recording starts after
    # the 0.25 s beep and ends at the '#'
    assert_covers(meta, events, event_time(events, "dtmf", digit="#"), 6.8)
    assert len(audio) / rate == pytest.approx(float(str(meta["duration"])), abs=0.05)
    left, right = audio[:, 0], audio[:, 1]
    speech = pcap_speech()
    assert best_correlation(left, speech[8000:40000]) > 0.9  # the caller's own words, on the left
    assert best_correlation(right, speech[8000:40000]) < 0.2
    prompt = right[int(0.3 * rate) : int(1.8 * rate)]
    assert spectrum_peaks(prompt, rate, 1)[0] == pytest.approx(1000, abs=5)  # the prompt, on the right
    assert rms(left[int(0.3 * rate) : int(1.8 * rate)]) > 200 and spectrum_peaks(left[2400:14000], rate, 1)[
        0
    ] != pytest.approx(1000, abs=20)

    assert [e["digit"] for e in events if e["type"] == "dtmf"] == ["#"]
    assert any(e["type"] == "call.state" and e.get("reason") == "hangup" for e in events)
    if sniffer.available:
        heard = rtp_audio(sniffer.from_engine(eng.rtp_port()), Pcma().decode, 8, placed=True)
        # The caller heard the beep, the live prompt, then the played-back recording with its words in it.
        assert len(heard) / 8000 > 15
        playback = heard[-len(audio) :]
        # Words after the prompt ended, half a second at a time: a machine so busy that the engine's
        # loop fell 200 ms behind skips those ticks (docs/serve.md), and a piece that spans the gap reads
        # as another; every other piece is found whole.
        pieces = [best_correlation(playback, speech[i : i + 4000]) for i in range(24000, 48000, 4000)]
        assert sum(c > 0.8 for c in pieces) >= len(pieces) - 1, pieces
        # the prompt, before the playback (wherever the fetch of its URL let it start)
        live = heard[: -len(audio)]
        starts = range(0, len(live) - 8000, 2000)
        assert any(spectrum_peaks(live[i : i + 8000], 8000, 1)[0] == pytest.approx(1000, abs=5) for i in starts)


CALLER_HANGS_UP = """
version: 1.0.0
sections:
  main:
    - answer
    - set:
        who: '${call.from}'
        customer: '%{call.headers[7].value}'
        req_user: '%{call.sip_data.sip_req_user}'
    - record_call:
        stereo: true
        format: '{fmt}'
    - play:
        urls: ['silence:60']
"""


@pytest.mark.parametrize(("transport", "fmt"), [("u1", "wav"), ("t1", "mp3")])
def test_caller_hangs_up_recording_is_full_length(
    transport: str, fmt: str, engine: EngineFactory, tmp_path: Path
) -> None:
    eng = engine(CALLER_HANGS_UP.replace("{fmt}", fmt))
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=8000, dtmf="pcap/dtmf_2833_5.pcap", after=1000)
    res = run_sipp(tmp_path / "sipp", xml, eng.port, transport=transport)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    [meta] = eng.recordings(1)
    assert meta["end_reason"] == "hangup" and meta["format"] == fmt
    eng.wait_idle()
    events = eng.call_events()[0]
    # ACK → BYE is 9 s of pauses; the recording covers all of it although the caller sent nothing for ~2 s
    assert_covers(meta, events, event_time(events, "call.state", state="ended"), 8.0)
    assert [e["digit"] for e in events if e["type"] == "dtmf"] == ["5"]
    sets = {e["name"]: e["value"] for e in events if e["type"] == "vars.set"}
    assert sets["who"].startswith("sip:sipp@127.0.0.1")
    assert sets["req_user"] == "record"
    ended = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended and ended[0]["reason"] == "remote_hangup"


def test_cancel_while_ringing(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - sleep: 5000\n    - answer\n    - record_call: {}\n")
    res = run_sipp(tmp_path / "sipp", scenario("cancel", pause=500), eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    events = eng.call_events()[0]
    ended = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended and ended[0]["reason"] == "remote_cancel"
    assert not any(e["type"] == "call.state" and e["state"] == "answered" for e in events)
    assert eng.recordings() == []


def test_reinvite_hold_and_resume(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - play: {url: 'silence:30'}\n"
    )
    res = run_sipp(tmp_path / "sipp", scenario("reinvite_hold", pcap="pcap/g711a.pcap"), eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    events = eng.call_events()[0]
    reinvites = [(e["hold"], e["direction"]) for e in events if e["type"] == "sip.reinvite"]
    assert reinvites == [(True, "recvonly"), (False, "sendrecv")]
    [meta] = eng.recordings(1)
    # 2 + 1.5 + 1.5 s, held time included
    assert_covers(meta, events, event_time(events, "call.state", state="ended"), 4.2)


def test_a_caller_requiring_session_timers_is_answered_and_its_refreshes_taken(
    engine: EngineFactory, tmp_path: Path
) -> None:
    """sipp requires `timer` (RFC 4028) with 90 s: our 200 agrees it (Session-Expires: 90;refresher=uac,
    Require: timer — checked by sipp), and its refreshes, a re-INVITE then an UPDATE, are answered with
    the interval; the call and its recording go on to the caller's BYE (it once got 420 Bad Extension)."""
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - play: {url: 'silence:30'}\n"
    )
    res = run_sipp(tmp_path / "sipp", scenario("session_timer"), eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    events = eng.call_events()[0]
    ended = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended and ended[0]["reason"] == "remote_hangup", ended
    [meta] = eng.recordings(1)
    assert meta["state"] == "finished" and meta["duration"] > 1.5


def test_delayed_offer(engine: EngineFactory, tmp_path: Path) -> None:
    """INVITE without SDP: our offer goes in the 200 OK (checked by sipp), the caller's answer comes in
    the ACK, and the call is then like any other: its speech on the left of the recording, its digit."""
    early = "    - play: {url: 'silence:0.2', auto_answer: false}\n    - answer\n"
    eng = engine(CALLER_HANGS_UP.replace("{fmt}", "wav").replace("    - answer\n", early, 1))
    xml = scenario("delayed_offer", pcap="pcap/g711a.pcap", pause=8000, dtmf="pcap/dtmf_2833_5.pcap", after=1000)
    res = run_sipp(tmp_path / "sipp", xml, eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    [meta] = eng.recordings(1)
    assert meta["end_reason"] == "hangup"
    audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert rate == 8000
    assert best_correlation(audio[:, 0], pcap_speech()[8000:40000]) > 0.9
    eng.wait_idle()
    events = eng.call_events()[0]
    assert_covers(meta, events, event_time(events, "call.state", state="ended"), 8.0)
    assert [(e["codec"], e["direction"]) for e in events if e["type"] == "sip.answer"] == [("PCMA", "sendrecv")]
    assert [e["digit"] for e in events if e["type"] == "dtmf"] == ["5"]
    assert [e["type"] for e in events if e["type"] == "sip.no_early_media"] == ["sip.no_early_media"]


def test_delayed_offer_without_an_answer_in_the_ack_ends_with_bye(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(CALLER_HANGS_UP.replace("{fmt}", "wav"))
    res = run_sipp(tmp_path / "sipp", scenario("delayed_offer_no_answer"), eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    events = eng.call_events()[0]
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["where"] == "sip.ack" and "no SDP answer" in errors[0]["message"]
    ended = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended and ended[0]["reason"] == "remote_rejected"  # as a 488: no session could be set up


AUTHENTICATED = CALLER_HANGS_UP.replace("    - answer\n", "    - answer: {username: alice, password: 's3cret'}\n")


def test_answer_username_password_challenges_the_caller(engine: EngineFactory, tmp_path: Path) -> None:
    """answer.username/password: 401 with a digest challenge, the INVITE again with credentials (sipp
    computes them), then an ordinary recorded call."""
    eng = engine(AUTHENTICATED.replace("{fmt}", "wav"))
    xml = scenario("authenticated", pcap="pcap/g711a.pcap", pause=4000, dtmf="pcap/dtmf_2833_5.pcap", after=500)
    res = run_sipp(tmp_path / "sipp", xml, eng.port, extra=["-au", "alice", "-ap", "s3cret"])
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    [meta] = eng.recordings(1)
    audio, _ = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert best_correlation(audio[:, 0], pcap_speech()[8000:24000]) > 0.9
    eng.wait_idle()
    events = eng.call_events()[0]
    assert [e["username"] for e in events if e["type"] == "sip.authenticated"] == ["alice"]
    assert [e["digit"] for e in events if e["type"] == "dtmf"] == ["5"]


def test_answer_with_the_wrong_password_is_403(engine: EngineFactory, tmp_path: Path) -> None:
    eng = engine(AUTHENTICATED.replace("{fmt}", "wav"))
    xml = scenario("authenticated_forbidden")
    res = run_sipp(tmp_path / "sipp", xml, eng.port, extra=["-au", "alice", "-ap", "guess"])
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    events = eng.call_events()[0]
    assert [(e["status"], e["reason"]) for e in events if e["type"] == "sip.rejected"] == [
        (403, "wrong credentials for user 'alice'")
    ]
    assert not any(e["type"] == "call.state" and e["state"] == "answered" for e in events)
    assert eng.recordings() == []


def test_ipv6_call(engine: EngineFactory, tmp_path: Path) -> None:
    """SIP and RTP over ::1 (sipp writes its SDP address in brackets, which we accept)."""
    eng = engine(CALLER_HANGS_UP.replace("{fmt}", "wav"), host="::1")
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=4000, dtmf="pcap/dtmf_2833_5.pcap", after=500)
    res = run_sipp(tmp_path / "sipp", xml, eng.port, host="::1")
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    [meta] = eng.recordings(1)
    assert meta["end_reason"] == "hangup"
    audio, _ = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert best_correlation(audio[:, 0], pcap_speech()[8000:24000]) > 0.9
    eng.wait_idle()
    events = eng.call_events()[0]
    assert_covers(meta, events, event_time(events, "call.state", state="ended"), 4.0)
    assert [e["digit"] for e in events if e["type"] == "dtmf"] == ["5"]
    [stats] = [e for e in events if e["type"] == "rtp.stats"]
    # a packet every 20 ms of the call went out over ::1 (counted against the call's clock, not the wall's)
    assert stats["send_errors"] == 0
    assert int(str(stats["sent"])) >= 0.9 * float(str(meta["duration"])) / 0.02, stats


def test_inband_dtmf_when_the_caller_offers_no_telephone_event(engine: EngineFactory, tmp_path: Path) -> None:
    """A caller without RFC 4733 (PCMA only in its offer): the digits it plays as tones, after speech,
    drive a prompt; the speech before them gives no digit; send_digits reaches it as tones too."""
    eng = engine(
        "version: 1.0.0\nsections:\n  main:\n    - answer\n"
        "    - prompt: {play: 'silence:0.5', max_digits: 4, terminators: '#', initial_timeout: 20}\n"
        "    - set: {got: '${prompt_value}', term: '${prompt_digit_terminator}'}\n"
        "    - send_digits: {digits: '159'}\n"
        "    - sleep: 20000\n"
    )
    (tmp_path / "sipp").mkdir()
    audio = np.concatenate([pcap_speech()[: 8000 * 4], dtmf_tones("12#", 8000, on=0.1, off=0.1)])
    write_pcap_rtp(
        tmp_path / "sipp" / "caller.pcap", [(1_700_000_000 + i * 0.02, p) for i, p in enumerate(pcma_packets(audio))]
    )
    write_pcap_rtp(tmp_path / "sipp" / "quiet.pcap", [(1_700_000_000.0, pcma_packets(np.zeros(160, np.int16))[0])])
    xml = scenario(
        "caller_hangs_up", media="8\na=rtpmap:8 PCMA/8000", pcap="caller.pcap", pause=5500, dtmf="quiet.pcap", after=0
    )
    with Sniffer() as sniffer:
        res = run_sipp(tmp_path / "sipp", xml, eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    events = eng.call_events()[0]
    digits = [(e["digit"], e["direction"]) for e in events if e["type"] == "dtmf"]
    assert digits == [("1", "received"), ("2", "received"), ("#", "received")] + [(d, "sent") for d in "159"]
    sets = {e["name"]: e["value"] for e in events if e["type"] == "vars.set"}
    assert (sets["got"], sets["term"]) == ("12", "#")
    digit_times = [e["t"] for e in events if e["type"] == "dtmf" and e["direction"] == "received"]
    assert digit_times[0] > 4.0  # nothing during the 4 s of speech
    if sniffer.available:
        heard = rtp_audio(sniffer.from_engine(eng.rtp_port()), Pcma().decode, 8)
        detector = InbandDtmfDetector(8000)
        sent = [detector.feed(heard[i : i + 160]) for i in range(0, len(heard) - 159, 160)]
        assert "".join(d for d in sent if d) == "159"
