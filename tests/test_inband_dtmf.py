"""In-band DTMF: digits found in tones, at both call rates, through noise and twist; none in speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import dtmf_tones, read_wav
from interop.peers import pcap_speech
from swml_engine.media.inband_dtmf import KEYS, InbandDtmfDetector

ALL_KEYS = "".join(KEYS)


def detect(samples: np.ndarray, rate: int, *, offset: int = 0) -> str:
    """Feed 20 ms frames (starting ``offset`` samples in, so tones do not line up with frames)."""
    det = InbandDtmfDetector(rate)
    n = rate // 50
    x = samples[offset:]
    return "".join(d for i in range(0, len(x) - n + 1, n) if (d := det.feed(x[i : i + n])))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_every_key_once_whatever_the_alignment(rate: int) -> None:
    x = dtmf_tones(ALL_KEYS, rate)
    for offset in (0, 37, rate // 100):
        assert detect(x, rate, offset=offset) == ALL_KEYS


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"level": 0.02}, ALL_KEYS),  # -34 dBFS per tone
        ({"twist_db": 3.5}, ALL_KEYS),
        ({"twist_db": -7.0}, ALL_KEYS),
        ({"snr_db": 15.0}, ALL_KEYS),
        ({"on": 0.045, "off": 0.045}, ALL_KEYS),  # short presses and gaps, as fast diallers send
        ({"level": 0.002}, ""),  # -54 dBFS: below what is taken as a tone
        ({"on": 0.02}, ""),  # 20 ms blips are not presses
        ({"twist_db": 12.0}, ""),
    ],
)
def test_levels_twist_noise_and_timing(kwargs: dict[str, float], expected: str) -> None:
    assert detect(dtmf_tones(ALL_KEYS, 8000, **kwargs), 8000) == expected  # type: ignore[arg-type]


def test_a_long_press_with_a_lost_packet_is_one_digit() -> None:
    x = dtmf_tones("5", 8000, on=0.5)
    x[160 * 13 : 160 * 14] = 0  # one 20 ms packet lost (a frame of silence from the jitter buffer)
    assert detect(x, 8000) == "5"
    y = dtmf_tones("55", 8000, on=0.1, off=0.05)  # the same key pressed twice
    assert detect(y, 8000) == "55"


def test_no_digits_in_speech_or_music_like_sound(tmp_path: Path) -> None:
    assert detect(pcap_speech(), 8000) == ""  # sipp's recorded speech, 7 s
    if shutil.which("espeak-ng"):
        wav = tmp_path / "speech.wav"
        text = "One two three four five six seven eight nine zero. Press the pound key when you are done."
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        speech, rate = read_wav(wav)
        assert detect(speech, rate) == ""
    # a chord of two notes in DTMF's range that are not DTMF pairs (a tune, a ringback)
    t = np.arange(8000 * 3) / 8000
    chord = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 480 * t)) * 32767
    assert detect(chord.astype(np.int16), 8000) == ""
