"""`connect` on `swml serve` against real far parties: sipp calls the engine, the script connects it to a
second sipp (or three), each sending its own sound. What is checked is what a user would: the stereo
recording (the caller on the left, the far party on the right, in step for the whole bridge), what each
party received on the wire, the far ends' SIP (CANCEL to the losers, digest answered), the variables."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import read_wav, wait_for
from swml_engine.transports.sip.codecs import SUPPORTED
from swml_engine.transports.sip.rtp import RtpPacket

from .peers import Engine, Sniffer, free_port, rtp_audio, run_sipp, scenario, sipp_errors, write_pcap_rtp

EngineFactory = Callable[..., Engine]

#: The caller's and the far party's sounds: short pulses of a tone, once a second, so that where each
#: pulse starts (its onset) can be found in a recording and in what a party received.
CALLER_TONE, FAR_TONE = 440.0, 1000.0
PULSE, PERIOD = 0.2, 1.0
PCMU_MEDIA = "0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15"
#: How far apart (s) the same moment may be on the two channels of the recording, over the whole bridge.
ALIGNED = 0.040
#: How far a pulse may come from a period after the one before (s): a frame.
SLACK = 0.02
#: The engine's jitter buffer delay (s): a sender that stalls longer loses what it sent meanwhile.
JITTER_DELAY = 0.06
#: How much longer than a pulse the parts of one split by a gap may add up to (s): their edges, measured
#: at half strength in 20 ms windows.
SPLIT_SLOP = 0.03

CONNECT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true, format: wav}}
    - connect: {connect}
    - set: {{after: '${{connect_result}}'}}
    - play: {{url: 'silence:{after}'}}
    - hangup
"""


