"""The script runner and each method's outcome: goto, execute, return, switch, cond, prompt, sleep, hangup."""

from __future__ import annotations

import pytest

from conftest import run_doc, vars_set


def steps(res: object, method: str) -> list[dict[str, object]]:
    return [e for e in res.events if e["type"] == "step.end" and e["method"] == method]  # type: ignore[attr-defined]


def test_goto_max_counts_jumps_and_when() -> None:
    res = run_doc(
        """
sections:
  main:
    - set: {n: 0}
    - label: loop
    - set: {n: '${n + 1}'}
    - goto: {label: loop, max: 4}
    - label: second
    - set: {m: '${(m || 0) + 1}'}
    - goto: {label: second, when: 'm < 3'}
"""
    )
    assert res.vars["n"] == 5  # the first pass plus 4 jumps
    assert res.vars["m"] == 3
    assert [e["result"] for e in steps(res, "goto")][-2:] == ["taken", "not_taken"]


def test_goto_default_max_is_100() -> None:
    res = run_doc(
        "sections: {main: [{label: a}, {set: {n: '${(n || 0) + 1}'}}, {goto: a}]}".replace(
            "{goto: a}", "{goto: {label: a}}"
        )
    )
    assert res.vars["n"] == 101


def test_nested_execute_params_are_restored_and_return_value_set() -> None:
    res = run_doc(
        """
sections:
  main:
    - execute: {dest: outer, params: {level: outer, keep: kept}}
    - set: {after_outer: '[${params.level}]', result: '${return_value}'}
  outer:
    - set: {outer_before: '${params.level}'}
    - execute: {dest: inner, params: {level: inner}}
    - set: {outer_after: '${params.level}', inner_returned: '${return_value}', keep: '${params.keep}'}
    - return: {from: '${params.level}', n: 2}
  inner:
    - set: {inner_sees: '${params.level}', inner_keep: '[${params.keep}]'}
    - return: 7
"""
    )
    v = res.vars
    assert v["outer_before"] == "outer"
    assert v["inner_sees"] == "inner" and v["inner_keep"] == "[]"
    assert v["outer_after"] == "outer" and v["keep"] == "kept"
    assert v["inner_returned"] == 7
    assert v["result"] == {"from": "outer", "n": 2}
    assert v["after_outer"] == "[]"


def test_execute_on_return_and_result_switch_and_cond() -> None:
    res = run_doc(
        """
sections:
  main:
    - execute:
        dest: pick
        on_return:
          - set: {on_return_saw: '${return_value}'}
        result:
          case:
            blue: [{set: {switch_branch: blue}}]
          default: [{set: {switch_branch: default}}]
    - execute:
        dest: pick
        result:
          - when: 'return_value == "green"'
            then: [{set: {cond_branch: green}}]
          - else: [{set: {cond_branch: other}}]
  pick:
    - return: blue
"""
    )
    v = res.vars
    assert v["on_return_saw"] == "blue"
    assert v["switch_branch"] == "blue"
    assert v["cond_branch"] == "other"


def test_execute_inline_document_and_section_without_return() -> None:
    res = run_doc(
        """
sections:
  main:
    - execute: {dest: '{"sections": {"main": [{"set": {"inline": "${params.x}"}}, {"return": 5}]}}', params: {x: ran}}
    - set: {first: '${return_value}'}
    - execute: {dest: noreturn}
    - set: {second: '[${return_value}]'}
    - transfer: {dest: '{"sections": {"main": [{"set": {"moved": "${params.y}"}}]}}', params: {y: there}}
  noreturn:
    - set: {ran: true}
"""
    )
    # An inline document's placeholders are its own steps', filled as they run: it reads the params given to it.
    assert res.vars["inline"] == "ran" and res.vars["moved"] == "there"
    assert res.vars["first"] == 5
    assert res.vars["ran"] is True
    assert res.vars["second"] == "[]"


def test_execute_url_posts_the_call_payload(http_server) -> None:  # type: ignore[no-untyped-def]
    doc = b"sections:\n  main:\n    - set: {remote: '${params.who}'}\n    - return: done\n"
    http_server.files["/swml"] = (doc, "application/yaml")
    res = run_doc(
        f"sections: {{main: [{{execute: {{dest: '{http_server.url('/swml')}', params: {{who: bob}}}}}}]}}",
    )
    assert res.vars["remote"] == "bob"
    assert res.vars["return_value"] == "done"
    body = http_server.requests[0]["json"]
    assert body["params"] == {"who": "bob"} and body["call"]["from"] == "+15551230000"
    assert set(body) >= {"call", "vars", "params", "envs"}


