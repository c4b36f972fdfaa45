"""Recording on the simulated call: channels by content, formats read back, end reasons, callbacks, faults.

The caller is a 440 Hz tone (or speech-like bursts of it); prompts are a 1 kHz file from a local HTTP
server, so each channel's content can be checked by FFT.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from conftest import RATE, read_wav, rms, run_doc, spectrum_peaks, tone, wav_bytes, window

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def bursts(seconds: float, on: float = 0.4, off: float = 0.2, freq: float = 440, lead: float = 0.0) -> np.ndarray:
    """Speech-like: a 440 Hz tone with a syllable envelope and small gaps, after ``lead`` s of silence."""
    period = round((on + off) * RATE)
    t = np.arange(round(on * RATE)) / RATE
    env = np.sin(np.pi * t / on) ** 0.5
    syllable = (np.sin(2 * np.pi * freq * t) * env * 0.4 * 32767).astype(np.int16)
    one = np.concatenate([syllable, np.zeros(period - len(syllable), dtype=np.int16)])
    body = np.tile(one, int(np.ceil(seconds / (on + off))))[: round(seconds * RATE)]
    return np.concatenate([np.zeros(round(lead * RATE), dtype=np.int16), body])


def speech(seconds_of_silence_after: float = 10.0) -> tuple[np.ndarray, float]:
    """Real speech (espeak-ng) followed by silence; returns the audio and when the speech ends."""
    from swml_engine.media.sources.tts import EspeakTts, Voice

    talk = EspeakTts().synthesize("Hello, this is Sam. Please call me back about my order.", Voice(), RATE)
    loud = np.flatnonzero(np.abs(talk) > 300)
    ends = (loud[-1] + 1) / RATE
    return np.concatenate([talk, np.zeros(round(seconds_of_silence_after * RATE), dtype=np.int16)]), ends


@pytest.fixture
def prompt_url(http_server) -> str:  # type: ignore[no-untyped-def]
    http_server.files["/1k.wav"] = (wav_bytes(tone(1000, 30.0, level=0.4)), "audio/wav")
    return str(http_server.url("/1k.wav"))


def recordings(tmp_path: Path) -> list[dict[str, Any]]:
    root = tmp_path / "out" / "recordings"
    return [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]


def audio_of(meta: dict[str, Any], tmp_path: Path) -> np.ndarray:
    path = tmp_path / "out" / "recordings" / f"{meta['recording_id']}.{meta['format']}"
    data, rate = read_wav(path)
    assert rate == RATE
    return data


def freqs(samples: np.ndarray) -> set[int]:
    """The tones present (440 and/or 1000) in a stretch, judged by energy near each."""
    x = samples.astype(np.float64)
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    total = mag.sum() + 1e-9
    return {hz for hz in (440, 1000) if mag[(f > hz - 15) & (f < hz + 15)].sum() / total > 0.05}


def doc_with(record: str, prompt: str, after: str = "") -> str:
    return f"""
sections:
  main:
    - answer
    - record_call: {record}
    - play: {{urls: ['{prompt}']}}
    - sleep: 1000
{after}
"""


@pytest.mark.parametrize(
    ("settings", "left", "right"),
    [
        ("{stereo: true}", {440}, {1000}),
        ("{stereo: true, direction: speak}", {440}, set()),
        ("{stereo: true, direction: listen}", set(), {1000}),
        ("{}", {440, 1000}, None),
        ("{direction: speak}", {440}, None),
        ("{direction: listen}", {1000}, None),
    ],
)
def test_channels_hold_the_right_side(
    tmp_path: Path, prompt_url: str, settings: str, left: set[int], right: set[int] | None
) -> None:
    run_doc(doc_with(settings, prompt_url), tmp_path, caller_audio=tone(440, 60, level=0.3))
    (meta,) = recordings(tmp_path)
    audio = audio_of(meta, tmp_path)
    stretch = slice(RATE * 2, RATE * 20)
    if right is None:
        assert meta["channels"] == 1 and audio.ndim == 1
        assert freqs(audio[stretch]) == left
    else:
        layout = {"left": "speak" if left else "silence", "right": "listen" if right else "silence"}
        assert meta["channels"] == 2 and meta["channel_layout"] == layout
        assert freqs(audio[stretch, 0]) == left
        assert freqs(audio[stretch, 1]) == right
        if not right:
            assert rms(audio[:, 1]) == 0
        if not left:
            assert rms(audio[:, 0]) == 0


def decode_file(path: Path) -> tuple[np.ndarray, float]:
    """Every channel of a recording as decoders deliver it, shape (samples, channels), and the length
    the container declares (edit lists and gapless tags applied)."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        parts = []
        for f in c.decode(s):
            a = f.to_ndarray()
            parts.append(a.T if f.format.is_planar else a.reshape(-1, s.channels))
        declared = float(s.duration * s.time_base) if s.duration is not None and s.time_base else 0.0
    data = np.concatenate(parts).astype(np.float64)
    return (data * 32767 if data.dtype.kind == "f" and np.abs(data).max() <= 1.0 else data), declared


