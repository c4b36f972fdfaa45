"""The service's SQLite index on a real file: writes after it is closed, and rows that wait while it
cannot be written."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from swml_engine.service.index import Index, IndexState


def test_writes_after_close_are_dropped_with_a_debug_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11.19: a call ending past the stop's grace period wrote to the closed index: "call index:
    Cannot operate on a closed database" (an error line at every such stop)."""
    index = Index(tmp_path / "index.sqlite3")
    index.put_call({"call_id": "c1", "state": "answered", "start_time": 1.0}, "w")
    index.close()
    with caplog.at_level(logging.DEBUG, logger="swml_engine.service.index"):
        index.put_call({"call_id": "c1", "state": "ended", "start_time": 1.0}, "w")
        index.put_recording({"recording_id": "r1", "call_id": "c1", "state": "finished"})
        index.delete_recording("r1")
    assert index.state is IndexState.CLOSED
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 3
    assert "index closed: call c1 not written" in caplog.records[0].getMessage()
    reopened = Index(tmp_path / "index.sqlite3")
    assert reopened.call("c1") == ({"call_id": "c1", "state": "answered", "start_time": 1.0}, "w")
    reopened.close()


def test_rows_wait_while_the_file_is_locked_and_are_written_with_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails (here another process's exclusive lock, as a backup tool or an open `sqlite3`
    shell holds it) never raises: the row waits and is written with the next write that succeeds."""
    path = tmp_path / "index.sqlite3"
    index = Index(path, busy_timeout=0.05, retry_interval=0.0)  # (no waiting in a test)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    index.put_recording({"recording_id": "r1", "call_id": "c1", "state": "recording", "start_time": 1.0})
    index.put_recording({"recording_id": "r1", "call_id": "c1", "state": "finished", "start_time": 1.0})
    assert index.state is IndexState.BEHIND and index.pending == 1
    assert any("cannot be written" in r.getMessage() for r in caplog.records)
    other.execute("ROLLBACK")
    other.close()
    index.put_call({"call_id": "c1", "state": "ended", "start_time": 1.0}, "w")
    assert index.state is IndexState.OPEN and index.pending == 0
    assert index.recording("r1") == {"recording_id": "r1", "call_id": "c1", "state": "finished", "start_time": 1.0}
    index.close()