def test_a_return_that_ends_the_script_sets_return_value() -> None:
    # return.mdx: "Return from execute or exit script"; return_value was set for an execute only.
    assert run_doc("sections: {main: [{return: {status: ok}}, {set: {after: 1}}]}").vars == {
        "return_value": {"status": "ok"}
    }
    res = run_doc("sections: {main: [{transfer: {dest: end}}], end: [{return: '${1 + 1}'}, {set: {after: 1}}]}")
    assert res.vars == {"return_value": 2}


def test_a_variable_holding_nan_goes_to_a_url_as_null(http_server) -> None:  # type: ignore[no-untyped-def]
    # expressions.mdx's order total over an empty prompt_value is NaN: every fetch after it failed
    # ('Out of range float values are not JSON compliant').
    http_server.files["/swml"] = (b"sections: {main: [{return: done}]}", "application/yaml")
    res = run_doc(
        f"sections: {{main: [{{set: {{total: '${{parseInt(\"\") * 5}}'}}}}, {{execute: '{http_server.url('/swml')}'}}]}}"
    )
    assert res.vars["return_value"] == "done"
    assert http_server.requests[0]["json"]["vars"] == {"total": None}


def test_execute_to_unreachable_url_fails_the_step_and_goes_on() -> None:
    res = run_doc("sections: {main: [{execute: {dest: 'http://127.0.0.1:9/none'}}, {set: {after: ok}}]}")
    errors = [e for e in res.events if e["type"] == "error"]
    assert errors and errors[0]["where"] == "sections.main[0].execute"
    assert res.vars["after"] == "ok"


def test_runaway_execute_recursion_is_stopped() -> None:
    res = run_doc("sections: {main: [{execute: again}, {set: {after: ok}}], again: [{execute: again}]}")
    errors = [e for e in res.events if e["type"] == "error"]
    assert errors[0]["where"] == "sections.again[0].execute"
    assert errors[0]["message"] == (
        "sections.again[0].execute: execute nested more than 100 deep (section 'again' calls itself?)"
    )
    assert res.vars["after"] == "ok"


def test_loops_inside_loops_with_nothing_to_wait_for_stop_the_script() -> None:
    # Each goto may jump 100 times, but a goto loop around an execute of a section with a goto loop of its
    # own multiplies them: 101^3 passes ran for hours at 0 s of call time, writing events all along.
    def loop(inner: str) -> str:
        return f"[{{label: top}}, {{execute: {inner}}}, {{goto: {{label: top}}}}]"

    innermost = "[{label: top}, {set: {x: 1}}, {goto: {label: top}}]"
    res = run_doc(f"sections: {{main: {loop('a')}, a: {loop('b')}, b: {loop('c')}, c: {innermost}}}")
    errors = [e for e in res.events if e["type"] == "error"]
    assert [e["where"] for e in errors] == ["sections.c[1].set"]
    assert "more than 10,000 steps with nothing to wait for" in errors[0]["message"]
    assert res.result.reason == "error"
    assert len([e for e in res.events if e["type"] == "step.start"]) == 10_000


def test_a_loop_that_waits_is_not_stopped() -> None:
    # About 12,500 steps in all, more than the 10,000 at once, but 126 a pass and a second between
    # passes: the sleeps give back most of what the passes take.
    res = run_doc(
        """
sections:
  main:
    - label: top
    - sleep: 1000
    - execute: burst
    - goto: {label: top}
  burst:
    - label: top
    - goto: {label: top, max: 60}
"""
    )
    assert not [e for e in res.events if e["type"] == "error"]
    assert res.result.reason == "script_end"
    assert len(steps(res, "sleep")) == 101


def test_switch_and_cond() -> None:
    res = run_doc(
        """
sections:
  main:
    - set: {n: 2, color: red}
    - switch:
        variable: n
        case:
          '1': [{set: {s1: one}}]
          '2': [{set: {s1: two}}]
    - switch:
        variable: '${color.toUpperCase()}'
        case: {RED: [{set: {s2: red}}]}
    - switch: {variable: nothing, case: {x: []}, default: [{set: {s3: default}}]}
    - cond:
        - when: 'n > 5'
          then: [{set: {c: big}}]
        - when: 'vars.color == "red" && n == 2'
          then: [{set: {c: red-two}}]
        - else: [{set: {c: else}}]
"""
    )
    assert res.vars["s1"] == "two"
    assert res.vars["s2"] == "red"
    assert res.vars["s3"] == "default"
    assert res.vars["c"] == "red-two"


