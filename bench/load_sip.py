"""Load: N concurrent SIP calls from sipp, each recorded (record_call, stereo wav) for the call's length.

    .venv/bin/python bench/load_sip.py --calls 100 200 300 --seconds 60 --workers 2

For each N: start `swml serve --workers W`, have sipp place N calls (one UDP socket per call so the
kernel spreads them over the workers), each streaming a 440 Hz caller (SIPp rtp_stream, PCMA) for the whole call,
then read back every recording and the engine's per-call RTP statistics. Reports per N:

- lost frames: 20 ms frames of digital silence in a recording's caller channel while the caller was
  sending (0 = every packet reached the file), summed over all recordings, and recordings missing;
- send jitter p99: the 99th percentile over calls of each call's p99 deviation of our packet gaps from
  20 ms (ms, measured in the engine at the socket);
- CPU per call: the engine processes' CPU time over the steady part, per call, as % of one core;
  next to it the reference of sipp's own CPU for the same calls.

The largest N with 0 lost frames and send jitter p99 < 10 ms is the figure in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

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


def tone_file(path: Path) -> None:
    """One second of a 440 Hz caller in raw A-law (a whole number of cycles: it loops without a seam)."""
    t = np.arange(8000) / 8000
    path.write_bytes(Pcma().encode((np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)))


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


def lost_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())[:, 0]
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    silent = ~np.any(frames != 0, axis=1)
    sound = np.nonzero(~silent)[0]
    if len(sound) == 0:
        return len(frames)
    return int(np.sum(silent[sound[0] : sound[-1] + 1]))


def run(calls: int, seconds: float, workers: int, work: Path, inband: bool = False) -> dict[str, float]:
    port = free_port()
    data = work / f"data-{calls}"
    script = work / "load.yaml"
    script.write_text(SCRIPT)
    log = (work / f"engine-{calls}.log").open("w")
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swml_engine",
            "serve",
            "--sip",
            f"127.0.0.1:{port}",
            "--script",
            str(script),
            "--data",
            str(data),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    time.sleep(2.0)
    sipp_dir = work / f"sipp-{calls}"
    sipp_dir.mkdir(exist_ok=True)
    tone_file(sipp_dir / "tone.alaw")
    media = "8\na=rtpmap:8 PCMA/8000" if inband else PCMA_MEDIA  # without telephone-event: in-band DTMF
    xml = scenario(ROOT / "bench" / "load_call.xml", stream="tone.alaw", pause=int(seconds * 1000), media=media)
    (sipp_dir / "load.xml").write_text(xml)
    rate = min(100, calls)  # calls per second while ramping up
    sipp = subprocess.Popen(
        [
            "sipp",
            f"127.0.0.1:{port}",
            "-sf",
            "load.xml",
            "-m",
            str(calls),
            "-l",
            str(calls),
            "-r",
            str(rate),
            "-t",
            "un",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-nostdin",
            "-trace_err",
            "-timeout",
            f"{int(seconds + 120)}s",
            "-max_socket",
            str(calls * 2 + 100),
        ],
        cwd=sipp_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ramp = calls / rate + 2
    time.sleep(ramp)
    pids = children(engine.pid)
    steady = max(5.0, seconds - ramp - 5)
    c0, s0, t0 = cpu_seconds(pids), cpu_seconds([sipp.pid]), time.monotonic()
    time.sleep(steady)
    c1, s1, t1 = cpu_seconds(pids), cpu_seconds([sipp.pid]), time.monotonic()
    sipp.wait(timeout=seconds + 180)
    time.sleep(3)
    engine.send_signal(signal.SIGTERM)
    engine.wait(60)
    log.close()
    recs = [json.loads(p.read_text()) for p in (data / "recordings").glob("*.json")]
    lost = sum(lost_frames(Path(r["url"].removeprefix("file://"))) for r in recs)
    jitters = []
    for f in (data / "calls").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if e["type"] == "rtp.stats":
                jitters.append(e["send_jitter_p99_ms"])
    durations = [float(r["duration"]) for r in recs]
    return {
        "calls": calls,
        "recordings": len(recs),
        "short_recordings": sum(1 for d in durations if d < seconds - 1.0),
        "refused_503": calls - len(recs),
        "lost_frames": lost,
        "send_jitter_p99_ms": float(np.percentile(jitters, 99)) if jitters else float("nan"),
        "engine_cpu_pct_per_call": 100 * (c1 - c0) / (t1 - t0) / calls,
        "engine_cpu_cores": (c1 - c0) / (t1 - t0),
        "sipp_cpu_pct_per_call": 100 * (s1 - s0) / (t1 - t0) / calls,
        "sipp_exit": sipp.returncode,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--inband", action="store_true", help="callers offer no telephone-event (the engine listens for DTMF tones)"
    )
    args = ap.parse_args()
    socket.setdefaulttimeout(5)
    with tempfile.TemporaryDirectory(prefix="swml-load-") as tmp:
        for n in args.calls:
            res = run(n, args.seconds, args.workers, Path(tmp), args.inband)
            ok = res["lost_frames"] == 0 and res["recordings"] == n and res["send_jitter_p99_ms"] < 10
            print(json.dumps({**{k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, "ok": ok}))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
