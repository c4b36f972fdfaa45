"""A digit crossing the bridge (media/bridge.py) takes the place of the other party's voice while it goes
out, as a key on a phone does: a far end that takes no telephone-events gets the key's tones alone, which
its DTMF detector needs (tests/sip/test_bridge_sip.py shows it on SIP). Here, on the virtual clock, what
the simulated far party heard while the caller's key went to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import read_wav, rms, run_doc, tone
from swml_engine.transports.simulated import PeerScript

AGENT = "sip:agent@example.com"


def test_while_the_callers_digit_goes_to_the_far_party_it_does_not_hear_the_caller(tmp_path: Path) -> None:
    run_doc(
        f"sections: {{main: [{{connect: {{to: '{AGENT}'}}}}]}}",
        tmp_path,
        caller_audio=tone(440, 8.0),
        dtmf=[(3.0, "5")],
        peers=[PeerScript(to=AGENT, at=1.0, hangup=5.0)],
    )
    heard, rate = read_wav(tmp_path / "out" / "peer-1-heard.wav")
    assert rate == 8000
    frames = heard[: len(heard) // 160 * 160].reshape(-1, 160)
    voiced = np.flatnonzero([rms(f) > 1000 for f in frames])
    quiet = [i for i in range(voiced[0], voiced[-1]) if rms(frames[i]) < 50]
    # one gap, the key's 100 ms (five frames, in a row), in the caller's tone that the far party hears
    assert len(quiet) == 5 and quiet == list(range(quiet[0], quiet[0] + 5)), quiet