def test_sleep_hangup_reason_and_script_end() -> None:
    res = run_doc(
        "sections: {main: [answer, {sleep: 1500}, {sleep: {duration: 500}}, {hangup: {reason: busy}}, {set: {no: 1}}]}"
    )
    assert res.result.reason == "busy"
    assert abs(res.duration - 2.0) < 0.021
    assert "no" not in res.vars
    res = run_doc("sections: {main: [answer, {sleep: 300}]}")
    assert res.result.reason == "script_end"
    ended = [e for e in res.events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended and ended[0]["reason"] == "script_end" and abs(ended[0]["t"] - 0.3) < 0.021


def test_sleep_forever_ends_with_remote_hangup() -> None:
    res = run_doc("sections: {main: [answer, {sleep: -1}]}", hangup_at=42.0)
    assert res.result.reason == "remote_hangup"
    assert abs(res.duration - 42.0) < 0.021


def test_bad_value_at_run_time_fails_step_sets_result_var_and_goes_on() -> None:
    res = run_doc(
        """
sections:
  main:
    - answer
    - set: {digits: 'x9'}
    - send_digits: {digits: '${digits}'}
    - play: {url: 'say:hi', volume: '${99}'}
    - set: {after: ok}
"""
    )
    errors = [e for e in res.events if e["type"] == "error"]
    assert errors[0]["message"].startswith("sections.main[2].send_digits.digits: 'x9' has characters")
    assert errors[1]["message"].startswith("sections.main[3].play.volume: 99 is above the maximum 40")
    assert res.vars["send_digits_result"] == "failed"
    assert res.vars["after"] == "ok"


def test_send_digits_sends_events_with_pauses() -> None:
    res = run_doc("sections: {main: [answer, {send_digits: {digits: '1W2w#'}}]}")
    sent = [e for e in res.events if e["type"] == "dtmf" and e["direction"] == "sent"]
    assert [e["digit"] for e in sent] == ["1", "2", "#"]
    assert abs((sent[1]["t"] - sent[0]["t"]) - 1.15) < 0.021  # W = 1 s, plus the 0.1 s tone and 0.05 s gap
    assert abs((sent[2]["t"] - sent[1]["t"]) - 0.65) < 0.021
    assert res.vars["send_digits_result"] == "success"


def test_denoise_is_accepted() -> None:
    res = run_doc("sections: {main: [answer, denoise, {set: {a: '${denoise_result}'}}, stop_denoise]}")
    assert res.vars["a"] == "on" and res.vars["denoise_result"] == "off"


def prompt_doc(extra: str = "") -> str:
    return f"sections: {{main: [{{prompt: {{play: 'silence:2', {extra}}}}}]}}"


def test_prompt_max_digits() -> None:
    res = run_doc(prompt_doc("max_digits: 3"), dtmf=[(2.5, "1"), (2.75, "2"), (3.0, "3"), (3.25, "4")])
    assert res.vars["prompt_result"] == "match_digits"
    assert res.vars["prompt_value"] == "123"
    assert res.vars["prompt_digit_terminator"] == ""


def test_prompt_terminator_and_barge_in() -> None:
    res = run_doc(prompt_doc("max_digits: 5, terminators: '#*'"), dtmf=[(0.5, "4"), (0.75, "2"), (1.0, "*")])
    assert (res.vars["prompt_value"], res.vars["prompt_digit_terminator"]) == ("42", "*")
    play_end = next(e for e in res.events if e["type"] == "play.end")
    assert play_end["result"] == "stopped" and abs(play_end["t"] - 0.5) < 0.021


def test_prompt_digit_timeout_and_initial_timeout() -> None:
    res = run_doc(prompt_doc("max_digits: 5, digit_timeout: 1.5"), dtmf=[(2.2, "7")])
    assert (res.vars["prompt_result"], res.vars["prompt_value"]) == ("match_digits", "7")
    assert abs(res.duration - 3.7) < 0.041
    res = run_doc(prompt_doc("initial_timeout: 3"))
    assert (res.vars["prompt_result"], res.vars["prompt_value"]) == ("no_input", "")
    assert abs(res.duration - 5.0) < 0.041


def test_prompt_speech_only_reports_no_speech_recognition() -> None:
    res = run_doc(prompt_doc("speech_timeout: 5"), dtmf=[(0.5, "1")])
    assert res.vars["prompt_result"] == "failed"
    errors = [e for e in res.events if e["type"] == "error"]
    assert "no speech recognition" in errors[0]["message"]


def test_prompt_variables_drive_a_switch() -> None:
    res = run_doc(
        """
sections:
  main:
    - prompt: {play: 'silence:1', max_digits: 1}
    - switch:
        variable: prompt_value
        case: {'2': [{set: {dept: support}}]}
""",
        dtmf=[(1.5, "2")],
    )
    assert res.vars["dept"] == "support"
    assert vars_set(res, "prompt_result") == ["match_digits"]


def test_prompt_status_callbacks(http_server) -> None:  # type: ignore[no-untyped-def]
    """calling.call.collect as prompt.mdx shows: digits with the terminator, then a no_input."""
    cb = http_server.url("/collect")
    res = run_doc(
        f"""
sections:
  main:
    - prompt: {{play: 'silence:1', max_digits: 4, terminators: '#', status_url: '{cb}'}}
    - prompt: {{play: 'silence:1', initial_timeout: 1, status_url: '{cb}'}}
""",
        dtmf=[(0.5, "1"), (0.75, "2"), (1.5, "#")],
    )
    posts = [r["json"] for r in http_server.requests if r["path"] == "/collect"]
    assert [p["params"]["result"] for p in posts] == [
        {"type": "digit", "params": {"digits": "12", "terminator": "#"}},
        {"type": "no_input"},
    ]
    assert all(p["event_type"] == "calling.call.collect" for p in posts)
    assert posts[0]["params"]["control_id"] != posts[1]["params"]["control_id"]
    assert posts[0]["params"]["call_id"] == res.call.call_id
    assert posts[1]["timestamp"] - posts[0]["timestamp"] == pytest.approx(2.0, abs=0.03)


def test_answer_codecs_and_credentials_on_a_simulated_call() -> None:
    """Every codec answer.mdx lists is accepted (AMR-WB included); credentials need a SIP caller to
    challenge, so a simulated call answers as usual."""
    res = run_doc("sections: {main: [{answer: {codecs: 'PCMU,AMR-WB,G722@16000h', username: a, password: b}}]}")
    assert res.call.codecs == ["PCMU", "AMR-WB", "G722"] and res.call.credentials == ("a", "b")
    assert any(e["type"] == "call.state" and e["state"] == "answered" for e in res.events)


def test_prompt_timeouts_after_a_cancelled_timer_fire_on_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A timer cancelled at the top of the loop's heap must not hide the next one (the virtual clock
    once jumped to the 4-hour max_duration instead of the second prompt's 5 s digit timeout)."""
    res = run_doc(
        """
sections:
  main:
    - answer
    - prompt: {play: 'silence:1', max_digits: 4, terminators: '#'}
    - set: {first: '${prompt_value}'}
    - prompt: {play: 'silence:0.5', max_digits: 2}
""",
        tmp_path,
        dtmf=[(2.0, "1"), (2.25, "#")],
    )
    assert res.vars["first"] == "1" and res.vars["prompt_result"] == "no_input"
    assert res.result.reason == "script_end" and res.duration == pytest.approx(7.75, abs=0.03)


def test_a_call_is_never_endless() -> None:
    """No answer, `sleep: -1` (the docs' "Forever Sleep" example): the default max_duration of 4 hours
    still ends it, as it ends an answered call."""
    res = run_doc("sections: {main: [{sleep: -1}]}")
    assert res.result.reason == "max_duration" and res.duration == pytest.approx(14400, abs=0.03)
    res = run_doc("sections: {main: [{answer: {max_duration: 30}}, {sleep: -1}]}")
    assert res.result.reason == "max_duration" and res.duration == pytest.approx(30, abs=0.03)


def test_strftime_tz_gives_the_wall_time() -> None:
    import time

    res = run_doc("sections: {main: [{set: {t: '@{strftime_tz UTC %Y}'}}]}")
    assert res.vars["t"] == time.strftime("%Y", time.gmtime())


def test_vars_json_is_strict_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    run_doc("sections: {main: [{set: {a: '${1/0}', b: '${0/0}', c: 1}}]}", tmp_path)
    text = (tmp_path / "out" / "vars.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in vars.json")) == {
        "a": None,
        "b": None,
        "c": 1,
    }


