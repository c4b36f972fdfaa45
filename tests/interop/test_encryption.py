"""`swml serve --encrypt-key-file` on real sipp calls: recordings are sealed on disk, the API serves
their audio decrypted (Range too, and the signed URL), a service killed mid-recording repairs the sealed
recording at its restart, and a bad key file stops the start."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from http.client import IncompleteRead
from pathlib import Path

import pytest

from conftest import read_wav
from swml_engine.recording.crypt import BLOCK, OVERHEAD, Keyring, SealedFile, is_sealed

from .peers import Engine, free_port, run_sipp, scenario, wait_for
from .test_api import TOKEN, call_in_background, request

EngineFactory = Callable[..., Engine]


def key_file(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.write_text(f"2026-11 {base64.b64encode(os.urandom(32)).decode()}\n")
    keys.chmod(0o600)
    return keys


def plaintext(path: Path, keys: Path) -> bytes:
    with SealedFile.open(path, Keyring.load(keys)) as f:
        return f.read()


def test_sealed_recordings_served_decrypted(engine: EngineFactory, tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    http = free_port()
    script = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - sleep: 1500\n"
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--encrypt-key-file", str(keys))
    base = f"http://127.0.0.1:{http}"
    call_in_background(eng, tmp_path / "sipp", bye_timeout=10000).join(30)
    (meta,) = eng.recordings(1)
    path = eng.data / "recordings" / f"{meta['recording_id']}.wav"
    assert is_sealed(path)
    audio = plaintext(path, keys)
    assert meta["size"] == len(audio) and audio.startswith(b"RIFF")

    code, headers, got = request("GET", f"{base}/api/recordings/{meta['recording_id']}/audio")
    assert code == 200 and got == audio and headers["content-type"] == "audio/wav"
    (tmp_path / "got.wav").write_bytes(got)
    samples, rate = read_wav(tmp_path / "got.wav")  # exact header sizes: a normal WAV
    assert rate == 8000 and abs(len(samples) / rate - float(str(meta["duration"]))) < 0.021
    code, headers, part = request(
        "GET", f"{base}/api/recordings/{meta['recording_id']}/audio", headers={"Range": "bytes=100-199"}
    )
    assert code == 206 and part == audio[100:200] and headers["content-range"] == f"bytes 100-199/{len(audio)}"
    code, _, got = request("GET", str(meta["url"]), token=None)  # the signed URL
    assert code == 200 and got == audio

    # An altered block: the download stops short at it (never altered audio), and the log says which
    # recording and block in a line, without a traceback. An altered last block (the first of two
    # blocks authenticates): the body ends after the first block, short of the recording's length.
    def flip(offset: int) -> None:
        with path.open("r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 1]))

    audio_url = f"{base}/api/recordings/{meta['recording_id']}/audio"
    assert len(audio) > BLOCK
    flip(path.stat().st_size - 10)
    with pytest.raises(IncompleteRead) as short:
        request("GET", audio_url)
    assert short.value.partial == audio[:BLOCK] and short.value.expected == len(audio) - BLOCK
    assert wait_for(lambda: "does not end with its final block" in eng.log(), 10), eng.log()
    flip(path.stat().st_size - 10)
    flip(40 + 100)  # inside the first block (the last one authenticates: the size is known)
    with pytest.raises(IncompleteRead) as short:
        request("GET", audio_url)
    assert short.value.partial == b"" and short.value.expected == len(audio)
    assert wait_for(lambda: meta["recording_id"] in eng.log() and "block" in eng.log(), 10), eng.log()
    assert "Traceback" not in eng.log(), eng.log()


def test_killed_service_repairs_the_sealed_recording_at_restart(engine: EngineFactory, tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    script = (
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - play: {url: 'silence:60'}\n"
    )
    eng = engine(script, "--encrypt-key-file", str(keys))
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=8000, dtmf="pcap/dtmf_2833_1.pcap", after=1000)
    # sipp gives up at 6 s, before its BYE (at 9 s): the recording stays live until the kill, however late.
    caller = threading.Thread(target=lambda: run_sipp(tmp_path / "sipp", xml, eng.port, timeout=6))
    caller.start()
    recordings = eng.data / "recordings"

    def blocks_on_disk() -> int:
        files = list(recordings.glob("*.wav"))
        return max(0, files[0].stat().st_size - 40) // (BLOCK + OVERHEAD) if files else 0

    assert wait_for(lambda: blocks_on_disk() >= 2, 30)  # two whole seconds sealed on disk
    assert eng.proc is not None
    eng.proc.kill()  # SIGKILL: no final block, no header sizes
    eng.proc.wait()
    eng.proc = None
    (path,) = recordings.glob("*.wav")
    with SealedFile.open(path, Keyring.load(keys)) as f:
        assert f.state == "unfinished"
        before = f.read()

    http = free_port()
    extra = ["--encrypt-key-file", str(keys), "--http", f"127.0.0.1:{http}", "--api-token", TOKEN]
    again = Engine(eng.script, eng.data, port=eng.port, extra=extra).start()
    try:
        assert "recovered recording" in again.log()
        (meta,) = again.recordings()
        assert (meta["state"], meta["end_reason"]) == ("finished", "recovered")
        with SealedFile.open(path, Keyring.load(keys)) as f:
            assert f.state == "finished"
            after = f.read()
        # Every block completed before the kill is kept: the same audio, now with its true sizes.
        assert len(after) >= 2 * BLOCK and after[80:] == before[80 : len(after)]
        code, _, got = request("GET", f"http://127.0.0.1:{http}/api/recordings/{meta['recording_id']}/audio")
        assert code == 200 and got == after and meta["size"] == len(after)
        (tmp_path / "got.wav").write_bytes(got)
        samples, _ = read_wav(tmp_path / "got.wav")
        assert abs(len(samples) / 8000 - float(str(meta["duration"]))) < 0.021
    finally:
        assert again.stop() == 0
        caller.join(40)  # (its BYE retransmissions got their answer from the restarted service)


def test_a_bad_key_file_stops_the_start(tmp_path: Path) -> None:
    # (Every way a key file can be wrong is in tests/test_crypt.py; here, that the start stops on one.)
    script = tmp_path / "s.yaml"
    script.write_text("version: 1.0.0\nsections:\n  main:\n    - answer\n")
    keys = tmp_path / "short"
    keys.write_text("k1 " + base64.b64encode(b"0123456789").decode() + "\n")
    serve = [sys.executable, "-m", "swml_engine", "serve", "--sip", "127.0.0.1:0", "--script", str(script)]
    r = subprocess.run(
        [*serve, "--data", str(tmp_path / "data"), "--encrypt-key-file", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--encrypt-key-file: key file {keys}, line 1: key 'k1' is 10 bytes; it must be 32" in r.stderr