def pulses(path: Path, codec: str, freq: float, seconds: float, *, offset: float = 0.0) -> None:
    """A pcap of 20 ms RTP packets in ``codec`` (PCMU, PCMA, G722): ``freq`` on for PULSE every PERIOD
    (starting at ``offset``), silence between."""
    info = SUPPORTED[codec]
    rate = info.rate
    t = np.arange(round(seconds * rate)) / rate
    on = ((t - offset) % PERIOD < PULSE) & (t >= offset)
    audio = (np.sin(2 * np.pi * freq * t) * 12000 * on).astype(np.int16)
    encoder = info.factory()
    n = rate // 50
    packets = []
    for i in range(len(audio) // n):
        payload = encoder.encode(np.ascontiguousarray(audio[i * n : (i + 1) * n]))
        packets.append((i * 0.02, RtpPacket(info.static_pt, i, i * 160, 0x3131, payload).serialize()))
    write_pcap_rtp(path, packets)


def strength(samples: np.ndarray, rate: int, freq: float) -> np.ndarray:
    """The strength of ``freq`` in 20 ms windows, every 5 ms."""
    step, width = rate // 200, rate // 50
    t = np.arange(width) / rate
    probe = np.exp(-2j * np.pi * freq * t) * np.hanning(width)
    return np.array(
        [abs(np.dot(samples[i : i + width].astype(np.float64), probe)) for i in range(0, len(samples) - width, step)]
    )


def leak(samples: np.ndarray, rate: int, freq: float) -> float:
    """How strong ``freq`` is in ``samples`` but for its strongest 5% of moments (see the test's use)."""
    level = strength(samples, rate, freq)
    return float(np.percentile(level, 95)) if len(level) else 0.0


def onsets(samples: np.ndarray, rate: int, freq: float, *, stall: float = 0.0) -> list[float]:
    """Where pulses of ``freq`` start (s): 5 ms steps of the tone's strength, rising through half its peak.

    A pulse a gap split in two is one pulse: a rise whose tone, with what came since the last onset, adds
    up to no more than a pulse (a sender's stall, the engine's own skipped ticks on a busy machine, a frame
    of silence a drifting sender's buffer played) — or, with ``stall`` (a sender fell that far behind), a
    rise within a pulse and that stall of the last onset. A pulse played twice adds up to two."""
    step, width = rate // 200, rate // 50
    level = strength(samples, rate, freq)
    if len(level) == 0 or level.max() <= 0:
        return []
    high = np.concatenate([[False], level > level.max() / 2, [False]])
    edges = np.flatnonzero(high[1:] != high[:-1])  # rise, fall, rise, fall ... (indices into level)
    found: list[float] = []
    on = 0.0  # seconds of tone since the last onset
    for rise, fall in zip(edges[::2], edges[1::2], strict=True):
        t, length = (rise * step + width / 2) / rate, (fall - rise) * step / rate
        split = found and on + length <= PULSE + SPLIT_SLOP and t - found[-1] < PERIOD - PULSE
        stalled = found and stall > SLACK and t - found[-1] <= PULSE + stall
        if split or stalled:
            on += length
            continue
        found.append(t)
        on = length
    return found


def regular(times: list[float], period: float = PERIOD, slack: float = SLACK, *, may_lose: int = 0) -> bool:
    """Every pulse a period after the one before (none doubled, no drift), none lost — or at most
    ``may_lose``: a sender that stalls longer than the engine's jitter delay loses the audio it was
    sending then (it comes too late to be played, and is dropped as stale rather than played late: the
    latency stays bounded), a whole pulse when the stall falls on one."""
    gaps = np.diff(times)
    periods = np.rint(gaps / period)
    return (
        len(gaps) > 0
        and bool(np.all(periods >= 1))
        and bool(np.all(np.abs(gaps - periods * period) < slack))
        and int(np.sum(periods - 1)) <= may_lose
    )


def shown(times: list[float], stalls: str) -> str:
    """Onsets for a failure's message, every one of them (a tuple's repr is cut short)."""
    return f"{[round(float(t), 3) for t in times]}; {stalls}"


def drift(left: list[float], right: list[float]) -> float:
    """How much the time from each right onset to the nearest left onset varies over the bridge (s). (The
    nearest, not the last before it: a side a sender's stall moved later may pass the other's onsets.)"""
    offsets = [r - min(left, key=lambda x: abs(r - x)) for r in right] if left else []
    return max(offsets) - min(offsets) if offsets else float("inf")


class FarSipp:
    """sipp as the far party the engine calls: a UAS on its own SIP and media ports."""

    def __init__(self, workdir: Path, xml: str, timeout: float = 60) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "scenario.xml").write_text(xml)
        pcap = workdir / "pcap"
        if not pcap.exists():
            pcap.symlink_to(Path("/usr/share/sip-tester"))
        self.workdir = workdir
        self.port = free_port()
        self.media_port = free_port(span=4)
        cmd = ["sipp", "-sf", "scenario.xml", "-p", str(self.port), "-i", "127.0.0.1", "-mp", str(self.media_port)]
        cmd += ["-m", "1", "-nostdin", "-trace_err", "-trace_logs", "-timeout", f"{int(timeout)}s", "-timeout_error"]
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)  # its socket is open before the engine calls

    @property
    def uri(self) -> str:
        return f"sip:far@127.0.0.1:{self.port}"

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -1

    def logged(self) -> str:
        """What its scenario's log actions wrote (-trace_logs)."""
        return "".join(p.read_text(errors="replace") for p in self.workdir.glob("*_logs.log"))

    def errors(self) -> str:
        out = self.proc.stdout.read() if self.proc.stdout and self.proc.poll() is not None else ""
        return (out or "")[-2000:] + sipp_errors(self.workdir)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def far_parties(*parties: FarSipp) -> Iterator[None]:
    try:
        yield
    finally:
        for p in parties:
            p.kill()


def connect_states(eng: Engine) -> list[object]:
    """The connect.state events of the (one) call, in order: connecting, connected, failed, disconnected."""
    calls = eng.call_events()
    return [e.get("state") for e in calls[0] if e["type"] == "connect.state"] if calls else []


def media_stats(eng: Engine) -> str:
    """What each call's jitter buffer did (for a failure's message: a pulse out of place is explained by
    late packets, resyncs, drift corrections), and how often the engine's own ticks were skipped."""
    said = []
    for events in eng.call_events():
        for e in events:
            if e["type"] == "rtp.stats":
                jitter = e.get("jitter")
                said.append(f"{e.get('received')} received, {e.get('lost')} lost, jitter {jitter}")
    skipped = [line for line in eng.log().splitlines() if "skipped" in line][-3:]
    return "; ".join(said + skipped)


def vars_of(eng: Engine) -> dict[str, object]:
    [events] = eng.call_events()
    return {str(e["name"]): e["value"] for e in events if e["type"] == "vars.set"}


