"""play: every sound source lands in heard.wav at the right time, with the right content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import RATE, read_wav, rms, run_doc, spectrum_peaks, tone, wav_bytes, window


def heard(tmp_path: Path) -> np.ndarray:
    samples, rate = read_wav(tmp_path / "out" / "heard.wav")
    assert rate == RATE
    return samples


def test_silence_then_url_tone_at_the_right_time(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/1k.wav"] = (wav_bytes(tone(1000, 1.0, rate=16000), 16000), "audio/wav")
    res = run_doc(
        f"sections: {{main: [{{play: {{urls: ['silence:1.5', '{http_server.url('/1k.wav')}', 'silence:0.5']}}}}]}}",
        tmp_path,
    )
    audio = heard(tmp_path)
    assert abs(len(audio) / RATE - 3.0) <= 0.021
    assert rms(window(audio, RATE, 0.0, 1.48)) == 0
    burst = window(audio, RATE, 1.52, 2.48)
    assert rms(burst) > 5000
    assert abs(spectrum_peaks(burst, RATE, 1)[0] - 1000) < 10
    assert rms(window(audio, RATE, 2.52, 3.0)) == 0
    starts = [e["t"] for e in res.events if e["type"] == "play.start"]
    assert starts == [0.0, 1.5, 2.5]


def test_ring_us_cadence(tmp_path: Path) -> None:
    run_doc("sections: {main: [{play: 'ring:12:us'}]}", tmp_path)
    audio = heard(tmp_path)
    assert abs(len(audio) / RATE - 12.0) <= 0.021
    on = window(audio, RATE, 0.1, 1.9)
    assert sorted(round(f / 10) * 10 for f in spectrum_peaks(on, RATE, 2)) == [440, 480]
    assert rms(window(audio, RATE, 2.1, 5.9)) == 0  # US: 2 s on, 4 s off
    assert rms(window(audio, RATE, 6.1, 7.9)) > 1000


def test_ring_gb_double_ring_and_de(tmp_path: Path) -> None:
    run_doc("sections: {main: [{play: 'ring:3:gb'}]}", tmp_path)
    audio = heard(tmp_path)
    assert rms(window(audio, RATE, 0.05, 0.35)) > 1000  # 0.4 on
    assert rms(window(audio, RATE, 0.45, 0.55)) == 0  # 0.2 off
    assert rms(window(audio, RATE, 0.65, 0.95)) > 1000  # 0.4 on
    assert rms(window(audio, RATE, 1.05, 2.95)) == 0  # 2.0 off
    run_doc("sections: {main: [{play: 'ring:5:de'}]}", tmp_path)
    audio = heard(tmp_path)
    assert abs(spectrum_peaks(window(audio, RATE, 0.1, 0.9), RATE, 1)[0] - 425) < 10
    assert rms(window(audio, RATE, 1.1, 4.9)) == 0  # DE: 1 s on, 4 s off


def test_volume_changes_level(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/t.wav"] = (wav_bytes(tone(1000, 1.0, level=0.2)), "audio/wav")
    url = http_server.url("/t.wav")
    run_doc(
        f"sections: {{main: [{{play: {{url: '{url}', volume: -20}}}}, {{play: {{url: '{url}', volume: 6}}}}]}}",
        tmp_path,
    )
    audio = heard(tmp_path)
    quiet, loud = rms(window(audio, RATE, 0.1, 0.9)), rms(window(audio, RATE, 1.1, 1.9))
    assert abs(20 * np.log10(quiet / (0.2 * 32767 / np.sqrt(2))) + 20) < 0.5
    assert abs(20 * np.log10(loud / quiet) - 26) < 0.5


def test_say_speaks_for_a_plausible_time(tmp_path: Path) -> None:
    res = run_doc("sections: {main: [{play: 'say:Hello, this is a test of the speech.'}]}", tmp_path)
    audio = heard(tmp_path)
    assert 1.0 < len(audio) / RATE < 5.0
    assert rms(audio) > 300
    assert [e["result"] for e in res.events if e["type"] == "play.end"] == ["finished"]


def test_say_voice_and_language_pick_different_voices(tmp_path: Path) -> None:
    a = run_doc("sections: {main: [{play: {url: 'say:Bonjour', say_language: fr-FR}}]}", tmp_path)
    fr = heard(tmp_path)
    run_doc("sections: {main: [{set: {say_voice: en-us}}, {play: {url: 'say:Bonjour'}}]}", tmp_path)
    en = heard(tmp_path)
    assert a.result.reason == "script_end"
    assert len(fr) != len(en) or not np.array_equal(fr, en)


def test_voices_are_picked_as_documented_and_an_unknown_language_is_said(tmp_path: Path) -> None:
    """`say_voice: fr` (an espeak-ng voice) speaks as `say_language: fr-FR` does, not English; `en`
    speaks American English (not the first English voice alphabetically, Caribbean); a language
    espeak-ng lacks is spoken in English with a warning naming the step and the language, once."""

    def spoken(params: str) -> tuple[np.ndarray, list[dict[str, object]]]:
        res = run_doc(f"sections: {{main: [{{play: {{urls: ['say:Bonjour', 'say:Merci'], {params}}}}}]}}", tmp_path)
        return heard(tmp_path), [e for e in res.events if e["type"] == "warning"]

    by_language, warned = spoken("say_language: fr-FR")
    assert not warned
    by_voice, warned = spoken("say_voice: fr")
    assert not warned and np.array_equal(by_voice, by_language)
    english, _ = spoken("say_language: en-US")
    assert not np.array_equal(english, by_language)
    bare, _ = spoken("say_language: en")
    assert np.array_equal(bare, english)
    unknown, warned = spoken("say_language: xx-QQ")
    assert np.array_equal(unknown, english)
    [warning] = warned
    assert warning["where"] == "sections.main[0].play" and "'xx-QQ'" in str(warning["message"])


def test_unreachable_and_undecodable_urls_fail_the_play_and_go_on(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/junk.wav"] = (b"this is not audio at all" * 100, "audio/wav")
    res = run_doc(
        f"""
