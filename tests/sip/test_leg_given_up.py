"""A far leg given up before the far end has said anything (no provisional: RFC 3261 §9.1 forbids a
CANCEL until one comes) on `swml serve`, end to end on loopback: our own caller calls the service, whose
script connects it to our own far party that stays silent. What is checked is what a user would: the
caller who hangs up then is done with at once (its BYE answered, its events ended, its recording
finalised), and the far leg still ends properly on the wire when the far end speaks up later — a CANCEL
after its ringing, an ACK and a BYE after its late answer; a serial dial goes on at once past such a far
end; and a far end that rang but never answers our CANCEL holds nobody for long either. The service runs
in the test's event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from swml_engine.service.server import Service
from swml_engine.transports.sip.message import Request
from swml_engine.transports.sip.outbound import CANCEL_GRACE

from .far_party import FarParty, Step, running_service, until
from .test_bridge_sip import Caller, events_of, finished_recording, the_call


def script(connect: str) -> str:
    """The caller's script: answer, record, ``connect: <connect>``, then 30 s of silence."""
    steps = ["answer", "record_call: {stereo: true, format: wav}", f"connect: {connect}", "play: {url: 'silence:30'}"]
    return "version: 1.0.0\nsections:\n  main:\n" + "".join(f"    - {step}\n" for step in steps)


def of(events: list[dict[str, Any]], kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())]


@pytest.mark.parametrize("late", ["rings", "answers"])
def test_a_caller_hanging_up_before_the_far_end_says_anything_is_done_with_at_once(
    late: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        connect = "{to: '%s', timeout: 120}"
        async with FarParty(()) as party:  # no answer at all to the INVITE, not even 100 Trying
            service_running = running_service(tmp_path, monkeypatch, script(connect % party.uri))
            async with service_running as service:
                await body(service, party)

    async def body(service: Service, party: FarParty) -> None:
        async with Caller(service) as caller:
            await caller.call()
            assert await until(lambda: party.invite is not None)
            call = the_call(service)
            hung_up = call.now()
            bye = caller.request("BYE")

            # The caller's call ends now: not when Timer B (32 s) ends the far leg's INVITE.
            assert await until(lambda: bool(caller.answers_to(bye)))
            assert [r.status for r in caller.answers_to(bye)] == [200]
            assert await until(lambda: not service.calls and not service.legs)
            events = events_of(tmp_path)
            [ended] = of(events, "call.state", state="ended")
            assert ended["reason"] == "remote_hangup"
            assert ended["t"] - hung_up < 2.0, (hung_up, ended)
            [failed] = of(events, "connect.leg", state="failed")
            assert failed["reason"] == "cancelled" and failed["t"] - hung_up < 2.0
            assert of(events, "connect.state", state="failed")[0]["failed_reason"] == "cancelled"
            meta = await finished_recording(tmp_path)
            assert float(meta["duration"]) == pytest.approx(hung_up - float(meta["call_time"]), abs=0.5)
            assert service.dialer.legs == set() and "CANCEL" not in party.methods()

            # The far leg's INVITE is still the core's to finish, on the wire.
            invite = party.invite
            assert invite is not None
            if late == "rings":
                party._step(invite, Step(180))
                assert await until(party.cancelled.is_set)  # the CANCEL the first provisional lets go
                assert await until(lambda: party.methods().count("ACK") == 1)  # and its 487 is ACKed
                assert "BYE" not in party.methods()
            else:
                party._step(invite, Step(200, sdp=True))
                assert await until(party.acked.is_set)  # the answer is ACKed, then hung up
                assert await until(party.bye.is_set)
                [bye_far] = [r for r in party.requests if r.method == "BYE"]
                assert "cancelled" in (bye_far.headers.get("reason") or "")
            # nothing of it reached the caller's call, long over
            assert of(events_of(tmp_path), "connect.leg") == of(events, "connect.leg")

    asyncio.run(main())


def test_a_serial_dial_goes_on_at_once_past_a_destination_that_never_said_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first destination's timeout gives it up before any provisional: the next is dialled then, not
    after Timer B."""

    async def main() -> None:
        async with FarParty(()) as silent, FarParty() as answering:
            serial = f"{{serial: [{{to: '{silent.uri}', timeout: 1}}, {{to: '{answering.uri}'}}]}}"
            async with running_service(tmp_path, monkeypatch, script(serial)) as service, Caller(service) as caller:
                await caller.call()
                assert await until(answering.acked.is_set)
                # The far party has its ACK before the dial plan has bridged it: hang up once it has.
                assert await until(lambda: of(events_of(tmp_path), "connect.state", state="connected"))
                caller.hang_up()
                assert await until(lambda: not service.calls)
                events = events_of(tmp_path)
                [created, _] = of(events, "connect.leg", state="created")
                [failed] = of(events, "connect.leg", state="failed")
                # (not a word from it, not even 100 Trying: it was not reached)
                assert (failed["to"], failed["reason"]) == (silent.uri, "unreachable")
                assert failed["t"] - created["t"] == pytest.approx(1.0, abs=0.3)
                [second] = [e for e in of(events, "connect.leg", state="created") if e["to"] == answering.uri]
                assert second["t"] - failed["t"] < 0.5

    asyncio.run(main())


class DeafToCancel(FarParty):
    """A far end that rings, then takes no notice of a CANCEL (no 200, no 487): crashed, or cut off."""

    def _on_request(self, request: Request, addr: tuple[str, int]) -> None:
        if request.method != "CANCEL":
            super()._on_request(request, addr)


def test_a_caller_hanging_up_is_not_held_by_a_far_end_that_never_answers_the_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with DeafToCancel((Step(180),)) as party:
            connect = f"{{to: '{party.uri}', timeout: 120}}"
            async with running_service(tmp_path, monkeypatch, script(connect)) as service, Caller(service) as caller:
                await caller.call()
                assert await until(lambda: any(r.status == 180 for r in party.sent))
                call = the_call(service)
                assert await until(
                    lambda: any(e.get("state") == "ringing" for e in of(events_of(tmp_path), "connect.leg"))
                )
                hung_up = call.now()
                caller.request("BYE")
                assert await until(lambda: not service.calls)
                events = events_of(tmp_path)
                [ended] = of(events, "call.state", state="ended")
                assert ended["t"] - hung_up < CANCEL_GRACE + 1.5, (hung_up, ended)
                [failed] = of(events, "connect.leg", state="failed")
                assert failed["reason"] == "cancelled"
                assert party.methods().count("CANCEL") >= 2  # sent, and sent again while unanswered

    asyncio.run(main())
