"""Load: N concurrent SIP calls from sipp, each recorded (record_call, stereo wav) for the call's length.

    .venv/bin/python bench/load_sip.py --calls 100 200 300 --seconds 60 --workers 2
    .venv/bin/python bench/load_sip.py --calls 200 250 300 --seconds 60 --workers 2 --bridge

For each N: start `swml serve --workers W`, have sipp place N calls (one UDP socket per call so the
kernel spreads them over the workers), each streaming a 440 Hz caller (SIPp rtp_stream, PCMA) for the whole call,
then read back every recording and the engine's per-call RTP statistics. Reports per N:

- lost frames: 20 ms frames of digital silence in a recording's caller channel while the caller was
  sending (0 = every packet reached the file), summed over all recordings, and recordings missing;
- send jitter p99: the 99th percentile over calls of each call's p99 deviation of our packet gaps from
  20 ms (ms, measured in the engine at the socket);
- CPU per call: the engine processes' CPU time over the steady part, per call, as % of one core;
  next to it the reference of sipp's own CPU for the same calls.

With --bridge, each N runs twice: first the single-leg calls above (the reference), then N bridged calls:
the engine answers, records in stereo and connects each caller to a second sipp (bench/load_far.xml: it
answers with PCMA and streams 1 kHz until the engine's BYE). The bridged run also reports the far
party in the right channel (silent 20 ms frames there while bridged, how late its tone started after
the bridge did and how early it stopped), the far legs' send jitter (their rtp.stats, written to the
caller's event log with a `leg` field), both sipps' CPU, and the engine's CPU per bridged call against
the single-leg one.

The largest N with 0 lost frames and send jitter p99 < 10 ms is the figure in bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from interop.peers import PCMA_MEDIA, free_port, scenario  # noqa: E402
from swml_engine.transports.sip.codecs import Pcma  # noqa: E402

SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {stereo: true, format: wav}
    - play: {url: 'silence:3600'}
"""

BRIDGE_SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true, format: wav}}
    - connect: {{to: 'sip:far@127.0.0.1:{port}'}}
"""

#: The caller's tone and the far party's: the dominant frequency of each channel says whose it is.
CALLER_HZ, FAR_HZ = 440, 1000
FRAME = 160  # samples in 20 ms at 8 kHz (both legs are PCMA)


def tone_file(path: Path, hz: int = CALLER_HZ) -> None:
    """One second of a tone in raw A-law (a whole number of cycles: it loops without a seam)."""
    t = np.arange(8000) / 8000
    path.write_bytes(Pcma().encode((np.sin(2 * np.pi * hz * t) * 12000).astype(np.int16)))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def channels(path: Path) -> np.ndarray:
    """The recording's samples, one column a channel."""
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())


def silent_frames(x: np.ndarray) -> np.ndarray:
    """For each whole 20 ms frame of one channel: is it digital silence (what a missing packet leaves)."""
    frames = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
    return ~np.any(frames != 0, axis=1)


def lost_frames(path: Path) -> int:
    """Silent frames in the caller (left) channel between its first and last sound."""
    silent = silent_frames(channels(path)[:, 0])
    sound = np.nonzero(~silent)[0]
    if len(sound) == 0:
        return len(silent)
    return int(np.sum(silent[sound[0] : sound[-1] + 1]))


def dominant_hz(x: np.ndarray) -> int:
    """The strongest frequency of one second of a channel from its middle (0 when shorter)."""
    if len(x) < 8000:
        return 0
    mid = len(x) // 2
    return int(np.argmax(np.abs(np.fft.rfft(x[mid - 4000 : mid + 4000].astype(float)))))


@dataclass
class FarChannel:
    """The far party in one bridged recording's right channel."""

    bridged: bool  # exactly one bridge, ended
    onset_frames: int  # silent frames from the bridge's start to the far party's first sound
    lost: int  # silent frames after that, until its last sound
    tail: int  # silent frames from its last sound to the bridge's end (the far leg was hung up a few
    # ticks before the bridge's end was written: under load, the step that records it runs later)
    tones_ok: bool  # the caller's tone on the left, the far party's on the right


