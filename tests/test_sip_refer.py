"""``sip_refer``: its parameters checked when the document loads, and the step on a call — a simulated
call cannot be transferred (the step fails, the script goes on); a caller that takes the REFER, played
here by a scripted transport on the virtual clock, is transferred (the engine hangs up, the script ends)
or not (the script goes on), with the variables, ``sip.refer`` events and status callbacks a user checks.
The same step on a real SIP call: tests/sip/test_service_refer.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import HttpServer, run_doc
from swml_engine.call import Call, CallOptions
from swml_engine.callbacks import CallbackHub
from swml_engine.document.loader import load_text
from swml_engine.errors import DocumentError
from swml_engine.events import EventLog
from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.methods import REGISTRY
from swml_engine.script.context import Variables
from swml_engine.session import SimResult, call_scope, run_call
from swml_engine.transports.base import ReferStatus, Transport
from swml_engine.transports.simulated import SimulatedTransport, parse_peer
from swml_engine.vocabulary import ReferState, values
from test_vocabulary import documented

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "swml-corpus" / "docs-examples" / "sip_refer__1.json"
VARIABLES = (
    "sip_refer_to",
    "sip_refer_result",
    "return_value",
    "sip_refer_response_code",
    "sip_refer_to_response_code",
)


def load(step: str) -> None:
    load_text(f"sections:\n  main:\n    - sip_refer: {step}\n", methods=REGISTRY)


# --- the parameters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{}", "sections.main[0].sip_refer.to_uri: is required"),
        ("{to_uri: 'tel:+15551234567'}", "sections.main[0].sip_refer.to_uri: 'tel:+15551234567' is not a SIP URI"),
        ("{to_uri: '+15551234567'}", "sections.main[0].sip_refer.to_uri: '+15551234567' is not a SIP URI"),
        ("{to_uri: 'sip:'}", "sections.main[0].sip_refer.to_uri: 'sip:' is not a SIP URI"),
        ("{to_uri: 'sip:bob:pw@example.com'}", "sections.main[0].sip_refer.to_uri: the URI holds a password"),
        ("{to_uri: ''}", "sections.main[0].sip_refer.to_uri: must not be empty"),
        ("{to_uri: 'sip:bob@example.com', username: u}", "sections.main[0].sip_refer: username and password go"),
        ("{to_uri: 'sip:bob@example.com', status_url: 'ftp://x'}", "sections.main[0].sip_refer.status_url"),
        ("{to_uri: 'sip:bob@example.com', timeout: 3}", "sections.main[0].sip_refer.timeout: unknown parameter"),
        ("sip:bob@example.com", "sections.main[0].sip_refer: 'sip:bob@example.com' is not an object"),
    ],
)
def test_bad_parameters_are_refused_at_load_time_naming_the_place(step: str, message: str) -> None:
    with pytest.raises(DocumentError) as e:
        load(step)
    assert any(str(error).startswith(message) for error in e.value.errors), e.value.errors


@pytest.mark.parametrize(
    "step",
    [
        "{to_uri: 'sip:alice@example.com'}",
        "{to_uri: 'sips:alice@example.com:5061;transport=tls'}",
        "{to_uri: '${vars.agent}', status_url: 'https://example.com/refer', username: u, password: p}",
    ],
)
def test_good_parameters_load(step: str) -> None:
    load(step)


def test_the_reference_example_loads() -> None:
    load_text(CORPUS.read_text(), methods=REGISTRY)


# --- on a simulated call (swml run: the caller takes the REFER and calls a --peer) ---------------------------


def refer_run(*peers: str, then: str = "    - set: {after: reached}\n", **sim: Any) -> SimResult:
    return run_doc(
        "sections:\n  main:\n    - sip_refer: {to_uri: 'sip:alice@example.com'}\n" + then,
        peers=[parse_peer(p) for p in peers],
        **sim,
    )


def refer_events(res: SimResult) -> list[tuple[float, str, str | None, str | None]]:
    return [
        (e["t"], e["state"], e.get("sip_refer_response_code"), e.get("sip_notify_response_code"))
        for e in res.events
        if e["type"] == "sip.refer"
    ]


def test_a_simulated_caller_is_transferred_to_a_peer_that_answers() -> None:
    res = refer_run("sip:alice@example.com=ring@1s,answer@3s")
    assert {name: res.vars[name] for name in VARIABLES} == {
        "sip_refer_to": "sip:alice@example.com",
        "sip_refer_result": "success",
        "return_value": "success",
        "sip_refer_response_code": "202",
        "sip_refer_to_response_code": "200",
    }
    events = refer_events(res)
    t0 = events[0][0]
    assert [(round(t - t0, 2), *rest) for t, *rest in events] == [
        (0.0, "pending", "202", None),
        (0.0, "pending", "202", "100"),
        (1.0, "pending", "202", "180"),
        (3.0, "success", "202", "200"),
    ]
    assert "after" not in res.vars and res.call.end_reason == "transferred"  # we hung up; the script ended
    assert not [e for e in res.events if e["type"] == "error"]


@pytest.mark.parametrize(
    ("peer", "code", "seconds"),
    [
        ("busy@2s", "486", 2.0),
        ("reject:603@1s", "603", 1.0),
        ("unreachable@0.5s", "503", 0.5),
        ("no-answer", "180", 180.0),
    ],
)
def test_a_transfer_the_peer_does_not_answer_fails_and_the_script_goes_on(peer: str, code: str, seconds: float) -> None:
    res = refer_run(f"sip:alice@example.com={peer}")
    assert (res.vars["sip_refer_result"], res.vars["return_value"]) == ("failed", "failed")
    assert (res.vars["sip_refer_response_code"], res.vars["sip_refer_to_response_code"]) == ("202", code)
    events = refer_events(res)
    assert events[-1][1:] == ("failed", "202", code)
    assert events[-1][0] - events[0][0] == pytest.approx(seconds, abs=0.01)
    assert res.vars["after"] == "reached" and res.call.end_reason == "script_end"


def test_a_destination_with_no_peer_fails_the_transfer_saying_which_peer_to_add() -> None:
    res = refer_run()
    assert (res.vars["sip_refer_response_code"], res.vars["sip_refer_to_response_code"]) == ("202", "404")
    [failed] = [e for e in res.events if e["type"] == "sip.refer" and e["state"] == "failed"]
    assert "add --peer 'sip:alice@example.com=answer@1s' to swml run" in failed["reason"]
    assert res.vars["after"] == "reached" and not [e for e in res.events if e["type"] == "error"]


def test_the_reference_example_says_its_result(tmp_path: Path) -> None:
    res = run_doc(CORPUS.read_text(), tmp_path, peers=[parse_peer("sip:alice@example.com=reject:486")])
    assert res.vars["sip_refer_result"] == "failed"
    [play] = [e for e in res.events if e["type"] == "play.start"]
    assert play["url"] == "say: Connected. The SIP refer result is failed"


class NoRefer(SimulatedTransport):
    """A call whose transport cannot send a REFER (the base Transport's refer)."""

    refer = Transport.refer


def test_a_call_that_cannot_be_transferred_fails_the_step_with_an_error_and_goes_on() -> None:
    run = Run(
        NoRefer(), "sections:\n  main:\n    - sip_refer: {to_uri: 'sip:alice@example.com'}\n    - set: {after: x}\n"
    )
    assert {name: run.vars[name] for name in VARIABLES} == {
        "sip_refer_to": "sip:alice@example.com",
        "sip_refer_result": "failed",
        "return_value": "failed",
        "sip_refer_response_code": "",
        "sip_refer_to_response_code": "",
    }
    [error] = run.of("error")
    assert error["where"] == "sections.main[0].sip_refer"
    assert "(NoRefer) cannot be transferred: its transport cannot send a REFER" in error["message"]
    assert run.vars["after"] == "x" and run.call.end_reason == "script_end"
    assert any(e["state"] == "answered" for e in run.of("call.state"))  # answered first


def test_a_to_uri_bad_once_substituted_fails_the_step_and_reports_it(http_server: HttpServer) -> None:
    url = http_server.url("/refer")
    res = run_doc(
        "sections:\n  main:\n    - set: {agent: 'tel:+1555'}\n"
        f"    - sip_refer: {{to_uri: '${{agent}}', status_url: '{url}'}}\n    - set: {{after: reached}}\n"
    )
    assert res.vars["sip_refer_result"] == res.vars["return_value"] == "failed"
    assert res.vars["after"] == "reached"
    [error] = [e for e in res.events if e["type"] == "error"]
    assert "sections.main[1].sip_refer.to_uri: 'tel:+1555' is not a SIP URI" in error["message"]
    [post] = [r["json"] for r in http_server.requests if r["path"] == "/refer"]
    assert post["event_type"] == "calling.call.refer"
    assert post["params"]["state"] == "failed" and post["params"]["sip_refer_to"] == "tel:+1555"


# --- a caller that takes the REFER ---------------------------------------------------------------------------


Step = tuple[float, ReferStatus]
ACCEPTED = ReferStatus("pending", refer_code=202)
TRYING = ReferStatus("pending", refer_code=202, notify_code=100)
RINGING = ReferStatus("pending", refer_code=202, notify_code=180)


class Transferee(SimulatedTransport):
    """A caller that takes a REFER: it tells ``steps`` (seconds after the previous one, what it tells)
    and ends with the last; ``hangs_up_at`` (seconds after the REFER) hangs up meanwhile instead."""

    kind = "sip"

    def __init__(self, steps: list[Step], hangs_up_at: float | None = None) -> None:
        super().__init__()
        self.steps = steps
        self.hangs_up_at = hangs_up_at
        self.referred: list[tuple[str, tuple[str, str] | None]] = []
        self.stopped = False

    async def refer(
        self, to_uri: str, credentials: tuple[str, str] | None, progress: Callable[[ReferStatus], None]
    ) -> ReferStatus:
        self.referred.append((to_uri, credentials))
        call = self.call
        assert call is not None
        if self.hangs_up_at is not None:
            call.loop.call_later(self.hangs_up_at, call.on_remote_hangup, "hangup")
        try:
            for delay, status in self.steps:
                await asyncio.sleep(delay)
                progress(status)
        except asyncio.CancelledError:
            self.stopped = True
            raise
        return self.steps[-1][1]


class Run:
    """One call on the virtual clock with a :class:`Transferee` as its caller."""

    def __init__(self, transport: SimulatedTransport, script: str) -> None:
        self.transport = transport
        self.events = EventLog()
        loop = VirtualTimeLoop()
        try:
            self.vars = loop.run_until_complete(self._run(load_text(script, methods=REGISTRY)))
        finally:
            loop.close()

    async def _run(self, doc: Any) -> dict[str, Any]:
        hub = CallbackHub(self.events)
        self.call = Call(self.transport, events=self.events, options=CallOptions(extra={"callbacks": hub}))
        scope = call_scope(self.call, from_="sip:alice@example.org", to="sip:engine@example.org", headers=[])
        variables = Variables(call=scope)
        await run_call(doc, self.call, variables)
        await asyncio.get_running_loop().run_in_executor(None, hub.drain, 30.0)
        return variables.vars

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k not in ("t", "type")} for e in self.events.events if e["type"] == kind]

    def times(self, kind: str) -> list[float]:
        return [e["t"] for e in self.events.events if e["type"] == kind]


