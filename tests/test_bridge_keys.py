"""A digit crossing the bridge (media/bridge.py) takes the place of the other party's voice while it goes
out, as a key on a phone does: a far end that takes no telephone-events gets the key's tones alone, which
its DTMF detector needs (tests/sip/test_bridge_sip.py shows it on SIP). Here, on the virtual clock, what
the simulated far party heard while the caller's key went to it.

A caller whose phone sends its keys as tones (in-band): its digit is sent on as an event to a far party
that takes events, and not sent at all to one that takes none (the tones in the audio are its digit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import dtmf_tones, read_wav, rms, run_doc, tone
from swml_engine.call import Call, CallOptions
from swml_engine.document.loader import load_text
from swml_engine.events import EventLog
from swml_engine.media.bridge import DIGIT_SECONDS
from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.media.frame import Frame
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.methods import REGISTRY
from swml_engine.script.context import Variables
from swml_engine.session import call_scope, run_call
from swml_engine.transports.simulated import (
    CallerScript,
    PeerScript,
    SimulatedDialer,
    SimulatedFarTransport,
    SimulatedTransport,
    parse_peer,
)

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


class TonesCaller(SimulatedTransport):
    """A simulated caller whose phone sends keys as tones: the call learns its digits as a SIP leg without
    telephone-events does, from the real in-band detector listening to what the caller says."""

    def __init__(self, audio: np.ndarray) -> None:
        super().__init__(8000, CallerScript(audio=audio))
        self._detector = InbandDtmfDetector(8000)

    def read_speak(self) -> Frame | None:
        frame = super().read_speak()
        call = self.call
        if frame is not None and call is not None and (digit := self._detector.feed(frame)) is not None:
            call.loop.call_soon(call.on_dtmf, digit, "inband")
        return frame


def keys_in(audio: np.ndarray) -> list[str]:
    """The DTMF keys a detector hears in 8 kHz audio, in order."""
    detector = InbandDtmfDetector(8000)
    return [d for i in range(0, len(audio) - 159, 160) if (d := detector.feed(audio[i : i + 160]))]


def bridge_a_tones_caller(tmp_path: Path, peer: PeerScript) -> tuple[SimulatedFarTransport, EventLog]:
    """A tones caller pressing 7 three seconds into its call (its 440 Hz voice around the key), bridged
    by ``connect`` to ``peer``: the far party's transport (what it was sent) and the far leg's events."""
    out = tmp_path / "out"
    out.mkdir(parents=True)
    audio = np.concatenate([tone(440, 3.0), dtmf_tones("7", on=0.1, off=0.0, level=0.4), tone(440, 3.0)])
    dialer = SimulatedDialer([peer], out)
    loop = VirtualTimeLoop()

    async def main() -> None:
        caller = Call(TonesCaller(audio), options=CallOptions(data_dir=out, dialer=dialer))
        variables = Variables(call=call_scope(caller, from_="+15551230000", to="+15557890000", headers=[]))
        doc = load_text(f"sections: {{main: [{{connect: {{to: '{peer.to}'}}}}]}}", methods=REGISTRY)
        await run_call(doc, caller, variables)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    [far] = dialer.placed
    assert far.call is not None
    return far, far.call.events  # type: ignore[return-value]


@pytest.mark.parametrize("events", [True, False], ids=["takes events", "tones only"])
def test_a_callers_in_band_digit_reaches_the_far_party_once(tmp_path: Path, events: bool) -> None:
    far, far_events = bridge_a_tones_caller(tmp_path, PeerScript(to=AGENT, at=1.0, hangup=5.0, events=events))
    heard, _ = read_wav(tmp_path / "out" / "peer-1-heard.wav")
    sent = [(e["t"], e["digit"]) for e in far_events.events if e["type"] == "dtmf" and e["direction"] == "sent"]
    if events:  # one event, sent when the caller's detector knew the key (it began at 3.05 s) ...
        assert far.sent_digits == ["7"]
        [(t, _)] = sent
        assert 3.05 < float(t) <= 3.05 + DIGIT_SECONDS  # type: ignore[arg-type]
        # ... in place of the rest of its tones: what crossed before is too short for a detector
        assert keys_in(heard) == []
    else:  # the tones in the audio are its digit: no second copy
        assert far.sent_digits == [] and sent == []
        assert keys_in(heard) == ["7"]


def test_a_peer_that_takes_events_is_said_so_on_the_command_line() -> None:
    assert parse_peer("sip:a@b=answer@1s,events").events
    assert not parse_peer("sip:a@b=answer@1s").events
    with pytest.raises(ValueError, match="events"):
        parse_peer("sip:a@b=answer,events:yes")
