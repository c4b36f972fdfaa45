"""`swml serve --workers N` as a supervisor: a worker killed with SIGKILL is started again in its place
while the other goes on (its recorded call and recording untouched), the dead one's unfinished recording
is repaired by the new worker; the calls of a worker whose callers the kernel hashes to another after a
restart still end with 200 to their BYE (relayed); workers die with a killed parent; a worker that cannot start stops the
start with its exit code; the backoff between restarts."""

from __future__ import annotations

import os
import re
import signal
import socket
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from interop.peers import PATIENCE, Engine, SipPeer, event_time, read_jsonl, sdp_offer, to_tag, wait_for
from swml_engine.service.supervisor import RESTART_MAX, STABLE_AFTER, STOP_SIGNALS, Backoff, Supervisor

EngineFactory = Callable[..., Engine]

RECORDED_CALL = (
    "version: 1.0.0\nsections:\n  main:\n    - answer\n"
    "    - record_call: {format: wav, stereo: true}\n    - play: {urls: ['silence:60']}\n"
)
#: A call's first log line: the worker's pid, the engine's call id, the SIP Call-ID.
CALL_LINE = re.compile(r"^\S+ \S+ (\d+) INFO \[[^\]]*\] swml_engine\.service\.server: call (\S+) \((\S+)\) from", re.M)


def call_workers(eng: Engine) -> dict[str, tuple[int, str]]:
    """SIP Call-ID → (the pid of the worker running the call, the engine's call id), from the log."""
    return {sip: (int(pid), call_id) for pid, call_id, sip in CALL_LINE.findall(eng.log())}


def recording_of(eng: Engine, call_id: str) -> dict[str, object] | None:
    return next((m for m in eng.recordings() if m.get("call_id") == call_id), None)


def call_until(eng: Engine, peers: list[SipPeer], done: Callable[[], bool], rtp: int) -> None:
    """Recorded calls from new source ports (the kernel hashes sources to workers) until ``done``."""
    for n in range(16):
        peer = SipPeer(eng.port)
        peers.append(peer)
        peer.request("INVITE", 1, body=sdp_offer(rtp + 2 * n))
        assert peer.wait(lambda p=peer: 200 in p.statuses("INVITE")), peer.messages
        peer.request("ACK", 1, to_tag=to_tag(peer.final()))
        assert wait_for(lambda p=peer: p.call_id in call_workers(eng), PATIENCE), eng.log()[-2000:]
        call_id = call_workers(eng)[peer.call_id][1]
        assert wait_for(lambda c=call_id: recording_of(eng, c) is not None, PATIENCE)
        if done():
            return
    raise AssertionError(f"16 callers and still not: {call_workers(eng)}")


def restarted(eng: Engine, victim: int, ready: int) -> int:
    """Kill worker ``victim``; the pid of the worker started in its place (``ready``: ready lines by then)."""
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: f"(pid {victim}) killed by SIGKILL" in eng.log(), PATIENCE), eng.log()[-3000:]
    assert wait_for(lambda: eng.log().count(" ready,") == ready, PATIENCE), eng.log()[-3000:]
    since = eng.log().split(f"(pid {victim}) killed by SIGKILL", 1)[1]
    return int(re.findall(r"worker \d started again: pid (\d+)", since)[0])


def hang_up(eng: Engine, peers: list[SipPeer], workers: dict[str, tuple[int, str]]) -> None:
    """The callers hang up: each BYE gets 200, each recording is finished whole (its duration the time
    the call was recorded, its WAV that long)."""
    for peer in peers:
        peer.request("BYE", 2, to_tag=to_tag(peer.final()))
        assert peer.wait(lambda p=peer: 200 in p.statuses("BYE")), (peer.messages, eng.log()[-3000:])
    for peer in peers:
        call_id = workers[peer.call_id][1]
        assert wait_for(lambda c=call_id: (recording_of(eng, c) or {}).get("state") == "finished", PATIENCE)
        meta = recording_of(eng, call_id)
        assert meta is not None and meta["end_reason"] == "hangup", meta
        log_path = eng.data / "calls" / f"{call_id}.jsonl"
        # (the recording's end may be written a moment before the call's)
        assert wait_for(lambda p=log_path: any(e.get("state") == "ended" for e in read_jsonl(p)), PATIENCE)
        events = read_jsonl(log_path)
        covered = event_time(events, "call.state", state="ended") - event_time(
            events, "record.state", state="recording"
        )
        assert float(str(meta["duration"])) == pytest.approx(covered, abs=0.5), (meta, covered)
        with wave.open(str(Path(str(meta["url"]).removeprefix("file://")))) as w:  # whole, playable
            assert w.getnframes() / w.getframerate() == pytest.approx(float(str(meta["duration"])), abs=0.05)


