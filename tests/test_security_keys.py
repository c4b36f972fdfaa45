"""Encrypted recordings read with the wrong key (docs/security.md, *Secrets and files*): a key file whose
key was replaced under the same id says so, and nothing — not `swml recover` — changes the file, so the
right key still reads it."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from swml_engine.recording.crypt import Keyring
from swml_engine.recording.encoders import open_writer
from swml_engine.recording.store import RecordingStore
from test_crypt_recordings import RATE, noise, plaintext, swml


def key_file(path: Path) -> Path:
    path.write_text(f"k1 {base64.b64encode(os.urandom(32)).decode()}\n")
    return path


@pytest.mark.parametrize("seconds", [0.5, 3.0])
def test_a_key_replaced_under_its_id_is_named_and_the_recording_left_whole(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], seconds: float
) -> None:
    """A recording of less than a block (a second at 8 kHz) read with another key under its id read as
    an empty, cut-short recording — and `swml recover` then cut the file to nothing, its audio lost for
    good; a longer one failed 'block 0 ... altered, moved, or taken from another file'."""
    right, wrong = key_file(tmp_path / "keys"), key_file(tmp_path / "replaced")
    root = tmp_path / "recordings"
    root.mkdir()
    RecordingStore(root).write_metadata(
        {"recording_id": "r1", "state": "recording", "format": "wav", "sample_rate": RATE, "channels": 1}
    )
    writer = open_writer("wav", root / "r1.wav", RATE, 1, Keyring.load(right))
    writer.write(noise(seconds))
    writer.flush()
    writer._release()  # (the process died: its lock is gone, nothing more is written)
    sealed = (root / "r1.wav").read_bytes()
    audio = plaintext(root / "r1.wav", Keyring.load(right))

    code, out, err = swml(capsysbinary, "decrypt", str(root / "r1.wav"), "--key-file", str(wrong))
    assert code == 1 and out == b""
    assert b"sealed with another key than the key file's 'k1'" in err and b"replaced" in err
    swml(capsysbinary, "recover", str(tmp_path), "--key-file", str(wrong))
    assert (root / "r1.wav").read_bytes() == sealed
    assert json.loads((root / "r1.json").read_text())["state"] != "finished"
    assert plaintext(root / "r1.wav", Keyring.load(right)) == audio
