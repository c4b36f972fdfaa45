"""``swml serve --workers N``: the parent process as a supervisor of N worker processes.

The parent runs no calls. It forks the workers (each runs a whole service on the shared SIP port), and:

- starts a worker that died outside a stop again in its place — same index, so the same RTP port slice
  and outbound port — at once after one that ran a while (killed, crashed mid-way), after 1, 2, 4 … 60 s
  after each one that died soon after its start (:class:`Backoff`), so a worker that cannot start does
  not spin;
- gives up when a worker of the first start exits before it was ready (an unusable script, a port
  taken): the others are stopped and the parent exits with that worker's code, as one process would;
- passes SIGTERM and SIGINT on to every worker (a worker takes a second one as "hang up now");
- exits once every worker has, with the first worker's failure code, else 0.

A worker started again takes its place's index, and what goes with it: the RTP slice, the outbound port,
and the relay socket through which the other workers hand it the datagrams of the shared SIP port that
are its own (transports/sip/relay.py: opened by cli.py in this process before the first fork and kept
open here, so the new worker inherits the very socket its predecessor read).

A worker dies with the parent (PR_SET_PDEATHSIG: the kernel sends it SIGKILL), so a ``kill -9`` of the
node leaves no orphan holding the SIP port. A worker tells the parent it is ready by writing one byte to
a pipe (``ready_fd``).

What this does not do: restart the parent (systemd's ``Restart=`` does), or tell the new worker which
calls the dead one had (its recordings are repaired by the new worker's start-up recovery, which skips
every recording a live worker still holds).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

#: A worker that dies sooner than this (seconds) after its start is taken for one that cannot start.
STABLE_AFTER = 10.0
#: The wait before starting such a worker again: RESTART_FIRST, doubled after each, up to RESTART_MAX.
RESTART_FIRST, RESTART_MAX = 1.0, 60.0
#: The exit code of a worker whose code raised (a bug): a traceback is on stderr.
EXIT_SOFTWARE = 70
#: Linux's prctl option that has the kernel signal a process when its parent dies.
PR_SET_PDEATHSIG = 1
#: The signals that stop the service (passed on to every worker).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

#: The worker's body: (its index, the pipe end to write one byte to once ready) → its exit code.
WorkerMain = Callable[[int, int], int]


class Backoff:
    """How long to wait before starting a dead worker again (see the module docstring)."""

    def __init__(self) -> None:
        #: Deaths in a row that came soon after a start.
        self.quick = 0

    def delay(self, lived: float) -> float:
        if lived >= STABLE_AFTER:
            self.quick = 0
            return 0.0
        self.quick += 1
        return min(RESTART_MAX, RESTART_FIRST * 2.0 ** (self.quick - 1))


class SlotState(StrEnum):
    STARTING = "starting"  # forked, not ready yet
    RUNNING = "running"  # ready: it takes calls
    WAITING = "waiting"  # dead; started again at ``due``
    DONE = "done"  # exited during the stop (or never to be started again)


@dataclass
class Slot:
    """One worker's place: its index stays, its process changes."""

    index: int
    state: SlotState = SlotState.WAITING
    pid: int = 0
    started: float = 0.0
    due: float = 0.0
    #: Processes started in this place so far (the first start failing is fatal).
    starts: int = 0
    #: The read end of the current process's ready pipe (-1: none).
    ready: int = -1
    code: int = 0