def caller(
    tmp_path: Path, eng: Engine, pcap: Path, seconds: float, media: str | None = None
) -> subprocess.CompletedProcess[str]:
    """sipp calls the engine, sends ``pcap``, and hangs up after ``seconds``."""
    xml = scenario(
        "caller_hangs_up",
        pcap=str(pcap),
        pause=int(seconds * 1000),
        dtmf="pcap/dtmf_2833_1.pcap",
        after=300,
        **({"media": media} if media else {}),
    )
    return run_sipp(tmp_path / "caller", xml, eng.port, timeout=60)


def far_heard(sniffer: Sniffer, far: FarSipp, codec: str) -> np.ndarray:
    """What the engine sent the far party (the packets to its media port), decoded."""
    info = SUPPORTED[codec]
    packets = [p for s, d, p in sniffer.packets if d == far.media_port]
    # Placed by RTP timestamp: ticks the engine skipped leave their time out (G.722's timestamps count
    # at 8 kHz, its samples at 16). Unplaced, a pulse after such a gap read early by its length (pair 22).
    return rtp_audio(packets, info.factory().decode, info.static_pt, placed=True, samples_per_unit=info.rate // 8000)


# --- the bridge, recorded -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller_codec", "far_codec"), [("PCMA", "PCMU"), ("PCMU", "G722")], ids=["pcma-to-pcmu", "pcmu-to-g722"]
)
def test_a_bridged_call_is_recorded_caller_left_far_party_right_in_step(
    caller_codec: str, far_codec: str, engine: EngineFactory, tmp_path: Path
) -> None:
    caller_pcap, far_pcap = tmp_path / "caller.pcap", tmp_path / "far.pcap"
    pulses(caller_pcap, caller_codec, CALLER_TONE, 10.0)
    pulses(far_pcap, far_codec, FAR_TONE, 8.0, offset=0.5)
    pt = SUPPORTED[far_codec].static_pt
    far = FarSipp(
        tmp_path / "far",
        scenario(
            "far_answers",
            offer="0 8 9 101",  # PCMU, PCMA, G.722, telephone-event: all we speak, G.711 first
            ring=500,
            far_media=f"{pt}\na=rtpmap:{pt} {far_codec}/8000",
            pcap=str(far_pcap),
            bye_timeout=40000,
        ),
    )
    eng = engine(CONNECT.format(connect=f"{{to: '{far.uri}'}}", after=0))
    media = PCMU_MEDIA if caller_codec == "PCMU" else None
    with far_parties(far), Sniffer() as sniffer:
        res = caller(tmp_path, eng, caller_pcap, 9.0, media)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        assert far.wait() == 0, far.errors() + eng.log()[-3000:]
    [meta] = eng.recordings(1)
    assert meta["channels"] == 2
    audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert rate == 8000  # the caller's rate, whatever the far leg's
    # How far each sipp fell behind its own pcap on the way to the engine (0 on an idle machine; a
    # machine running two test suites stalls sipp now and then): a stall past the jitter buffer's delay
    # moves that side's audio from then on by its length, and what it sent meanwhile came too late to be
    # played (a pulse, when the stall falls on one) — the engine's right, not a fault to report.
    caller_stall = far_stall = 0.0
    if sniffer.available:
        engine_port = eng.rtp_port()
        caller_stall = sniffer.stall(lambda s, d: d == engine_port, SUPPORTED[caller_codec].static_pt)
        far_stall = sniffer.stall(lambda s, d: far.media_port <= s < far.media_port + 4, pt)
    stalls = f"sipp fell behind by {caller_stall:.3f} s (caller) and {far_stall:.3f} s (far party); {media_stats(eng)}"
    lose = int(max(caller_stall, far_stall) > JITTER_DELAY)  # (a pulse a stall fell on: see regular())
    left, right = audio[:, 0], audio[:, 1]
    said, heard = onsets(left, rate, CALLER_TONE, stall=caller_stall), onsets(right, rate, FAR_TONE, stall=far_stall)
    assert len(said) >= 8 and regular(said, slack=SLACK + caller_stall, may_lose=lose), shown(said, stalls)
    # the far party's pulses: none lost (but to a stall), none doubled
    assert len(heard) >= 6 and regular(heard, slack=SLACK + far_stall, may_lose=lose), shown(heard, stalls)
    # the two channels keep one time line
    assert drift(said, heard) < ALIGNED + caller_stall + far_stall, (said, heard, stalls)
    # no leak across while bridged (before, the caller heard the ring tone, 440 + 480 Hz): each tone on
    # the other channel is far weaker (under -26 dB) than on its own — over all but its strongest 5% of
    # moments: a leak lasts (a pulse is 20% of the time, a ring tone longer), while a click where a
    # frame of silence met a loud pulse (a late packet on a loaded machine) is broadband for a few 5 ms
    # steps (5.5% at 440 Hz in pair 25)
    bridged = slice(int(heard[0] * rate), None)
    assert leak(right[bridged], rate, CALLER_TONE) < 0.05 * strength(left, rate, CALLER_TONE).max()
    assert leak(left, rate, FAR_TONE) < 0.05 * strength(right, rate, FAR_TONE).max()
    assert "connected" in connect_states(eng)
    if sniffer.available:
        # the caller heard the far party, and the far party the caller, each in its own codec
        caller_info = SUPPORTED[caller_codec]
        to_caller = rtp_audio(
            sniffer.from_engine(eng.rtp_port()), caller_info.factory().decode, caller_info.static_pt, placed=True
        )
        got = onsets(to_caller, 8000, FAR_TONE, stall=far_stall)
        assert len(got) >= 6 and regular(got, slack=SLACK + far_stall, may_lose=lose), shown(got, stalls)
        to_far = far_heard(sniffer, far, far_codec)
        got = onsets(to_far, SUPPORTED[far_codec].rate, CALLER_TONE, stall=caller_stall)
        # The caller's scenario ends with a key (RFC 4733): while it goes out to the far party, the key
        # takes the place of the caller's voice for it (as on a phone), so the last pulse may start
        # late; every pulse before it came in step.
        assert len(got) >= 5 and regular(got[:-1], slack=SLACK + caller_stall, may_lose=lose), shown(got, stalls)


