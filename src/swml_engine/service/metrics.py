"""``/metrics``: the service's figures in Prometheus's text format (prometheus-client).

Where the figures come from, so that no call pays for them beyond an integer add:

* the figures the parts already keep, read by :meth:`ServiceMetrics.sample` once a second and just
  before a scrape: live calls, far legs and recordings (from the service's tables), SIP messages by
  method and status (each UserAgent's :class:`~swml_engine.transports.sip.counts.MessageCounts`), RTP
  packets received, sent, late and lost and frames played as silence (every stream's own counters:
  :data:`~swml_engine.transports.sip.rtpstream.TALLY`), calls refused;
* a call's events, through one sink per call (:meth:`ServiceMetrics.call_sink`): a call's end and its
  reason, a recording's end, state and size, each status callback attempt — a few per call;
* the media ticker's lateness, once per tick of each loop (:attr:`MediaTicker.on_lateness`);
* the uploader's queue and failures (it counts them), each upload it confirms through its
  ``on_uploaded`` hook (:class:`UploadFigures`).

With ``--workers N`` the scrape lands on any worker, and must show the whole service: prometheus-client's
multiprocess mode, one directory (``DIR/metrics``, emptied by the parent at start, before the workers
fork; :func:`use_directory`) where each process keeps its values in memory-mapped files, and the
scrape adds every file up. Chosen over asking each worker on its private port: a worker that is busy
or stuck cannot slow or fail the scrape (nothing is asked of it), and the counters of a worker that
died (``kill -9``, restarted by the parent) stay in the sums, so the service's counters never go
backwards — Prometheus would take a drop for a reset and count everything again. Gauges are per live
process (``livesum``, the upload queue ``livemax``): at the next scrape, a process that is gone has its
gauges' files removed and its counters and histograms folded into one file per kind (:func:`_tidy`).
The price: another worker's figures are as of its last sample (at most a second old).

What a scrape costs is bounded whoever sends it: it is rendered at most once per :data:`RENDER_EVERY`
(later scrapes get the same bytes), from a bounded set of labels (SIP methods outside the known ones
count as ``other``) and of files (per live process and kind of metric, plus one folded file per kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from swml_engine.media.clock import MediaTicker
from swml_engine.transports.sip.counts import MessageCounts
from swml_engine.transports.sip.rtpstream import RtpFigures

log = logging.getLogger(__name__)

# No ``*_created`` series beside each counter: the time a worker started counting is no figure of the
# service (and multiprocess mode leaves them out anyway).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: prometheus-client reads its multiprocess directory from this variable.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: A scrape is rendered at most this often (seconds); scrapes in between get the last rendering.
RENDER_EVERY = 1.0
#: How often each worker writes the figures it reads (seconds).
SAMPLE_EVERY = 1.0
#: Upper bounds (seconds) of the media tick lateness histogram: 20 ms is one frame late, 200 ms is where
#: ticks are skipped (MediaTicker.MAX_LATE).
LATENESS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: The recording states a recording ends in (its final ``record.state``).
FINAL_RECORDING_STATES = frozenset({"finished", "no_input", "error"})
#: Every metric's name starts so.
PREFIX = "swml_"

#: A file of one process's values: its kind (counter, histogram, gauge_livesum ...) and the process.
_PROCESS_FILE = re.compile(r"^([a-z_]+?)_(\d+)\.db$")
#: Where the counters and histograms of processes that are gone are added up (``counter_folded.db``).
FOLDED = "folded"
TIDY_LOCK = ".tidy.lock"

#: Bytes kept on disk for each of a process's files, by kind, and for the folded ones: every block
#: allocated before the file is mapped. A page of a sparse file that the disk has no room for is a SIGBUS
#: at the first write to it, which kills the worker (a full disk, a spool grown while the storage was
#: down). Counters need ~200 KiB at most: every SIP status, 100-699, both ways, ~160 bytes a key (the
#: labels are bounded: counts.py); the other kinds hold a few dozen keys.
RESERVED = {"counter": 256 * 1024, "histogram": 64 * 1024, "gauge_livesum": 64 * 1024, "gauge_livemax": 64 * 1024}

#: Set by :func:`use_directory` in the parent before the workers fork (they inherit it).
_directory: Path | None = None


def use_directory(path: Path) -> None:
    """Keep the figures of every process in ``path`` (``--workers N``): emptied now (the figures of a
    previous run are not this run's), before any metric exists and before the workers fork."""
    global _directory
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    os.environ[MULTIPROC_VARIABLE] = str(path)
    # prometheus-client picks its value class from the variable when it is imported, which has
    # happened by now: pick again, as it would have.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _directory = path


def shared_directory() -> Path | None:
    """The multiprocess directory, or None when this process is the whole service."""
    return _directory


def _reserve(path: Path, size: int) -> None:
    """``path`` made at least ``size`` bytes long with every block allocated (prometheus-client maps a
    file as long as it finds it). OSError: no room."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        had = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, max(size, had))
        except OSError:
            if not had:  # (made here: an empty file would fail every scrape that reads it)
                path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


def _reserve_own(directory: Path) -> bool:
    """This process's files, before its first metric maps them; False (logged) when the disk has no
    room: its figures are then kept in memory alone, out of the scrapes, rather than risk the process."""
    try:
        for kind, size in RESERVED.items():
            _reserve(directory / f"{kind}_{os.getpid()}.db", size)
    except OSError as e:
        log.error(
            "metrics: no room for this worker's figures in %s (%s): /metrics leaves them out until it "
            "starts again with room",
            directory,
            e.strerror or e,
        )
        return False
    return True


@dataclass
class Snapshot:
    """What the service's tables say now (see :meth:`ServiceMetrics.sample`)."""

    calls: int = 0
    far_legs: int = 0
    refused: int = 0
    #: The state of each live recording (recording, paused).
    recording_states: Iterable[str] = ()
    #: Each SIP endpoint's message counts.
    sip: Iterable[MessageCounts] = ()
    rtp: RtpFigures = field(default_factory=RtpFigures)
    #: With --storage: recordings waiting in the uploader's queue, and its failed attempts so far.
    uploads_waiting: int | None = None
    upload_failures: int = 0


class UploadFigures:
    """The uploader's (``--storage``): its queue and its failures read at each sample (it counts them),
    each upload confirmed told by its ``on_uploaded`` hook (:meth:`uploaded`), with its size."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        # The longest queue, not the sum: each worker's scan of the shared spool queues every recording
        # waiting there, so while the storage is down every worker's queue holds the same backlog.
        self.queue = Gauge(
            PREFIX + "upload_queue",
            "Finished recordings waiting in the spool to be uploaded (the longest worker's queue)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.done = Counter(PREFIX + "uploads", "Recordings uploaded and confirmed", registry=registry)
        self.bytes = Counter(PREFIX + "upload_bytes", "Bytes of audio uploaded and confirmed", registry=registry)
        self.failures = Counter(
            PREFIX + "upload_failures", "Upload attempts that failed (each is retried)", registry=registry
        )

    def uploaded(self, document: Mapping[str, Any]) -> None:
        """One recording uploaded and confirmed (its metadata document, ``storage.size`` its audio's bytes)."""
        self.done.inc()
        storage = document.get("storage")
        size = storage.get("size") if isinstance(storage, Mapping) else None
        if isinstance(size, int) and size > 0:
            self.bytes.inc(size)


class ServiceMetrics:
    """One service's (one worker's) metrics; see the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = shared_directory()
        if self.directory is not None and not _reserve_own(self.directory):
            values.ValueClass = values.MutexValue  # (this process's metrics, made next, in memory)
        # Single process: a registry of our own (tests run several services in one process). Several:
        # the values go to the directory's files, whatever the registry.
        registry = CollectorRegistry(auto_describe=True)
        self._registry = registry
        self._clock = clock
        self._rendered: tuple[float, bytes] | None = None
        self._pushed: dict[tuple[Any, ...], float] = {}
        self._snapshot: Callable[[], Snapshot] | None = None
        self._sampler: asyncio.Task[None] | None = None
        gauge, counter = self._gauge, self._counter
        self.calls_live = gauge("calls_live", "Calls in progress")
        self.far_legs_live = gauge("far_legs_live", "Legs that connect placed, in progress")
        self.calls = counter("calls", "Calls ended, by end reason", "end_reason")
        self.refused = counter("calls_refused", "Calls refused 503 (--max-calls, media running late)")
        self.recordings_live = gauge("recordings_live", "Live recordings, by state", "state")
        self.recordings = counter("recordings", "Recordings ended, by final state", "state")
        self.recording_bytes = counter("recording_bytes", "Bytes of the recordings ended (their files' sizes)")
        self.uploads = UploadFigures(registry)
        self.callbacks = counter("status_callbacks_delivered", "Status callbacks delivered")
        self.callback_failures = counter(
            "status_callback_failures",
            "Status callback attempts that failed (error, timeout, non-2xx; retried) or were given up",
        )
        self.rtp_received = counter("rtp_packets_received", "RTP packets received")
        self.rtp_sent = counter("rtp_packets_sent", "RTP packets sent")
        self.rtp_late = counter("rtp_packets_late", "RTP packets that came after their audio was played (dropped)")
        self.rtp_packets_lost = counter(
            "rtp_packets_lost", "RTP packets the peers' sequence numbers say were sent and never came"
        )
        # (not a loss figure: a peer that sends nothing — on hold, silence suppression — adds a frame a tick)
        self.rtp_lost = counter(
            "rtp_frames_lost",
            "20 ms frames with no audio in time from the peer (packets lost or late, or none sent: hold, "
            "silence suppression), played and recorded as silence",
        )
        self.tick_lateness = Histogram(
            PREFIX + "media_tick_lateness_seconds",
            "How late each 20 ms media tick ran",
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self.sip_requests = counter("sip_requests", "SIP requests, by direction and method", "direction", "method")
        self.sip_responses = counter(
            "sip_responses", "SIP responses, by direction and status code", "direction", "code"
        )

    def _gauge(self, name: str, help: str, *labels: str) -> Gauge:
        """A gauge of this process's while it lives (with workers: summed over the live ones)."""
        return Gauge(PREFIX + name, help, labels, registry=self._registry, multiprocess_mode="livesum")

    def _counter(self, name: str, help: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, help, labels, registry=self._registry)

    # --- what the service calls ----------------------------------------------------------------------

    def start(self, snapshot: Callable[[], Snapshot]) -> None:
        """Observe the media ticks of this process; with other workers beside it, write ``snapshot()``
        every SAMPLE_EVERY (a scrape on another worker reads the files)."""
        self._snapshot = snapshot
        MediaTicker.on_lateness = self.tick_lateness.observe
        if self.directory is not None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_often())

    async def stop(self) -> None:
        """The last figures written (a stopping worker's calls end just before), the ticks let go."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._snapshot is not None:
            self.sample(self._snapshot())
        if MediaTicker.on_lateness == self.tick_lateness.observe:
            MediaTicker.on_lateness = None

    async def _sample_often(self) -> None:
        while self._snapshot is not None:
            await asyncio.sleep(SAMPLE_EVERY)
            try:
                self.sample(self._snapshot())
            except Exception:  # a figure that cannot be read must not end the sampling
                log.exception("metrics: sampling failed")

    def call_sink(self) -> Callable[[Mapping[str, Any]], None]:
        """An event sink for one call: its end, its recordings' ends, its status callbacks."""

        def on_event(event: Mapping[str, Any]) -> None:
            kind = event.get("type")
            if kind == "call.state" and event.get("state") == "ended":
                self.calls.labels(str(event.get("reason") or "unknown")).inc()
            elif kind == "record.state" and event.get("state") in FINAL_RECORDING_STATES:
                self.recordings.labels(str(event["state"])).inc()
                size = event.get("size")
                if isinstance(size, int) and size > 0:
                    self.recording_bytes.inc(size)
            elif kind == "callback":
                (self.callbacks if event.get("delivered") else self.callback_failures).inc()

        return on_event

    def sample(self, now: Snapshot) -> None:
        """Write what the service's tables and counters say now (gauges set, counters moved on)."""
        self.calls_live.set(now.calls)
        self.far_legs_live.set(now.far_legs)
        states: dict[str, int] = {"recording": 0, "paused": 0}
        for state in now.recording_states:
            states[state] = states.get(state, 0) + 1
        for state, count in states.items():
            self.recordings_live.labels(state).set(count)
        self._advance(self.refused, (), now.refused)
        if now.uploads_waiting is not None:
            self.uploads.queue.set(now.uploads_waiting)
        self._advance(self.uploads.failures, (), now.upload_failures)
        rtp = now.rtp
        for counter, value in (
            (self.rtp_received, rtp.received),
            (self.rtp_sent, rtp.sent),
            (self.rtp_late, rtp.late),
            (self.rtp_packets_lost, rtp.lost),
            (self.rtp_lost, rtp.concealed),
        ):
            self._advance(counter, (), value)
        requests_in: dict[str, int] = {}
        requests_out: dict[str, int] = {}
        responses_in: dict[int, int] = {}
        responses_out: dict[int, int] = {}
        for counts in now.sip:
            for mine, theirs in (
                (requests_in, counts.requests_in),
                (requests_out, counts.requests_out),
            ):
                for method, n in theirs.items():
                    mine[method] = mine.get(method, 0) + n
            for codes, seen in ((responses_in, counts.responses_in), (responses_out, counts.responses_out)):
                for code, n in seen.items():
                    codes[code] = codes.get(code, 0) + n
        for direction, methods in (("in", requests_in), ("out", requests_out)):
            for method, n in methods.items():
                self._advance(self.sip_requests, (direction, method), n)
        for direction, statuses in (("in", responses_in), ("out", responses_out)):
            for code, n in statuses.items():
                self._advance(self.sip_responses, (direction, str(code)), n)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type: rendered at most once per RENDER_EVERY."""
        at = self._clock()
        if self._rendered is not None and at - self._rendered[0] < RENDER_EVERY:
            return self._rendered[1], CONTENT_TYPE_LATEST
        if self._snapshot is not None:
            self.sample(self._snapshot())
        text = generate_latest(self._registry) if self.directory is None else _render_shared(self.directory)
        self._rendered = (at, text)
        return text, CONTENT_TYPE_LATEST

    # --- inside ----------------------------------------------------------------------------------------

    def _advance(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        """Move ``counter`` on to ``total`` (a figure that only grows, read from its keeper)."""
        key = (counter, labels)
        done = self._pushed.get(key, 0.0)
        if total > done:
            (counter.labels(*labels) if labels else counter).inc(total - done)
            self._pushed[key] = total


def _render_shared(directory: Path) -> bytes:
    """Every process's figures in ``directory``, added up. A scrape that finds no other scrape reading
    tidies first (:func:`_tidy`, under the lock alone); scrapes read under a shared lock, so none sees
    a dead worker's counts both in its file and in the folded one."""
    with (directory / TIDY_LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(lock, fcntl.LOCK_SH)  # waits for a tidy under way (a few files: milliseconds)
        else:
            try:
                _tidy(directory)
            except OSError as e:  # a full disk: the scrape goes on with the files as they are
                log.warning("metrics: cannot tidy the files of workers gone in %s: %s", directory, e)
            fcntl.flock(lock, fcntl.LOCK_SH)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def _tidy(directory: Path) -> None:
    """What processes that are gone (a worker killed and restarted) left in ``directory``: the files of
    their live gauges are removed (what a dead worker had live is not live); their counters and
    histograms, part of the service's totals, are added into one file per kind, so a worker restarted
    again and again does not make every scrape read more files. Each dead file is removed as soon as it
    is added in (a kill in between counts it twice, never loses it: a counter that went back would read
    as a restart of the service)."""
    dead: dict[str, list[Path]] = {}
    for path in directory.glob("*.db"):
        match = _PROCESS_FILE.match(path.name)
        if match is None or _alive(int(match.group(2))):
            continue
        kind = match.group(1)
        if kind.startswith("gauge_live"):
            mark_process_dead(int(match.group(2)), str(directory))  # type: ignore[no-untyped-call]
        elif kind in ("counter", "histogram"):
            dead.setdefault(kind, []).append(path)
    for kind, paths in dead.items():
        _reserve(directory / f"{kind}_{FOLDED}.db", RESERVED[kind])  # (OSError: no room, nothing folded)
        folded = MmapedDict(str(directory / f"{kind}_{FOLDED}.db"))  # type: ignore[no-untyped-call]
        try:
            for path in paths:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
                    total, _ = folded.read_value(key)  # type: ignore[no-untyped-call]
                    folded.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
                path.unlink()
        finally:
            folded.close()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: not ours, but not dead either
        return True
    return True