def describe(status: int) -> str:
    """A wait status as a log line says it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(sig).name}"
        return f"killed by signal {sig}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def exit_code(status: int) -> int:
    """A worker's wait status as the parent's exit code (a signal: 128 + its number, as a shell says)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Supervisor:
    """See the module docstring. ``clock``: seconds, monotonic."""

    def __init__(self, workers: int, main: WorkerMain, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.main = main
        self.clock = clock
        self.slots = [Slot(i) for i in range(workers)]
        self.backoff = {slot.index: Backoff() for slot in self.slots}
        self.stopping = False
        #: The exit code once a worker of the first start failed (the others are stopped).
        self.failed: int | None = None
        self._selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._wake_r, self._wake_w = -1, -1

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        for slot in self.slots:
            self._start(slot)
        while any(slot.state is not SlotState.DONE for slot in self.slots):
            self._wait()
            self._handle_signals()
            self._start_due()
        signal.set_wakeup_fd(-1)
        if self.failed is not None:
            return self.failed
        return next((slot.code for slot in self.slots if slot.code), 0)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait(self) -> None:
        due = [slot.due for slot in self.slots if slot.state is SlotState.WAITING]
        timeout = max(0.0, min(due) - self.clock()) if due else None
        for key, _ in self._selector.select(timeout):
            fd = int(key.fd)
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 512)  # (the signals themselves are in _signals)
                continue
            slot = next((s for s in self.slots if s.ready == fd), None)
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(fd, 1)
            if slot is not None and data and slot.state is SlotState.STARTING:
                slot.state = SlotState.RUNNING
            self._close_ready(slot, fd)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                self._reap()
            else:
                self.stop(signum)

    # --- workers --------------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        parent = os.getpid()
        try:
            read, write = os.pipe()
        except OSError as e:
            self._not_started(slot, e)
            return
        # The new worker is born with the stop signals blocked and keeps them so until its own handlers
        # are in place (cli's _serve unblocks them): a SIGTERM passed on just after the fork waits for
        # them instead of killing it halfway through its start (exit 143) or reaching the parent's.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory: tried again later, as a quick death would be
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            os.close(read)
            os.close(write)
            self._not_started(slot, e)
            return
        if pid == 0:
            os._exit(self._child(slot, read, write, parent))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        os.close(write)
        slot.pid, slot.started, slot.ready = pid, self.clock(), read
        slot.state = SlotState.STARTING
        slot.starts += 1
        self._selector.register(read, selectors.EVENT_READ)
        if slot.starts > 1:
            log.warning("worker %d started again: pid %d", slot.index, pid)

    def _not_started(self, slot: Slot, error: OSError) -> None:
        delay = self.backoff[slot.index].delay(lived=0.0)
        slot.state, slot.due = SlotState.WAITING, self.clock() + delay
        why = error.strerror or error
        log.error("worker %d could not be started (%s): trying again in %g s", slot.index, why, delay)

    def _child(self, slot: Slot, read: int, write: int, parent: int) -> int:
        """The new worker's side of the fork: none of the parent's signal handling (the stop signals still
        blocked: see _start), and death with it."""
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.close(read)
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, *(s.ready for s in self.slots if s.ready >= 0)):
                with contextlib.suppress(OSError):
                    os.close(fd)
            die_with_parent(parent)
            return self.main(slot.index, write)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            return EXIT_SOFTWARE

    def _close_ready(self, slot: Slot | None, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        if slot is not None and slot.ready == fd:
            slot.ready = -1

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            live = (SlotState.STARTING, SlotState.RUNNING)
            slot = next((s for s in self.slots if s.pid == pid and s.state in live), None)
            if slot is not None:
                self._ended(slot, status)

    def _ended(self, slot: Slot, status: int) -> None:
        was_ready = slot.state is SlotState.RUNNING
        if slot.ready >= 0:
            self._close_ready(slot, slot.ready)
        lived = self.clock() - slot.started
        how = describe(status)
        if self.stopping:
            slot.state, slot.code = SlotState.DONE, exit_code(status)
            return
        if slot.starts == 1 and not was_ready:  # the first start: a configuration that cannot run
            log.error("worker %d (pid %d) %s before it was ready: stopping", slot.index, slot.pid, how)
            slot.state = SlotState.DONE
            self.failed = exit_code(status) or 1
            self.stop(signal.SIGTERM)
            return
        delay = self.backoff[slot.index].delay(lived)
        slot.state, slot.due = SlotState.WAITING, self.clock() + delay
        log.warning(
            "worker %d (pid %d) %s after %.1f s: starting a new one%s",
            slot.index,
            slot.pid,
            how,
            lived,
            f" in {delay:g} s" if delay else "",
        )

    def _start_due(self) -> None:
        if self.stopping:
            return
        now = self.clock()
        for slot in self.slots:
            if slot.state is SlotState.WAITING and slot.due <= now:
                self._start(slot)

    def stop(self, signum: int) -> None:
        """Pass a stop on to every worker (again at each signal: a worker takes a second one as "hang
        up now"); no worker is started again from now on."""
        self.stopping = True
        for slot in self.slots:
            if slot.state is SlotState.WAITING:
                slot.state = SlotState.DONE
            elif slot.state in (SlotState.STARTING, SlotState.RUNNING):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); a parent already gone (it died
    before the call) ends this process now. Elsewhere, nothing: the worker outlives a killed parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:
        os._exit(0)
