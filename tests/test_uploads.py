"""service/uploads.py on virtual time, with a bucket in memory that can be down: the retry schedule,
the spool as the queue, nothing lost and nothing doubled. (The real S3 server is in
tests/interop/test_storage.py; here the storage is down for 30 s in milliseconds.)"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.recording.objectstore import StorageError, StorageUrl
from swml_engine.recording.store import RecordingStore
from swml_engine.service.uploads import Backoff, Uploader, UploadQueue

T = TypeVar("T")


class MemoryBucket:
    """A bucket that keeps objects in a dict and refuses everything while ``down(now)`` says so."""

    def __init__(self, down: Callable[[float], bool] = lambda now: False) -> None:
        self.url = StorageUrl("rec", "site")
        self.objects: dict[str, bytes] = {}
        self.attributes: dict[str, dict[str, str]] = {}
        self.puts: Counter[str] = Counter()  # successful puts per key
        self.refused = 0
        self.down = down
        self.times: dict[str, float] = {}  # when each key was last put

    def _check(self) -> float:
        now = asyncio.get_running_loop().time()
        if self.down(now):
            self.refused += 1
            raise StorageError("upload of s3://rec/site/x failed: connection refused")
        return now

    async def put_file(self, key: str, path: Path, attributes: dict[str, str]) -> None:
        await self.put_bytes(key, path.read_bytes(), attributes)

    async def put_bytes(self, key: str, data: bytes, attributes: dict[str, str]) -> None:
        now = self._check()
        self.objects[key] = data
        self.attributes[key] = attributes
        self.puts[key] += 1
        self.times[key] = now

    async def size_of(self, key: str) -> int | None:
        self._check()
        return len(self.objects[key]) if key in self.objects else None

    async def delete(self, key: str) -> None:
        self._check()
        self.objects.pop(key, None)


def spool(root: Path, recording_id: str, *, state: str = "finished", audio: bytes | None = None) -> bytes:
    """A recording left in the spool as the recorder leaves it: audio and metadata."""
    root.mkdir(parents=True, exist_ok=True)
    audio = os.urandom(3000) if audio is None else audio
    (root / f"{recording_id}.wav").write_bytes(audio)
    end_reason = None if state == "recording" else "hangup"
    meta = {"recording_id": recording_id, "format": "wav", "state": state, "end_reason": end_reason, "storage": None}
    (root / f"{recording_id}.json").write_text(json.dumps(meta))
    return audio


def on_virtual_time(work: Callable[[], Awaitable[T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(work())
    finally:
        loop.close()


async def until(condition: Callable[[], bool], limit: float) -> float:
    """Virtual seconds until ``condition`` holds (fails past ``limit``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        assert loop.time() - start < limit, "not done in time"
        await asyncio.sleep(0.5)
    return loop.time()


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff(1, 60).delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_queue_holds_each_recording_once_and_retries_it_later() -> None:
    queue = UploadQueue(Backoff(1, 8), limit=3)
    assert [queue.add(r, 0.0) for r in ("a", "b", "a", "c", "d")] == [True, True, False, True, False]
    assert queue.take(0.0) == "a" and queue.take(0.0) == "b"
    assert queue.failed("a", 0.0) == 1 and queue.failed("b", 0.0) == 1
    assert queue.take(0.5) == "c" and queue.take(0.5) is None and queue.next_due() == 1.0
    assert queue.take(1.0) == "a" and queue.failed("a", 1.0) == 2  # its second failure: twice as long
    queue.done("b")  # (uploaded by another worker meanwhile)
    assert queue.take(1.0) is None and queue.take(3.0) == "a" and len(queue) == 2


def test_twenty_calls_while_storage_is_down_for_30_s_are_all_uploaded_once(tmp_path: Path) -> None:
    """The acceptance load: 20 recordings end one a second while the bucket is down from 5 s to 35 s.
    Every one is uploaded after it returns (within the backoff cap), exactly once, and leaves the spool."""
    root = tmp_path / "recordings"
    bucket = MemoryBucket(down=lambda now: 5 <= now < 35)
    store = RecordingStore(root)
    audio: dict[str, bytes] = {}

    async def run() -> float:
        uploader = Uploader(bucket, lambda: store, backoff=Backoff(1, 60))
        store.on_write = uploader.on_metadata  # as the service wires it: an ended recording is queued
        uploader.start()
        for n in range(20):
            rid = f"rec-{n:02d}"
            audio[rid] = spool(root, rid, state="recording")
            meta = json.loads((root / f"{rid}.json").read_text())
            store.write_metadata({**meta, "state": "finished", "end_reason": "hangup"})  # the call ends
            await asyncio.sleep(1)
        done = await until(lambda: uploader.uploaded == 20, 200)
        await uploader.stop()
        return done

    done = on_virtual_time(run)
    assert bucket.refused > 0 and 35 < done <= 35 + 60 + 1
    assert {k: v for k, v in bucket.objects.items() if k.endswith(".wav")} == {f"{r}.wav": a for r, a in audio.items()}
    assert set(bucket.puts.values()) == {1}  # none uploaded twice
    assert all(bucket.times[f"rec-{n:02d}.wav"] >= 35 for n in range(5, 20))  # those refused: after it came back
    assert not list(root.iterdir())  # the spool is empty
    for rid, data in audio.items():
        meta = json.loads(bucket.objects[f"{rid}.json"])
        assert meta["storage"]["audio"] == f"s3://rec/site/{rid}.wav"
        assert (
            meta["storage"]["sha256"] == hashlib.sha256(data).hexdigest() == bucket.attributes[f"{rid}.wav"]["sha256"]
        )
        assert meta["storage"]["size"] == len(data) and meta["storage"]["sealed"] is False


def test_the_spool_left_by_a_killed_process_is_uploaded_at_start(tmp_path: Path) -> None:
    """Five finished recordings in the spool (the process died before uploading them), one still
    being written (its writer holds the lock) and one a crash left "recording" (recovery's): the five
    are uploaded at start, the other two left alone."""
    root = tmp_path / "recordings"
    finished = {f"left-{n}": spool(root, f"left-{n}") for n in range(5)}
    spool(root, "live")
    spool(root, "crashed", state="recording")
    live = os.open(root / "live.wav", os.O_RDONLY)
    fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a recording's writer does
    bucket = MemoryBucket()

    async def run() -> None:
        uploader = Uploader(bucket, lambda: RecordingStore(root))
        uploader.start()
        await until(lambda: uploader.uploaded == 5, 30)
        await asyncio.sleep(5)
        await uploader.stop()

    try:
        on_virtual_time(run)
    finally:
        os.close(live)
    assert {k: v for k, v in bucket.objects.items() if k.endswith(".wav")} == {
        f"{r}.wav": a for r, a in finished.items()
    }
    assert sorted(p.name for p in root.iterdir()) == ["crashed.json", "crashed.wav", "live.json", "live.wav"]


def test_a_recording_deleted_during_its_upload_leaves_no_object(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    spool(root, "gone-soon")
    store = RecordingStore(root)

    class DeletingBucket(MemoryBucket):
        async def size_of(self, key: str) -> int | None:
            store.remove_local("gone-soon", "wav")  # DELETE (or retention) while the upload runs
            return await super().size_of(key)

    bucket = DeletingBucket()

    async def run() -> str:
        return await Uploader(bucket, lambda: store).upload("gone-soon")

    assert on_virtual_time(run) == "deleted"
    assert bucket.objects == {} and not list(root.iterdir())


def test_the_metadata_an_upload_left_behind_is_not_sent_again_without_its_audio(tmp_path: Path) -> None:
    """A process killed between the removal of an uploaded recording's audio and of its metadata file: at
    the next start the file is removed, and the bucket keeps the metadata naming the audio (it was put
    there again with ``storage.audio: null``, size 0: the API then never found the audio)."""
    root = tmp_path / "recordings"
    audio = spool(root, "r")
    store, bucket = RecordingStore(root), MemoryBucket()

    async def run() -> tuple[str, str]:
        first = await Uploader(bucket, lambda: store).upload("r")
        (root / "r.json").write_bytes(bucket.objects["r.json"])  # what the kill left: the metadata alone
        return first, await Uploader(bucket, lambda: store).upload("r")

    assert on_virtual_time(run) == ("uploaded", "gone") and not list(root.iterdir())
    meta = json.loads(bucket.objects["r.json"])
    assert meta["storage"]["audio"] == "s3://rec/site/r.wav" and meta["storage"]["size"] == len(audio)
    assert bucket.objects["r.wav"] == audio


@pytest.mark.parametrize("stored", [3000, 2999])
def test_an_upload_is_confirmed_by_the_size_stored(tmp_path: Path, stored: int) -> None:
    root = tmp_path / "recordings"
    spool(root, "r")

    class ShortBucket(MemoryBucket):
        async def put_file(self, key: str, path: Path, attributes: dict[str, Any]) -> None:
            await self.put_bytes(key, path.read_bytes()[:stored], attributes)

    async def run() -> str:
        return await Uploader(ShortBucket(), lambda: RecordingStore(root)).upload("r")

    if stored == 3000:
        assert on_virtual_time(run) == "uploaded" and not list(root.iterdir())
    else:
        with pytest.raises(StorageError, match="2999 bytes stored of 3000 sent"):
            on_virtual_time(run)
        assert sorted(p.name for p in root.iterdir()) == ["r.json", "r.wav"]  # kept for the next try


def test_a_recording_of_a_call_still_up_stays_local_until_the_call_ends(tmp_path: Path) -> None:
    """Its call may still play it back from the file (record_call_url): the service adds it at the call's end."""
    root = tmp_path / "recordings"
    spool(root, "mine")
    bucket = MemoryBucket()
    live_calls = {"call-1"}

    async def run() -> tuple[int, int]:
        store = RecordingStore(root)
        uploader = Uploader(bucket, lambda: store, held=lambda meta: meta.get("call_id") in live_calls)
        store.on_write = uploader.on_metadata
        store.write_metadata({**store.read_metadata("mine"), "call_id": "call-1"})  # it ends; its call goes on
        uploader.start()
        await asyncio.sleep(10)
        before = uploader.uploaded
        live_calls.clear()
        uploader.add("mine")  # the call ended
        await until(lambda: uploader.uploaded == 1, 10)
        await uploader.stop()
        return before, uploader.uploaded

    assert on_virtual_time(run) == (0, 1) and "mine.wav" in bucket.objects


def test_a_metadata_file_that_is_not_json_is_left_in_the_spool(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    spool(root, "broken")
    (root / "broken.json").write_text("{half")

    async def run() -> str:
        return await Uploader(MemoryBucket(), lambda: RecordingStore(root)).upload("broken")

    assert on_virtual_time(run) == "unreadable"
    assert sorted(p.name for p in root.iterdir()) == ["broken.json", "broken.wav"]


@pytest.mark.parametrize("down", [False, True])
def test_a_stop_waits_a_little_for_the_queue_while_uploads_succeed(tmp_path: Path, down: bool) -> None:
    """Each upload takes 1 s here: a stop with 5 s of grace lets the three queued go up; with the storage
    down it waits only for the upload under way (they wait in the spool for the next start)."""
    root = tmp_path / "recordings"
    for n in range(3):
        spool(root, f"r{n}")

    class SlowBucket(MemoryBucket):
        async def put_file(self, key: str, path: Path, attributes: dict[str, str]) -> None:
            await asyncio.sleep(1)
            await super().put_file(key, path, attributes)

    bucket = SlowBucket(down=lambda now: down)

    async def run() -> tuple[int, float]:
        uploader = Uploader(bucket, lambda: RecordingStore(root), concurrency=1)
        uploader.start()
        await asyncio.sleep(0.1)
        start = asyncio.get_running_loop().time()
        await uploader.stop(grace=5.0)
        return uploader.uploaded, asyncio.get_running_loop().time() - start

    uploaded, took = on_virtual_time(run)
    assert (uploaded, len(list(root.iterdir()))) == ((0, 6) if down else (3, 0))
    assert took < (1.5 if down else 5.0)  # down: only the upload under way is waited for