def test_goto_max_counts_per_run_of_a_section() -> None:
    """Two documents with the same step paths, and one section executed twice, each loop `max` times."""
    res = run_doc(
        """
sections:
  main:
    - set: {n: 0}
    - label: a
    - goto: {label: a, max: 3}
    - execute: {dest: sub}
    - execute: {dest: sub}
    - execute:  # another document, whose goto has the same path as main's
        dest: '{"sections": {"main": [{"set": {"m": 1}}, {"label": "a"}, {"goto": {"label": "a", "max": 3}}]}}'
  sub:
    - label: top
    - set: {n: '${n + 1}'}
    - goto: {label: top, max: 2}
"""
    )
    assert res.vars["n"] == 6  # 3 runs of the `set` per execute of sub
    steps = [e for e in res.events if e["type"] == "step.end" and e["method"] == "goto"]
    assert [e["result"] for e in steps].count("taken") == 3 + 2 + 2 + 3


def test_set_sets_every_key_it_can() -> None:
    res = run_doc("sections: {main: [{set: {a: 1, b: '${nosuch.fn()}', c: '${a + 1}', d: '${also.bad()}'}}]}")
    assert res.vars["a"] == 1 and res.vars["c"] == 2 and "b" not in res.vars and "d" not in res.vars
    errors = [e["message"] for e in res.events if e["type"] == "error"]
    assert len(errors) == 2 and {m.split(":")[0] for m in errors} == {
        "sections.main[0].set.b",
        "sections.main[0].set.d",
    }
