"""connect on the virtual clock, against simulated far parties (transports/simulated.py): the dial plans,
their timeouts and failures, answer_on_bridge, confirm, the caller hanging up, the variables a script
sees afterwards, and what the caller hears and records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import RATE, read_wav, rms, run_doc, spectrum_peaks, tone, window
from swml_engine import call as call_module
from swml_engine.session import SimResult
from swml_engine.transports.simulated import PeerScript, parse_peer

AGENT = "sip:agent@example.com"


def peer(to: str = AGENT, **script: Any) -> PeerScript:
    return PeerScript(to=to, **script)


def of_type(res: SimResult, type_: str) -> list[dict[str, Any]]:
    return [e for e in res.events if e["type"] == type_]


def legs(res: SimResult) -> list[tuple[float, str, str, str | None]]:
    """Each connect.leg event as (t, to, state, reason)."""
    return [(e["t"], e["to"], e["state"], e.get("reason")) for e in of_type(res, "connect.leg")]


def states(res: SimResult) -> list[tuple[float, str]]:
    return [(e["t"], e["state"]) for e in of_type(res, "connect.state")]


def step_starts(res: SimResult, method: str) -> list[float]:
    return [e["t"] for e in of_type(res, "step.start") if e["method"] == method]


def posted(server: Any, path: str) -> list[dict[str, Any]]:
    """The ``params`` of each callback the test's HTTP server took at ``path``, in order."""
    return [r["json"]["params"] for r in server.requests if r["path"] == path]


def outcome(res: SimResult) -> tuple[Any, Any, Any]:
    return res.vars.get("connect_result"), res.vars.get("connect_failed_reason"), res.vars.get("return_value")


CONNECT_THEN_PLAY = """
sections:
  main:
    - connect: {to: "sip:agent@example.com"}
    - play: {url: "silence:1"}
"""


def test_a_far_party_answers_is_bridged_and_its_hangup_returns_to_the_script() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[peer(at=3.0, audio=tone(1000, 10.0), hangup=5.0)], hangup_at=60)
    assert outcome(res) == ("connected", None, "connected")
    assert [(t, state) for t, _, state, _ in legs(res)] == [
        (0.0, "created"),
        (0.0, "ringing"),
        (3.0, "answered"),
        (8.0, "ended"),
    ]
    assert states(res) == [(0.0, "connecting"), (3.0, "connected"), (8.0, "disconnected")]
    assert of_type(res, "connect.state")[-1]["reason"] == "far_hangup"
    # The script goes on the moment the far party hangs up; the caller's call is still up.
    assert step_starts(res, "play") == [8.0]
    assert res.result.reason == "script_end"
    # The far leg's own states never reach the caller's log as call.state.
    assert [e["state"] for e in of_type(res, "call.state")] == ["ringing", "answered", "ended"]
    (leg,) = res.dialer.placed
    assert of_type(res, "connect.state")[1]["peer"]["call_id"] == of_type(res, "connect.leg")[0]["call_id"]
    assert leg.target.to == AGENT and leg.target.from_ == "+15551230000"


def test_busy_fails_with_its_code_and_the_script_goes_on() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[peer(outcome="busy", at=2.0)])
    assert outcome(res) == ("failed", "busy", "failed")
    failed = of_type(res, "connect.leg")[-1]
    assert (failed["t"], failed["state"], failed["reason"], failed["code"]) == (2.0, "failed", "busy", 486)
    assert states(res) == [(0.0, "connecting"), (2.0, "failed")]
    assert of_type(res, "connect.state")[-1]["failed_reason"] == "busy"
    assert step_starts(res, "play") == [2.0]


def test_no_answer_is_given_up_at_the_timeout() -> None:
    res = run_doc(
        'sections:\n  main:\n    - connect: {to: "sip:agent@example.com", timeout: 5}\n    - play: {url: "silence:1"}\n',
        peers=[peer(outcome="no-answer")],
    )
    assert outcome(res) == ("failed", "no_answer", "failed")
    assert legs(res)[-1] == (5.0, AGENT, "failed", "no_answer")
    assert "code" not in of_type(res, "connect.leg")[-1]  # our CANCEL's 487 says nothing of the far end
    assert step_starts(res, "play") == [5.0]


def test_a_far_end_that_says_nothing_until_the_timeout_is_unreachable() -> None:
    # Not even a 100 Trying (a host down, a port nobody listens on): it never rang, it was not reached.
    res = run_doc(
        'sections:\n  main:\n    - connect: {to: "sip:agent@example.com", timeout: 5}\n',
        peers=[peer(outcome="unreachable", at=90.0)],
    )
    assert outcome(res) == ("failed", "unreachable", "failed")
    assert legs(res)[-1] == (5.0, AGENT, "failed", "unreachable")


def test_the_default_timeout_is_60_seconds() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[peer(outcome="no-answer")], hangup_at=300)
    assert legs(res)[-1] == (60.0, AGENT, "failed", "no_answer")


def test_a_603_is_rejected_with_its_code() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[peer(outcome="reject", code=603, at=1.0)])
    assert outcome(res) == ("failed", "rejected", "failed")
    failed = of_type(res, "connect.leg")[-1]
    assert (failed["reason"], failed["code"], failed["text"]) == ("rejected", 603, "Decline")


def test_a_destination_nobody_answers_is_unreachable() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[])
    assert outcome(res) == ("failed", "unreachable", "failed")
    failed = of_type(res, "connect.leg")[-1]
    assert failed["state"] == "failed" and failed["call_id"] is None
    assert "add --peer 'sip:agent@example.com=answer@1s'" in failed["text"]


