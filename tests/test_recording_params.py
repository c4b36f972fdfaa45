"""Recording parameters and variables at their edges, as a script on `swml run` meets them (simulated call)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RATE, run_doc, small_filesystem
from swml_engine.recording import recorder


def recordings(tmp_path: Path) -> dict[str, dict[str, Any]]:
    root = tmp_path / "out" / "recordings"
    return {m["control_id"]: m for m in (json.loads(p.read_text()) for p in root.glob("*.json"))}


def test_a_recording_that_does_not_start_leaves_no_earlier_url_behind(tmp_path: Path) -> None:
    """A failed record_call or record empties its URL variable: a script that plays or posts it after a
    failure must not get an earlier recording of the call instead (record_call.mdx: "the URL of the
    newly started recording"). stop_record_call without control_id still stops the last one started."""
    res = run_doc(
        """
sections:
  main:
    - record_call: {control_id: first}
    - record: {max_length: 0.5, initial_timeout: 0, end_silence_timeout: 0}
    - set: {f: ogg}
    - record_call: {format: '${f}'}
    - record: {format: '${f}'}
    - set: {call_url: '${record_call_url}', url: '${record_url}'}
    - stop_record_call: {}
""",
        tmp_path,
    )
    assert (res.vars["record_call_result"], res.vars["record_result"]) == ("failed", "failed")
    assert (res.vars["call_url"], res.vars["url"]) == ("", "")
    assert res.vars["stop_record_call_result"] == "success"
    assert recordings(tmp_path)["first"]["end_reason"] == "stop_record_call"


def test_a_recording_the_full_disk_keeps_from_starting_leaves_record_control_id_as_it_was(tmp_path: Path) -> None:
    """The same for a start that fails on its storage (a disk already full): record_control_id still
    names the recording stop_record_call's default should stop, not the one that never started."""
    with small_filesystem(tmp_path / "out" / "recordings", "64k") as root:
        with contextlib.suppress(OSError), (root / "filler").open("wb") as f:  # every block taken
            while True:
                f.write(b"x" * 4096)
                f.flush()
        res = run_doc(
            "sections: {main: [{set: {record_control_id: before, record_call_url: before}}, record_call]}", tmp_path
        )
    assert res.vars["record_call_result"] == "failed"
    assert (res.vars["record_control_id"], res.vars["record_call_url"]) == ("before", "")


def test_a_status_url_that_comes_out_empty_costs_the_callbacks_not_the_recording(tmp_path: Path) -> None:
    """status_url: '${cb}' with cb unset (a receiver configured in one place, not another) came out
    empty, and the step failed: no recording at all. Like a substituted URL that does not parse, it now
    records without callbacks and says so where it was written."""
    res = run_doc(
        """
sections:
  main:
    - record_call: {control_id: bg, status_url: '${cb}'}
    - record: {status_url: '${cb}', max_length: 1, initial_timeout: 0}
    - set: {bg: '${record_call_result}'}
""",
        tmp_path,
    )
    assert (res.vars["bg"], res.vars["record_result"]) == ("success", "success")
    assert sorted(m["state"] for m in recordings(tmp_path).values()) == ["finished", "finished"]
    errors = [(e["where"], e["message"]) for e in res.events if e["type"] == "error"]
    assert [where for where, _ in errors] == [
        "sections.main[0].record_call.status_url",
        "sections.main[1].record.status_url",
    ]
    assert all("no status callbacks are sent" in message for _, message in errors), errors


def test_a_call_records_at_most_ten_recordings_at_once(tmp_path: Path) -> None:
    """A document of 3,000 record_call steps (120 KB) opened 3,000 MP4 recordings in one call: 2.7 GB of
    memory, every file descriptor of the process (the others failed with EMFILE) and 45 s of CPU for 3 s
    of call, holding up every call's media. The eleventh live one now fails to start, saying why; one
    stopped makes room again."""
    steps = "\n".join(f"    - record_call: {{control_id: r{i}}}" for i in range(11))
    res = run_doc(
        f"""
sections:
  main:
{steps}
    - set: {{eleventh: '${{record_call_result}}'}}
    - stop_record_call: {{control_id: r0}}
    - record_call: {{control_id: again}}
""",
        tmp_path,
    )
    assert (res.vars["eleventh"], res.vars["record_call_result"]) == ("failed", "success")
    [error] = [e for e in res.events if e["type"] == "error"]
    assert error["where"] == "sections.main[10].record_call", error
    assert "10 recordings live already" in error["message"], error
    assert sorted(recordings(tmp_path)) == sorted([f"r{i}" for i in range(10)] + ["again"])


def test_a_call_makes_at_most_max_per_call_recordings_in_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop of record_call and stop_record_call made recordings for as long as the call lasted (some 50
    a second, each two files): past the bound (1000; 3 here) a start fails saying why, and the call goes on."""
    monkeypatch.setattr(recorder, "MAX_PER_CALL", 3)
    res = run_doc(
        """
sections:
  main:
    - set: {n: 0}
    - label: again
    - record_call: {}
    - set: {result: '${record_call_result}'}
    - stop_record_call: {}
    - set: {n: '${n + 1}'}
    - goto: {label: again, when: 'n < 5'}
    - set: {after: ok}
""",
        tmp_path,
    )
    assert (res.vars["result"], res.vars["after"]) == ("failed", "ok")
    assert len(recordings(tmp_path)) == 3
    errors = [e["message"] for e in res.events if e["type"] == "error"]
    assert len(errors) == 2 and all("this call has made 3 recordings, the most one call may make" in m for m in errors)


def resident_mb() -> float:
    """This process's resident memory now (not its peak), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_recording_that_ended_lets_go_of_its_voice_detector_and_encoder(tmp_path: Path) -> None:
    """Each recording with a timeout loads a voice detector (Silero: about 10 MB), each MP4 one an encoder;
    both were kept as long as the call, after the recording ended: 1,000 record_call/stop_record_call
    pairs in one call (10 live at most) held 10 GB. 25 of them now cost no more than a few live ones."""
    pairs = "\n".join(
        "    - record_call: {initial_timeout: 5, format: mp4}\n    - stop_record_call: {}" for _ in range(25)
    )
    warm = "sections: {main: [{record_call: {initial_timeout: 5, format: mp4}}, {sleep: 100}]}"
    run_doc(warm, tmp_path / "warm", caller_audio=np.zeros(RATE, dtype=np.int16))  # (the libraries loaded)
    before = resident_mb()
    res = run_doc(f"sections:\n  main:\n{pairs}\n", tmp_path)
    grown = resident_mb() - before
    assert res.vars["stop_record_call_result"] == "success" and len(recordings(tmp_path)) == 25
    assert grown < 100, f"{grown:.0f} MB more after 25 recordings that ended"


def test_the_error_state_of_a_recording_that_did_not_start_names_its_call_as_every_state_does(tmp_path: Path) -> None:
    """record.state events carry their status callback's params (docs/methods.md): call_id and node_id
    too, as those of a recording that started do. A failed start's event left them out, so a reader of
    the events that picks a call's recordings by call_id never saw it fail."""
    res = run_doc("sections: {main: [{set: {f: ogg}}, {record_call: {format: '${f}', control_id: x}}]}", tmp_path)
    [state] = [e for e in res.events if e["type"] == "record.state"]
    assert (state["state"], state["control_id"], state["call_id"]) == ("error", "x", res.call.call_id)
    assert state["node_id"] == "swml-engine"
