"""A bridged call's event log on `swml serve` tells what the network did to both legs: the caller's own
`rtp.stats` and the far leg's, named by its call id (`leg`), as bench/load_sip.py --bridge reads them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from conftest import wait_for
from swml_engine.transports.sip.codecs import Pcma

from .peers import Engine, free_port, run_sipp, scenario, sipp_errors, start_sipp_uas

EngineFactory = Callable[..., Engine]
BENCH = Path(__file__).resolve().parents[2] / "bench"


def alaw_tone(path: Path, hz: int) -> None:
    """One second of ``hz`` in raw A-law, for sipp's rtp_stream to loop."""
    t = np.arange(8000) / 8000
    path.write_bytes(Pcma().encode((np.sin(2 * np.pi * hz * t) * 12000).astype(np.int16)))


def test_the_far_legs_rtp_stats_are_in_the_callers_log_named_by_its_call_id(
    engine: EngineFactory, tmp_path: Path
) -> None:
    far_dir, caller_dir = tmp_path / "far", tmp_path / "caller"
    far_dir.mkdir()
    caller_dir.mkdir()
    alaw_tone(far_dir / "far.alaw", 1000)
    alaw_tone(caller_dir / "tone.alaw", 440)
    far_port = free_port()
    far = start_sipp_uas(
        far_dir, scenario(BENCH / "load_far.xml", stream="far.alaw", bye_timeout=30000), far_port, timeout=40
    )
    try:
        script = f"""version: 1.0.0
sections:
  main:
    - answer
    - connect: {{to: 'sip:far@127.0.0.1:{far_port}'}}
"""
        eng = engine(script)
        xml = scenario(BENCH / "load_call.xml", stream="tone.alaw", pause=2000)
        r = run_sipp(caller_dir, xml, eng.port, timeout=30)
        assert r.returncode == 0, r.stdout[-2000:] + sipp_errors(caller_dir)
        assert far.wait(20) == 0, sipp_errors(far_dir)  # the engine hung the far party up: BYE, answered
        eng.wait_idle()
        assert wait_for(lambda: sum(e["type"] == "rtp.stats" for e in eng.call_events()[0]) == 2, 10)
        [events] = eng.call_events()
        [leg_id] = {e["call_id"] for e in events if e["type"] == "connect.leg"}
        stats = [e for e in events if e["type"] == "rtp.stats"]
        [far_stats] = [e for e in stats if "leg" in e]
        [caller_stats] = [e for e in stats if "leg" not in e]
        assert far_stats["leg"] == leg_id
        # two seconds of bridge: about 100 packets each way on each leg, sent at our 20 ms pace
        for s in (far_stats, caller_stats):
            assert int(s["sent"]) > 60 and int(s["received"]) > 60, s
            assert 0 <= float(s["send_jitter_p99_ms"]) < 1000, s
    finally:
        if far.poll() is None:
            far.kill()
            far.wait()