def test_serial_busy_then_no_answer_then_answer() -> None:
    doc = """
sections:
  main:
    - connect:
        timeout: 10
        serial:
          - to: "sip:a@example.com"
          - to: "sip:b@example.com"
            timeout: 4
          - to: "sip:c@example.com"
    - play: {url: "silence:1"}
"""
    res = run_doc(
        doc,
        peers=[
            peer("sip:a@example.com", outcome="busy", at=1.0),
            peer("sip:b@example.com", outcome="no-answer"),
            peer("sip:c@example.com", at=2.0, hangup=3.0),
        ],
    )
    assert [(t, to, s, r) for t, to, s, r in legs(res) if s not in ("created", "ringing")] == [
        (1.0, "sip:a@example.com", "failed", "busy"),
        (5.0, "sip:b@example.com", "failed", "no_answer"),
        (7.0, "sip:c@example.com", "answered", None),
        (10.0, "sip:c@example.com", "ended", None),
    ]
    assert outcome(res) == ("connected", None, "connected")
    assert [leg.target.to for leg in res.dialer.placed] == [
        "sip:a@example.com",
        "sip:b@example.com",
        "sip:c@example.com",
    ]


def test_parallel_the_second_answers_and_the_others_are_cancelled() -> None:
    doc = """
sections:
  main:
    - connect:
        parallel:
          - to: "sip:a@example.com"
          - to: "sip:b@example.com"
          - to: "sip:c@example.com"
"""
    res = run_doc(
        doc,
        peers=[
            peer("sip:a@example.com", outcome="no-answer"),
            peer("sip:b@example.com", at=2.0, hangup=1.0),
            peer("sip:c@example.com", at=5.0),
        ],
    )
    at_two = [(to, s, r) for t, to, s, r in legs(res) if t == 2.0]
    assert at_two == [
        ("sip:b@example.com", "answered", None),
        ("sip:a@example.com", "failed", "cancelled"),
        ("sip:c@example.com", "failed", "cancelled"),
    ]
    a, b, c = res.dialer.placed
    assert (a.state, b.state, c.state) == ("failed", "ended", "failed")
    assert a.failure is not None and a.failure.reason == "cancelled"
    connected = of_type(res, "connect.state")[1]
    b_id = next(e["call_id"] for e in of_type(res, "connect.leg") if e["to"] == "sip:b@example.com")
    assert connected["state"] == "connected" and connected["peer"]["call_id"] == b_id
    assert outcome(res) == ("connected", None, "connected")


def test_serial_parallel_goes_to_the_next_group_when_one_fails() -> None:
    doc = """
sections:
  main:
    - connect:
        serial_parallel:
          - - to: "+15550000001"
            - to: "+15550000002"
          - - to: "+15550000003"
"""
    res = run_doc(
        doc,
        peers=[
            peer("+15550000001", outcome="busy", at=1.0),
            peer("+15550000002", outcome="reject", code=480, at=2.0),
            peer("+15550000003", at=1.0, hangup=1.0),
        ],
    )
    assert [(t, to, r) for t, to, s, r in legs(res) if s == "failed"] == [
        (1.0, "+15550000001", "busy"),
        (2.0, "+15550000002", "no_answer"),
    ]
    created = [(t, to) for t, to, s, _ in legs(res) if s == "created"]
    assert created == [(0.0, "+15550000001"), (0.0, "+15550000002"), (2.0, "+15550000003")]
    assert outcome(res) == ("connected", None, "connected")
    assert of_type(res, "connect.leg")[-1]["state"] == "ended"


def test_every_group_failing_reports_the_last_failure() -> None:
    doc = 'sections:\n  main:\n    - connect: {serial: [{to: "+15550000001"}, {to: "+15550000002"}]}\n'
    res = run_doc(doc, peers=[peer("+15550000001", outcome="reject", code=603), peer("+15550000002", outcome="busy")])
    assert outcome(res) == ("failed", "busy", "failed")


def test_answer_on_bridge_answers_the_caller_only_when_the_far_party_answers() -> None:
    doc = """
sections:
  main:
    - connect: {to: "sip:agent@example.com", answer_on_bridge: true}
"""
    res = run_doc(doc, peers=[peer(at=4.0, hangup=1.0)])
    calls = [(e["t"], e["state"]) for e in of_type(res, "call.state")]
    assert calls[:3] == [(0.0, "ringing"), (0.0, "early_media"), (4.0, "answered")]
    answered = next(t for t, _, s, _ in legs(res) if s == "answered")
    assert answered == 4.0


def test_answer_on_bridge_false_answers_before_dialling() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[peer(at=4.0, hangup=1.0)])
    assert [(e["t"], e["state"]) for e in of_type(res, "call.state")][:2] == [(0.0, "ringing"), (0.0, "answered")]


CONFIRM = """
sections:
  main:
    - connect:
        confirm:
          - prompt: {play: "silence:0.5", max_digits: 1, initial_timeout: 5}
          - cond:
              - when: "prompt_value != '1'"
                then: [hangup: {}]
        serial:
          - to: "sip:a@example.com"
          - to: "sip:b@example.com"
    - play: {url: "silence:1"}
"""


def test_confirm_drops_a_far_party_that_refuses_and_dials_on() -> None:
    res = run_doc(
        CONFIRM,
        peers=[
            peer("sip:a@example.com", at=1.0, dtmf=((1.0, "2"),)),
            peer("sip:b@example.com", at=1.0, dtmf=((1.0, "1"),), hangup=10.0),
        ],
    )
    a_events = [(t, s, r) for t, to, s, r in legs(res) if to == "sip:a@example.com"]
    assert a_events[-1] == (2.0, "failed", "not_confirmed")
    # b is bridged once its confirm script ends (the prompt's digit at 1 s after its answer).
    assert states(res)[1] == (4.0, "connected")
    assert outcome(res) == ("connected", None, "connected")
    a, b = res.dialer.placed
    assert (a.state, b.state) == ("ended", "ended")


