"""Recordings written sealed (--encrypt-key-file): each format decrypts to what the plain writer writes,
a recording killed mid-way (a real SIGKILL) is repaired and decrypts to exactly the audio it completed,
and `swml decrypt` gives the audio or a clear error."""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import signal
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import read_wav, run_doc, wait_for
from swml_engine.cli import main
from swml_engine.recording.crypt import BLOCK, Keyring, SealedFile, is_sealed
from swml_engine.recording.encoders import open_writer
from swml_engine.recording.recovery import recover
from swml_engine.recording.store import RecordingStore

RATE = 8000


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {base64.b64encode(os.urandom(32)).decode()}\n")
    return keys


def noise(seconds: float, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8000, 8000, round(seconds * RATE), dtype=np.int16)


def record(path: Path, fmt: str, pcm: np.ndarray, keyring: Keyring | None) -> Path:
    writer = open_writer(fmt, path, RATE, 1, keyring)
    for i in range(0, len(pcm), 160):
        writer.write(pcm[i : i + 160])
    return writer.close()


def plaintext(path: Path, keyring: Keyring) -> bytes:
    with SealedFile.open(path, keyring) as f:
        return f.read()


def decoded(source: bytes) -> np.ndarray:
    with av.open(io.BytesIO(source), "r") as c:
        return np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])


@pytest.mark.parametrize("fmt", ["wav", "mp3", "mp4"])
def test_each_format_decrypts_to_the_plain_recording(tmp_path: Path, key_file: Path, fmt: str) -> None:
    keyring = Keyring.load(key_file)
    pcm = noise(3.3)
    plain = record(tmp_path / f"plain.{fmt}", fmt, pcm, None)
    sealed = record(tmp_path / f"sealed.{fmt}", fmt, pcm, keyring)
    assert is_sealed(sealed) and not is_sealed(plain)
    assert not (tmp_path / "sealed.part.mp4").exists() and not (tmp_path / "sealed.remux.mp4").exists()
    audio = plaintext(sealed, keyring)
    if fmt == "mp4":  # the same AAC packets; the sealed MP4 keeps its index at the end (no faststart)
        assert np.array_equal(decoded(audio), decoded(plain.read_bytes()))
    else:
        assert audio == plain.read_bytes()
    if fmt == "wav":
        assert np.array_equal(np.frombuffer(audio[80:], "<i2"), pcm)


# A child process records sealed noise in 20 ms frames, says how many half-second blocks it has handed
# over to the writer (each is flushed to the file as it fills), and waits after 6 s for its SIGKILL.
_CHILD = """
import sys, time, numpy as np
from pathlib import Path
from swml_engine.recording.crypt import Keyring
from swml_engine.recording.encoders import open_writer
pcm = np.random.default_rng(1).integers(-8000, 8000, 600 * 8000, dtype=np.int16)
w = open_writer(sys.argv[3], Path(sys.argv[1]), 8000, 1, Keyring.load(Path(sys.argv[2])))
for i in range(0, len(pcm), 160):
    w.write(pcm[i : i + 160])
    if (i + 160) % 4000 == 0:
        print((i + 160) // 4000, flush=True)
    if i + 160 == 6 * 8000:
        time.sleep(600)
"""


@pytest.mark.parametrize("fmt", ["wav", "mp3", "mp4"])
def test_sigkill_mid_recording_decrypts_to_the_completed_blocks(tmp_path: Path, key_file: Path, fmt: str) -> None:
    keyring = Keyring.load(key_file)
    root = tmp_path / "recordings"
    root.mkdir()
    store = RecordingStore(root)
    store.write_metadata(
        {"recording_id": "r1", "state": "recording", "format": fmt, "sample_rate": RATE, "channels": 1}
    )
    path = store.audio_path("r1", fmt)
    args = [sys.executable, "-c", _CHILD, str(path), str(key_file), fmt]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert wait_for(lambda: int(child.stdout.readline() or 0) >= 12)  # 12 half-second blocks: 6 s, then it waits
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    sealed = path if fmt != "mp4" else tmp_path / "recordings" / "r1.part.mp4"
    with SealedFile.open(sealed, keyring) as f:
        assert f.state == "unfinished"
    # Without its key (none given, or a key file that lost it): left as it is, for a run that has it.
    other = tmp_path / "other-keys"
    other.write_text(f"k2 {base64.b64encode(os.urandom(32)).decode()}\n")
    assert recover(root, None) == [] and recover(root, Keyring.load(other)) == []
    assert json.loads(store.meta_path("r1").read_text())["state"] == "recording"
    (done,) = recover(root, keyring)
    assert "sealed again" in done.note
    meta = json.loads(store.meta_path("r1").read_text())
    assert (meta["state"], meta["end_reason"]) == ("finished", "recovered")
    audio = plaintext(path, keyring)
    with SealedFile.open(path, keyring) as f:
        assert f.state == "finished"
    assert meta["size"] == len(audio)
    samples = decoded(audio)
    assert meta["duration"] == pytest.approx(len(samples) / RATE, abs=0.15)
    if fmt != "wav":  # lossy: all but what the encoder still held (LAME: ~0.3 s; AAC: its last fragment)
        assert len(samples) >= (5.5 if fmt == "mp3" else 5.2) * RATE
        return
    # Everything flushed before the kill, exactly: the 6 s written.
    pcm = np.frombuffer(audio[80:], "<i2")
    assert np.array_equal(pcm, noise(600)[: 6 * RATE]) and np.array_equal(samples, pcm)
    # The header was fixed: it gives the data's true size (it said "to the end of the file" while recording).
    assert struct.unpack("<I", audio[76:80]) == (2 * len(pcm),)