def test_a_killed_worker_is_started_again_and_the_other_workers_call_and_recording_go_on(
    engine: EngineFactory,
) -> None:
    eng = engine(RECORDED_CALL, "--workers", "2")
    assert wait_for(lambda: eng.log().count(" ready,") == 2, PATIENCE), eng.log()
    peers: list[SipPeer] = []
    try:
        call_until(eng, peers, lambda: len({pid for pid, _ in call_workers(eng).values()}) == 2, 31400)
        workers = call_workers(eng)
        victim = workers[peers[0].call_id][0]
        other = next(pid for pid, _ in workers.values() if pid != victim)
        survivors = [p for p in peers if workers[p.call_id][0] == other]

        new = restarted(eng, victim, ready=3)
        assert new not in (victim, other)
        for pid, call_id in workers.values():  # the dead worker's recordings: repaired by the new one
            meta = recording_of(eng, call_id)
            assert meta is not None
            if pid == victim:
                assert (meta["state"], meta["end_reason"]) == ("finished", "recovered"), meta
            else:  # the live worker's: left alone, still recording
                assert meta["state"] == "recording", meta
        assert f"{new} WARNING [-] swml_engine.service.server: recovered recording" in eng.log()
        hang_up(eng, survivors, workers)  # the calls on the other worker went on: they end as usual

        # The case that broke: the new worker's socket joined the SIP port's group last, so the other's is
        # now the first, and when the first dies the kernel moves the last into its place — every caller
        # of the new worker is hashed to the one started next. Their BYEs are handed back to the new one.
        call_until(eng, peers, lambda: new in {pid for pid, _ in call_workers(eng).values()}, 31500)
        workers = call_workers(eng)
        survivors = [p for p in peers if workers[p.call_id][0] == new]
        assert restarted(eng, other, ready=4) not in (victim, other, new)
        hang_up(eng, survivors, workers)
        assert "handed on to worker" in eng.log(), eng.log()[-3000:]
    finally:
        for peer in peers:
            peer.close()


def worker_pids(parent: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie whose threads have all exited (a killed process's leader turns
    zombie while its other threads still run their exit, holding its sockets until the last one ends)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] == "Z" and fields[17] == "1"  # state, num_threads


def can_bind_udp(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_workers_die_with_a_killed_parent_and_leave_the_port_free(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text(RECORDED_CALL)
    eng = Engine(script, tmp_path / "data", extra=["--workers", "2"]).start()
    try:
        assert wait_for(lambda: eng.log().count(" ready,") == 2, PATIENCE), eng.log()
        assert eng.proc is not None
        children = worker_pids(eng.proc.pid)
        assert len(children) == 2
        eng.proc.kill()  # kill -9 of the node
        eng.proc.wait()
        assert wait_for(lambda: all(gone(pid) for pid in children), PATIENCE)
        # no orphan holds the SIP port (an orphan would for ever; the kernel frees it as the last
        # thread of each worker exits)
        assert wait_for(lambda: can_bind_udp(eng.port), PATIENCE)
    finally:
        eng.stop()


def test_a_worker_that_cannot_start_stops_the_start_with_its_exit_code() -> None:
    def main(index: int, ready: int) -> int:
        if index == 1:
            return 2  # e.g. a port taken: never ready
        os.write(ready, b"!")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # (as a worker does, its handlers set)
        signal.pause()  # until the supervisor stops it (SIGTERM)
        return 0

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
    try:
        assert Supervisor(2, main).run() == 2
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_a_worker_is_born_with_the_stop_signals_blocked_until_its_handlers_are_set() -> None:
    """A SIGTERM passed on just after a worker is forked (a stop as it is started again) waits for the
    worker's own handlers instead of killing it halfway through its start (seen as exit 143)."""

    def main(index: int, ready: int) -> int:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        return 2 if blocked >= STOP_SIGNALS else 3  # never ready: the start stops with this code

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
    try:
        assert Supervisor(1, main).run() == 2
        assert not STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the parent's: unblocked
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_restarts_wait_longer_after_each_quick_death_and_not_after_a_long_run() -> None:
    backoff = Backoff()
    assert backoff.delay(lived=3600) == 0  # killed after running a while: at once
    quick = [backoff.delay(lived=0.5) for _ in range(8)]
    assert quick == [1, 2, 4, 8, 16, 32, RESTART_MAX, RESTART_MAX]
    assert backoff.delay(lived=STABLE_AFTER) == 0  # it ran: the count starts over
    assert backoff.delay(lived=0.5) == 1
