"""Recovery beside other workers (`swml serve --workers`: each repairs at its start, a restarted one while
the others record): a recording another process is repairing is left to it, and one repaired once is not
repaired again."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from swml_engine.recording import recovery
from swml_engine.recording.encoders import wav_header


def killed_recording(root: Path) -> Path:
    """A WAV recording as a SIGKILL leaves it: its samples on disk, its metadata still ``recording``."""
    root.mkdir(parents=True)
    path = root / "r1.wav"
    path.write_bytes(wav_header(8000, 1, 0) + np.full(8000, 1000, "<i2").tobytes())  # sizes never patched
    meta = {"recording_id": "r1", "state": "recording", "format": "wav", "sample_rate": 8000, "channels": 1}
    (root / "r1.json").write_text(json.dumps(meta))
    return path


def test_a_recording_another_worker_is_repairing_is_left_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "recordings"
    killed_recording(root)
    repairing, go_on = threading.Event(), threading.Event()
    real = recovery.repair

    def slow_repair(*args: object) -> tuple[float, str]:
        repairing.set()
        go_on.wait(10)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(recovery, "repair", slow_repair)
    first: list[recovery.Recovered] = []
    worker = threading.Thread(target=lambda: first.extend(recovery.recover(root)))
    worker.start()
    assert repairing.wait(10)
    assert recovery.recover(root) == []  # the other worker holds it: not touched twice at once
    go_on.set()
    worker.join(10)
    assert [r.recording_id for r in first] == ["r1"]
    meta = json.loads((root / "r1.json").read_text())
    assert (meta["state"], meta["end_reason"], meta["duration"]) == ("finished", "recovered", 1.0)
    assert recovery.recover(root) == []  # finished: nothing left to do