def swml(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, bytes]:
    """``swml ARGS`` in this process (the command's own code; a process of its own costs 1.5 s to import):
    exit code, stdout, stderr."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsysbinary.readouterr()
    return code, out, err


def test_swml_decrypt(tmp_path: Path, key_file: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    keyring = Keyring.load(key_file)
    pcm = noise(3.0)
    plain = record(tmp_path / "plain.wav", "wav", pcm, None)
    sealed = record(tmp_path / "sealed.wav", "wav", pcm, keyring)
    code, out, err = swml(capsysbinary, "decrypt", str(sealed), "--key-file", str(key_file))
    assert code == 0 and out == plain.read_bytes(), err
    # Unfinished (a crash cut it short): every completed block, and a warning that says what to do.
    cut = SealedFile.create(tmp_path / "cut.wav", keyring)
    cut.write(plain.read_bytes()[:40000])
    cut.flush()
    cut.abandon()
    code, out, err = swml(capsysbinary, "decrypt", str(tmp_path / "cut.wav"), "--key-file", str(key_file))
    assert code == 0 and out == plain.read_bytes()[:40000]
    assert b"unfinished" in err and b"swml recover DIR --key-file KEYS" in err
    # Altered: an error naming the block, and no audio at all.
    raw = bytearray(sealed.read_bytes())
    raw[len(raw) // 2] ^= 4
    sealed.write_bytes(raw)
    target = tmp_path / "out.wav"
    code, out, err = swml(capsysbinary, "decrypt", str(sealed), "--key-file", str(key_file), "-o", str(target))
    assert code == 1 and not target.exists() and not list(tmp_path.glob(".out.wav*"))
    assert b"sealed.wav: block 1 fails authentication" in err
    # A key file that is not one: a clear usage error.
    key_file.write_text("k1 c2hvcnQ=\n")
    code, out, err = swml(capsysbinary, "decrypt", str(sealed), "--key-file", str(key_file))
    assert code == 2 and b"key 'k1' is 5 bytes; it must be 32" in err


def test_swml_decrypt_to_a_pipe_writes_through_it_and_leaves_it_a_pipe(
    tmp_path: Path, key_file: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # `-o /dev/null`, `-o /dev/stdout`, a named pipe: the audio goes through, the path stays what it was
    # (a file moved over it replaced /dev/null itself when run as root).
    keyring = Keyring.load(key_file)
    pcm = noise(1.0)
    plain = record(tmp_path / "plain.wav", "wav", pcm, None)
    sealed = record(tmp_path / "sealed.wav", "wav", pcm, keyring)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    code, _, err = swml(capsysbinary, "decrypt", str(sealed), "--key-file", str(key_file), "-o", str(pipe))
    reader.join(10)
    assert code == 0, err
    assert stat.S_ISFIFO(pipe.lstat().st_mode)
    assert got == [plain.read_bytes()]


def test_play_back_of_an_encrypted_recording_in_the_same_call(tmp_path: Path, key_file: Path) -> None:
    # record_call_url of a sealed recording plays in the same call (swml run --encrypt-key-file).
    keyring = Keyring.load(key_file)
    doc = """
sections:
  main:
    - answer
    - record_call: {control_id: r, format: wav}
    - sleep: 2000
    - stop_record_call: {control_id: r}
    - play: {url: '${record_call_url}'}
"""
    caller = noise(2.0, seed=7)
    res = run_doc(doc, tmp_path, caller_audio=caller, keyring=keyring)
    assert not [e for e in res.events if e["type"] == "error"]
    (meta_path,) = (tmp_path / "out" / "recordings").glob("*.json")
    meta = json.loads(meta_path.read_text())
    path = meta_path.with_suffix(".wav")
    assert is_sealed(path) and meta["size"] == len(plaintext(path, keyring))
    recorded = np.frombuffer(plaintext(path, keyring)[80:], "<i2")
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    # The caller heard the recording whole after it stopped (decrypted: the very samples recorded).
    probe = recorded[4000:4160]
    (at,) = [i for i in range(len(heard) - 160) if np.array_equal(heard[i : i + 160], probe)]
    start = at - 4000
    assert start >= 2 * RATE - 160 and np.array_equal(heard[start : start + len(recorded)], recorded)


def test_storage_refusing_writes_leaves_encrypted_recordings_readable(tmp_path: Path, key_file: Path) -> None:
    # The file-size limit refuses a block mid-write (as a full disk does): the recording ends in error,
    # what was sealed before is repaired and sealed again, the call and the other formats go on.
    from test_recording_faults import swml_run

    keyring = Keyring.load(key_file)
    doc = """