def test_a_far_party_asked_to_confirm_is_not_heard_before_it_accepts(tmp_path: Path) -> None:
    # It sent early media, then answered: while its confirm script asks it to accept (a screened call,
    # a voicemail that picked up), the caller hears the ring again, not the far party.
    doc = """
sections:
  main:
    - record_call: {stereo: true, format: wav}
    - connect:
        confirm:
          - prompt: {play: "silence:0.5", max_digits: 1, initial_timeout: 5}
        to: "sip:agent@example.com"
"""
    far = peer(at=2.0, ring_at=0.5, early=tone(700, 10.0), audio=tone(1000, 20.0), dtmf=((3.0, "1"),), hangup=6.0)
    res = run_doc(doc, tmp_path, peers=[far])
    assert states(res)[1] == (5.0, "connected")
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    assert abs(spectrum_peaks(window(heard, RATE, 0.7, 1.8), RATE, 1)[0] - 700) < 10
    assert sorted(round(f / 10) * 10 for f in spectrum_peaks(window(heard, RATE, 2.2, 3.8), RATE)) == [440, 480]
    assert rms(window(heard, RATE, 4.1, 4.9)) < 50  # the ring's pause
    assert abs(spectrum_peaks(window(heard, RATE, 5.2, 7.8), RATE, 1)[0] - 1000) < 10
    # Nor does its key (the "1" that accepts) reach the caller.
    assert [e for e in of_type(res, "dtmf") if e["direction"] == "sent"] == []
    # The recording's metadata says when the far party was on the right channel: its early media, then
    # the bridge from its acceptance.
    (meta_path,) = (tmp_path / "out" / "recordings").glob("*.json")
    bridges = json.loads(meta_path.read_text())["bridges"]
    assert [(b["start"], b["end"]) for b in bridges] == [(0.5, 2.0), (5.0, 8.0)]


def test_confirm_that_never_ends_times_out() -> None:
    doc = """
sections:
  main:
    - connect:
        to: "sip:agent@example.com"
        confirm_timeout: 3
        confirm: [{sleep: {duration: 60000}}]
"""
    res = run_doc(doc, peers=[peer(at=1.0)])
    assert outcome(res) == ("failed", "not_confirmed", "failed")
    assert legs(res)[-1][0] == 4.0
    assert any("confirm did not end in 3 s" in e["message"] for e in of_type(res, "warning"))


def test_a_confirm_step_that_fails_drops_the_leg_rather_than_bridging_it() -> None:
    # The prompt asking the far party to accept cannot run (its sound's variable is unset): the far party
    # was never asked, so it is not confirmed — a failed screening must not put the caller through.
    doc = """
sections:
  main:
    - connect:
        serial:
          - to: "sip:a@example.com"
            confirm:
              - prompt: {play: "${greeting}", max_digits: 1, initial_timeout: 5}
          - to: "sip:b@example.com"
"""
    res = run_doc(doc, peers=[peer("sip:a@example.com", at=1.0), peer("sip:b@example.com", at=1.0, hangup=2.0)])
    assert legs(res)[:5] == [
        (0.0, "sip:a@example.com", "created", None),
        (0.0, "sip:a@example.com", "ringing", None),
        (1.0, "sip:a@example.com", "answered", None),
        (1.0, "sip:a@example.com", "failed", "not_confirmed"),
        (1.0, "sip:b@example.com", "created", None),
    ]
    (error,) = [e for e in of_type(res, "error") if "confirm" in e["where"]]
    assert error["where"].startswith("sections.main[0].connect.serial[0] (sip:a@example.com)")
    assert states(res)[1] == (2.0, "connected")  # b, which has no confirm
    a, _ = res.dialer.placed
    assert a.state == "ended"


def test_the_caller_hanging_up_while_dialling_cancels_every_leg() -> None:
    doc = """
sections:
  main:
    - connect: {parallel: [{to: "sip:a@example.com"}, {to: "sip:b@example.com"}]}
    - play: {url: "silence:1"}
"""
    res = run_doc(
        doc,
        peers=[peer("sip:a@example.com", outcome="no-answer"), peer("sip:b@example.com", at=10.0)],
        hangup_at=3.0,
    )
    assert [(t, to, r) for t, to, s, r in legs(res) if s == "failed"] == [
        (3.0, "sip:a@example.com", "cancelled"),
        (3.0, "sip:b@example.com", "cancelled"),
    ]
    assert outcome(res) == ("failed", "cancelled", "failed")
    assert states(res)[-1] == (3.0, "failed")
    assert step_starts(res, "play") == []
    assert res.result.reason == "remote_hangup"
    assert all(leg.state == "failed" for leg in res.dialer.placed)


def test_the_caller_hanging_up_while_bridged_hangs_up_the_far_party() -> None:
    res = run_doc(CONNECT_THEN_PLAY, peers=[peer(at=1.0)], hangup_at=6.0)
    assert states(res)[-1] == (6.0, "disconnected")
    assert of_type(res, "connect.state")[-1]["reason"] == "caller_hangup"
    assert legs(res)[-1] == (6.0, AGENT, "ended", None)
    (leg,) = res.dialer.placed
    assert leg.state == "ended" and leg.hangup_reason == "hangup"
    assert res.result.reason == "remote_hangup" and step_starts(res, "play") == []


def test_max_duration_bounds_the_bridge_and_the_script_goes_on() -> None:
    doc = 'sections:\n  main:\n    - connect: {to: "sip:agent@example.com", max_duration: 5}\n    - play: {url: "silence:1"}\n'
    res = run_doc(doc, peers=[peer(at=2.0)])
    assert states(res)[-1] == (7.0, "disconnected")
    assert of_type(res, "connect.state")[-1]["reason"] == "max_duration"
    assert step_starts(res, "play") == [7.0]
    assert outcome(res) == ("connected", None, "connected")


