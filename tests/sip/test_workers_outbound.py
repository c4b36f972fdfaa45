"""`connect` on `swml serve --workers 2`: each worker places its far legs from a port of its own, so the
far end's answers, its BYE and its re-INVITEs come back to the worker that placed the leg — on the
shared SIP port the kernel would hand them to whichever worker it hashes the far end's address to.

The engine runs as the process an operator starts; our own callers (each on its own port, so the kernel
spreads them over the workers) and far parties (far_party.py) run in the test's event loop. What is
checked is what a user would: every call bridges (each party hears the other), the far party's INVITE
names the port it came from in its Via and Contact, one port per worker; the far party's BYE is
answered 200 and ends its own bridge (the caller's script goes on, and hangs up); each call's events say
connected, then disconnected by the far party."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from conftest import read_jsonl, wait_for
from interop.peers import Engine, free_port
from swml_engine.service.server import Service
from swml_engine.transports.sip.endpoint import StreamFramer
from swml_engine.transports.sip.message import Request, Response, parse_message

from .far_party import FarParty, running_service, until
from .test_bridge_sip import CALLER_HZ, FAR_HZ, Caller, hears
from .test_outbound import Leg

#: Calls placed at first, and at most: more are placed, two at a time, until each worker has two (the
#: kernel spreads callers by their address, at random as far as a test can tell).
FIRST_CALLS, MAX_CALLS = 4, 16
#: The far party's port is the Request-URI's user part of each call (sip:<port>@...), so one script
#: reaches a far party of each call's own.
SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true, format: wav}}
    - connect: {{to: 'sip:bob@127.0.0.1:%{{call.sip_data.sip_req_user}}{tail}'}}
    - hangup
"""
#: A worker's line for each call it runs: "<date> <time> <pid> INFO [<call id>] ...: call <id> (<SIP Call-ID>) from".
CALL_LINE = re.compile(r"^\S+ \S+ (\d+) INFO \[[^\]]*\] swml_engine\.service\.server: call \S+ \((\S+)\) from ", re.M)


@dataclass(frozen=True)
class _Serving:
    """What a Caller needs of the service it calls: its SIP port."""

    sip_port: int


class WorkerCaller(Caller):
    """A caller whose INVITE's Request-URI names its own far party's port (the script connects there)."""

    def __init__(self, port: int, far: FarParty) -> None:
        super().__init__(cast("Service", _Serving(port)))
        self.far = far

    def _dialog(self) -> tuple[str, str, str, str]:
        target, ours, theirs, call_id = super()._dialog()
        if self.ok is None:
            user = f"sip:{self.far.port}@"
            target, theirs = target.replace("sip:record@", user), theirs.replace("sip:record@", user)
        return target, ours, theirs, call_id


class Calls:
    """The engine's process, and the calls placed through it: a caller and its far party each."""

    def __init__(self, tmp_path: Path, transport: str, *options: str) -> None:
        script = tmp_path / "connect.yaml"
        script.write_text(SCRIPT.format(tail=";transport=tcp" if transport == "tcp" else ""))
        self.transport = transport
        self.engine = Engine(script, tmp_path / "data", extra=["--workers", "2", *options])
        self.pairs: list[WorkerCaller] = []

    def start(self) -> None:
        self.engine.start()
        assert wait_for(lambda: self.engine.log().count(" ready, SIP on port ") == 2), self.engine.log()

    async def place(self, count: int) -> None:
        """``count`` more calls, each until both parties hear each other."""
        placed = []
        for _ in range(count):
            far = await FarParty(freq=FAR_HZ, transport=self.transport).start()
            caller = WorkerCaller(self.engine.port, far)
            await caller.start()
            self.pairs.append(caller)
            placed.append(caller)
        await asyncio.gather(*(caller.call() for caller in placed))
        for caller in placed:
            assert await until(caller.far.acked.is_set), (caller.far.methods(), self.engine.log()[-3000:])
            assert await until(bridged(caller)), caller.call_id

    def workers(self) -> dict[str, str]:
        """Which worker (its pid) runs each call, by the caller's SIP Call-ID."""
        return {call_id: pid for pid, call_id in CALL_LINE.findall(self.engine.log())}

    def on_each_worker(self, calls: int) -> bool:
        pids = list(self.workers().values())
        return len(set(pids)) == 2 and all(pids.count(pid) >= calls for pid in set(pids))

    def ended(self, caller: WorkerCaller) -> Callable[[], bool]:
        return lambda: any(e["type"] == "call.state" and e["state"] == "ended" for e in self.events(caller))

    def events(self, caller: WorkerCaller) -> list[dict[str, Any]]:
        """The events of ``caller``'s call (its log holds the SIP Call-ID in ``sip.invite``)."""
        for path in (self.engine.data / "calls").glob("*.jsonl"):
            events = read_jsonl(path)
            if any(e["type"] == "sip.invite" and e.get("sip_call_id") == caller.call_id for e in events):
                return events
        return []

    def close(self) -> None:
        for caller in self.pairs:
            caller.close()
            caller.far.close()