sections:
  main:
    - play: 'http://127.0.0.1:9/nothing.wav'
    - play: '{http_server.url("/missing.wav")}'
    - play: '{http_server.url("/junk.wav")}'
    - set: {{after: ok}}
""",
        tmp_path,
    )
    errors = [e for e in res.events if e["type"] == "error"]
    assert [e["where"] for e in errors] == ["sections.main[0].play", "sections.main[1].play", "sections.main[2].play"]
    assert "HTTP 404" in errors[1]["message"]
    assert "not a readable audio file" in errors[2]["message"] or "cannot be decoded" in errors[2]["message"]
    assert res.vars["after"] == "ok"
    assert all(e["result"] == "error" for e in res.events if e["type"] == "play.end")


def test_url_credentials_are_sent_as_basic_auth(http_server) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/a.wav"] = (wav_bytes(tone(500, 0.2)), "audio/wav")
    url = http_server.url("/a.wav").replace("http://", "http://user:secret@")
    res = run_doc(f"sections: {{main: [{{play: '{url}'}}]}}")
    assert not [e for e in res.events if e["type"] == "error"]
    assert http_server.requests[0]["headers"]["Authorization"] == "Basic dXNlcjpzZWNyZXQ="


def test_auto_answer_false_plays_as_early_media() -> None:
    res = run_doc("sections: {main: [{play: {url: 'silence:1', auto_answer: false}}, {play: 'silence:1'}]}")
    states = [(e["t"], e["state"]) for e in res.events if e["type"] == "call.state"]
    assert states[:3] == [(0.0, "ringing"), (0.0, "early_media"), (1.0, "answered")]


def test_caller_audio_starts_at_answer_and_heard_is_the_listen_stream(tmp_path: Path) -> None:
    caller = tone(440, 3.0)
    res = run_doc(
        "sections: {main: [{play: {url: 'silence:1', auto_answer: false}}, answer, {play: 'silence:2'}]}",
        tmp_path,
        caller_audio=caller,
    )
    assert res.result.reason == "script_end"
    assert rms(heard(tmp_path)) == 0  # the caller does not hear themselves


def test_play_status_callbacks(http_server) -> None:  # type: ignore[no-untyped-def]
    """Each play reports playing then finished (error when a sound cannot be played) with its own
    control_id, in the order they happened, as play.mdx's StatusCallbacks show."""
    cb = http_server.url("/play-status")
    missing = http_server.url("/missing.wav")
    res = run_doc(
        f"""
sections:
  main:
    - play: {{url: 'silence:1.5', status_url: '{cb}'}}
    - play: {{urls: ['silence:0.5', '{missing}'], status_url: '{cb}'}}
    - play: {{url: 'silence:0.5'}}
"""
    )
    posts = [r["json"] for r in http_server.requests if r["path"] == "/play-status"]
    assert [p["params"]["state"] for p in posts] == ["playing", "finished", "playing", "error"]
    ids = [p["params"]["control_id"] for p in posts]
    assert ids[0] == ids[1] != ids[2] == ids[3] and len(ids[0]) == 36
    call_id = res.call.call_id
    for p in posts:
        assert p["event_type"] == "calling.call.play" and p["event_channel"] == f"swml:{call_id}"
        assert p["params"]["call_id"] == call_id and p["params"]["node_id"]
    assert posts[1]["timestamp"] - posts[0]["timestamp"] == pytest.approx(1.5, abs=0.03)
    assert posts[3]["timestamp"] - posts[2]["timestamp"] == pytest.approx(0.5, abs=0.03)
    assert abs(res.duration - 2.5) < 0.041  # the failed play did not stop the script


