"""A longer junk flood than the suite's: malformed and mutated SIP and RTP at the ports during a call.

    .venv/bin/python bench/fuzz_sip.py --seconds 60

One sipp call sends a 440 Hz caller for the whole flood while this script throws random bytes,
truncated and lying SIP, mutated INVITEs, bad RTP headers (UDP to the SIP and the call's RTP port) and
broken TCP connections at the engine. Reports packets sent, whether the engine survived, the call's
recording length and gaps, tracebacks in the log, and the engine's memory before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import tone  # noqa: E402
from interop.peers import (  # noqa: E402
    Engine,
    flood,
    junk_packets,
    pcma_packets,
    run_sipp,
    scenario,
    wait_for,
    write_pcap_rtp,
)
from load_sip import lost_frames  # noqa: E402

SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {stereo: true}
    - play: {url: 'silence:3600'}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="swml-fuzz-") as tmp:
        work = Path(tmp)
        (work / "s.yaml").write_text(SCRIPT)
        eng = Engine(work / "s.yaml", work / "data").start()
        assert eng.proc is not None
        sipp_dir = work / "sipp"
        sipp_dir.mkdir()
        call_seconds = args.seconds + 5
        packets = pcma_packets(tone(440, call_seconds, 8000, level=0.37))
        write_pcap_rtp(sipp_dir / "tone.pcap", [(1_700_000_000 + i * 0.02, p) for i, p in enumerate(packets)])
        xml = scenario(
            "caller_hangs_up", pcap="tone.pcap", pause=int(call_seconds * 1000), dtmf="pcap/dtmf_2833_1.pcap", after=0
        )
        result: dict[str, object] = {}
        caller = threading.Thread(
            target=lambda: result.update(res=run_sipp(sipp_dir, xml, eng.port, timeout=call_seconds + 60))
        )
        caller.start()
        wait_for(lambda: eng.call_events() and any(e["type"] == "sip.invite" for e in eng.call_events()[0]), 10)
        rtp_port = next(e for e in eng.call_events()[0] if e["type"] == "sip.invite")["rtp_port"]
        rss_before = rss_kib(eng.proc.pid)
        rng = random.Random(11)
        started = time.monotonic()
        sent = flood(eng.port, rtp_port, args.seconds, rng, junk_packets(rng, 5000), batch=500)
        elapsed = time.monotonic() - started
        alive = eng.alive()
        rss_after = rss_kib(eng.proc.pid) if alive else 0
        caller.join(call_seconds + 90)
        res = result.get("res")
        sipp_call = [c for c in eng.call_events() if any(e["type"] == "dtmf" for e in c)]
        call_id = next((e["call_id"] for e in sipp_call[0] if e["type"] == "call.state"), None) if sipp_call else None
        wait_for(lambda: any(m["call_id"] == call_id and m["end_reason"] for m in eng.recordings()), 15)
        metas = [m for m in eng.recordings() if m["call_id"] == call_id]
        code = eng.stop()
        log = eng.log()
        report = {
            "seconds": round(elapsed, 1),
            "packets_sent": sent,
            "packets_per_s": round(sent / elapsed),
            "engine_alive_during_flood": alive,
            "engine_exit_on_sigterm": code,
            "sipp_call_ok": getattr(res, "returncode", None) == 0,
            "recording_s": metas[0]["duration"] if metas else None,
            "expected_s": round(call_seconds, 1),
            "gaps_in_caller_channel_frames": lost_frames(Path(str(metas[0]["url"]).removeprefix("file://")))
            if metas
            else None,
            "calls_started_by_mutated_invites": len(eng.call_events()) - 1,
            "tracebacks_in_log": log.count("Traceback"),
            "rss_kib_before_after": [rss_before, rss_after],
        }
        print(json.dumps(report))
        return 0 if alive and code == 0 and report["tracebacks_in_log"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
