"""``--retention-days N``: recordings that ended more than N days ago are deleted — audio, metadata and
index row, from every backend they are in — by a sweep that runs in each worker of the service.

A pass asks the index for the oldest recordings that ended before the cut-off (by ``end_time``), at
most :data:`BATCH`, and deletes each through the service's one delete (the one ``DELETE
/api/recordings/{id}`` uses). A full batch is followed by the next pass after :data:`BUSY_PAUSE`, so a
first run over a large backlog goes on in small steps between calls rather than stalling the worker;
otherwise the next pass is :data:`INTERVAL` later. A recording that is live (no end time, or one a
worker still records) is never deleted. With local storage a node deletes only the recordings it wrote
(no other node's disk is within its reach); with object storage, any. Two workers or nodes deleting
one recording at once is harmless: each step of a delete is idempotent. A deleted recording is gone:
its API routes and its signed URL answer 404, as for an id never seen (no tombstones are kept, so
410 could not be told apart). The same pass deletes this node's calls that ended before the cut-off:
their event logs (which hold SIP headers) and index rows — and the event logs no row names any more (an
index lost and rebuilt, or restored from an old backup, keeps only the recordings), by the time each was
last written, so no log outlives the period for want of its row.

No per-recording override: the metadata is the engine's account of what was recorded, and SWML's
``record_call`` has no parameter for keeping a recording longer; an override would need one, or an
API to set it, not a field edited in a file.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from swml_engine.service.index import Index, IndexUnavailable

log = logging.getLogger(__name__)

DAY = 86400.0
#: Recordings one pass deletes at most.
BATCH = 100
#: Seconds between passes when the last one found less than a batch (or a quarter of the retention
#: period, when that is shorter).
INTERVAL = 600.0
#: Seconds before the next pass when the last one found a full batch (a backlog).
BUSY_PAUSE = 1.0

Delete = Callable[[dict[str, Any]], Awaitable[None]]
DeleteCall = Callable[[str], Awaitable[None]]
#: This node's event logs last written before a time (a Unix time), oldest first, at most a number:
#: their call ids.
StaleLogs = Callable[[float, int], Awaitable[list[str]]]


def stale_call_logs(directory: Path, before: float, limit: int, live: Collection[str]) -> list[str]:
    """The call ids of the event logs in ``directory`` last written before ``before``, oldest first, at
    most ``limit``, but for ``live`` calls (a file system call per log: run it on a thread)."""
    found = []
    for path in directory.glob("*.jsonl"):
        try:
            written = path.stat().st_mtime
        except FileNotFoundError:  # (deleted meanwhile)
            continue
        if written < before and path.stem not in live:
            found.append((written, path.stem))
    return [call_id for _, call_id in heapq.nsmallest(limit, found)]


class Retention:
    def __init__(
        self,
        index: Index,
        delete: Delete,
        is_live: Callable[[str], bool],
        days: float,
        *,
        own: bool,
        batch: int = BATCH,
        interval: float = INTERVAL,
        busy_pause: float = BUSY_PAUSE,
        delete_call: DeleteCall | None = None,
        call_logs: StaleLogs | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``delete``: removes one recording everywhere (raises when a backend refuses); ``is_live``: a
        worker records it now; ``own``: only this node's recordings (local storage); ``delete_call``:
        removes one of this node's ended calls (its event log and index row); ``call_logs``: this node's
        event logs not written since a time (those no index row names are deleted too)."""
        if days <= 0:
            raise ValueError("retention needs a number of days above 0")
        self.index = index
        self.delete = delete
        self.delete_call = delete_call
        self.call_logs = call_logs
        self.is_live = is_live
        self.keep = days * DAY
        self.own = own
        # At least four passes per retention period, so a recording goes within a quarter of it past
        # its time (a short period — a fraction of a day — is swept that much more often).
        self.batch, self.interval, self.busy_pause = batch, min(interval, max(self.keep / 4, 0.1)), busy_pause
        self.clock, self.sleep = clock, sleep
        #: Recordings and calls deleted since the start.
        self.deleted = 0
        #: The last pass found a full batch: more may be past their time.
        self.backlog = False

    async def sweep(self) -> int:
        """One pass; returns how many recordings and calls it deleted (:attr:`backlog`: more may wait)."""
        cutoff = self.clock() - self.keep
        found = await self.index.ended_before(cutoff, limit=self.batch, own=self.own)
        recordings = {
            str(meta.get("recording_id")): meta
            for meta in found
            # (an end time but still recorded: an index behind; its next write corrects it)
            if meta.get("end_reason") is not None and not self.is_live(str(meta.get("recording_id")))
        }
        deleted = await self._each("recording", list(recordings), lambda key: self.delete(recordings[key]))
        self.backlog = len(found) >= self.batch
        if self.delete_call is not None:
            calls = await self.index.calls_ended_before(cutoff, limit=self.batch)
            deleted += await self._each("call", calls, self.delete_call)
            self.backlog = self.backlog or len(calls) >= self.batch
            if self.call_logs is not None:
                # (a log whose call has a row goes with its row, above: the call's start decides)
                stale = await self.call_logs(cutoff, self.batch)
                unnamed = [c for c in stale if c not in calls and await self.index.call(c) is None]
                deleted += await self._each("call", unnamed, self.delete_call)
                self.backlog = self.backlog or (len(stale) >= self.batch and bool(unnamed))
        self.deleted += deleted
        return deleted

    async def _each(self, what: str, keys: list[str], delete: Callable[[str], Awaitable[None]]) -> int:
        """Delete each; one a backend refuses is kept, tried again in the next pass."""
        failed: list[str] = []
        for key in keys:
            try:
                await delete(key)
            except Exception as e:
                failed.append(f"{key} ({e})")
        if failed:
            log.error(
                "retention: %d %s(s) could not be deleted, tried again in the next pass: %s",
                len(failed),
                what,
                "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""),
            )
        done = len(keys) - len(failed)
        if done:
            log.info("retention: %d %s(s) older than %g days deleted", done, what, self.keep / DAY)
        return done

    async def run(self) -> None:
        """Passes until cancelled (the service stopping)."""
        while True:
            try:
                deleted = await self.sweep()
            except IndexUnavailable as e:
                log.warning("retention: pass skipped, %s", e)
                deleted = 0
            # A backlog goes on soon, in small steps; a batch of recordings that cannot go waits.
            await self.sleep(self.busy_pause if self.backlog and deleted else self.interval)
