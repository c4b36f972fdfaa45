"""connect's parameters are checked when the document loads: the four shapes, every property of
connect.mdx, each error naming its place, and the destinations this engine does not dial reported
"not supported" (swml validate's exit 3) rather than invalid."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import run_doc
from swml_engine.document.loader import load_document, load_text
from swml_engine.document.model import Document
from swml_engine.errors import DocumentError
from swml_engine.methods import REGISTRY
from swml_engine.methods.connect import MAX_DESTINATIONS, MAX_PARALLEL, ConnectParams, DestinationParams
from swml_engine.transports.simulated import PeerScript

METHODS = REGISTRY


def load(connect: object, *before: object) -> Document:
    return load_document({"sections": {"main": [*before, {"connect": connect}]}}, methods=METHODS)


def problems(connect: object) -> tuple[list[str], list[str]]:
    """(errors, unsupported) as `swml validate` prints them."""
    try:
        load(connect)
    except DocumentError as e:
        return [str(x) for x in e.errors], [str(x) for x in e.unsupported]
    return [], []


def errors(connect: object) -> list[str]:
    return problems(connect)[0]


def test_each_shape_loads_with_its_defaults() -> None:
    for connect in (
        {"to": "sip:alice@example.com"},
        {"serial": [{"to": "+15551230001"}, {"to": "sip:bob@example.com"}]},
        {"parallel": [{"to": "+15551230001"}, {"to": "sips:bob@example.com:5061;transport=tls"}]},
        {"serial_parallel": [[{"to": "+15551230001"}, {"to": "+15551230002"}], [{"to": "+15551230003"}]]},
    ):
        doc = load(connect)
        step = doc.sections["main"][0]
        p = METHODS["connect"].parse(step.params, step.where)
        assert isinstance(p, ConnectParams)
        assert (p.answer_on_bridge, p.max_duration, p.timeout, p.call_state_events) == (False, 14400, None, None)
    p = METHODS["connect"].parse(
        load({"serial_parallel": [[{"to": "+15551230001"}, {"to": "+15551230002"}], [{"to": "+15551230003"}]]})
        .sections["main"][0]
        .params,
        "x",
    )
    assert [[d.to for d in g if isinstance(d, DestinationParams)] for g in p.groups()] == [
        ["+15551230001", "+15551230002"],
        ["+15551230003"],
    ]


def test_every_property_of_the_reference_is_accepted_at_both_levels() -> None:
    leg: dict[str, Any] = {
        "from": "+15551112222",
        "from_name": "Support Team",
        "username": "u",
        "password": "p",
        "timeout": 20,
        "call_state_events": ["created", "ringing", "answered", "ended"],
        "call_state_url": "https://user:pw@example.com/state",
        "confirm": [{"prompt": {"play": "say:Press 1", "max_digits": 1}}, {"hangup": {}}],
        "confirm_timeout": 15,
        "encryption": "optional",
        "headers": [{"name": "X-Account", "value": "42"}],
        "codecs": "PCMU,G722",
        "session_timeout": 1800,
        "webrtc_media": False,
    }
    top = {
        **leg,
        "answer_on_bridge": True,
        "max_duration": 600,
        "ringback": ["ring:us", "say:Please hold"],
        "status_url": "https://example.com/connect",
        "transfer_after_bridge": "https://example.com/after",
        "result": {"case": {"connected": [{"hangup": {}}]}},
    }
    load({**top, "parallel": [{"to": "sip:a@example.com", **leg}, {"to": "+15551230001"}]})
    load({**top, "to": "sip:a@example.com"})


def test_exactly_one_shape() -> None:
    assert errors({"from": "+15551112222"}) == [
        "sections.main[0].connect: give exactly one of to, serial, parallel or serial_parallel (found none)"
    ]
    assert errors({"to": "+15551230001", "serial": [{"to": "+15551230002"}]}) == [
        "sections.main[0].connect: give exactly one of to, serial, parallel or serial_parallel (found to, serial)"
    ]


def test_errors_name_the_destination_they_are_in() -> None:
    found = errors({"serial_parallel": [[{"to": "+15551230001"}], [{"to": "alice@example.com"}, {"to": "+1555"}]]})
    assert found == [
        "sections.main[0].connect.serial_parallel[1][0].to: 'alice@example.com' is not a destination: give a phone "
        "number in E.164 form (+15551234567) or a sip: URI",
    ]
    assert errors({"parallel": [{"to": "+15551230001", "timeout": 0}]}) == [
        "sections.main[0].connect.parallel[0].timeout: 0 is below the minimum 1 seconds"
    ]
    assert errors({"serial": [{"to": "sip:@example.com"}]}) == [
        "sections.main[0].connect.serial[0].to: 'sip:@example.com' is not a SIP URI: 'sip:@example.com': an empty "
        "user before '@'"
    ]
    assert errors({"serial": [{"from_": "+1555", "to": "+15551230001"}]})[0].startswith(
        "sections.main[0].connect.serial[0].from_: unknown parameter; expected one of"
    )
    assert errors({"to": "+15551230001", "call_state_events": ["answered", "hungup"]}) == [
        "sections.main[0].connect.call_state_events[1]: 'hungup' is not one of 'created', 'ringing', 'answered', 'ended'"
    ]
    assert errors({"serial": []}) == ["sections.main[0].connect.serial: needs at least 1 item(s)"]
    assert errors({"serial": [{"from": "+15551112222"}]}) == ["sections.main[0].connect.serial[0].to: is required"]


def test_phone_numbers_are_e164() -> None:
    assert errors({"to": "+15551231234"}) == []
    for bad in ("+1XXXXXXXXXX", "+0123", "+1234567890123456", "+1 555 123 1234"):
        (found,) = errors({"to": bad})
        assert "is not a phone number in E.164 form: + then up to 15 digits" in found, bad
    assert errors({"to": "5551231234"}) == [
        "sections.main[0].connect.to: '5551231234' is not a destination: give a phone number in E.164 form "
        "(+15551234567) or a sip: URI"
    ]


def test_a_phone_number_yaml_read_as_a_number_is_said_so() -> None:
    # to: +15551234567 unquoted is a number to YAML, its + dropped: the error says so and how to write it.
    doc = "sections:\n  main:\n    - connect:\n        serial:\n          - to: +15551234567\n"
    with pytest.raises(DocumentError) as e:
        load_text(doc, methods=REGISTRY)
    assert "connect.serial[0].to: 15551234567 is a number" in str(e.value)
    assert "quote it: to: '+15551234567'" in str(e.value)
    # So is a caller id: it would reach the far party as another number.
    with pytest.raises(DocumentError) as e:
        load_text(doc.replace("- to: +15551234567", "- {to: '+15551234567', from: +15550001111}"), methods=REGISTRY)
    assert "connect.serial[0].from: 15550001111 is a number" in str(e.value)
    assert "quote it: from: '+15550001111'" in str(e.value)


def test_placeholders_are_checked_when_the_step_runs() -> None:
    assert (
        errors({"to": "sip:%{call.to}@example.com", "timeout": "${t}", "headers": [{"name": "X-A", "value": "${v}"}]})
        == []
    )
    assert errors({"parallel": [{"to": "${meta.target}"}]}) == []


@pytest.mark.parametrize(
    ("connect", "expected"),
    [
        (
            {"to": "queue:support"},
            "sections.main[0].connect.to: 'queue:support' (a queue): not supported by this engine",
        ),
        (
            {"serial": [{"to": "+15551230001"}, {"to": "stream:wss://example.com/audio"}]},
            "sections.main[0].connect.serial[1].to: 'stream:wss://example.com/audio' (a WebSocket stream): not "
            "supported by this engine",
        ),
        (
            {"to": "/public/test_room"},
            "sections.main[0].connect.to: '/public/test_room' (a Resource Address): not supported by this engine",
        ),
        (
            {"to": "sip:bob@example.com", "encryption": "mandatory"},
            "sections.main[0].connect.encryption: 'mandatory' (SRTP media encryption): not supported by this engine",
        ),
        (
            {"parallel": [{"to": "sip:bob@example.com", "webrtc_media": True}]},
            "sections.main[0].connect.parallel[0].webrtc_media: true (WebRTC media): not supported by this engine",
        ),
    ],
)
def test_what_this_engine_does_not_do_is_unsupported_not_invalid(connect: object, expected: str) -> None:
    assert problems(connect) == ([], [expected])


def test_media_settings_of_no_effect_on_a_phone_number_are_taken_for_one() -> None:
    """connect.mdx: encryption applies to SIP destinations only, webrtc_media has no effect on calls to
    phone numbers — a document giving them for a number (one setting for every destination) was refused
    whole as unsupported. Given for a SIP destination they still are, at the level that gives them."""
    assert problems({"to": "+15551230001", "encryption": "mandatory", "webrtc_media": True}) == ([], [])
    found, unsupported = problems(
        {"encryption": "mandatory", "serial": [{"to": "+15551230001"}, {"to": "sip:bob@example.com"}]}
    )
    assert found == [] and unsupported == [
        "sections.main[0].connect.encryption: 'mandatory' (SRTP media encryption): not supported by this engine"
    ]
    res = run_doc(
        "sections:\n  main:\n    - connect: {to: '+15551230001', encryption: mandatory, webrtc_media: true}\n",
        peers=[PeerScript(to="+15551230001", at=1.0, hangup=2.0)],
    )
    assert res.vars["connect_result"] == "connected", res.vars


def test_unsupported_and_invalid_together_is_invalid() -> None:
    found, unsupported = problems({"serial": [{"to": "queue:a"}, {"to": "nobody"}]})
    assert len(found) == 1 and "serial[1].to" in found[0]
    assert len(unsupported) == 1 and "serial[0].to" in unsupported[0]


def test_sizes_are_bounded() -> None:
    many = [{"to": f"+1555123{i:04d}"} for i in range(MAX_DESTINATIONS + 1)]
    assert f"{MAX_DESTINATIONS + 1} destinations; at most {MAX_DESTINATIONS}" in errors({"serial": many})[0]
    wide = [{"to": f"+1555123{i:04d}"} for i in range(MAX_PARALLEL + 1)]
    assert errors({"serial_parallel": [[{"to": "+15551230001"}], wide]}) == [
        f"sections.main[0].connect.serial_parallel[1]: {MAX_PARALLEL + 1} destinations dialled at once; "
        f"at most {MAX_PARALLEL}"
    ]
    headers = [{"name": f"X-H{i}", "value": "v"} for i in range(40)]
    assert errors({"to": "+15551230001", "headers": headers}) == [
        "sections.main[0].connect.headers: 40 headers; at most 32"
    ]
    assert (
        "longer than 1024 characters"
        in errors({"to": "+15551230001", "headers": [{"name": "X-A", "value": "v" * 2000}]})[0]
    )
    assert errors({"to": "+15551230001", "timeout": 7200}) == [
        "sections.main[0].connect.timeout: 7200 is above the maximum 3600 seconds"
    ]
    assert "holds a line break" in errors({"to": "+15551230001", "from_name": "A\r\nVia: x"})[0]


def test_headers_the_engine_writes_are_refused() -> None:
    assert errors({"to": "sip:a@example.com", "headers": [{"name": "Call-ID", "value": "x"}]}) == [
        "sections.main[0].connect.headers[0].name: 'Call-ID' is written by the engine; use a header of your own (X-...)"
    ]
    assert errors({"to": "sip:a@example.com", "headers": [{"name": "X Bad", "value": "x"}]}) == [
        "sections.main[0].connect.headers[0].name: 'X Bad' is not a SIP header name (letters, digits, -)"
    ]
    assert errors({"to": "sip:a@example.com", "headers": [{"name": "X-A"}]}) == [
        "sections.main[0].connect.headers[0].value: is required"
    ]
    # Their compact forms (RFC 3261 §7.3.3) too: the SIP dialer refused them, failing every leg on
    # swml serve of a document swml validate and swml run had taken.
    assert errors(
        {"to": "sip:a@example.com", "headers": [{"name": "X-A", "value": "1"}, {"name": "i", "value": "x"}]}
    ) == [
        "sections.main[0].connect.headers[1].name: 'i' (Call-ID) is written by the engine; use a header of your own (X-...)"
    ]
    assert errors({"to": "sip:a@example.com", "headers": [{"name": "L", "value": "0"}]})[0].startswith(
        "sections.main[0].connect.headers[0].name: 'L' (Content-Length) is written by the engine"
    )
    assert errors({"to": "sip:a@example.com", "headers": [{"name": "s", "value": "support call"}]}) == []  # Subject


def test_a_name_or_header_value_is_refused_where_checked_exactly_when_the_invite_could_not_carry_it() -> None:
    """One rule (message.unfit_for_a_header) at validate and where the INVITE is written: a no-break space
    in a display name passed validate and failed every leg on swml serve (the SIP side took only what
    str.isprintable() calls printable); a line separator or a bidirectional override passed validate too."""
    from swml_engine.dialing import DialTarget
    from swml_engine.transports.sip.outbound import caller_id
    from swml_engine.transports.sip.uac import checked_headers

    for fine in ("Dr\u00a0Smith", "Zoë Ångström", "李小龙", "Support (24/7)"):
        assert (
            errors({"to": "sip:a@example.com", "from_name": fine, "headers": [{"name": "X-Who", "value": fine}]}) == []
        )
        assert caller_id(DialTarget(to="sip:a@example.com", from_="+15551230000", from_name=fine))[1] == fine
        assert checked_headers([("X-Who", fine)]) == (("X-Who", fine),)
    for unfit in ("a\u2028b", "admin\u202egnp.exe", "tab\there", "nul\x00"):
        said = errors({"to": "sip:a@example.com", "from_name": unfit})
        assert said and said[0].startswith("sections.main[0].connect.from_name: "), said
        said = errors({"to": "sip:a@example.com", "headers": [{"name": "X-A", "value": unfit}]})
        assert said and said[0].startswith("sections.main[0].connect.headers[0].value: "), said


def test_credentials_go_in_pairs_after_inheritance() -> None:
    assert errors({"username": "u", "serial": [{"to": "sip:a@example.com", "password": "p"}]}) == []
    assert errors({"serial": [{"to": "sip:a@example.com", "username": "u"}]}) == [
        "sections.main[0].connect.serial[0]: username and password go together (the far end's digest challenge is "
        "answered with them): give both, or neither"
    ]


def test_codecs_are_names_answer_knows() -> None:
    assert errors({"serial": [{"to": "sip:a@example.com", "codecs": "PCMU"}]}) == []
    assert errors({"to": "sip:a@example.com", "codecs": "PCMU,SPEEX"}) == [
        "sections.main[0].connect.codecs: unknown codec(s) SPEEX; known: PCMU, PCMA, G722, G729, AMR-WB, OPUS, VP8, H264"
    ]
    # Known, but none this engine speaks: every SIP leg would fail on swml serve (swml run took it). A phone
    # number's leg does not use codecs (connect.mdx), so there they are no matter.
    assert errors({"to": "sip:a@example.com", "codecs": "PCMU,OPUS"}) == []
    assert problems({"to": "+15551230001", "codecs": "OPUS"}) == ([], [])
    assert problems({"codecs": "OPUS", "serial": [{"to": "sip:a@example.com"}, {"to": "sip:b@example.com"}]})[1] == [
        "sections.main[0].connect.codecs: 'OPUS' (none of them is a codec this engine speaks: G722, PCMU, PCMA): "
        "not supported by this engine"
    ]
    assert problems({"serial": [{"to": "sip:a@example.com", "codecs": "OPUS,G729@8000h"}]}) == (
        [],
        [
            "sections.main[0].connect.serial[0].codecs: 'OPUS,G729@8000h' (none of them is a codec this engine "
            "speaks: G722, PCMU, PCMA): not supported by this engine"
        ],
    )


def test_confirm_is_a_url_or_steps_that_make_sense_on_a_far_leg() -> None:
    assert errors({"to": "+15551230001", "confirm": "https://example.com/confirm"}) == []
    assert errors({"to": "+15551230001", "confirm": "your-recording-script-url"})[0].startswith(
        "sections.main[0].connect.confirm: "
    )
    assert errors({"to": "+15551230001", "confirm": [{"goto": {"label": "x"}}]}) == [
        "sections.main[0].connect.confirm[0].goto: goto cannot run in confirm (on the far leg); use one of cond, "
        "denoise, hangup, play, prompt, record, record_call, send_digits, send_sms, set, sleep, stop_denoise, "
        "stop_record_call, stop_stream, stop_tap, stream, tap, unset"
    ]
    # The steps of a confirm list are checked as any steps are.
    assert errors({"parallel": [{"to": "+15551230001", "confirm": [{"play": {"volume": 3}}]}]}) == [
        "sections.main[0].connect.parallel[0].confirm[0].play: give exactly one of url (one sound) or urls (a list "
        "of sounds)"
    ]


def test_steps_inside_a_confirm_cond_are_held_to_the_confirm_list_too() -> None:
    # A connect nested in a confirm's cond ran on the far leg (which places no calls) and was silently
    # nothing; an execute or transfer there named a section of a document the far leg does not run.
    nested = {"cond": [{"when": "true", "then": [{"set": {"a": 1}}, {"connect": {"to": "sip:b@example.com"}}]}]}
    (error,) = errors({"to": "sip:a@example.com", "confirm": [nested]})
    assert error.startswith(
        "sections.main[0].connect.confirm[0].cond[0].then[1].connect: connect cannot run in confirm (on the far leg)"
    )
    deeper = {"cond": [{"when": "true", "then": [{"cond": [{"when": "true", "then": [{"transfer": {"dest": "x"}}]}]}]}]}
    (error,) = errors({"serial": [{"to": "sip:a@example.com", "confirm": [deeper]}]})
    assert "serial[0].confirm[0].cond[0].then[0].cond[0].then[0].transfer: transfer cannot run in confirm" in error


def test_result_is_a_switch_on_connect_result_or_a_cond() -> None:
    doc = load({"to": "+15551230001", "result": {"case": {"failed": [{"hangup": {}}]}}})
    kind, params = doc.sections["main"][0].params["result"]
    assert kind == "switch" and params["variable"] == "connect_result"
    doc = load({"to": "+15551230001", "result": [{"when": "connect_result == 'failed'", "then": [{"hangup": {}}]}]})
    assert doc.sections["main"][0].params["result"][0] == "cond"
    assert errors({"to": "+15551230001", "result": "connected"}) == [
        "sections.main[0].connect.result: 'connected' is not a switch object or a cond list"
    ]


def test_transfer_after_bridge_is_a_url_or_an_inline_document() -> None:
    inline = json.dumps({"sections": {"main": [{"play": {"url": "say:bye"}}]}})
    assert errors({"to": "+15551230001", "transfer_after_bridge": inline}) == []
    bad = json.dumps({"sections": {"main": [{"play": {}}]}})
    (found,) = errors({"to": "+15551230001", "transfer_after_bridge": bad})
    assert found.startswith("sections.main[0].connect.transfer_after_bridge: inline SWML: ")
    assert errors({"to": "+15551230001", "transfer_after_bridge": "ftp://example.com/x"})[0].startswith(
        "sections.main[0].connect.transfer_after_bridge: "
    )


def test_connect_inside_a_cond_is_checked_too() -> None:
    with pytest.raises(DocumentError) as e:
        load_text(
            "sections:\n  main:\n    - cond:\n        - when: 'true'\n          then:\n"
            "            - connect: {to: 'queue:x'}\n",
            methods=METHODS,
        )
    assert not e.value.errors
    assert [str(u) for u in e.value.unsupported] == [
        "sections.main[0].cond[0].then[0].connect.to: 'queue:x' (a queue): not supported by this engine"
    ]


def test_swml_validate_exits_3_for_what_this_engine_does_not_dial(tmp_path: Any, capsys: Any) -> None:
    from swml_engine.cli import main

    queue = tmp_path / "queue.yaml"
    queue.write_text(
        "sections:\n  main:\n    - connect: {to: 'queue:support', transfer_after_bridge: 'https://example.com/a'}\n"
    )
    assert main(["validate", str(queue)]) == 3
    assert capsys.readouterr().err == (
        f"{queue}: sections.main[0].connect.to: 'queue:support' (a queue): not supported by this engine\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("sections:\n  main:\n    - connect: {serial: [{to: 'queue:a'}, {to: 'alice'}]}\n")
    assert main(["validate", str(bad)]) == 1
    good = tmp_path / "good.yaml"
    good.write_text(
        "sections:\n  main:\n    - connect: {parallel: [{to: '+15551230001'}, {to: 'sip:b@example.com'}]}\n"
    )
    assert main(["validate", str(good)]) == 0


def test_the_reference_examples_load() -> None:
    """connect.mdx's examples (the corpus's connect__N): the SIP and phone ones load; queue, stream and
    Resource Address ones are not supported."""
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[1].parent / "shared" / "swml-corpus" / "docs-examples"
    if not corpus.is_dir():
        pytest.skip("corpus not found")
    verdicts = {}
    for path in sorted(corpus.glob("connect__*.json")):
        try:
            load_document(json.loads(path.read_text()), path.name, methods=METHODS)
            verdicts[path.name] = "ok"
        except DocumentError as e:
            verdicts[path.name] = "invalid" if e.errors else "unsupported"
    assert {n for n, v in verdicts.items() if v != "ok"} == {"connect__5.json", "connect__10.json", "connect__11.json"}
    assert all(v in ("ok", "unsupported") for v in verdicts.values()) and len(verdicts) == 11