async def bye_on_a_new_connection(far: FarParty) -> Response:
    """The far party's BYE sent the way a far end that keeps no connection sends it: on a new TCP
    connection to the engine's Contact; the engine's answer on it."""
    assert far.invite is not None
    contact = far.invite.contacts()[0].uri
    bye = far.in_dialog("BYE", 99)
    reader, writer = await asyncio.open_connection(contact.host, contact.port)
    try:
        writer.write(bye.encode())
        framer = StreamFramer()
        async with asyncio.timeout(20):
            while True:
                for data in framer.feed(await reader.read(65536)):
                    message = parse_message(data)
                    if isinstance(message, Response) and message.status >= 200:
                        return message
    finally:
        writer.close()


def answered(far: FarParty, request: Request) -> Callable[[], bool]:
    return lambda: bool(far.answers_to(request))


def bridged(caller: WorkerCaller) -> Callable[[], bool]:
    """Whether each party of the call hears the other."""
    return lambda: hears(caller, FAR_HZ) and hears(caller.far, CALLER_HZ)


@pytest.mark.parametrize(("transport", "fixed"), [("udp", False), ("tcp", False), ("udp", True)])
def test_each_worker_places_its_calls_from_its_own_port_and_the_far_ends_reach_it_there(
    transport: str, fixed: bool, tmp_path: Path
) -> None:
    """A port the system picks for each worker, or with --outbound-port PORT, PORT and PORT+1."""
    port = free_port(span=2) if fixed else None
    calls = Calls(tmp_path, transport, *(("--outbound-port", str(port)) if port else ()))
    calls.start()

    async def main() -> None:
        try:
            await calls.place(FIRST_CALLS)
            while not calls.on_each_worker(2) and len(calls.pairs) < MAX_CALLS:
                await calls.place(2)
            assert calls.on_each_worker(2), calls.workers()
            await check(calls)
            if port is not None:
                used = {int(c.far.invite.top_via.port or 0) for c in calls.pairs if c.far.invite is not None}
                assert used == {port, port + 1}
        finally:
            calls.close()

    try:
        asyncio.run(main())
    finally:
        assert calls.engine.stop() == 0, calls.engine.log()[-3000:]