def onset(samples: np.ndarray) -> float:
    return float(np.argmax(np.abs(samples) > 0.1 * 32767) / RATE)


@pytest.mark.parametrize(("fmt", "codec"), [("wav", "pcm_s16le"), ("mp3", "mp3"), ("mp4", "aac")])
@pytest.mark.parametrize("stereo", [False, True])
def test_formats_read_back(tmp_path: Path, fmt: str, codec: str, stereo: bool) -> None:
    """Each format decodes with the right codec, rate and channels; the caller's tone starts where it
    started in the call (no encoder priming in front) and the file plays for the recorded length."""
    caller = np.concatenate([np.zeros(RATE, dtype=np.int16), tone(440, 9, level=0.3)])
    res = run_doc(
        f"sections: {{main: [answer, {{record_call: {{format: {fmt}, stereo: {str(stereo).lower()}}}}}, {{sleep: 3000}}]}}",
        tmp_path,
        caller_audio=caller,
    )
    (meta,) = recordings(tmp_path)
    assert meta["format"] == fmt and meta["state"] == "finished" and meta["end_reason"] == "script_end"
    assert abs(meta["duration"] - 3.0) <= 0.02
    path = tmp_path / "out" / "recordings" / f"{meta['recording_id']}.{fmt}"
    assert meta["size"] == path.stat().st_size and meta["url"] == path.resolve().as_uri()
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        assert s.codec_context.name.startswith(codec) and s.rate == RATE and s.channels == (2 if stereo else 1)
    audio, declared = decode_file(path)
    if fmt == "mp4":  # decoders leave the end trimming to the player, which reads the edit list
        assert abs(declared - 3.0) <= 0.02
    else:
        assert abs(len(audio) / RATE - 3.0) <= 0.02
    assert abs(onset(audio[:, 0]) - 1.0) <= 0.02  # the caller's tone starts 1 s into the call
    assert freqs(audio[RATE + RATE // 2 : RATE * 2 + RATE // 2, 0]) == {440}
    if stereo:
        assert rms(audio[:, 1]) < 0.01 * rms(audio[:, 0])  # listen side: nothing was played
    assert res.vars["record_call_result"] == "success"
    assert not list((tmp_path / "out" / "recordings").glob("*.part.*"))


def end_of(res: Any) -> dict[str, Any]:
    return [e for e in res.events if e["type"] == "record.state"][-1]


def test_end_reasons_states_and_durations(tmp_path: Path) -> None:
    caller = bursts(30, lead=0.0)
    cases = {
        "terminator": ("{terminators: '5#'}", {"dtmf": [(4.0, "#")]}, "finished", 4.0),
        "max_length": ("{max_length: 2.5}", {}, "finished", 2.5),
        "stop_record_call": ("{}", {}, "finished", 6.0),
        "hangup": ("{}", {"hangup_at": 3.3}, "finished", 3.3),
    }
    for reason, (settings, sim, state, duration) in cases.items():
        out = tmp_path / reason
        res = run_doc(
            f"sections: {{main: [answer, {{record_call: {settings}}}, {{sleep: 6000}}, stop_record_call, {{sleep: 2000}}]}}",
            out,
            caller_audio=caller,
            **sim,
        )
        (meta,) = recordings(out)
        end = end_of(res)
        assert (meta["end_reason"], meta["state"], end["state"]) == (reason, state, state), reason
        assert abs(meta["duration"] - duration) <= 0.02, (reason, meta["duration"])
        if reason == "terminator":
            assert meta["terminator"] == "#"
            assert res.vars["stop_record_call_result"] == "failed"  # nothing live to stop by then
        if reason == "stop_record_call":
            assert res.vars["stop_record_call_result"] == "success"


def test_vad_no_input_and_end_silence(tmp_path: Path) -> None:
    res = run_doc(
        "sections: {main: [answer, {record_call: {initial_timeout: 2}}, {sleep: 5000}]}",
        tmp_path / "silent",
        caller_audio=np.zeros(RATE * 10, dtype=np.int16),
    )
    (meta,) = recordings(tmp_path / "silent")
    assert (meta["state"], meta["end_reason"]) == ("no_input", "no_input")
    assert abs(meta["duration"] - 2.0) <= 0.02 and end_of(res)["state"] == "no_input"
    # Speech, then silence: ends 1.5 s after the speech stops.
    talk, ends = speech()
    run_doc(
        "sections: {main: [answer, {record_call: {end_silence_timeout: 1.5, direction: speak}}, {sleep: 8000}]}",
        tmp_path / "talk",
        caller_audio=talk,
    )
    (meta,) = recordings(tmp_path / "talk")
    assert (meta["state"], meta["end_reason"]) == ("finished", "end_silence")
    assert abs(meta["duration"] - (ends + 1.5)) <= 0.1, (meta["duration"], ends)


def test_record_foreground_defaults(tmp_path: Path) -> None:
    talk, ends = speech(20)
    res = run_doc("sections: {main: [answer, record, {set: {after: '${record_result}'}}]}", tmp_path, caller_audio=talk)
    (meta,) = recordings(tmp_path)
    assert meta["method"] == "record" and meta["direction"] == "speak" and meta["end_reason"] == "end_silence"
    assert abs(meta["duration"] - (ends + 5)) <= 0.1  # the speech, then the default 5 s of silence
    assert res.vars["after"] == "success" and res.vars["record_url"] == meta["url"]
    res = run_doc("sections: {main: [answer, record]}", tmp_path / "t", caller_audio=talk, dtmf=[(1.0, "#")])
    (meta,) = recordings(tmp_path / "t")
    assert meta["end_reason"] == "terminator" and abs(meta["duration"] - 1.0) <= 0.02
    # no speech within the default 4 s: no_input, the file kept, and record_result still success
    res = run_doc("sections: {main: [answer, record]}", tmp_path / "n", caller_audio=np.zeros(RATE * 6, dtype=np.int16))
    (meta,) = recordings(tmp_path / "n")
    assert (meta["state"], meta["duration"], res.vars["record_result"]) == ("no_input", 4.0, "success")
    (end,) = [e for e in res.events if e["type"] == "step.end" and e["method"] == "record"]
    assert end["result"] == "no_input"


def test_several_recordings_with_independent_settings(tmp_path: Path, prompt_url: str) -> None:
    res = run_doc(
        doc_with(
            "{control_id: both, stereo: true}",
            prompt_url,
            "    - record_call: {control_id: mine, format: mp3, direction: speak}\n    - sleep: 2000\n    - stop_record_call: {control_id: both}\n    - sleep: 1000",
        ),
        tmp_path,
        caller_audio=tone(440, 60, level=0.3),
    )
    metas = {m["control_id"]: m for m in recordings(tmp_path)}
    assert (
        metas["both"]["stereo"] is True
        and metas["both"]["format"] == "wav"
        and metas["both"]["end_reason"] == "stop_record_call"
    )
    assert (
        metas["mine"]["stereo"] is False
        and metas["mine"]["format"] == "mp3"
        and metas["mine"]["end_reason"] == "script_end"
    )
    assert abs(metas["mine"]["duration"] - 3.0) <= 0.021  # (within a frame: it starts at the next one)
    assert res.vars["record_control_id"] == "mine"


def test_status_callbacks_in_order_with_retries(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    http_server.failures["/cb"] = [500, 503]
    url = http_server.url("/cb")
    res = run_doc(
        f"sections: {{main: [answer, {{record_call: {{control_id: c1, status_url: '{url}'}}}}, {{sleep: 2000}}]}}",
        tmp_path,
        caller_audio=tone(440, 5),
    )
    posts = [r["json"] for r in http_server.requests if r["path"] == "/cb"]
    assert [p["params"]["state"] for p in posts] == ["recording", "recording", "recording", "finished"]
    final = posts[-1]
    assert final["event_type"] == "calling.call.record" and final["event_channel"].startswith("swml:")
    p = final["params"]
    (meta,) = recordings(tmp_path)
    assert p["control_id"] == "c1" and p["recording_id"] == meta["recording_id"] and p["url"] == meta["url"]
    assert abs(p["duration"] - 2.0) <= 0.02 and p["size"] == meta["size"] > 0
    assert p["record"]["format"] == "wav" and p["record"]["audio"] == {
        "format": "wav",
        "direction": "both",
        "stereo": False,
    }
    assert p["end_time"] - p["start_time"] == pytest.approx(2.0, abs=0.03)
    attempts = [(e["state"], e["attempt"], e["status"]) for e in res.events if e["type"] == "callback"]
    assert attempts == [("recording", 1, 500), ("recording", 2, 503), ("recording", 3, 200), ("finished", 1, 200)]


def test_callbacks_to_an_unreachable_url_never_hold_the_call(tmp_path: Path) -> None:
    res = run_doc(
        "sections: {main: [answer, {record_call: {status_url: 'http://127.0.0.1:9/cb'}}, {sleep: 1000}, {set: {after: ok}}]}",
        tmp_path,
        callback_wait=0.1,
    )
    assert res.vars["after"] == "ok" and abs(res.duration - 1.0) <= 0.021


def test_control_id_cannot_touch_paths(tmp_path: Path) -> None:
    run_doc(
        "sections: {main: [answer, {record_call: {control_id: '../../etc/x\\u0000/..\\\\y'}}, {sleep: 500}]}",
        tmp_path,
    )
    root = tmp_path / "out" / "recordings"
    (meta,) = recordings(tmp_path)
    assert meta["control_id"].startswith("../../etc/x")
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted([f"{meta['recording_id']}.wav", f"{meta['recording_id']}.json"])
    assert not (tmp_path / "etc").exists()


def test_unwritable_storage_fails_the_recording_and_the_call_goes_on(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "out"
        blocker.mkdir()
        (blocker / "recordings").write_text("a file where the directory should be")
    else:  # pragma: no cover - non-root
        (tmp_path / "out" / "recordings").mkdir(parents=True)
        (tmp_path / "out" / "recordings").chmod(0o500)
    res = run_doc("sections: {main: [answer, record_call, {sleep: 500}, {set: {after: ok}}]}", tmp_path)
    assert res.vars["record_call_result"] == "failed" and res.vars["after"] == "ok"
    assert any(e["type"] == "record.state" and e["state"] == "error" for e in res.events)
    assert any(e["type"] == "error" and e["where"] == "sections.main[1].record_call" for e in res.events)


def test_invalid_values_at_load_time_and_run_time(tmp_path: Path) -> None:
    from swml_engine.document.loader import load_text
    from swml_engine.errors import DocumentError
    from swml_engine.methods import REGISTRY

    with pytest.raises(DocumentError) as info:
        load_text(
            "sections: {main: [{record_call: {format: ogg, input_sensitivity: 120, max_length: 1000000000, initial_timeout: -1}}]}",
            methods=REGISTRY,
        )
    msgs = sorted(str(e) for e in info.value.errors)
    assert msgs == [
        "sections.main[0].record_call.format: 'ogg' is not one of 'wav', 'mp3', 'mp4'",
        "sections.main[0].record_call.initial_timeout: -1 is below the minimum 0 seconds",
        "sections.main[0].record_call.input_sensitivity: 120 is above the maximum 100",
        "sections.main[0].record_call.max_length: 1000000000 is above the maximum 86400 seconds",
    ]
    res = run_doc(
        "sections: {main: [answer, {set: {f: ogg}}, {record_call: {format: '${f}'}}, {set: {after: ok}}]}", tmp_path
    )
    assert res.vars["record_call_result"] == "failed" and res.vars["after"] == "ok"
    errors = [e for e in res.events if e["type"] == "error"]
    assert errors[0]["message"] == "sections.main[2].record_call.format: 'ogg' is not one of 'wav', 'mp3', 'mp4'"


@pytest.mark.parametrize(
    "example", ["record-and-play-back.yaml", "record-and-play-back-percent.yaml", "record-and-play-back-speak.yaml"]
)
def test_record_and_play_back_examples(tmp_path: Path, example: str) -> None:
    from swml_engine.document.loader import load_file
    from swml_engine.methods import REGISTRY
    from swml_engine.session import Simulation, simulate

    caller = np.concatenate([np.zeros(RATE * 2, dtype=np.int16), tone(440, 4.0, level=0.3)])
    res = simulate(
        load_file(EXAMPLES / example, methods=REGISTRY),
        Simulation(out=tmp_path / "out", caller_audio=caller, dtmf=[(7.0, "#")]),
    )
    (meta,) = recordings(tmp_path)
    assert res.vars["record_call_result"] == "success"
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    starts = {e["url"]: e["t"] for e in res.events if e["type"] == "play.start"}
    played_at = starts[meta["url"]]
    recording = audio_of(meta, tmp_path)
    # The caller's 440 Hz began 2 s after answer; the recording began after the 0.25 s beep.
    offset = 2.0 - 0.24
    echoed = window(heard, RATE, played_at + offset + 0.2, played_at + offset + 2.0)
    assert 440 in freqs(echoed)
    assert rms(echoed) > 1000
    if "terminators" in (EXAMPLES / example).read_text():
        assert meta["end_reason"] == "terminator" and abs(meta["duration"] - (7.0 - 0.24)) <= 0.021
        # Its stop_record_call finds it ended already: the warning says how, not only that it is not live.
        (warning,) = [e["message"] for e in res.events if e["type"] == "warning"]
        assert warning.endswith("to stop (it already ended: terminator)"), warning
    else:
        assert meta["end_reason"] == "stop_record_call"
        assert meta["channel_layout"] == {"mono": "speak"}
    assert len(recording) / RATE == pytest.approx(meta["duration"], abs=0.001)
    assert spectrum_peaks(window(heard, RATE, 0.0, 0.24), RATE, 1)[0] == pytest.approx(1000, abs=10)  # the beep


def test_mp3_example_with_nothing_recorded_finishes_as_a_playable_file(tmp_path: Path) -> None:
    """The record_call page's first example on a call that ends at once: an empty MP3, still valid."""
    from swml_engine.document.loader import load_file
    from swml_engine.methods import REGISTRY
    from swml_engine.session import Simulation, simulate

    res = simulate(load_file(EXAMPLES / "record-call-mp3.yaml", methods=REGISTRY), Simulation(out=tmp_path / "out"))
    assert not [e for e in res.events if e["type"] == "error"]
    (meta,) = recordings(tmp_path)
    assert (meta["state"], meta["end_reason"], meta["duration"]) == ("finished", "script_end", 0.0)
    path = tmp_path / "out" / "recordings" / f"{meta['recording_id']}.mp3"
    with av.open(str(path)) as c:
        assert c.streams.audio[0].codec_context.name.startswith("mp3")
        assert sum(f.samples for f in c.decode(audio=0)) / RATE < 0.1


def test_an_mp4_stopped_before_its_first_frame_is_a_valid_empty_file(tmp_path: Path) -> None:
    """record_call stopped at once, and a caller hanging up during record's beep: MP4s with nothing in
    them are still MP4s (an AAC track of no samples), as the empty WAV and MP3 are. They were left as
    empty files, with an error event saying they were 'kept as fragmented MP4'."""
    res = run_doc(
        """
sections:
  main:
    - record_call: {format: mp4, stereo: true}
    - stop_record_call: {}
    - record: {format: mp4, beep: true}
""",
        tmp_path,
        hangup_at=0.1,
    )
    assert not [e for e in res.events if e["type"] == "error"]
    metas = recordings(tmp_path)
    assert sorted(m["end_reason"] for m in metas) == ["hangup", "stop_record_call"]
    for meta in metas:
        assert (meta["state"], meta["duration"]) == ("finished", 0.0)
        path = tmp_path / "out" / "recordings" / f"{meta['recording_id']}.mp4"
        assert meta["size"] == path.stat().st_size > 0
        with av.open(str(path)) as c:
            (stream,) = c.streams.audio
            assert (stream.codec_context.name, stream.channels) == ("aac", meta["channels"])
            assert sum(f.samples for f in c.decode(audio=0)) == 0


def test_stop_record_call_reads_record_control_id_and_an_empty_id_stops_nothing(tmp_path: Path) -> None:
    res = run_doc(
        """
sections:
  main:
    - answer
    - record_call: {control_id: A}
    - record_call: {control_id: B}
    - stop_record_call: {control_id: '${vars.nosuch}'}
    - set: {empty_id: '${stop_record_call_result}', record_control_id: A}
    - sleep: 1000
    - stop_record_call: {}
    - sleep: 1000
""",
        tmp_path,
    )
    metas = {m["control_id"]: m for m in recordings(tmp_path)}
    assert res.vars["empty_id"] == "failed" and res.vars["stop_record_call_result"] == "success"
    assert metas["A"]["end_reason"] == "stop_record_call" and abs(metas["A"]["duration"] - 1.0) <= 0.02
    assert metas["B"]["end_reason"] == "script_end" and abs(metas["B"]["duration"] - 2.0) <= 0.021


def test_bad_value_at_run_time_reports_error_to_status_url(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    url = http_server.url("/cb")
    res = run_doc(
        f"sections: {{main: [answer, {{set: {{s: 150}}}}, {{record_call: {{control_id: x, input_sensitivity: '${{s}}', status_url: '{url}'}}}}, {{set: {{after: ok}}}}]}}",
        tmp_path,
    )
    assert res.vars["record_call_result"] == "failed" and res.vars["after"] == "ok"
    (post,) = [r["json"] for r in http_server.requests if r["path"] == "/cb"]
    assert post["event_type"] == "calling.call.record" and post["params"]["state"] == "error"
    assert post["params"]["control_id"] == "x" and post["params"]["call_id"] == res.call.call_id
    (state,) = [e for e in res.events if e["type"] == "record.state"]
    assert state["state"] == "error" and "input_sensitivity: 150 is above the maximum 100" in state["error"]


def test_no_input_callbacks_carry_the_file(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    url = http_server.url("/cb")
    run_doc(
        f"sections: {{main: [answer, {{record_call: {{initial_timeout: 1.5, status_url: '{url}'}}}}, {{sleep: 3000}}]}}",
        tmp_path,
        caller_audio=np.zeros(RATE * 5, dtype=np.int16),
    )
    posts = [r["json"]["params"] for r in http_server.requests if r["path"] == "/cb"]
    assert [p["state"] for p in posts] == ["recording", "no_input"]
    first, last = posts
    assert "duration" not in first and "end_time" not in first and first["record"]["audio"]["format"] == "wav"
    (meta,) = recordings(tmp_path)
    assert last["duration"] == meta["duration"] == 1.5 and last["size"] == meta["size"] > 0
    assert last["record"]["url"] == meta["url"] and last["end_time"] - last["start_time"] == pytest.approx(1.5)


def test_a_status_url_that_does_not_parse_drops_its_callbacks_never_the_recording(tmp_path: Path) -> None:
    from swml_engine.document.loader import load_text
    from swml_engine.errors import DocumentError
    from swml_engine.methods import REGISTRY

    bad = "https://user:p@ss:w/rd#x@example.com/cb"  # an unencoded password, as some SDKs build them
    with pytest.raises(DocumentError) as info:  # written literally: validation says what to fix
        load_text(f"sections: {{main: [{{record_call: {{status_url: '{bad}'}}}}]}}", methods=REGISTRY)
    message = str(info.value)
    assert "sections.main[0].record_call.status_url" in message and "percent-encode" in message
    assert "ss:w" not in message
    # substituted at run time: the recording is made; its callbacks are dropped with an error event
    res = run_doc(
        f"sections: {{main: [{{set: {{u: '{bad}'}}}}, {{record_call: {{status_url: '${{u}}'}}}}, {{play: 'silence:1'}}]}}",
        tmp_path,
    )
    assert res.vars["record_call_result"] == "success"
    [meta] = recordings(tmp_path)
    assert meta["state"] == "finished" and abs(meta["duration"] - 1.0) < 0.05
    [error] = [e for e in res.events if e["type"] == "error"]
    assert error["where"] == "sections.main[1].record_call.status_url"
    assert "percent-encode" in error["message"] and "ss:w" not in error["message"]
    assert not [e for e in res.events if e["type"] == "callback"]


def test_a_recordings_call_time_is_where_its_first_sample_is(tmp_path: Path) -> None:
    """A recording started after the frame of its instant went by begins at the next frame, and says so:
    the caller's tone at 1.0 s of the call is at 1.0 - call_time in the file, to the sample."""
    caller = np.concatenate([np.zeros(RATE, dtype=np.int16), tone(440, 2.0, level=0.5)])
    run_doc(
        "sections: {main: [answer, {sleep: 500}, {record_call: {format: wav}}, {sleep: 2000}]}",
        tmp_path,
        caller_audio=caller,
    )
    (meta,) = recordings(tmp_path)
    audio = audio_of(meta, tmp_path)
    onset = int(np.argmax(np.abs(audio.astype(np.int32)) > 1000)) / RATE
    assert meta["call_time"] + onset == pytest.approx(1.0, abs=0.001), (meta["call_time"], onset)
    assert meta["end_time"] - meta["start_time"] == pytest.approx(meta["duration"], abs=0.001)


@pytest.mark.parametrize("behavior", ["skip", "silence"])
def test_a_pause_leaves_out_exactly_its_time_and_nothing_more(tmp_path: Path, behavior: str) -> None:
    """Paused from 0.5 s to 1.0 s of a recording stopped at 2.0 s: ``skip`` leaves the half second out
    (1.5 s of audio, not a frame more), ``silence`` keeps it as silence (2.0 s); the metadata's times
    cover the whole span either way."""
    from swml_engine.call import Call, CallOptions
    from swml_engine.document.loader import load_text
    from swml_engine.media.clock import VirtualTimeLoop
    from swml_engine.methods import REGISTRY
    from swml_engine.recording.recorder import recordings_of
    from swml_engine.script.context import Variables
    from swml_engine.session import call_scope, run_call
    from swml_engine.transports.simulated import CallerScript, SimulatedTransport

    out = tmp_path / "out"
    doc = load_text(
        "sections: {main: [answer, {record_call: {format: wav}}, {sleep: 2000}, stop_record_call, {sleep: 500}]}",
        methods=REGISTRY,
    )
    loop = VirtualTimeLoop()

    async def main() -> None:
        call = Call(SimulatedTransport(RATE, CallerScript(tone(440, 4.0))), options=CallOptions(data_dir=out))
        variables = Variables(call=call_scope(call, from_="+15551230000", to="+15557890000", headers=[]))

        async def pause_and_resume() -> None:
            while call.recordings is None or not recordings_of(call).live():
                await asyncio.sleep(0.001)
            [rec] = recordings_of(call).live()
            start = call.now()
            await asyncio.sleep(start + 0.5 - call.now())
            assert rec.pause(behavior)
            await asyncio.sleep(start + 1.0 - call.now())
            assert rec.resume()

        side = asyncio.ensure_future(pause_and_resume())
        await run_call(doc, call, variables)
        await side

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    [meta] = recordings(tmp_path)
    audio = audio_of(meta, tmp_path)
    expected = 1.5 if behavior == "skip" else 2.0
    assert len(audio) / RATE == pytest.approx(expected, abs=0.001), len(audio) / RATE
    assert meta["duration"] == pytest.approx(expected, abs=0.001)
    assert meta["end_time"] - meta["start_time"] == pytest.approx(2.0, abs=0.001)


def test_a_recording_started_while_the_media_tick_runs_late_says_where_its_first_sample_is(tmp_path: Path) -> None:
    """On a real clock a tick may be overdue when a recording starts (a busy machine; opening an MP4
    writer or loading the VAD model blocks the loop as long): its first frame is then the overdue
    tick's, which began before that instant, and call_time says so, to the sample. The loop is held 50 ms
    just before the start; the caller's tone begins at 1.0 s of the call."""
    import time

    from swml_engine.call import Call, CallOptions
    from swml_engine.recording.recorder import RecordSettings, recordings_of
    from swml_engine.transports.simulated import CallerScript, SimulatedTransport

    caller = np.concatenate([np.zeros(RATE, dtype=np.int16), tone(440, 2.0, level=0.5)])
    loop = asyncio.new_event_loop()

    async def main() -> None:
        call = Call(SimulatedTransport(RATE, CallerScript(caller)), options=CallOptions(data_dir=tmp_path / "out"))
        call.start()
        await call.answer()
        await asyncio.sleep(0.3)
        time.sleep(0.05)  # the loop held: the next tick is overdue when the recording starts
        recording = recordings_of(call).start(RecordSettings(method="record_call", control_id="late"))
        await asyncio.sleep(1.0)
        await recording.stop("stop_record_call")
        await call.hangup()
        await call.finish()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    (meta,) = recordings(tmp_path)
    audio = audio_of(meta, tmp_path)
    onset = int(np.argmax(np.abs(audio.astype(np.int32)) > 1000)) / RATE
    assert meta["call_time"] + onset == pytest.approx(1.0, abs=0.001), (meta["call_time"], onset)
