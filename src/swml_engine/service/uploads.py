"""Uploading finished recordings to object storage; the recordings directory is the spool.

A recording that ends (its metadata file says so) is queued; an upload streams its audio to
``<prefix>/<recording_id>.<format>``, checks the object's size, records where it went in the metadata
(``storage``: the object's URL, size and sha256), puts the metadata beside it, and only then removes the
local files. An upload that fails is tried again after 1, 2, 4 ... s, at most :data:`BACKOFF_CAP` apart,
for as long as it takes: the files stay in the spool meanwhile. At start (and every
:data:`RESCAN_INTERVAL`) the spool is scanned, so what a killed process had not uploaded is queued again.

Nothing is lost and nothing is doubled:
- the local files go only after the upload is confirmed; a crash at any step leaves them, and the next
  scan uploads them again under the same keys (an object replaced, never a second copy);
- a recording still being written is not touched (its writer holds a lock on the file), nor one another
  worker is uploading (the uploader holds the same lock while it works);
- a recording deleted while it was being uploaded (the API, retention) has its new objects removed.

The schedule (:class:`UploadQueue`) has no I/O and no clock of its own: it is given ``now``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import heapq
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from swml_engine.media.clock import hold
from swml_engine.recording.crypt import is_sealed
from swml_engine.recording.encoders import part_path
from swml_engine.recording.objectstore import Bucket, StorageError
from swml_engine.recording.store import MEDIA_TYPES, RecordingStore

log = logging.getLogger(__name__)

#: The first retry after a failed upload (s); each further one waits twice as long, up to the cap.
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
#: Uploads in progress at once, per process.
CONCURRENCY = 2
#: Recordings queued at most; past it, the rest wait in the spool for the next scan.
MAX_QUEUED = 100_000
#: How often the spool is scanned again for what no queue holds (another worker's that died, the
#: overflow past MAX_QUEUED).
RESCAN_INTERVAL = 300.0
#: What a file is read by while it is hashed.
READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Backoff:
    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1, 2, 4 ... capped)."""
        return min(self.cap, self.first * 2.0 ** max(0, failures - 1))


class UploadQueue:
    """Which recording to upload next, and when: each due at a time, in order of that time (then of
    arrival). A recording is held at most once, whether waiting or being uploaded."""

    def __init__(self, backoff: Backoff = Backoff(), limit: int = MAX_QUEUED) -> None:
        self.backoff = backoff
        self.limit = limit
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._failures: dict[str, int] = {}
        self._taken: set[str] = set()

    def __len__(self) -> int:
        return len(self._failures)

    def __contains__(self, recording_id: str) -> bool:
        return recording_id in self._failures

    def add(self, recording_id: str, now: float) -> bool:
        """Queue a recording (due now); False when it is already held, or the queue is full."""
        if recording_id in self._failures or len(self._failures) >= self.limit:
            return False
        self._failures[recording_id] = 0
        self._push(now, recording_id)
        return True

    def take(self, now: float) -> str | None:
        """The next recording due by ``now``, marked as being uploaded."""
        while self._heap and self._heap[0][0] <= now:
            _, _, recording_id = heapq.heappop(self._heap)
            if recording_id in self._failures and recording_id not in self._taken:
                self._taken.add(recording_id)
                return recording_id
        return None

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def done(self, recording_id: str) -> None:
        """Uploaded (or nothing left to do): forgotten."""
        self._taken.discard(recording_id)
        self._failures.pop(recording_id, None)

    def failed(self, recording_id: str, now: float) -> float:
        """Try it again later; returns the delay."""
        self._taken.discard(recording_id)
        failures = self._failures.get(recording_id, 0) + 1
        self._failures[recording_id] = failures
        delay = self.backoff.delay(failures)
        self._push(now + delay, recording_id)
        return delay

    def _push(self, when: float, recording_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, recording_id))


Outcome = Literal["uploaded", "busy", "live", "gone", "deleted", "unreadable"]


class UploaderState(Enum):
    #: The last upload (if any) succeeded.
    OK = "ok"
    #: The last upload failed: recordings wait in the spool for the storage to come back.
    FAILING = "failing"


@dataclass
class _Held:
    """A spooled recording locked for its upload."""

    fd: int
    meta: dict[str, Any]
    audio: Path | None
    size: int
    sha256: str
    #: Encrypted (--encrypt-key-file): the object is the sealed file, its metadata's size the audio's.
    sealed: bool = False

    def deleted(self) -> bool:
        """Its audio was unlinked while we held it (deleted through the API or by retention)."""
        return self.audio is not None and os.fstat(self.fd).st_nlink == 0