def test_a_bridge_lasts_its_max_duration_past_the_default_call_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge given more than 4 hours (max_duration up to a day) was cut at 4 hours by the far leg's own
    call limit, and reported as the far party hanging up. Scaled down here: calls' default limit 10 s
    (answer's max_duration gives the caller's call 100 s), the bridge 30 s."""
    monkeypatch.setattr(call_module, "DEFAULT_MAX_DURATION", 10.0)
    doc = (
        "sections:\n  main:\n    - answer: {max_duration: 100}\n"
        '    - connect: {to: "sip:agent@example.com", max_duration: 30}\n'
    )
    res = run_doc(doc, peers=[peer(at=2.0)])
    assert of_type(res, "connect.state")[-1]["reason"] == "max_duration"
    assert states(res)[-1] == (32.0, "disconnected")


def test_a_connect_that_could_not_run_runs_its_result_failed_branch_goto_included() -> None:
    """A value substituted wrong (timeout: '${t}' holding 'soon') fails the connect before a leg is
    placed: connect_result is failed, and its result's failed branch — where a script sends the caller
    to voicemail — ran not at all. It runs now, a goto in it included."""
    doc = """
sections:
  main:
    - set: {t: soon}
    - connect:
        to: "sip:agent@example.com"
        timeout: "${t}"
        result:
          case:
            failed: [{set: {after: "${connect_failed_reason}"}}, {goto: {label: voicemail}}]
    - set: {skipped: "yes"}
    - label: voicemail
    - set: {reached: "voicemail"}
"""
    res = run_doc(doc)
    assert res.vars["connect_result"] == "failed" and res.vars["after"] == "error"
    assert res.vars["reached"] == "voicemail" and "skipped" not in res.vars


def test_result_switch_runs_once_the_far_leg_has_ended() -> None:
    doc = """
sections:
  main:
    - connect:
        to: "sip:agent@example.com"
        result:
          case:
            connected: [{set: {after: "talked"}}]
            failed: [{set: {after: "${connect_failed_reason}"}}]
    - set: {next: "${after}"}
"""
    res = run_doc(doc, peers=[peer(outcome="busy", at=1.0)])
    assert res.vars["after"] == "busy" and res.vars["next"] == "busy"
    res = run_doc(doc, peers=[peer(at=1.0, hangup=2.0)])
    assert res.vars["after"] == "talked"
    set_at = next(e["t"] for e in of_type(res, "vars.set") if e["name"] == "after")
    assert set_at == 3.0


def test_result_cond_and_a_switch_on_another_variable() -> None:
    doc = """
sections:
  main:
    - set: {who: "sales"}
    - connect:
        to: "sip:agent@example.com"
        result:
          - when: "connect_result == 'failed' && connect_failed_reason == 'rejected'"
            then: [{set: {branch: "rejected"}}]
          - else: [{set: {branch: "other"}}]
    - connect:
        to: "sip:agent@example.com"
        result: {variable: who, case: {sales: [{set: {second: "sales"}}]}}
"""
    res = run_doc(doc, peers=[peer(outcome="reject", code=403)])
    assert (res.vars["branch"], res.vars["second"]) == ("rejected", "sales")


def test_a_later_success_clears_an_earlier_failure_reason() -> None:
    doc = """
sections:
  main:
    - connect: {to: "sip:busy@example.com"}
    - connect: {to: "sip:agent@example.com"}
"""
    res = run_doc(doc, peers=[peer("sip:busy@example.com", outcome="busy"), peer(at=1.0, hangup=1.0)])
    assert outcome(res) == ("connected", None, "connected")
    assert [e["name"] for e in of_type(res, "vars.unset")] == ["connect_failed_reason"]


def test_transfer_after_bridge_runs_its_document_instead_of_the_rest() -> None:
    doc = """
sections:
  main:
    - connect:
        to: "sip:agent@example.com"
        transfer_after_bridge: '{"sections": {"main": [{"set": {"after": "yes"}}, {"play": {"url": "silence:1"}}]}}'
    - set: {not_reached: true}
"""
    res = run_doc(doc, peers=[peer(at=1.0, hangup=2.0)])
    assert res.vars["after"] == "yes" and "not_reached" not in res.vars
    assert res.result.reason == "script_end" and res.duration >= 4.0
    # Without a bridge, nothing is transferred: the script goes on.
    res = run_doc(doc, peers=[peer(outcome="busy")])
    assert "after" not in res.vars and res.vars["not_reached"] is True


def test_a_destination_substituted_into_something_undiallable_fails_only_its_leg() -> None:
    doc = """
sections:
  main:
    - set: {target: "agent-at-example"}
    - connect: {parallel: [{to: "${target}"}, {to: "sip:agent@example.com"}]}
"""
    res = run_doc(doc, peers=[peer(at=1.0, hangup=1.0)])
    assert outcome(res) == ("connected", None, "connected")
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[1].connect.parallel[0].to"
    assert "'agent-at-example' is not a destination" in error["message"]


def test_a_destination_substituted_to_nothing_fails_only_its_leg() -> None:
    # The second agent's variable is unset: the first agent is still dialled (the whole connect failed
    # 'error' at once, nobody dialled).
    doc = """
sections:
  main:
    - connect: {parallel: [{to: "${agent2}"}, {to: "sip:agent@example.com"}]}
"""
    res = run_doc(doc, peers=[peer(at=1.0, hangup=1.0)])
    assert outcome(res) == ("connected", None, "connected")
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[0].connect.parallel[0].to"
    assert "is empty: give a phone number" in error["message"]
    assert legs(res)[0] == (0.0, "", "failed", "error")


def test_codecs_substituted_to_none_the_engine_speaks_fail_the_leg_in_swml_run_as_on_swml_serve() -> None:
    doc = """
sections:
  main:
    - set: {wanted: "OPUS"}
    - connect: {parallel: [{to: "sip:agent@example.com", codecs: "${wanted}"}, {to: "sip:b@example.com"}]}
