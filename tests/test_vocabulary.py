"""The engine's named values (call states, end reasons, event types, recording states and end reasons)
are one list each, in swml_engine.vocabulary, and docs/ documents exactly those: neither can drift."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from swml_engine.call import Call
from swml_engine.document.loader import load_text
from swml_engine.events import EventLog
from swml_engine.methods import REGISTRY
from swml_engine.session import Simulation, simulate
from swml_engine.transports.simulated import SimulatedTransport
from swml_engine.vocabulary import (
    CallState,
    ConnectState,
    DialState,
    DisconnectReason,
    EndReason,
    EventType,
    FailReason,
    LegEndReason,
    RecordingEndReason,
    RecordingState,
    ReferState,
    values,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: Each list, the page and the header of the first column of the table that documents it.
DOCUMENTED: list[tuple[Any, str, str]] = [
    (CallState, "methods.md", "state"),
    (EndReason, "methods.md", "reason"),
    (EventType, "methods.md", "type"),
    (RecordingState, "recording.md", "state"),
    (RecordingEndReason, "recording.md", "end reason"),
    (ReferState, "methods.md", "refer state"),
    (DialState, "connect.md", "leg state"),
    (FailReason, "connect.md", "failed reason"),
    (ConnectState, "connect.md", "connect state"),
    (DisconnectReason, "connect.md", "disconnected by"),
    (LegEndReason, "connect.md", "end_reason"),
]


def documented(page: str, column: str) -> list[str]:
    """The values (in backticks) of the first column of the one table of ``page`` headed ``column``."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    header = re.compile(rf"^\|\s*{re.escape(column)}\s*\|")
    starts = [i for i, line in enumerate(lines) if header.match(line)]
    assert len(starts) == 1, f"docs/{page}: expected one table whose first column is {column!r}, found {len(starts)}"
    out: list[str] = []
    for line in lines[starts[0] + 2 :]:  # past the header and its --- line
        if not line.startswith("|"):
            break
        cell = line.split("|")[1].strip()
        m = re.fullmatch(r"`([^`]+)`", cell)
        assert m is not None, f"docs/{page}: {cell!r} in the {column!r} table is not one `value`"
        out.append(m.group(1))
    return out


@pytest.mark.parametrize(("vocabulary", "page", "column"), DOCUMENTED, ids=[f"{p}:{c}" for _, p, c in DOCUMENTED])
def test_each_list_is_documented_exactly(vocabulary: Any, page: str, column: str) -> None:
    in_code, in_docs = values(vocabulary), documented(page, column)
    assert len(in_docs) == len(set(in_docs)), f"docs/{page}: a value is listed twice in the {column!r} table"
    assert not set(in_code) - set(in_docs), f"used but not documented in docs/{page}: {set(in_code) - set(in_docs)}"
    assert not set(in_docs) - set(in_code), f"documented in docs/{page} but not used: {set(in_docs) - set(in_code)}"
    assert in_docs == list(in_code), f"docs/{page} lists the {column!r} values in another order than the code"


def test_early_media_is_one_state_for_the_call_and_its_event() -> None:
    """Call.state said "early" while its event said "early_media": each event now gives the state the
    call is in."""

    async def early_then_answer() -> list[tuple[str, str]]:
        events = EventLog()
        call = Call(SimulatedTransport(), events=events)
        seen: list[tuple[str, str]] = []
        events.sinks.append(lambda e: seen.append((e["state"], call.state)) if e["type"] == "call.state" else None)
        call.start()
        await call.early_media()
        await call.answer()
        await call.hangup()
        await call.finish()
        return seen

    seen = asyncio.run(early_then_answer())
    assert [event for event, _ in seen] == ["ringing", "early_media", "answered", "ended"]
    assert all(event == state for event, state in seen), seen


def test_every_event_a_call_emits_is_a_documented_type() -> None:
    doc = load_text(
        "sections:\n  main:\n"
        "    - set: {a: 1}\n    - unset: a\n    - answer\n"
        "    - record_call: {format: wav}\n    - play: {url: 'silence:0.1'}\n"
        "    - stop_record_call: {control_id: nothing}\n    - send_digits: {digits: '1'}\n    - hangup: {reason: busy}\n",
        methods=REGISTRY,
    )
    result = simulate(doc, Simulation())
    types = {e["type"] for e in result.events}
    assert types <= set(values(EventType))
    assert {"call.state", "step.start", "step.end", "vars.set", "vars.unset", "record.state", "warning"} <= types
    ended = [e for e in result.events if e["type"] == "call.state"][-1]
    assert ended == {"t": ended["t"], "type": "call.state", "state": "ended", "reason": "busy"}
