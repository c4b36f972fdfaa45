"""``transfer``: to a section, a document at a URL (a real HTTP server on loopback) or an inline JSON
document; it does not come back, its params reach the destination, variables and recordings carry on."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import run_doc
from http_peers import http_peer, swml
from swml_engine.document.loader import load_text
from swml_engine.errors import DocumentError
from swml_engine.methods import REGISTRY


def plays(res: Any) -> list[str]:
    return [e["url"] for e in res.events if e["type"] == "play.start"]


def errors_of(text: str) -> tuple[list[str], list[str]]:
    """What ``swml validate`` reports: (errors, not supported)."""
    try:
        load_text(text, methods=REGISTRY)
    except DocumentError as e:
        return [str(x) for x in e.errors], [str(x) for x in e.unsupported]
    return [], []


def test_a_section_runs_in_place_of_the_rest_and_the_call_ends_after_it() -> None:
    # transfer.mdx's "Basic transfer to a section": 'Back!' is never said (transfer does not return).
    res = run_doc(
        """
sections:
  main:
    - play: {url: 'say:Transferring you to another section'}
    - transfer: {dest: subsection}
    - play: {url: 'say:Back!'}
  subsection:
    - play: {url: 'say:inside a subsection'}
"""
    )
    assert plays(res) == ["say:Transferring you to another section", "say:inside a subsection"]
    assert res.result.reason == "script_end"
    assert not [e for e in res.events if e["type"] == "error"]


def test_params_reach_the_section_variables_stay_and_a_transfer_inside_an_execute_does_not_return() -> None:
    res = run_doc(
        """
sections:
  main:
    - set: {before: kept}
    - execute: {dest: menu, on_return: [{set: {returned: true}}]}
    - set: {after_execute: true}
  menu:
    - transfer: {dest: sales, params: {where: sales}, meta: {ignored: true}}
    - set: {after_transfer: true}
  sales:
    - set: {seen: '${params.where}/${before}'}
    - transfer: {dest: '{"sections": {"main": [{"set": {"inline": "ran"}}, {"return": 1}]}}'}
    - set: {after_second: true}
"""
    )
    assert res.vars["seen"] == "sales/kept"
    assert res.vars["inline"] == "ran"
    assert not {"returned", "after_execute", "after_transfer", "after_second"} & set(res.vars)
    assert res.result.reason == "script_end"


def test_a_url_is_posted_the_call_with_params_vars_and_credentials() -> None:
    remote = "sections:\n  main:\n    - set: {remote: '${params.where} for ${vars.caller_name}'}\n"
    with http_peer() as peer:
        peer.routes["/next"] = swml(remote)
        url = peer.url("/next", auth="user:s3cret")
        res = run_doc(
            f"""
sections:
  main:
    - set: {{caller_name: Ann}}
    - transfer: {{dest: '{url}', params: {{where: sales}}}}
    - set: {{after: true}}
""",
            envs={"REGION": "eu"},
        )
    (request,) = peer.hits("/next")
    assert request["method"] == "POST"
    body = json.loads(request["body"])
    assert body["params"] == {"where": "sales"} and body["vars"]["caller_name"] == "Ann"
    assert body["call"]["from"] == "+15551230000" and body["envs"] == {"REGION": "eu"}
    assert request["headers"]["Authorization"] == "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert res.vars["remote"] == "sales for Ann"
    assert "after" not in res.vars


def test_a_url_that_fails_is_an_error_at_its_place_and_the_script_goes_on() -> None:
    # As execute's failure: the step fails, the next step runs; the credentials are never shown.
    with http_peer() as peer:
        url = peer.url("/missing", auth="user:s3cret")
        res = run_doc(f"sections: {{main: [{{transfer: {{dest: '{url}'}}}}, {{set: {{after: ok}}}}]}}")
    (error,) = [e for e in res.events if e["type"] == "error"]
    assert error["where"] == "sections.main[0].transfer"
    assert error["message"].startswith("sections.main[0].transfer.dest: ")
    assert "404" in error["message"] and "s3cret" not in error["message"]
    assert res.vars["after"] == "ok" and res.result.reason == "script_end"


def test_a_bad_destination_is_named_with_its_place_when_the_document_loads() -> None:
    errors, unsupported = errors_of("sections: {main: [answer, {transfer: {dest: nowhere}}]}")
    assert errors == ["sections.main[1].transfer.dest: no section 'nowhere' (sections: main)"]
    errors, _ = errors_of("""sections: {main: [answer, {transfer: {dest: '{"sections": {}}'}}]}""")
    assert errors[0].startswith("sections.main[1].transfer.dest: inline SWML: ")
    # The schema has no string or list form; relay: is a destination the reference has but we do not run.
    errors, _ = errors_of("sections: {main: [{transfer: main}]}")
    assert errors == ["sections.main[0].transfer: 'main' is not an object with dest (write transfer: {dest: main})"]
    errors, _ = errors_of("sections: {main: [{transfer: [{dest: main}]}]}")
    assert errors[0].startswith("sections.main[0].transfer: a list is not an object with dest")
    errors, unsupported = errors_of("sections: {main: [{transfer: {dest: 'relay:my_app'}}]}")
    assert errors == []
    assert unsupported == [
        "sections.main[0].transfer.dest: 'relay:my_app' (a Relay application): not supported by this engine"
    ]


def test_a_menu_that_transfers_to_itself_loops_and_one_with_nothing_to_wait_for_is_stopped() -> None:
    # prompt.mdx's menu: each pass waits for the caller; 150 passes do not nest (no depth limit is met).
    res = run_doc(
        "sections: {main: [{set: {n: '${(n || 0) + 1}'}}, {sleep: 1000}, {goto: {label: x, when: 'n > 150'}},"
        " {transfer: {dest: main}}, {label: x}]}"
    )
    assert res.vars["n"] == 151 and not [e for e in res.events if e["type"] == "error"]
    res = run_doc("sections: {main: [{set: {n: '${(n || 0) + 1}'}}, {transfer: {dest: main}}, {set: {after: ok}}]}")
    (error,) = [e for e in res.events if e["type"] == "error"]
    assert (
        error["where"] == "sections.main[1].transfer" and "more than 100 transfers within a second" in error["message"]
    )
    assert res.vars["after"] == "ok" and res.result.reason == "script_end"


@pytest.mark.parametrize("dest", ["rest", '{"sections": {"main": [{"sleep": 3000}]}}'])
def test_a_recording_started_before_a_transfer_keeps_recording(tmp_path: Path, dest: str) -> None:
    res = run_doc(
        f"sections: {{main: [answer, record_call, {{transfer: {{dest: '{dest}'}}}}], rest: [{{sleep: 3000}}]}}",
        tmp_path,
    )
    (meta_path,) = (tmp_path / "out" / "recordings").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["state"] == "finished" and meta["end_reason"] == "script_end"
    assert abs(meta["duration"] - 3.0) <= 0.05
    assert res.vars["record_call_result"] == "success"
