"""Every calling document of the public docs either runs to completion on a simulated call or is reported
"not supported" — never an error of ours, never a traceback. Cross-checked with the official JSON Schema.

The corpus lives in ../shared/swml-corpus (beside the repository, in CI too); it is not copied here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from swml_engine.document.loader import load_document
from swml_engine.errors import DocumentError
from swml_engine.methods import REGISTRY
from swml_engine.session import Simulation, simulate

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "swml-corpus"
DOCS = CORPUS / "docs-examples"

#: Documents we accept although the official schema rejects them, and why (also in docs/conformance.md).
SCHEMA_DIFFERENCES = {
    "azure__2.json": "play written as a string (shorthand the docs use)",
    "cartesia__2.json": "play written as a string (shorthand the docs use)",
    "deepgram__2.json": "play written as a string (shorthand the docs use)",
    "elevenlabs__2.json": "play written as a string (shorthand the docs use)",
    "google__2.json": "play written as a string (shorthand the docs use)",
    "openai__2.json": "play written as a string (shorthand the docs use)",
    "polly__2.json": "play written as a string (shorthand the docs use)",
    "execute_swml__1.json": "play written as a string (shorthand the docs use)",
    "deployment__3.json": "section written as one step instead of a list",
    "record_call__2.json": "play.urls mixes sounds and a ${...} variable",
}


#: Documents we report invalid although the schema accepts them: a guide's placeholder stands where a
#: value must be, and a user who copies it is told at validate time, not by a call that fails (also in
#: docs/conformance.md).
PLACEHOLDERS = {
    "call-whisper__2.json": "'+1XXXXXXXXXX' is not a phone number in E.164 form",
    "outbound__2.json": "connect.confirm: 'your-recording-script-url'",
}


#: Documents the schema rejects and so do we, each with what the error says (also in docs/conformance.md).
INVALID_TOO = {
    "transfer__3.json": "transfer: a list is not an object with dest",  # transfer.mdx's list of one-key objects
}


def calling_documents() -> list[str]:
    if not DOCS.is_dir():
        return []
    index = json.loads((DOCS / "index.json").read_text())
    return sorted(d["file"] for d in index["documents"] if d["context"] == "calling")


def verdict(raw: Any, name: str) -> str:
    try:
        load_document(raw, name, methods=REGISTRY)
    except DocumentError as e:
        return "invalid" if e.errors else "unsupported"
    return "ok"


pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason=f"corpus not found at {CORPUS}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples' servers are public names, out of reach here (and in CI) either way: every fetch goes
    to a proxy that refuses at once, so none waits on a resolver that answers "no such name" after 5 s
    now and then (prompt__3 fetches some 200 times: 12 s to 75 s before)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # (the discard port: nothing listens)
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


CALLER = (np.sin(2 * np.pi * 440 * np.arange(3 * 8000) / 8000) * 8000).astype(np.int16)


#: Examples whose steps fail offline, and why: no network here, no speech recognition, a variable the
#: hosted platform would fill.
EXPECTED_ERRORS: dict[str, str | tuple[str, ...]] = {
    "deployment__2.json": "is not a playable sound",  # play: '${...}' of a variable only a server sets
    "deployment__3.json": "cannot fetch SWML",
    "execute__3.json": "cannot fetch SWML",
    "expressions__1.json": "no speech recognition",
    "play__1.json": "cannot fetch",
    "play__2.json": "cannot fetch",
    # Its sounds are on example.com: each pass of the menu fails at once and transfers to itself again,
    # until the transfers-a-second limit stops the loop.
    "prompt__3.json": ("cannot fetch", "more than 100 transfers within a second"),
    "prompt__4.json": "cannot fetch",
    "sip_refer__1.json": "cannot fetch SWML",  # the transfer fails (no --peer for alice), then execute fetches
    "transfer__2.json": "cannot fetch SWML",
    "transfer__4.json": "cannot fetch",  # no key matches a case: the music plays (from the CDN)
}


@pytest.mark.parametrize("name", calling_documents())
def test_document_runs_or_is_reported_unsupported(name: str) -> None:
    raw = json.loads((DOCS / name).read_text())
    try:
        doc = load_document(raw, name, methods=REGISTRY)
    except DocumentError as e:
        if name in PLACEHOLDERS:
            assert e.errors and all(PLACEHOLDERS[name] in str(x) for x in e.errors), e.errors
            return
        if name in INVALID_TOO:
            assert e.errors and all(INVALID_TOO[name] in str(x) for x in e.errors), e.errors
            return
        assert not e.errors, f"{name}: we call a documented example invalid: {e.errors}"
        assert e.unsupported and all(str(u).endswith("not supported by this engine") for u in e.unsupported)
        return
    # A few seconds of caller audio and a '#' press; `sleep: -1` examples end when the caller hangs up.
    res = simulate(doc, Simulation(caller_audio=CALLER, dtmf=[(3.0, "#")], hangup_at=300.0))
    # (remote_cancel: a `sleep: -1` that never answers, its caller giving up at 300 s)
    ends = ("script_end", "hangup", "remote_hangup", "remote_cancel", "busy", "decline")
    assert res.result.reason in ends, res.result
    # No step fails, except where the example needs what an offline simulated call lacks.
    errors = [e["message"] for e in res.events if e["type"] == "error"]
    given = EXPECTED_ERRORS.get(name, ())
    expected = (given,) if isinstance(given, str) else given
    assert all(any(x in m for x in expected) for m in errors), [m for m in errors if not any(x in m for x in expected)]
    assert res.events[-1]["type"] == "call.state" and res.events[-1]["state"] == "ended"


def test_verdicts_match_the_official_schema_except_where_documented() -> None:
    schema = json.loads((CORPUS / "schema" / "SWMLObject.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    differences: dict[str, str] = {}
    for name in calling_documents():
        raw = json.loads((DOCS / name).read_text())
        ours = verdict(raw, name)
        theirs = validator.is_valid(raw)
        if (ours == "ok") != theirs and not (ours == "unsupported" and theirs):
            differences[name] = ours
    assert set(differences) == set(SCHEMA_DIFFERENCES) | set(PLACEHOLDERS), differences
    assert all(differences[name] == "invalid" for name in PLACEHOLDERS)
    documented = (Path(__file__).resolve().parents[1] / "docs" / "conformance.md").read_text()
    assert all(name in documented for name in [*SCHEMA_DIFFERENCES, *PLACEHOLDERS, *INVALID_TOO])
    assert all(verdict(json.loads((DOCS / name).read_text()), name) == "invalid" for name in INVALID_TOO)
    # Invalid to the schema inside a method we do not run: "not supported" here, each listed in the docs.
    unsupported_invalid = [
        name
        for name in calling_documents()
        if verdict(raw := json.loads((DOCS / name).read_text()), name) == "unsupported" and not validator.is_valid(raw)
    ]
    assert len(unsupported_invalid) == 11 and all(f"| {name} |" in documented for name in unsupported_invalid)