def test_play_status_url_must_be_http(tmp_path: Path) -> None:
    from swml_engine.document.loader import load_text
    from swml_engine.errors import DocumentError
    from swml_engine.methods import REGISTRY

    with pytest.raises(DocumentError) as info:
        load_text("sections: {main: [{play: {url: 'silence:1', status_url: 'ftp://example.com/x'}}]}", methods=REGISTRY)
    assert "sections.main[0].play.status_url: 'ftp://example.com/x' is not an http(s) URL" in str(info.value)
    # substituted at run time: the sound plays without callbacks, an error event says why
    res = run_doc(
        "sections: {main: [{set: {u: 'example.com/cb'}}, {play: {url: 'silence:1', status_url: '${u}'}}, "
        "{set: {after: ok}}]}",
        tmp_path,
    )
    errors = [e for e in res.events if e["type"] == "error"]
    assert errors and errors[0]["where"] == "sections.main[1].play.status_url"
    assert errors[0]["message"] == (
        "sections.main[1].play.status_url: 'example.com/cb' is not an http(s) URL; no status callbacks are sent for it"
    )
    assert [e["result"] for e in res.events if e["type"] == "play.end"] == ["finished"]
    assert res.vars["after"] == "ok"
    # substituted to nothing (a variable not set): the same — the sound plays, the step is not failed
    # (it failed with "must not be empty" before, for every method but the recordings')
    res = run_doc("sections: {main: [{play: {url: 'silence:1', status_url: '${cb}'}}, {set: {after: ok}}]}", tmp_path)
    [error] = [e for e in res.events if e["type"] == "error"]
    assert error["message"] == "sections.main[0].play.status_url: came out empty; no status callbacks are sent for it"
    assert [e["result"] for e in res.events if e["type"] == "play.end"] == ["finished"]
    assert res.vars["after"] == "ok"
    with pytest.raises(DocumentError, match=r"sections.main\[0\].play.status_url: "):  # written empty: refused
        load_text("sections: {main: [{play: {url: 'silence:1', status_url: ''}}]}", methods=REGISTRY)