def test_parallel_dial_bridges_the_one_that_answers_and_cancels_the_others(
    engine: EngineFactory, tmp_path: Path
) -> None:
    far_pcap, caller_pcap = tmp_path / "far.pcap", tmp_path / "caller.pcap"
    pulses(far_pcap, "PCMU", FAR_TONE, 5.0)
    pulses(caller_pcap, "PCMA", CALLER_TONE, 8.0)
    first = FarSipp(tmp_path / "first", scenario("far_rings", cancel_timeout=30000))
    second = FarSipp(
        tmp_path / "second",
        scenario(
            "far_answers",
            offer="0 8 9 101",
            ring=1500,
            far_media="0\na=rtpmap:0 PCMU/8000",
            pcap=str(far_pcap),
            bye_timeout=40000,
        ),
    )
    third = FarSipp(tmp_path / "third", scenario("far_rings", cancel_timeout=30000))
    legs = ", ".join(f"{{to: '{p.uri}'}}" for p in (first, second, third))
    eng = engine(CONNECT.format(connect=f"{{parallel: [{legs}]}}", after=0))
    with far_parties(first, second, third):
        res = caller(tmp_path, eng, caller_pcap, 6.0)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        for party in (first, second, third):  # CANCEL, 487, ACK for the two; BYE for the one bridged
            assert party.wait() == 0, party.errors() + eng.log()[-3000:]
    for loser in (first, third):  # told another took the call (RFC 3326 cause 200): no missed call
        assert "CANCEL Reason cause 200" in loser.logged(), loser.logged()
    [meta] = eng.recordings(1)
    audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert len(onsets(audio[:, 1], rate, FAR_TONE)) >= 3  # bridged with the second
    assert "connected" in connect_states(eng)