SCRIPT = (
    "sections:\n  main:\n"
    "    - sip_refer: {to_uri: 'sip:bob@example.com', username: agent, password: secret, status_url: '%s'}\n"
    "    - set: {after: reached}\n"
)


def test_a_transfer_that_succeeds_hangs_up_and_ends_the_script(http_server: HttpServer) -> None:
    transferee = Transferee([(0.1, ACCEPTED), (0.1, TRYING), (1.0, RINGING), (3.0, ReferStatus("success", 202, 200))])
    run = Run(transferee, SCRIPT % http_server.url("/refer"))
    assert transferee.referred == [("sip:bob@example.com", ("agent", "secret"))]
    assert {name: run.vars[name] for name in VARIABLES} == {
        "sip_refer_to": "sip:bob@example.com",
        "sip_refer_result": "success",
        "return_value": "success",
        "sip_refer_response_code": "202",
        "sip_refer_to_response_code": "200",
    }
    assert "after" not in run.vars  # the script ended with the transfer
    assert run.call.end_reason == "transferred" and transferee.hangup_reason == "transferred"
    assert run.of("sip.refer") == [
        {"sip_refer_to": "sip:bob@example.com", "state": "pending", "sip_refer_response_code": "202"},
        {
            "sip_refer_to": "sip:bob@example.com",
            "state": "pending",
            "sip_refer_response_code": "202",
            "sip_notify_response_code": "100",
        },
        {
            "sip_refer_to": "sip:bob@example.com",
            "state": "pending",
            "sip_refer_response_code": "202",
            "sip_notify_response_code": "180",
        },
        {
            "sip_refer_to": "sip:bob@example.com",
            "state": "success",
            "sip_refer_response_code": "202",
            "sip_notify_response_code": "200",
        },
    ]
    # the step waited for the outcome on the call's clock: 4.2 s after the REFER, then the hangup
    refer_at, *_, success_at = run.times("sip.refer")
    assert success_at - refer_at == pytest.approx(4.1, abs=0.02)
    posts = [r["json"] for r in http_server.requests if r["path"] == "/refer"]
    assert [p["params"]["state"] for p in posts] == ["pending", "pending", "pending", "success"]
    final = posts[-1]
    assert final["event_type"] == "calling.call.refer" and final["event_channel"] == f"swml:{run.call.call_id}"
    assert {k: final["params"][k] for k in ("call_id", "node_id", "sip_refer_to", "state")} == {
        "call_id": run.call.call_id,
        "node_id": "swml-engine",
        "sip_refer_to": "sip:bob@example.com",
        "state": "success",
    }
    assert (final["params"]["sip_refer_response_code"], final["params"]["sip_notify_response_code"]) == ("202", "200")