sections:
  main:
    - answer
    - record_call: {stereo: true, format: wav}
    - record_call: {stereo: true, format: mp3}
    - sleep: 3000
"""
    out, events = swml_run(tmp_path, doc, noise(4.0), limit=True, extra=("--encrypt-key-file", str(key_file)))
    assert [e["state"] for e in events if e["type"] == "record.state"].count("error") == 1
    metas = {m["format"]: m for m in (json.loads(p.read_text()) for p in (out / "recordings").glob("*.json"))}
    assert (metas["wav"]["state"], metas["mp3"]["state"]) == ("error", "finished")
    for fmt, meta in metas.items():
        audio = plaintext(out / "recordings" / f"{meta['recording_id']}.{fmt}", keyring)
        assert meta["size"] == len(audio)
        with av.open(io.BytesIO(audio), "r") as c:
            seconds = sum(frame.samples for frame in c.decode(audio=0)) / RATE
        assert abs(seconds - meta["duration"]) < 0.1 and seconds > (1.0 if fmt == "wav" else 2.8)


def test_swml_recover_with_the_key_file(
    tmp_path: Path, key_file: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    RecordingStore(root).write_metadata(
        {"recording_id": "r1", "state": "recording", "format": "wav", "sample_rate": RATE, "channels": 1}
    )
    writer = open_writer("wav", root / "r1.wav", RATE, 1, Keyring.load(key_file))
    writer.write(noise(2.0))
    writer.flush()
    writer._release()  # (the process died: its lock is gone, nothing more is written)
    code, out, _ = swml(capsysbinary, "recover", str(tmp_path), "--key-file", str(key_file))
    assert code == 0 and b"r1.wav: recovered 2.00 s (WAV header rewritten from the file length, sealed again)" in out
    assert json.loads((root / "r1.json").read_text())["state"] == "finished"


def test_a_kill_while_the_wav_sizes_are_written_costs_only_the_first_block(tmp_path: Path, key_file: Path) -> None:
    # The end of a sealed WAV rewrites its first block (the exact sizes) once; a kill in the middle of that
    # write leaves that block unreadable. Recovery keeps every other block, the first second is silence.
    keyring = Keyring.load(key_file)
    root = tmp_path / "recordings"
    root.mkdir()
    store = RecordingStore(root)
    store.write_metadata(
        {"recording_id": "r1", "state": "recording", "format": "wav", "sample_rate": RATE, "channels": 1}
    )
    pcm = noise(4.0)
    writer = open_writer("wav", root / "r1.wav", RATE, 1, keyring)
    writer.write(pcm)
    writer.flush()
    writer._release()  # (the process died)
    raw = bytearray((root / "r1.wav").read_bytes())
    raw[200:300] = os.urandom(100)  # block 0 (the header is 32 bytes), half rewritten
    (root / "r1.wav").write_bytes(raw)

    (done,) = recover(root, keyring)
    assert "its first 1 s, cut by the kill while its sizes were written, is silence" in done.note
    meta = json.loads(store.meta_path("r1").read_text())
    assert (meta["state"], meta["duration"]) == ("finished", 4.0)
    audio = plaintext(root / "r1.wav", keyring)
    samples = np.frombuffer(audio[80:], "<i2")
    first = (BLOCK - 80) // 2
    assert not samples[:first].any() and np.array_equal(samples[first:], pcm[first:])
    assert len(decoded(audio)) == len(pcm)
    # Any other block failing is not a crash's doing: the recording is marked error, nothing made up.
    store.write_metadata({**meta, "state": "recording"})
    raw = bytearray((root / "r1.wav").read_bytes())
    raw[BLOCK + 2000] ^= 1
    (root / "r1.wav").write_bytes(raw)
    (failed,) = recover(root, keyring)
    assert "block 1 fails authentication" in failed.note
    assert json.loads(store.meta_path("r1").read_text())["state"] == "error"


def test_swml_decrypt_into_a_reader_that_stops_early_exits_141_saying_nothing(tmp_path: Path, key_file: Path) -> None:
    """`swml decrypt F | head -c 44` (a WAV's header): the reader had enough — as `swml run | head`, exit
    141 and nothing said; it printed 'Broken pipe' and exited 1."""
    sealed = record(tmp_path / "sealed.wav", "wav", noise(30.0), Keyring.load(key_file))  # (past a pipe's 64 KB)
    key_file.chmod(0o600)  # (said on stderr otherwise)
    done = subprocess.run(
        f"{shlex.quote(sys.executable)} -m swml_engine decrypt {shlex.quote(str(sealed))} --key-file "
        f"{shlex.quote(str(key_file))} | head -c 44 > /dev/null; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "141" and done.stderr == "", (done.stdout, done.stderr)