def test_serial_dial_goes_past_a_busy_one_and_one_that_does_not_answer_to_the_one_that_does(
    engine: EngineFactory, tmp_path: Path
) -> None:
    far_pcap, caller_pcap = tmp_path / "far.pcap", tmp_path / "caller.pcap"
    pulses(far_pcap, "PCMU", FAR_TONE, 5.0)
    pulses(caller_pcap, "PCMA", CALLER_TONE, 12.0)
    busy = FarSipp(tmp_path / "busy", scenario("far_refuses", status=486, phrase="Busy Here"))
    silent = FarSipp(tmp_path / "silent", scenario("far_rings", cancel_timeout=30000))
    answers = FarSipp(
        tmp_path / "answers",
        scenario(
            "far_answers",
            offer="0 8 9 101",
            ring=300,
            far_media="0\na=rtpmap:0 PCMU/8000",
            pcap=str(far_pcap),
            bye_timeout=40000,
        ),
    )
    legs = f"[{{to: '{busy.uri}'}}, {{to: '{silent.uri}', timeout: 2}}, {{to: '{answers.uri}'}}]"
    eng = engine(CONNECT.format(connect=f"{{serial: {legs}}}", after=0))
    with far_parties(busy, silent, answers):
        res = caller(tmp_path, eng, caller_pcap, 8.0)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        for party in (busy, silent, answers):  # 486 ACKed; CANCEL after 2 s of ringing; BYE at the end
            assert party.wait() == 0, party.errors() + eng.log()[-3000:]
    assert "CANCEL Reason cause 487" in silent.logged(), silent.logged()  # it rang out: a missed call
    [events] = eng.call_events()
    failed = [(e.get("reason"), e.get("code")) for e in events if e["type"] == "connect.leg" and e["state"] == "failed"]
    assert failed == [("busy", 486), ("no_answer", None)]
    assert "connected" in connect_states(eng)
    [meta] = eng.recordings(1)
    audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert len(onsets(audio[:, 1], rate, FAR_TONE)) >= 3


def test_answer_on_bridge_answers_the_caller_when_the_far_party_answers(engine: EngineFactory, tmp_path: Path) -> None:
    far_pcap = tmp_path / "far.pcap"
    pulses(far_pcap, "PCMU", FAR_TONE, 3.0)
    far = FarSipp(
        tmp_path / "far",
        scenario(
            "far_answers",
            offer="0 8 9 101",
            ring=2000,
            far_media="0\na=rtpmap:0 PCMU/8000",
            pcap=str(far_pcap),
            bye_timeout=40000,
        ),
    )
    script = f"version: 1.0.0\nsections:\n  main:\n    - connect: {{to: '{far.uri}', answer_on_bridge: true, max_duration: 3}}\n"
    eng = engine(script)
    with far_parties(far):
        # the caller gets early media (183 with SDP) while the far party rings, then the 200; after the
        # bridge's 3 s the script ends and both get the engine's BYE
        res = run_sipp(tmp_path / "caller", scenario("early_media", bye_timeout=30000), eng.port)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        assert far.wait() == 0, far.errors() + eng.log()[-3000:]
    [events] = eng.call_events()
    answered = next(float(str(e["t"])) for e in events if e["type"] == "call.state" and e["state"] == "answered")
    leg = next(float(str(e["t"])) for e in events if e["type"] == "connect.leg" and e["state"] == "answered")
    assert answered >= leg >= 1.9, (answered, leg)  # not before the far party's 200, 2 s after its ringing


# --- what the far end answers ---------------------------------------------------------------------------


def test_a_far_party_asking_for_digest_credentials_is_reached_with_username_and_password(
    engine: EngineFactory, tmp_path: Path
) -> None:
    far = FarSipp(tmp_path / "far", scenario("far_authenticates", bye_timeout=40000))
    eng = engine(CONNECT.format(connect=f"{{to: '{far.uri}', username: alice, password: s3cret}}", after=0))
    caller_pcap = tmp_path / "caller.pcap"
    pulses(caller_pcap, "PCMA", CALLER_TONE, 4.0)
    with far_parties(far):
        res = caller(tmp_path, eng, caller_pcap, 3.0)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        assert far.wait() == 0, far.errors() + eng.log()[-3000:]  # sipp checked the digest itself
    assert "connected" in connect_states(eng)


def call_until_hung_up(tmp_path: Path, eng: Engine, far: FarSipp) -> None:
    """A sipp caller (PCMA pulses) the engine connects to ``far`` and then hangs up; both sipps end well."""
    caller_pcap = tmp_path / "caller.pcap"
    pulses(caller_pcap, "PCMA", CALLER_TONE, 4.0)
    with far_parties(far):
        xml = scenario(
            "engine_hangs_up",
            pcap=str(caller_pcap),
            pause=500,
            dtmf="pcap/dtmf_2833_1.pcap",
            after=0,
            bye_timeout=30000,
        )
        res = run_sipp(tmp_path / "caller", xml, eng.port)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        assert far.wait() == 0, far.errors()