def test_a_transfer_that_fails_leaves_the_caller_with_the_script(http_server: HttpServer) -> None:
    busy = ReferStatus("failed", 202, 486, "the target answered 486 Busy Here")
    transferee = Transferee([(0.1, ACCEPTED), (2.0, busy)])
    run = Run(transferee, SCRIPT % http_server.url("/refer"))
    assert (run.vars["sip_refer_result"], run.vars["return_value"]) == ("failed", "failed")
    assert (run.vars["sip_refer_response_code"], run.vars["sip_refer_to_response_code"]) == ("202", "486")
    assert run.vars["after"] == "reached" and run.call.end_reason == "script_end"
    assert run.of("sip.refer")[-1] == {
        "sip_refer_to": "sip:bob@example.com",
        "state": "failed",
        "sip_refer_response_code": "202",
        "sip_notify_response_code": "486",
        "reason": "the target answered 486 Busy Here",
    }
    posts = [r["json"]["params"] for r in http_server.requests if r["path"] == "/refer"]
    assert [p["state"] for p in posts] == ["pending", "failed"] and "reason" not in posts[-1]


def test_a_refused_refer_has_no_notify_code() -> None:
    transferee = Transferee([(0.1, ReferStatus("failed", 603, None, "the REFER was refused: 603 Decline"))])
    run = Run(transferee, "sections:\n  main:\n    - sip_refer: {to_uri: 'sip:bob@example.com'}\n")
    assert (run.vars["sip_refer_response_code"], run.vars["sip_refer_to_response_code"]) == ("603", "")
    assert run.vars["sip_refer_result"] == "failed"


def test_the_caller_hanging_up_during_the_transfer_ends_the_wait() -> None:
    transferee = Transferee([(0.1, ACCEPTED), (60.0, ReferStatus("success", 202, 200))], hangs_up_at=5.0)
    run = Run(transferee, SCRIPT.replace(", status_url: '%s'", "").replace("%s", ""))
    assert transferee.stopped  # the transport stopped waiting for NOTIFYs
    assert run.vars["sip_refer_result"] == "failed" and run.vars["sip_refer_response_code"] == "202"
    assert run.of("sip.refer")[-1]["reason"] == "the call ended before the transfer's outcome came"
    assert run.call.end_reason == "remote_hangup" and "after" not in run.vars
    ended = [e for e in run.events.events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended[0]["t"] == pytest.approx(5.0, abs=0.05)  # not held until the 60 s outcome


# --- the documented list -------------------------------------------------------------------------------------


def test_the_states_are_documented_exactly() -> None:
    assert documented("methods.md", "refer state") == list(values(ReferState))