async def check(calls: Calls) -> None:
    workers = calls.workers()
    sip_port = calls.engine.port

    # Each far party's INVITE came from its worker's own port, which its Via and Contact name.
    ports: dict[str, set[int]] = {}
    for caller in calls.pairs:
        invite = caller.far.invite
        assert invite is not None
        via, contact = invite.top_via, invite.contacts()[0].uri
        assert via.port == contact.port != sip_port, (via, contact)
        if calls.transport == "udp":
            assert caller.far.engine[1] == via.port  # where it came from is where answers go
        else:
            assert via.transport == "TCP" and contact.transport == "tcp"
        ports.setdefault(workers[caller.call_id], set()).add(int(contact.port or 0))
    assert all(len(used) == 1 for used in ports.values()), ports  # one port per worker
    assert len(set.union(*ports.values())) == 2, ports  # the two workers' ports differ

    # Each far party hangs up: its BYE reaches the worker of its call, which ends that bridge alone.
    for done, caller in enumerate(calls.pairs, 1):
        far = caller.far
        far.stop_rtp()
        if calls.transport == "udp":
            bye = far.request("BYE")
            assert await until(answered(far, bye))
            [answer] = far.answers_to(bye)
        else:
            answer = await bye_on_a_new_connection(far)
        assert answer.status == 200, (answer.status, answer.reason)
        assert await until(caller.bye.is_set)  # the script went on after connect, and hung up
        assert [c.bye.is_set() for c in calls.pairs].count(True) == done  # no other call ended

    for caller in calls.pairs:
        assert await until(calls.ended(caller))
        events = calls.events(caller)
        states = [(e["state"], e.get("reason")) for e in events if e["type"] == "connect.state"]
        assert states == [("connecting", None), ("connected", None), ("disconnected", "far_hangup")], states
    # and each recording says which far party was on its right channel, until it hung up
    recordings = cast("list[dict[str, Any]]", calls.engine.recordings(len(calls.pairs)))
    assert sorted(str(m["bridges"][0]["to"]) for m in recordings) == sorted(c.far.uri for c in calls.pairs)
    assert all(m["bridges"][0]["end"] is not None for m in recordings)


# --- one worker: --outbound-port, and the port calls are placed from -------------------------------------


def test_one_worker_places_from_the_sip_port_unless_given_a_port_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with FarParty() as party, running_service(tmp_path, monkeypatch) as service:
            assert service.placing_port == service.sip_port
            leg = Leg(service, party.uri)
            await leg.until_state("answered")
            assert party.invite is not None and party.invite.top_via.port == service.sip_port
            await leg.end()
        async with FarParty() as party, running_service(tmp_path, monkeypatch, outbound_port=0) as service:
            own = service.placing_port
            assert own != service.sip_port
            leg = Leg(service, party.uri)
            await leg.until_state("answered")
            invite = party.invite
            assert invite is not None and invite.top_via.port == invite.contacts()[0].uri.port == own
            assert party.engine[1] == own
            await until(party.acked.is_set)
            party.hang_up()  # to the Contact: that port
            assert await leg.until_state("ended") == ["ringing", "answered", "ended"]
            await leg.end()

    asyncio.run(main())


def test_a_call_that_comes_to_the_port_calls_are_placed_from_is_answered_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(A registrar or a far end may send a new call to the Contact it was given: it is this worker's.)"""
    answer = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: {url: 'silence:30'}\n"

    async def main() -> None:
        async with (
            running_service(tmp_path, monkeypatch, answer, outbound_port=0) as service,
            Caller(cast("Service", _Serving(service.placing_port))) as caller,
        ):
            await caller.call()
            assert caller.ok is not None and caller.ok.contacts()[0].uri.port == service.placing_port
            assert len(service.calls) == 1
            bye = caller.request("BYE")
            assert await until(lambda: bool(caller.answers_to(bye)))
            assert [r.status for r in caller.answers_to(bye)] == [200]
            assert await until(lambda: not service.calls)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ("--outbound-port", "65535", "--workers", "2"),
            "--outbound-port 65535: with --workers 2 it needs ports up to 65536",
        ),
        (
            ("--outbound-port", "5059", "--workers", "2"),
            "--outbound-port 5059: give ports apart from the --sip port 5060",
        ),
        (("--outbound-port", "0"), "--outbound-port: '0' is out of range"),
    ],
)
def test_swml_serve_refuses_outbound_ports_it_cannot_have(options: tuple[str, ...], says: str, tmp_path: Path) -> None:
    script = tmp_path / "s.yaml"
    script.write_text("version: 1.0.0\nsections:\n  main:\n    - hangup\n")
    command = [sys.executable, "-m", "swml_engine", "serve", "--sip", "127.0.0.1:5060", "--script", str(script)]
    done = subprocess.run(
        [*command, "--data", str(tmp_path / "d"), *options], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and says in done.stderr, done.stderr