def test_say_text_too_long_fails_the_play_at_once() -> None:
    res = run_doc(
        "sections: {main: [{set: {t: '${\"word \".repeat(600000)}'}}, {play: 'say:${t}'}, {set: {after: ok}}]}"
    )
    (error,) = [e["message"] for e in res.events if e["type"] == "error"]
    assert "at most 10000" in error and len(error) < 400 and res.vars["after"] == "ok"


def test_a_file_url_needs_an_absolute_path_and_a_bare_file_name_is_told_how_to_write_it(tmp_path: Path) -> None:
    """`play: 'file://caller.wav'` passed validation and the run said 'no such file: .'; `play: 'caller.wav'`
    was told of say/silence/ring/http(s) only, never of the file URLs swml run plays."""
    from swml_engine.document.loader import load_text
    from swml_engine.errors import DocumentError
    from swml_engine.methods import REGISTRY

    def invalid(sound: str) -> str:
        with pytest.raises(DocumentError) as info:
            load_text(f"sections: {{main: [{{play: '{sound}'}}]}}", methods=REGISTRY)
        (error,) = info.value.errors
        return str(error)

    assert invalid("file://caller.wav") == (
        "sections.main[0].play.url: 'file://caller.wav': a file URL needs an absolute path: file:///abs/path/caller.wav"
    )
    assert invalid("caller.wav") == (
        "sections.main[0].play.url: 'caller.wav' is not a playable sound; use say:TEXT, silence:SECONDS, "
        "ring:[SECONDS:]CC or an http(s) URL, or, in swml run only (not swml serve), a file URL with an "
        "absolute path; this one as a file URL: file:///abs/path/caller.wav"
    )
    assert invalid("/srv/caller.wav").endswith("; this one as a file URL: file:///srv/caller.wav")
    assert invalid("hello there").endswith("(not swml serve), a file URL with an absolute path")

    # The form the message gives plays (file://localhost/... too); a placeholder is checked once substituted.
    caller = tmp_path / "caller.wav"
    caller.write_bytes(wav_bytes(tone(1000, 0.5)))
    res = run_doc(
        f"sections: {{main: [{{play: 'file://{caller}'}}, {{play: 'file://localhost{caller}'}}, "
        "{set: {f: caller.wav}}, {play: 'file://${f}'}, {set: {after: ok}}]}",
        tmp_path,
    )
    audio = heard(tmp_path)
    assert rms(window(audio, RATE, 0.02, 0.98)) > 5000
    (error,) = [e["message"] for e in res.events if e["type"] == "error"]
    assert error.endswith("'file://caller.wav': a file URL needs an absolute path: file:///abs/path/caller.wav")
    assert res.vars["after"] == "ok"


def test_the_speech_cache_holds_at_most_its_bytes_and_keeps_what_is_said_again() -> None:
    """Synthesised speech is cached per process, by size: a say: may be 10,000 characters (20 MB of audio at
    16 kHz), and 256 such texts, another in each call, were once all kept (5 GB for the life of the process)."""
    from swml_engine.media.sources.tts import EspeakTts, Voice

    tts = EspeakTts(cache_bytes=1_000_000)
    prompts = [f"You are caller number {n}, please hold." for n in range(12)]
    said = [tts.synthesize(text, Voice(), 16000) for text in prompts]
    announcement = "Your call is important to us. " * 40  # about a minute: 2 MB
    long = tts.synthesize(announcement, Voice(), 16000)
    assert sum(s.nbytes for s in said) + long.nbytes > 3_000_000
    assert 0 < tts.cached_bytes <= 1_000_000
    # the last prompt is still cached (the same audio, not synthesised again); the long text was not kept
    assert tts.synthesize(prompts[-1], Voice(), 16000) is said[-1]
    assert tts.synthesize(announcement, Voice(), 16000) is not long