@pytest.mark.parametrize(("status", "phrase", "reason"), [(486, "Busy Here", "busy"), (603, "Decline", "rejected")])
def test_a_refusing_far_party_fails_connect_and_the_script_goes_on(
    status: int, phrase: str, reason: str, engine: EngineFactory, tmp_path: Path
) -> None:
    far = FarSipp(tmp_path / "far", scenario("far_refuses", status=status, phrase=phrase))
    eng = engine(CONNECT.format(connect=f"{{to: '{far.uri}'}}", after=1))
    call_until_hung_up(tmp_path, eng, far)
    seen = vars_of(eng)
    assert (seen["connect_result"], seen["connect_failed_reason"], seen["after"]) == ("failed", reason, "failed")


def test_a_far_party_hanging_up_before_it_answers_fails_connect_at_once(engine: EngineFactory, tmp_path: Path) -> None:
    """A gateway ending its announcement (183 with early media) with a BYE instead of a final answer: the
    leg is over then — cancelled and failed `rejected` at once, not left ringing until connect's timeout."""
    far_pcap = tmp_path / "far.pcap"
    pulses(far_pcap, "PCMU", FAR_TONE, 2.0)
    xml = scenario("far_hangs_up_early", pcap=str(far_pcap), announce=1000, cancel_within=5000)
    far = FarSipp(tmp_path / "far", xml)
    eng = engine(CONNECT.format(connect=f"{{to: '{far.uri}', timeout: 30}}", after=1))
    call_until_hung_up(tmp_path, eng, far)  # (the far sipp ends well: our CANCEL came within 5 s)
    seen = vars_of(eng)
    assert (seen["connect_result"], seen["connect_failed_reason"], seen["after"]) == ("failed", "rejected", "failed")
    [events] = eng.call_events()
    [failed] = [e for e in events if e["type"] == "connect.leg" and e["state"] == "failed"]
    assert failed["code"] == 487 and "hung up before answering" in str(failed["text"])


def test_a_far_party_killed_mid_bridge_ends_it_after_the_rtp_timeout(engine: EngineFactory, tmp_path: Path) -> None:
    far_pcap, caller_pcap = tmp_path / "far.pcap", tmp_path / "caller.pcap"
    pulses(far_pcap, "PCMU", FAR_TONE, 30.0)
    pulses(caller_pcap, "PCMA", CALLER_TONE, 30.0)
    far = FarSipp(
        tmp_path / "far",
        scenario(
            "far_answers",
            offer="0 8 9 101",
            ring=100,
            far_media="0\na=rtpmap:0 PCMU/8000",
            pcap=str(far_pcap),
            bye_timeout=60000,
        ),
    )
    eng = engine(CONNECT.format(connect=f"{{to: '{far.uri}'}}", after=1), "--rtp-timeout", "2")
    with far_parties(far):
        # (a second pcap would stop the first: the caller's audio is played again instead of a digit; a
        # caller that fell silent would be hung up by the same --rtp-timeout)
        xml = scenario(
            "engine_hangs_up", pcap=str(caller_pcap), pause=100, dtmf=str(caller_pcap), after=0, bye_timeout=40000
        )
        result: list[subprocess.CompletedProcess[str]] = []
        runner = threading.Thread(target=lambda: result.append(run_sipp(tmp_path / "caller", xml, eng.port)))
        runner.start()
        assert wait_for(lambda: "connected" in connect_states(eng), 30), eng.log()[-3000:]
        time.sleep(2.0)
        far.kill()  # no BYE: its media just stops
        killed = time.monotonic()
        runner.join(60)
        assert result and result[0].returncode == 0, eng.log()[-3000:]
    assert connect_states(eng)[-1] == "disconnected"
    assert vars_of(eng)["after"] == "connected"  # the far party gone, the script went on
    assert time.monotonic() - killed < 30
    [meta] = eng.recordings(1)
    assert meta["end_reason"] and float(str(meta["duration"])) > 4
