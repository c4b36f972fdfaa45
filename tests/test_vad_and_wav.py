"""VAD sensitivity on real speech with and without noise; the WAV header's RF64 form past 4 GB."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from swml_engine.media import vad
from swml_engine.media.sources.tts import EspeakTts, Voice
from swml_engine.media.vad import VoiceDetector, threshold_for
from swml_engine.recording.encoders import WAV_HEADER, wav_header

RATE = 8000


def speech_fraction(audio: np.ndarray, sensitivity: float) -> float:
    vad = VoiceDetector(RATE, sensitivity)
    frames = [audio[i : i + 160] for i in range(0, len(audio) - 159, 160)]
    return sum(vad.feed(f) for f in frames) / len(frames)


def test_sensitivity_mapping() -> None:
    assert threshold_for(44) == 0.95 - 0.9 * 0.44
    assert threshold_for(0) == 0.95 and round(threshold_for(100), 6) == 0.05
    assert threshold_for(-5) == threshold_for(0) and threshold_for(500) == threshold_for(100)


def test_speech_is_found_with_and_without_noise_and_noise_alone_is_not_speech() -> None:
    rng = np.random.default_rng(7)
    talk = EspeakTts().synthesize("Hello, this is Sam, please call me back about the order today.", Voice(), RATE)
    talk = talk.astype(np.float64)
    noise = rng.normal(0, 1, len(talk))
    noise *= np.sqrt(np.mean(talk**2) / 10) / np.std(noise)  # 10 dB SNR
    noisy = np.clip(talk + noise, -32768, 32767).astype(np.int16)
    clean = talk.astype(np.int16)
    only_noise = noise.astype(np.int16)
    for s in (20, 44, 80):
        assert speech_fraction(clean, s) > 0.5, s
        assert speech_fraction(noisy, s) > 0.4, s
    assert speech_fraction(only_noise, 44) < 0.05
    # Sensitivity moves the detector monotonically on the hard case (noisy speech).
    fractions = [speech_fraction(noisy, s) for s in (0, 44, 100)]
    assert fractions[0] <= fractions[1] <= fractions[2]


def test_wav_header_switches_to_rf64_past_4_gib(tmp_path: Path) -> None:
    small = wav_header(8000, 1, 1000)
    assert len(small) == WAV_HEADER and small[:4] == b"RIFF"
    data = 5 * 1024**3  # 5 GiB of samples
    big = wav_header(8000, 2, data)
    assert len(big) == WAV_HEADER and big[:4] == b"RF64" and big[12:16] == b"ds64"
    path = tmp_path / "big.wav"
    with path.open("wb") as f:
        f.write(big)
        f.truncate(WAV_HEADER + data)  # sparse: no disk used
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=channels,sample_rate:format=duration",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = probe.stdout.split()
    assert lines[0] == "8000,2"
    assert abs(float(lines[1]) - data / 4 / 8000) < 1


def test_a_model_given_back_is_reused_reset_and_judges_as_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model takes some 60 ms of the event loop at every recording with a silence timeout; an
    ended recording's is reset and taken by the next. Reused, it judges exactly as a freshly loaded one:
    nothing of the speech it heard last carries over."""
    monkeypatch.setattr(vad, "MODELS", vad._Models())  # (none kept by earlier tests of this process)
    talk = EspeakTts().synthesize("Hello, this is Sam, please call me back.", Voice(), RATE)
    frames = [talk[i : i + 160] for i in range(0, len(talk) - 159, 160)]
    first = VoiceDetector(RATE)
    judged_first = [first.feed(f) for f in frames]
    model = first._vad
    first.close()
    second = VoiceDetector(RATE)
    assert second._vad is model  # (reused, not loaded again)
    probabilities = []
    for f in frames:
        second.feed(f)
        probabilities.append(second.probability)
    fresh = VoiceDetector(RATE)  # (the pool is empty again: a new model)
    assert fresh._vad is not model
    expected = []
    for f in frames:
        fresh.feed(f)
        expected.append(fresh.probability)
    assert probabilities == expected and any(judged_first)
