"""--retention-days: which recordings a pass deletes (files and index rows), which it keeps, and when
the next pass comes — on a real index and real files, with a fake clock (no waiting days)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from swml_engine.recording.store import RecordingStore
from swml_engine.service.index import IndexUnavailable, SqliteIndex
from swml_engine.service.retention import DAY, Retention, stale_call_logs

NOW = 1_800_000_000.0


def recording(store: RecordingStore, index: SqliteIndex, recording_id: str, ended_days_ago: float | None) -> None:
    """A recording on disk and in the index, ended that many days before NOW (None: live)."""
    end = None if ended_days_ago is None else NOW - ended_days_ago * DAY
    meta = {
        "recording_id": recording_id,
        "call_id": "c",
        "state": "recording" if end is None else "finished",
        "format": "wav",
        "start_time": (end or NOW) - 60,
        "end_time": end,
        "end_reason": None if end is None else "hangup",
    }
    store.audio_path(recording_id, "wav").write_bytes(b"RIFF....")
    store.write_metadata(meta)  # (indexed through on_write)


def setup(tmp_path: Path) -> tuple[RecordingStore, SqliteIndex]:
    index = SqliteIndex(tmp_path / "index.sqlite3", node="n")
    store = RecordingStore(tmp_path / "recordings", on_write=index.put_recording)
    store.ensure()
    return store, index


def local_delete(store: RecordingStore, index: SqliteIndex) -> Any:
    async def delete(meta: dict[str, Any]) -> None:
        store.delete(meta["recording_id"], meta["format"])
        index.delete_recording(meta["recording_id"])

    return delete


def test_a_pass_deletes_what_ended_before_the_cutoff_and_keeps_the_rest(tmp_path: Path) -> None:
    store, index = setup(tmp_path)
    recording(store, index, "old", 31)
    recording(store, index, "older", 400)
    recording(store, index, "recent", 29)
    recording(store, index, "live", None)
    recording(store, index, "still-recorded", 45)  # ended in the index, yet a worker records it
    retention = Retention(
        index, local_delete(store, index), lambda rid: rid == "still-recorded", 30, own=True, clock=lambda: NOW
    )

    async def go() -> None:
        assert await retention.sweep() == 2
        assert await retention.sweep() == 0  # again: nothing more (and nothing fails)
        assert sorted(r["recording_id"] for r in await index.recordings(limit=10)) == [
            "live",
            "recent",
            "still-recorded",
        ]

    asyncio.run(go())
    assert sorted(p.name for p in store.root.iterdir()) == sorted(
        f"{rid}.{ext}" for rid in ("live", "recent", "still-recorded") for ext in ("json", "wav")
    )
    assert retention.deleted == 2


def test_a_backlog_is_deleted_in_batches_a_moment_apart_then_passes_are_far_apart(tmp_path: Path) -> None:
    store, index = setup(tmp_path)
    for i in range(25):
        recording(store, index, f"r{i:02d}", 40 + i)
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 5:
            raise asyncio.CancelledError  # (the service stopping)

    retention = Retention(
        index, local_delete(store, index), lambda rid: False, 30, own=True,
        batch=10, interval=600, busy_pause=1, clock=lambda: NOW, sleep=sleep,
    )  # fmt: skip

    async def go() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await retention.run()

    asyncio.run(go())
    assert pauses == [1, 1, 600, 600, 600]  # 10, 10, then the last 5: no backlog left
    assert retention.deleted == 25 and list(store.root.iterdir()) == []


def test_a_recording_that_cannot_be_deleted_is_kept_and_tried_again(tmp_path: Path) -> None:
    store, index = setup(tmp_path)
    recording(store, index, "a", 40)
    recording(store, index, "b", 41)
    refuse = {"a"}

    async def delete(meta: dict[str, Any]) -> None:
        if meta["recording_id"] in refuse:
            raise OSError("the bucket is unreachable")
        await local_delete(store, index)(meta)

    retention = Retention(index, delete, lambda rid: False, 30, own=True, clock=lambda: NOW)

    async def go() -> None:
        assert await retention.sweep() == 1
        assert [r["recording_id"] for r in await index.recordings()] == ["a"]
        refuse.clear()
        assert await retention.sweep() == 1
        assert await index.recordings() == []

    asyncio.run(go())


def test_a_pass_without_the_index_is_skipped_not_fatal(tmp_path: Path) -> None:
    store, index = setup(tmp_path)
    pauses: list[float] = []

    class Away(SqliteIndex):
        async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            raise IndexUnavailable("the index postgresql://db cannot be read now: refused")

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raise asyncio.CancelledError

    away = Away(tmp_path / "other.sqlite3")
    retention = Retention(away, local_delete(store, index), lambda rid: False, 30, own=True, sleep=sleep)

    async def go() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await retention.run()

    asyncio.run(go())
    assert pauses == [600.0]  # the next pass at the usual time


def test_a_pass_deletes_this_nodes_calls_that_ended_before_the_cutoff_and_their_event_logs(tmp_path: Path) -> None:
    store, index = setup(tmp_path)
    other = SqliteIndex(tmp_path / "index.sqlite3", node="other")  # another node on the same index
    logs = tmp_path / "calls"
    logs.mkdir()
    for call_id, days_ago, state, node in (
        ("old", 31, "ended", index),
        ("recent", 29, "ended", index),
        ("up", 45, "answered", index),  # still up (a long call): its row says so
        ("elsewhere", 45, "ended", other),
    ):
        node.put_call({"call_id": call_id, "state": state, "start_time": NOW - days_ago * DAY}, "http://w")
        (logs / f"{call_id}.jsonl").write_text("{}\n")

    async def delete_call(call_id: str) -> None:
        (logs / f"{call_id}.jsonl").unlink(missing_ok=True)
        index.delete_call(call_id)

    retention = Retention(
        index, local_delete(store, index), lambda rid: False, 30, own=True, delete_call=delete_call, clock=lambda: NOW
    )

    async def go() -> None:
        assert await retention.sweep() == 1
        assert sorted(c["call_id"] for c in await index.calls()) == ["elsewhere", "recent", "up"]

    asyncio.run(go())
    assert sorted(p.stem for p in logs.iterdir()) == ["elsewhere", "recent", "up"]


def test_event_logs_no_index_row_names_go_when_last_written_before_the_cutoff(tmp_path: Path) -> None:
    # The index was lost and rebuilt (it keeps the recordings, not the calls): the logs of its old calls
    # still go, by the time each was last written; a recent one stays, and so does a live call's.
    store, index = setup(tmp_path)
    logs = tmp_path / "calls"
    logs.mkdir()
    for call_id, days_ago in (("lost-old", 31), ("lost-recent", 29), ("live-quiet", 45), ("indexed-up", 45)):
        path = logs / f"{call_id}.jsonl"
        path.write_text("{}\n")
        os.utime(path, (NOW - days_ago * DAY, NOW - days_ago * DAY))
    index.put_call({"call_id": "indexed-up", "state": "answered", "start_time": NOW - 45 * DAY}, "http://w")

    async def delete_call(call_id: str) -> None:
        (logs / f"{call_id}.jsonl").unlink(missing_ok=True)
        index.delete_call(call_id)

    async def call_logs(before: float, limit: int) -> list[str]:
        return stale_call_logs(logs, before, limit, {"live-quiet"})

    retention = Retention(
        index, local_delete(store, index), lambda rid: False, 30, own=True, delete_call=delete_call,
        call_logs=call_logs, clock=lambda: NOW,
    )  # fmt: skip
    assert asyncio.run(retention.sweep()) == 1
    assert sorted(p.stem for p in logs.iterdir()) == ["indexed-up", "live-quiet", "lost-recent"]


def test_two_workers_sweeping_the_same_recordings_at_once_delete_each_once_without_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, index = setup(tmp_path)
    for i in range(30):
        recording(store, index, f"r{i:02d}", 40 + i)
    deletes: list[str] = []

    async def delete(meta: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # (the other worker runs meanwhile, as a bucket's round trip lets it)
        deletes.append(meta["recording_id"])
        await local_delete(store, index)(meta)

    sweepers = [
        Retention(index, delete, lambda rid: False, 30, own=True, batch=50, clock=lambda: NOW) for _ in range(2)
    ]

    async def go() -> None:
        await asyncio.gather(*(s.sweep() for s in sweepers))
        assert await index.recordings() == []

    asyncio.run(go())
    assert len(deletes) == 60  # both found all 30: each deleted twice, harmlessly
    assert list(store.root.iterdir()) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_call_is_kept_while_a_recording_of_it_is(tmp_path: Path) -> None:
    # A long call: it started 31 days ago, its recording ended 29 days ago (kept): the call's row (its
    # caller and callee, which the recordings list shows) stays until the recording has gone.
    store, index = setup(tmp_path)
    index.put_call({"call_id": "c", "state": "ended", "start_time": NOW - 31 * DAY}, "http://w")
    recording(store, index, "r", ended_days_ago=29)
    now = NOW

    async def delete_call(call_id: str) -> None:
        index.delete_call(call_id)

    retention = Retention(
        index, local_delete(store, index), lambda rid: False, 30, own=True, delete_call=delete_call, clock=lambda: now
    )

    async def go() -> None:
        nonlocal now
        assert await retention.sweep() == 0
        assert [c["call_id"] for c in await index.calls()] == ["c"]
        now = NOW + 2 * DAY  # the recording ended 31 days ago now: it goes, and its call after it
        assert await retention.sweep() == 2
        assert await index.recordings() == [] and await index.calls() == []

    asyncio.run(go())