"""
    res = run_doc(doc, peers=[peer(at=1.0, hangup=1.0), peer("sip:b@example.com", at=2.0, hangup=1.0)])
    failed = of_type(res, "connect.leg")[0]
    assert (failed["to"], failed["state"], failed["reason"]) == (AGENT, "failed", "error")
    assert failed["text"] == (
        "sections.main[1].connect.parallel[0].codecs: 'OPUS' (none of them is a codec this engine speaks: G722, "
        "PCMU, PCMA): not supported by this engine"
    )
    assert states(res)[1] == (2.0, "connected")  # the other destination


def test_without_a_dialer_every_leg_is_unreachable_with_one_warning() -> None:
    from swml_engine.call import Call, CallOptions
    from swml_engine.dialing import DialTarget
    from swml_engine.dialplan import DialPlan, LegSettings
    from swml_engine.events import EventLog
    from swml_engine.media.clock import VirtualTimeLoop
    from swml_engine.methods import REGISTRY
    from swml_engine.script.context import Variables
    from swml_engine.transports.simulated import SimulatedTransport

    async def dial() -> tuple[object, str, list[dict[str, Any]]]:
        call = Call(SimulatedTransport(), events=EventLog(), options=CallOptions())  # no dialer
        call.start()
        plan = DialPlan(call, Variables(), REGISTRY, "sections.main[0].connect")
        target = DialTarget(to="+15550000001", from_="+15550000009")
        leg = LegSettings("+15550000001", target, "phone", 60, None, 60, None, ("ended",), "sections.main[0].connect")
        chosen = await plan.dial([[leg], [leg]])
        await plan.close()
        await call.hangup()
        await call.finish()
        return chosen, plan.failure, call.events.events

    loop = VirtualTimeLoop()
    try:
        chosen, failure, events = loop.run_until_complete(dial())
    finally:
        loop.close()
    assert chosen is None and failure == "unreachable"
    assert [e["reason"] for e in events if e["type"] == "connect.leg"] == ["unreachable", "unreachable"]
    (warning,) = [e for e in events if e["type"] == "warning"]
    assert "this call cannot place calls" in warning["message"]


@pytest.mark.parametrize(
    ("spec", "outcome_at"),
    [("busy@3s", "busy at 3 s"), ("reject:404@1s", "reject at 1 s"), ("answer@2s,ring@2s", "answer at 2 s")],
)
def test_a_peer_s_early_media_that_would_never_play_is_refused(spec: str, outcome_at: str) -> None:
    # Early media plays from the ring; a busy or rejecting peer rings only when ring@T says so. Without
    # it the carrier announcement a developer gave was never heard, and nothing said why.
    with pytest.raises(ValueError, match=rf"early:WAV plays from its ring until its {outcome_at}.*ring@T"):
        parse_peer(f"sip:agent@example.com={spec},early:announcement.wav")
    assert parse_peer(f"sip:agent@example.com={spec.split(',')[0]},ring@0,early:announcement.wav").ring_time == 0


def test_the_caller_hears_a_ring_tone_then_the_far_party(tmp_path: Path) -> None:
    res = run_doc(CONNECT_THEN_PLAY, tmp_path, peers=[peer(at=4.0, audio=tone(1000, 10.0), hangup=3.0)])
    heard, rate = read_wav(tmp_path / "out" / "heard.wav")
    assert rate == RATE
    ringing = window(heard, RATE, 0.1, 1.9)  # the US ring: 440 + 480 Hz, 2 s on, 4 s off
    assert sorted(round(f / 10) * 10 for f in spectrum_peaks(ringing, RATE)) == [440, 480]
    assert rms(window(heard, RATE, 2.2, 3.8)) < 50
    bridged = window(heard, RATE, 4.2, 6.8)
    assert abs(spectrum_peaks(bridged, RATE, 1)[0] - 1000) < 10
    assert res.vars["connect_result"] == "connected"


def test_the_caller_hears_the_far_end_s_early_media_instead_of_a_ring(tmp_path: Path) -> None:
    early = tone(700, 10.0)
    run_doc(
        CONNECT_THEN_PLAY, tmp_path, peers=[peer(at=4.0, ring_at=1.0, early=early, audio=tone(1000, 5.0), hangup=2.0)]
    )
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    assert sorted(round(f / 10) * 10 for f in spectrum_peaks(window(heard, RATE, 0.1, 0.9), RATE)) == [440, 480]
    assert abs(spectrum_peaks(window(heard, RATE, 1.2, 3.8), RATE, 1)[0] - 700) < 10
    assert abs(spectrum_peaks(window(heard, RATE, 4.2, 5.8), RATE, 1)[0] - 1000) < 10


def test_ringback_sounds_are_played_in_a_loop_instead(tmp_path: Path) -> None:
    doc = """
sections:
  main:
    - connect: {to: "sip:agent@example.com", ringback: ["ring:1:de", "silence:0.5"]}
"""
    run_doc(doc, tmp_path, peers=[peer(at=5.0, ring_at=0.0, early=tone(700, 10.0), hangup=1.0)])
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    for start in (0.0, 1.5, 3.0):  # 1 s of the German 425 Hz ring, half a second of silence, again
        assert abs(spectrum_peaks(window(heard, RATE, start + 0.1, start + 0.9), RATE, 1)[0] - 425) < 10
        assert rms(window(heard, RATE, start + 1.05, start + 1.45)) < 50


def test_a_stereo_recording_of_a_bridged_call_has_the_far_party_on_the_right(tmp_path: Path) -> None:
    doc = """
sections:
  main:
    - record_call: {stereo: true, format: wav}
    - connect: {to: "sip:agent@example.com"}
"""
    run_doc(
        doc,
        tmp_path,
        caller_audio=tone(440, 20.0),
        peers=[peer(at=3.0, audio=tone(1000, 20.0), hangup=6.0)],
    )
    (meta_path,) = (tmp_path / "out" / "recordings").glob("*.json")
    audio, rate = read_wav(meta_path.with_suffix(".wav"))
    left, right = audio[:, 0], audio[:, 1]
    assert abs(spectrum_peaks(window(left, rate, 3.5, 8.5), rate, 1)[0] - 440) < 10
    assert abs(spectrum_peaks(window(right, rate, 3.5, 8.5), rate, 1)[0] - 1000) < 10
    # Before the answer the right channel rang (the US ring tone), the far party was not there.
    assert sorted(round(f / 10) * 10 for f in spectrum_peaks(window(right, rate, 0.2, 1.8), rate)) == [440, 480]
    assert rms(window(right, rate, 9.2, 9.8)) < 50  # after the far party hung up, the call ended


def test_status_and_call_state_callbacks_carry_the_documented_payloads(http_server: Any) -> None:
    connect_cb, state_cb = http_server.url("/connect"), http_server.url("/state")
    user_cb = http_server.url("/b-state").replace("http://", "http://user:pw@")
    doc = f"""