class Uploader:
    """Uploads a service's finished recordings from its spool (``store.root``) to ``bucket``."""

    def __init__(
        self,
        bucket: Bucket,
        store: Callable[[], RecordingStore],
        *,
        backoff: Backoff = Backoff(),
        concurrency: int = CONCURRENCY,
        rescan: float = RESCAN_INTERVAL,
        held: Callable[[dict[str, Any]], bool] = lambda meta: False,
    ) -> None:
        """``store``: the service's current store (its metadata writes reach the index); ``held``: whether
        an ended recording stays local for now — its call is still up and may play it back from the file
        (``record_call_url``): the service adds it with :meth:`add` when the call ends."""
        self.bucket = bucket
        self._store = store
        self.queue = UploadQueue(backoff)
        self.concurrency = concurrency
        self.rescan = rescan
        self.held = held
        self.state = UploaderState.OK
        self.uploaded = 0
        self.failures = 0
        #: Told of each recording uploaded (its metadata, ``storage`` set): metrics, tests.
        self.on_uploaded: Callable[[dict[str, Any]], None] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def store(self) -> RecordingStore:
        return self._store()

    # --- queueing --------------------------------------------------------------------------------

    def add(self, recording_id: str) -> bool:
        """A recording ended: upload it (now, or when the storage is back). False: already queued (or
        the queue is full: the next scan finds it)."""
        if not self.queue.add(recording_id, _now()):
            return False
        self._wake.set()
        return True

    def on_metadata(self, meta: dict[str, Any]) -> None:
        """The store's hook: a metadata write that ends a recording queues it."""
        ended = meta.get("state") != "recording" and meta.get("end_reason") is not None
        if ended and not meta.get("storage") and not self.held(meta):
            self.add(str(meta["recording_id"]))

    async def scan(self) -> int:
        """Queue every ended recording of the spool (a crash's, a full queue's); returns how many were
        not queued yet. The files are read on a thread: a spool grown large while the storage was down
        never stalls the calls."""
        with hold():
            found = await asyncio.to_thread(self._spooled)
        return sum(self.add(recording_id) for recording_id, meta in found if not self.held(meta))

    def _spooled(self) -> list[tuple[str, dict[str, Any]]]:
        """The ended recordings of the spool, with their metadata."""
        found = []
        for path in self.store.root.glob("*.json"):
            recording_id = path.stem
            try:
                meta = self.store.read_metadata(recording_id)
            except (OSError, ValueError):
                continue
            ok = isinstance(meta, dict) and meta.get("recording_id") == recording_id
            if ok and meta.get("state") != "recording":
                found.append((recording_id, meta))
        return found

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Scan the spool (now and every ``rescan`` seconds) and upload what is queued."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._scans())]
        self._tasks += [loop.create_task(self._run()) for _ in range(self.concurrency)]

    async def _scans(self) -> None:
        found = await self.scan()
        if found:
            log.info("uploads: %d recording(s) in the spool to upload to %s", found, self.bucket.url)
        while True:
            await asyncio.sleep(self.rescan)
            await self.scan()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop uploading, after up to ``grace`` seconds for what is queued while uploads succeed (not
        while the storage fails: those wait for the next start). An upload cut off is done again from
        the spool at the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._tasks and self.queue and self.state is UploaderState.OK and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.queue:
            log.info("stopping: %d recording(s) wait in the spool for the next start", len(self.queue))
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            recording_id = self.queue.take(now)
            if recording_id is None:
                due = self.queue.next_due()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if due is None else max(0.0, due - now))
                continue
            await self._attempt(recording_id)

    async def _attempt(self, recording_id: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcome = await self.upload(recording_id)
        except Exception as e:  # the storage's refusal, a disk error, anything: it waits in the spool
            self.failures += 1
            delay = self.queue.failed(recording_id, loop.time())
            if self.state is UploaderState.OK or self.failures % 100 == 0:
                log.warning(
                    "upload of recording %s failed (%s); it stays in the spool, tried again in %g s "
                    "(%d waiting, %d failure(s) so far)",
                    recording_id,
                    e if isinstance(e, StorageError | OSError) else f"{type(e).__name__}: {e}",
                    delay,
                    len(self.queue),
                    self.failures,
                )
            self.state = UploaderState.FAILING
            return
        self.queue.done(recording_id)
        if outcome == "uploaded" and self.state is UploaderState.FAILING:
            log.warning("uploads to %s work again (%d waiting)", self.bucket.url, len(self.queue))
            self.state = UploaderState.OK
        log.debug("recording %s: %s", recording_id, outcome)

    # --- one upload ------------------------------------------------------------------------------

    async def upload(self, recording_id: str) -> Outcome:
        """Upload one spooled recording, confirm it, then remove it from the spool. StorageError or
        OSError: it stays in the spool."""
        with hold():  # (on the tests' virtual clock, time waits for the disk)
            held = await asyncio.to_thread(self._hold, recording_id)
        if isinstance(held, str):
            return held
        try:
            return await self._send(recording_id, held)
        finally:
            os.close(held.fd)  # the lock goes with it

    async def _send(self, recording_id: str, held: _Held) -> Outcome:
        meta, bucket = held.meta, self.bucket
        audio_key = None
        if held.audio is not None:
            audio_key = held.audio.name
            attributes = {"Content-Type": MEDIA_TYPES.get(held.audio.suffix[1:], "application/octet-stream")}
            await bucket.put_file(audio_key, held.audio, {**attributes, "sha256": held.sha256})
            size = await bucket.size_of(audio_key)
            if size != held.size:
                raise StorageError(f"{bucket.url.url_of(audio_key)}: {size} bytes stored of {held.size} sent")
        if held.deleted():
            await self._remove_objects(recording_id, audio_key)
            return "deleted"
        meta["storage"] = {
            "audio": bucket.url.url_of(audio_key) if audio_key else None,
            "size": held.size,
            "sha256": held.sha256,
            "sealed": held.sealed,
            "uploaded_at": round(time.time(), 3),
        }
        document = {k: meta.get(k) for k in self.store.fields}
        await bucket.put_bytes(f"{recording_id}.json", _json(document), {"Content-Type": "application/json"})
        if held.deleted():
            await self._remove_objects(recording_id, audio_key)
            return "deleted"
        self.store.write_metadata(meta)  # the index learns where it is now
        self.store.remove_local(recording_id, str(meta.get("format")))
        self.uploaded += 1
        if self.on_uploaded is not None:
            self.on_uploaded(document)
        return "uploaded"

    def _hold(self, recording_id: str) -> _Held | Outcome:
        """Lock a spooled recording and hash its audio (in a thread: the file may be large)."""
        store = self.store
        try:
            meta = store.read_metadata(recording_id)
        except FileNotFoundError:
            return "gone"
        except ValueError as e:  # not JSON: left in the spool for someone to look at, not retried
            log.error("recording %s not uploaded: its metadata file cannot be read (%s)", recording_id, e)
            return "unreadable"
        audio: Path | None = store.audio_path(recording_id, str(meta.get("format")))
        assert audio is not None
        try:
            fd = os.open(audio, os.O_RDONLY)
        except FileNotFoundError:
            if part_path(audio).exists():
                return "live"  # an MP4 still being written (or left by a crash: recovery's)
            if isinstance(meta.get("storage"), dict) and meta["storage"].get("audio"):
                # Uploaded, and the process killed between the removal of its audio and of this file:
                # the bucket holds both. (Sent again as a recording without audio, it would have its
                # metadata in the bucket and the index say it has none.)
                store.remove_local(recording_id, str(meta.get("format")))
                return "gone"
            try:  # a recording without audio (it failed at its start): its metadata alone
                audio, fd = None, os.open(store.meta_path(recording_id), os.O_RDONLY)
            except FileNotFoundError:
                return "gone"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return "busy"  # written, or uploaded by another worker
        try:
            meta = store.read_metadata(recording_id)  # as it stands now that we hold it
            if meta.get("state") == "recording":
                os.close(fd)
                return "live"
            digest, size = hashlib.sha256(), 0
            if audio is not None:
                while block := os.read(fd, READ_BLOCK):
                    digest.update(block)
                    size += len(block)
        except FileNotFoundError:
            os.close(fd)
            return "gone"  # uploaded (or deleted) by another worker meanwhile
        except BaseException:
            os.close(fd)
            raise
        return _Held(fd, meta, audio, size, digest.hexdigest(), audio is not None and is_sealed(audio))

    async def _remove_objects(self, recording_id: str, audio_key: str | None) -> None:
        log.info("recording %s was deleted during its upload: its objects are removed", recording_id)
        for key in (audio_key, f"{recording_id}.json"):
            if key is not None:
                await self.bucket.delete(key)

    def stats(self) -> dict[str, Any]:
        return {"state": self.state.value, "waiting": len(self.queue), "uploaded": self.uploaded,
                "failures": self.failures}  # fmt: skip


def _now() -> float:
    return asyncio.get_running_loop().time()


def _json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()