def far_channel(meta: dict[str, Any]) -> FarChannel:
    """The right channel between the bridge's start and end: from the first frame where the far party's
    tone is the strongest sound (before it, the caller may still hear the ring tone's last frame) to its
    last sound, the frames of silence."""
    x = channels(Path(meta["audio"]))
    bridges = meta.get("bridges") or []
    tones_ok = dominant_hz(x[:, 0]) == CALLER_HZ and x.shape[1] == 2 and dominant_hz(x[:, 1]) == FAR_HZ
    if len(bridges) != 1 or bridges[0].get("end") is None or x.shape[1] != 2:
        return FarChannel(False, 0, 0, 0, tones_ok)
    t0 = float(meta["call_time"])
    first = max(0, round((float(bridges[0]["start"]) - t0) * 50))
    last = round((float(bridges[0]["end"]) - t0) * 50)
    right = x[first * FRAME : last * FRAME, 1]
    frames = right[: len(right) // FRAME * FRAME].reshape(-1, FRAME).astype(float)
    silent = ~np.any(frames != 0, axis=1)
    far = ~silent & (np.abs(np.fft.rfft(frames, axis=1)).argmax(axis=1) == FAR_HZ * FRAME // 8000)
    heard = np.nonzero(far)[0]
    if len(heard) == 0:
        return FarChannel(True, len(silent), 0, 0, tones_ok)
    onset, end = int(heard[0]), int(np.nonzero(~silent)[0][-1])
    return FarChannel(True, onset, int(np.sum(silent[onset : end + 1])), len(silent) - 1 - end, tones_ok)


#: The sipps' nice value (``--sipp-nice``): below 0, the kernel runs them before the engine when both
#: want a core, as phones on machines of their own would be (root only).
SIPP_NICE = 0


def start_sipp(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sipp", *args, "-i", "127.0.0.1", "-nostdin", "-trace_err"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, SIPP_NICE)) if SIPP_NICE else None,
    )


def start_far(work: Path, calls: int, seconds: float) -> tuple[subprocess.Popen[bytes], int]:
    """The far sipp (bench/load_far.xml) answering ``calls`` calls on a port of its own, and that port."""
    far_dir = work / f"far-{calls}"
    far_dir.mkdir(exist_ok=True)
    tone_file(far_dir / "far.alaw", FAR_HZ)
    xml = scenario(ROOT / "bench" / "load_far.xml", stream="far.alaw", bye_timeout=int((seconds + 120) * 1000))
    (far_dir / "far.xml").write_text(xml)
    port = free_port()
    limits = ["-timeout", f"{int(seconds + 180)}s", "-max_socket", str(calls * 2 + 100)]
    return start_sipp(["-sf", "far.xml", "-p", str(port), "-m", str(calls), "-t", "u1", *limits], far_dir), port


def start_engine(
    port: int, http: int, script: Path, data: Path, workers: int, log_path: Path
) -> subprocess.Popen[bytes]:
    """``swml serve`` on ``port`` (its /metrics on ``http``), once each of its workers said it is ready."""
    serve = ["serve", "--sip", f"127.0.0.1:{port}", "--script", str(script), "--data", str(data)]
    serve += ["--http", f"127.0.0.1:{http}", "--metrics-auth", "none"]
    with log_path.open("w") as log:
        engine = subprocess.Popen(
            [sys.executable, "-m", "swml_engine", *serve, "--workers", str(workers), "--log-level", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while log_path.read_text().count("ready") < workers:
        if engine.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"swml serve did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    return engine


def start_callers(
    sipp_dir: Path, port: int, calls: int, seconds: float, inband: bool, rate: int
) -> subprocess.Popen[bytes]:
    """A sipp placing ``calls`` calls to the engine on ``port`` (bench/load_call.xml), 440 Hz each, ``rate``
    new calls a second until all are up."""
    sipp_dir.mkdir(exist_ok=True)
    tone_file(sipp_dir / "tone.alaw")
    media = "8\na=rtpmap:8 PCMA/8000" if inband else PCMA_MEDIA  # without telephone-event: in-band DTMF
    xml = scenario(ROOT / "bench" / "load_call.xml", stream="tone.alaw", pause=int(seconds * 1000), media=media)
    (sipp_dir / "load.xml").write_text(xml)
    place = ["-sf", "load.xml", "-m", str(calls), "-l", str(calls), "-r", str(rate), "-t", "un"]
    limits = ["-timeout", f"{int(seconds + 120)}s", "-max_socket", str(calls * 2 + 100)]
    return start_sipp([f"127.0.0.1:{port}", *place, "-p", str(free_port()), *limits], sipp_dir)


def run(
    calls: int,
    seconds: float,
    workers: int,
    work: Path,
    inband: bool = False,
    bridge: bool = False,
    engines: int = 1,
    rate: int = 100,
) -> dict[str, Any]:
    """N calls on ``engines`` engines of ``workers`` workers each (the calls split evenly, a caller sipp
    for each engine); with ``bridge``, each bridged to the one far sipp. ``rate``: new calls a
    second in all while ramping up."""
    mode = "bridged" if bridge else "single"
    load_before = os.getloadavg()[0]  # the machine's own load (others' work on a shared machine)
    far: subprocess.Popen[bytes] | None = None
    script = work / f"load-{mode}.yaml"
    if bridge:
        far, far_port = start_far(work, calls, seconds)
        script.write_text(BRIDGE_SCRIPT.format(port=far_port))
    else:
        script.write_text(SCRIPT)
    shares = [calls // engines + (1 if i < calls % engines else 0) for i in range(engines)]
    data = [work / f"data-{calls}-{mode}-{i}" for i in range(engines)]
    servers, callers = [], []
    http_ports = [free_port() for _ in shares]
    for i, share in enumerate(shares):
        port = free_port()
        log_path = work / f"engine-{calls}-{mode}-{i}.log"
        servers.append(start_engine(port, http_ports[i], script, data[i], workers, log_path))
        each = max(1, min(share, rate // engines))
        callers.append(start_callers(work / f"sipp-{calls}-{mode}-{i}", port, share, seconds, inband, each))
    ramp = max(shares) / max(1, min(max(shares), rate // engines)) + 2
    time.sleep(ramp)
    pids = [p for s in servers for p in children(s.pid)]
    caller_pids = [c.pid for c in callers]
    far_pids = [far.pid] if far is not None else []
    steady = max(1.0, seconds - ramp - min(5.0, seconds / 4))  # the CPU window: every call up, none ending
    c0, s0, f0, t0 = cpu_seconds(pids), cpu_seconds(caller_pids), cpu_seconds(far_pids), time.monotonic()
    time.sleep(steady)
    c1, s1, f1, t1 = cpu_seconds(pids), cpu_seconds(caller_pids), cpu_seconds(far_pids), time.monotonic()
    for c in callers:
        c.wait(timeout=seconds + 180)
    if far is not None:
        try:  # it exits once it answered N BYEs
            far.wait(timeout=30)
        except subprocess.TimeoutExpired:
            far.terminate()
            far.wait(10)
    wait_finished(data, calls)
    ticks = late_ticks(http_ports)
    for s in servers:
        s.send_signal(signal.SIGTERM)
    for s in servers:
        s.wait(60)
    # (each recording's audio beside its metadata: its url is the engine's HTTP one)
    metas = (p for d in data for p in (d / "recordings").glob("*.json"))
    recs = [{**json.loads(p.read_text()), "audio": str(p.with_suffix(".wav"))} for p in metas]
    lost = sum(lost_frames(Path(r["audio"])) for r in recs)
    jitters: dict[str, list[float]] = {"caller": [], "far": []}
    late = {"caller": 0, "far": 0}  # packets the jitter buffers dropped as come too late to play
    for f in (p for d in data for p in (d / "calls").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if e["type"] == "rtp.stats":
                side = "far" if e.get("leg") else "caller"
                jitters[side].append(e["send_jitter_p99_ms"])
                late[side] += int(e.get("jitter", {}).get("late", 0))
    durations = [float(r["duration"]) for r in recs]
    span = t1 - t0
    res: dict[str, Any] = {
        "mode": mode,
        "calls": calls,
        "engines": f"{engines}x{workers}",
        "recordings": len(recs),
        "short_recordings": sum(1 for d in durations if d < seconds - 1.0),
        "refused_503": calls - len(recs),
        "lost_frames": lost,
        "send_jitter_p99_ms": p99(jitters["caller"]),
        "late_packets": late["caller"],
        "engine_cpu_pct_per_call": 100 * (c1 - c0) / span / calls,
        "engine_cpu_cores": (c1 - c0) / span,
        "sipp_cpu_pct_per_call": 100 * (s1 - s0) / span / calls,
        "sipp_exit": max(c.returncode for c in callers),
        "load_before": load_before,
        "sipp_nice": SIPP_NICE,
        "media_ticks": ticks,
    }
    if far is not None:
        fars = [far_channel(r) for r in recs]
        res |= {
            "bridged_recordings": sum(1 for f in fars if f.bridged),
            "tones_ok": sum(1 for f in fars if f.tones_ok),
            "far_lost_frames": sum(f.lost for f in fars),
            "far_tail_max_ms": 20 * max((f.tail for f in fars), default=0),
            "far_onset_max_ms": 20 * max((f.onset_frames for f in fars), default=0),
            "far_legs_stats": len(jitters["far"]),
            "far_send_jitter_p99_ms": p99(jitters["far"]),
            "far_late_packets": late["far"],
            "far_sipp_cpu_pct_per_call": 100 * (f1 - f0) / span / calls,
            "far_sipp_exit": far.returncode,
        }
    return res


def late_ticks(http_ports: list[int]) -> dict[str, int]:
    """The engines' media ticks (their /metrics): how many, and how many ran over 50 and 200 ms late
    (over 200 ms, ticks are skipped: the recordings get silence for them)."""
    counts = {"ticks": 0, "late_50ms": 0, "late_200ms": 0}
    for port in http_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        below = {"0.05": 0.0, "0.2": 0.0}
        total = 0.0
        for m in re.finditer(
            r'^swml_media_tick_lateness_seconds_(bucket\{le="([0-9.]+)"\}|count) ([0-9.e+]+)$', text, re.M
        ):
            if m.group(1) == "count":
                total = float(m.group(3))
            elif m.group(2) in below:
                below[m.group(2)] = float(m.group(3))
        counts["ticks"] += int(total)
        counts["late_50ms"] += int(total - below["0.05"])
        counts["late_200ms"] += int(total - below["0.2"])
    return counts


def wait_finished(data: list[Path], calls: int, timeout: float = 60) -> None:
    """Until ``calls`` recordings are finished (their calls ended after sipp's BYE), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = 0
        for p in (p for d in data for p in (d / "recordings").glob("*.json")):
            with contextlib.suppress(OSError, ValueError):  # being rewritten
                done += json.loads(p.read_text()).get("state") == "finished"
        if done >= calls:
            return
        time.sleep(0.5)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def passed(res: dict[str, Any]) -> bool:
    ok = res["lost_frames"] == 0 and res["recordings"] == res["calls"] and res["send_jitter_p99_ms"] < 10
    if res["mode"] == "bridged":
        ok = ok and res["bridged_recordings"] == res["calls"] and res["far_lost_frames"] == 0
        ok = ok and not res["far_send_jitter_p99_ms"] >= 10  # nan (no far stats written) does not fail it
    return bool(ok)


def report(res: dict[str, Any]) -> None:
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
    print(json.dumps({**shown, "ok": passed(res)}))
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2, help="swml serve --workers (each engine)")
    ap.add_argument(
        "--engines",
        type=int,
        default=1,
        help="engines on ports of their own, the calls split evenly over them (one caller sipp each)",
    )
    ap.add_argument(
        "--inband", action="store_true", help="callers offer no telephone-event (the engine listens for DTMF tones)"
    )
    ap.add_argument(
        "--bridge",
        action="store_true",
        help="each N twice: single-leg calls (the reference), then calls bridged to a far sipp (connect)",
    )
    ap.add_argument("--rate", type=int, default=100, help="new calls a second while ramping up (all engines)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (logs, recordings, sipp's)")
    ap.add_argument(
        "--sipp-nice",
        type=int,
        default=0,
        metavar="N",
        help="the sipps' nice value (-5: scheduled before the engine, as phones elsewhere would be; root only)",
    )
    args = ap.parse_args()
    global SIPP_NICE
    SIPP_NICE = args.sipp_nice
    socket.setdefaulttimeout(5)
    with tempfile.TemporaryDirectory(prefix="swml-load-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in args.calls:
            single = run(n, args.seconds, args.workers, work, args.inband, engines=args.engines, rate=args.rate)
            report(single)
            if args.bridge:
                bridged = run(
                    n, args.seconds, args.workers, work, args.inband, bridge=True, engines=args.engines, rate=args.rate
                )
                report(bridged)
                ratio = bridged["engine_cpu_pct_per_call"] / single["engine_cpu_pct_per_call"]
                print(json.dumps({"calls": n, "engine_cpu_bridged_over_single": round(ratio, 2)}))
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