sections:
  main:
    - connect:
        from: "+15551112222"
        status_url: "{connect_cb}"
        call_state_url: "{state_cb}"
        call_state_events: [created, ringing, answered, ended]
        parallel:
          - to: "+15553334444"
          - to: "sip:b@example.com"
            call_state_url: "{user_cb}"
"""
    res = run_doc(
        doc, peers=[peer("+15553334444", outcome="busy", at=1.0), peer("sip:b@example.com", at=2.0, hangup=3.0)]
    )
    call_id = res.call.call_id
    leg_ids = {e["to"]: e["call_id"] for e in of_type(res, "connect.leg")}

    connect = [r["json"] for r in http_server.requests if r["path"] == "/connect"]
    assert [c["params"]["connect_state"] for c in connect] == ["connecting", "connected", "disconnected"]
    for c in connect:
        assert c["event_type"] == "calling.call.connect" and c["event_channel"] == f"swml:{call_id}"
        assert c["params"]["call_id"] == call_id and c["params"]["node_id"] == "swml-engine"
        assert isinstance(c["timestamp"], float) and "control_id" not in c["params"]
    assert connect[1]["params"]["peer"] == {
        "call_id": leg_ids["sip:b@example.com"],
        "node_id": "swml-engine",
        "device": {"type": "sip", "params": {"from_number": "+15551112222", "to_number": "sip:b@example.com"}},
    }

    phone = [r["json"] for r in http_server.requests if r["path"] == "/state"]
    assert [(p["params"]["call_state"], p["params"]["end_reason"]) for p in phone] == [
        ("created", None),
        ("ended", "busy"),  # a busy peer never rings
    ]
    assert phone[0]["event_type"] == "calling.call.state" and phone[0]["event_channel"] == f"swml:{call_id}"
    assert phone[-1]["params"] == {
        "call_id": leg_ids["+15553334444"],
        "node_id": "swml-engine",
        "call_state": "ended",
        "direction": "outbound",
        "device": {"type": "phone", "params": {"from_number": "+15551112222", "to_number": "+15553334444"}},
        "end_reason": "busy",
    }
    sip = [r for r in http_server.requests if r["path"] == "/b-state"]
    assert [r["json"]["params"]["call_state"] for r in sip] == ["created", "ringing", "answered", "ended"]
    assert sip[-1]["json"]["params"]["end_reason"] == "hangup"
    assert all(r["headers"]["Authorization"] == "Basic dXNlcjpwdw==" for r in sip)  # user:pw as basic auth
    assert all("pw@" not in str(e) for e in of_type(res, "callback"))
    # Each delivery's `callback` event names the state it reported (connect_state, call_state).
    delivered = {(e["url"].rsplit("/", 1)[1], e["state"]) for e in of_type(res, "callback") if e["delivered"]}
    assert {
        ("connect", "connecting"),
        ("connect", "disconnected"),
        ("b-state", "ringing"),
        ("state", "ended"),
    } <= delivered


def test_a_failed_connect_reports_its_reason_and_only_the_ended_state_by_default(http_server: Any) -> None:
    doc = f"""
sections:
  main:
    - connect:
        status_url: "{http_server.url("/connect")}"
        call_state_url: "{http_server.url("/state")}"
        serial: [{{to: "sip:a@example.com"}}, {{to: "sip:b@example.com", timeout: 2}}]
"""
    run_doc(
        doc,
        peers=[peer("sip:a@example.com", outcome="reject", code=603), peer("sip:b@example.com", outcome="no-answer")],
    )
    connect = posted(http_server, "/connect")
    assert [(c["connect_state"], c.get("failed_reason")) for c in connect] == [
        ("connecting", None),
        ("failed", "no_answer"),
    ]
    ended = posted(http_server, "/state")
    assert [(e["call_state"], e["end_reason"], e["device"]["params"]["to_number"]) for e in ended] == [
        ("ended", "declined", "sip:a@example.com"),
        ("ended", "no_answer", "sip:b@example.com"),
    ]


def test_a_destination_asking_for_no_call_state_events_gets_none(http_server: Any) -> None:
    # An empty list is a choice (no events for this destination), not a missing one (the default, ended).
    doc = f"""
sections:
  main:
    - connect:
        call_state_url: "{http_server.url("/state")}"
        call_state_events: [created, ended]
        serial:
          - {{to: "sip:a@example.com", call_state_events: []}}
          - {{to: "sip:b@example.com"}}
"""
    run_doc(doc, peers=[peer("sip:a@example.com", outcome="busy", at=1.0), peer("sip:b@example.com", outcome="busy")])
    sent = posted(http_server, "/state")
    assert [(p["device"]["params"]["to_number"], p["call_state"]) for p in sent] == [
        ("sip:b@example.com", "created"),
        ("sip:b@example.com", "ended"),
    ]


def test_a_call_state_url_that_comes_out_empty_is_said_so_as_a_status_url_is() -> None:
    doc = 'sections:\n  main:\n    - connect: {to: "sip:agent@example.com", call_state_url: "${cb}"}\n'
    res = run_doc(doc, peers=[peer(outcome="busy", at=1.0)])
    assert outcome(res) == ("failed", "busy", "failed")  # the step runs, without its callbacks
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[0].connect.call_state_url"
    assert "came out empty; no status callbacks are sent for it" in error["message"]


def test_a_connect_that_cannot_run_reports_its_failure_to_its_status_url(http_server: Any) -> None:
    # A value substituted at run time the step cannot take: the connect failed, and its listeners hear it.
    doc = f"""
sections:
  main:
    - set: {{ring_for: "soon"}}
    - connect:
        status_url: "{http_server.url("/connect")}"
        timeout: "${{ring_for}}"
        to: "sip:agent@example.com"
"""
    res = run_doc(doc, peers=[peer(at=1.0)])
    assert outcome(res) == ("failed", "error", "failed")
    assert [(e["state"], e.get("failed_reason")) for e in of_type(res, "connect.state")] == [("failed", "error")]
    connect = posted(http_server, "/connect")
    assert [(c["connect_state"], c.get("failed_reason")) for c in connect] == [("failed", "error")]


def test_the_caller_hanging_up_reports_cancelled(http_server: Any) -> None:
    doc = f"""
sections:
  main:
    - connect:
        status_url: "{http_server.url("/connect")}"
        call_state_url: "{http_server.url("/state")}"
        to: "sip:agent@example.com"
"""
    run_doc(doc, peers=[peer(outcome="no-answer")], hangup_at=2.0)
    connect = posted(http_server, "/connect")
    assert connect[-1]["connect_state"] == "failed" and connect[-1]["failed_reason"] == "cancelled"
    (ended,) = posted(http_server, "/state")
    assert ended["end_reason"] == "cancel"


def test_the_worked_example_of_the_docs_runs_as_written(tmp_path: Path) -> None:
    """docs/connect.md's example, its YAML and its command line as the page shows them."""
    import re
    import shlex

    from conftest import wav_bytes
    from swml_engine.cli import main

    page = (Path(__file__).resolve().parents[1] / "docs" / "connect.md").read_text()
    yaml_text = re.search(r"```yaml\n(# support.yaml\n.*?)```", page, re.S)
    command = re.search(r"```sh\n(swml run support.yaml.*?)```", page, re.S)
    assert yaml_text is not None and command is not None
    (tmp_path / "support.yaml").write_text(yaml_text.group(1))
    (tmp_path / "caller.wav").write_bytes(wav_bytes(tone(440, 40.0)))
    (tmp_path / "agent.wav").write_bytes(wav_bytes(tone(1000, 40.0)))
    args = shlex.split(command.group(1).replace("\\\n", " "))[1:]
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    out = tmp_path / "out"
    import json

    assert json.loads((out / "vars.json").read_text())["connect_result"] == "connected"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    connected = [e for e in events if e["type"] == "connect.state" and e["state"] == "connected"]
    assert connected[0]["t"] == 6.0
    heard, _ = read_wav(out / "peer-2-heard.wav")
    assert abs(spectrum_peaks(heard[8000 * 8 : 8000 * 12], RATE, 1)[0] - 440) < 10  # Bob hears the caller
    (meta,) = [json.loads(p.read_text()) for p in (out / "recordings").glob("*.json")]
    assert [(b["to"], b["start"], b["end"]) for b in meta["bridges"]] == [("sip:bob@pbx.example.com", 6.0, 26.0)]


def test_a_ringback_sound_that_cannot_play_gives_way_to_the_ring_tone(tmp_path: Path) -> None:
    doc = """
sections:
  main:
    - connect: {to: "sip:agent@example.com", ringback: ["file:///nonexistent/ring.wav"]}
"""
    res = run_doc(doc, tmp_path, peers=[peer(at=3.0, hangup=1.0)])
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[0].connect.ringback" and error["message"].endswith("a ring tone instead")
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    assert sorted(round(f / 10) * 10 for f in spectrum_peaks(window(heard, RATE, 0.2, 1.8), RATE)) == [440, 480]
    assert res.vars["connect_result"] == "connected"


def test_a_far_party_answering_while_a_ringback_sound_is_still_fetched_is_bridged_at_once(
    tmp_path: Path, http_server: Any
) -> None:
    # On the real clock: a slow ringback URL held the bridge until its fetch ended, the far party talking
    # to no one meanwhile (a 4 s fetch, a party on at 0.5 s who hung up 2 s later: nothing of it was heard).
    from conftest import wav_bytes

    http_server.files["/ring.wav"] = (wav_bytes(tone(425, 2.0)), "audio/wav")
    http_server.delays["/ring.wav"] = 4.0
    doc = f"""
sections:
  main:
    - connect: {{to: "sip:agent@example.com", ringback: ["{http_server.url("/ring.wav")}"]}}
"""
    res = run_doc(doc, tmp_path, realtime=True, peers=[peer(at=0.5, audio=tone(1000, 5.0), hangup=2.0)])
    (connected,) = [e for e in of_type(res, "connect.state") if e["state"] == "connected"]
    assert connected["t"] < 2.0  # (at the answer, 0.5 s; not after the 4 s fetch)
    heard, _ = read_wav(tmp_path / "out" / "heard.wav")
    start = connected["t"] + 0.2
    assert abs(spectrum_peaks(window(heard, RATE, start, start + 1.0), RATE, 1)[0] - 1000) < 10


def test_a_transfer_document_that_cannot_be_fetched_leaves_the_script_going_on(http_server: Any) -> None:
    doc = f"""
sections:
  main:
    - connect: {{to: "sip:agent@example.com", transfer_after_bridge: "{http_server.url("/missing")}"}}
    - set: {{reached: true}}
"""
    http_server.failures["/missing"] = [500]
    res = run_doc(doc, peers=[peer(at=1.0, hangup=1.0)])
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[0].connect.transfer_after_bridge"
    assert outcome(res) == ("connected", None, "connected") and res.vars["reached"] is True


def test_a_far_leg_that_never_says_it_ended_is_let_go_after_a_grace(monkeypatch: Any) -> None:
    """A far end that ignores our CANCEL (a transport that never reports its end) cannot hold the
    caller's script: after DROP_GRACE the leg counts as gone."""
    import swml_engine.session as session
    from swml_engine.dialplan import DROP_GRACE
    from swml_engine.transports.simulated import SimulatedDialer, SimulatedFarTransport

    class Deaf(SimulatedFarTransport):
        def cancel(self) -> None:
            pass  # never answers the CANCEL

    class DeafDialer(SimulatedDialer):
        def place(self, target: Any, rate: int) -> SimulatedFarTransport:
            placed = super().place(target, rate)
            self.placed[-1] = Deaf(target, placed.peer, placed.rate)
            return self.placed[-1]

    monkeypatch.setattr(session, "SimulatedDialer", DeafDialer)
    res = run_doc(
        'sections:\n  main:\n    - connect: {to: "sip:agent@example.com", timeout: 2}\n    - set: {after: true}\n',
        peers=[peer(outcome="no-answer")],
    )
    assert legs(res)[-1] == (2.0 + DROP_GRACE, AGENT, "failed", "no_answer")
    assert res.vars["after"] is True and outcome(res) == ("failed", "no_answer", "failed")


def test_digits_cross_the_bridge_and_a_caller_terminator_still_ends_its_recording(tmp_path: Path) -> None:
    doc = """
sections:
  main:
    - record_call: {terminators: "#", format: wav}
    - connect: {to: "sip:agent@example.com"}
"""
    res = run_doc(
        doc,
        tmp_path,
        dtmf=[(4.0, "5"), (6.0, "#")],
        peers=[peer(at=2.0, dtmf=((1.0, "7"),), hangup=8.0)],
    )
    (far,) = res.dialer.placed
    assert far.sent_digits == ["5", "#"]  # the caller's keys reach the far party
    assert res.call.transport.sent_digits == ["7"]  # and the far party's reach the caller
    (recorded,) = [e for e in of_type(res, "record.state") if e["state"] == "finished"]
    assert recorded["t"] == 6.0 and recorded["end_reason"] == "terminator"
    assert outcome(res) == ("connected", None, "connected")


def test_a_wideband_far_party_is_recorded_at_the_caller_s_rate(tmp_path: Path) -> None:
    """A G.722-like far leg (16 kHz) bridged to an 8 kHz caller: resampled, on the right channel."""
    doc = """
sections:
  main:
    - record_call: {stereo: true, format: wav}
    - connect: {to: "sip:agent@example.com"}
"""
    run_doc(
        doc,
        tmp_path,
        caller_audio=tone(440, 20.0),
        peers=[peer(at=1.0, rate=16000, audio=tone(1000, 20.0, rate=16000), hangup=4.0)],
    )
    (meta_path,) = (tmp_path / "out" / "recordings").glob("*.json")
    audio, rate = read_wav(meta_path.with_suffix(".wav"))
    assert rate == RATE
    assert abs(spectrum_peaks(window(audio[:, 1], rate, 1.5, 4.5), rate, 1)[0] - 1000) < 10
    assert abs(spectrum_peaks(window(audio[:, 0], rate, 1.5, 4.5), rate, 1)[0] - 440) < 10
    heard, far_rate = read_wav(tmp_path / "out" / "peer-1-heard.wav")
    assert far_rate == 16000
    assert abs(spectrum_peaks(window(heard, far_rate, 1.5, 4.5), far_rate, 1)[0] - 440) < 10


def test_confirm_fetched_from_a_url_runs_on_the_far_leg(http_server: Any) -> None:
    import json

    confirm = {
        "sections": {
            "main": [
                {"prompt": {"play": "silence:0.2", "max_digits": 1}},
                {"cond": [{"when": "prompt_value != '1'", "then": [{"hangup": {}}]}]},
            ]
        }
    }
    http_server.files["/confirm"] = (json.dumps(confirm).encode(), "application/json")
    doc = f"""
sections:
  main:
    - connect:
        confirm: "{http_server.url("/confirm")}"
        parallel: [{{to: "sip:a@example.com"}}, {{to: "sip:b@example.com"}}]
"""
    res = run_doc(
        doc,
        peers=[
            peer("sip:a@example.com", at=1.0, dtmf=((0.5, "9"),)),
            peer("sip:b@example.com", at=2.0, dtmf=((0.5, "1"),), hangup=5.0),
        ],
    )
    a_id = next(e["call_id"] for e in of_type(res, "connect.leg") if e["to"] == "sip:a@example.com")
    posted = [r["json"] for r in http_server.requests if r["path"] == "/confirm"]
    assert len(posted) == 2
    assert posted[0]["call"]["call_id"] == a_id and posted[0]["call"]["direction"] == "outbound"
    assert posted[0]["call"]["to"] == "sip:a@example.com" and posted[0]["vars"] == {}
    assert [(to, r) for _, to, s, r in legs(res) if s == "failed"] == [("sip:a@example.com", "not_confirmed")]
    assert states(res)[1] == (2.5, "connected")
    assert "prompt_value" not in res.vars  # the confirm script's variables are its own


def test_a_confirm_url_that_fails_drops_the_leg_with_an_error(http_server: Any) -> None:
    http_server.failures["/confirm"] = [500]
    doc = f'sections:\n  main:\n    - connect: {{to: "sip:agent@example.com", confirm: "{http_server.url("/confirm")}"}}\n'
    res = run_doc(doc, peers=[peer(at=1.0)])
    assert outcome(res) == ("failed", "not_confirmed", "failed")
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[0].connect.confirm" and "500" in error["message"]


def test_a_confirm_url_may_use_only_what_an_inline_confirm_may(http_server: Any) -> None:
    # A fetched confirm document is held to the inline list: no connect on a far leg (it would dial on).
    nested = {"sections": {"main": [{"connect": {"to": "sip:other@example.com"}}]}}
    http_server.files["/confirm"] = (json.dumps(nested).encode(), "application/json")
    doc = f'sections:\n  main:\n    - connect: {{to: "sip:agent@example.com", confirm: "{http_server.url("/confirm")}"}}\n'
    res = run_doc(doc, peers=[peer(at=1.0)])
    assert outcome(res) == ("failed", "not_confirmed", "failed")
    (error,) = of_type(res, "error")
    assert error["where"] == "sections.main[0].connect.confirm"
    assert "sections.main[0].connect: connect cannot run in confirm (on the far leg)" in error["message"]
    assert not [e for e in of_type(res, "connect.leg") if e["to"] == "sip:other@example.com"]
