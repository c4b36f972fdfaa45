"""Variables and expressions: scopes, lookup order, JSON types, JavaScript, template functions, limits."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import run_doc, vars_set


def set_and_report(value: str, **sim: object) -> object:
    res = run_doc(f"sections: {{main: [{{set: {{out: {value!r}}}}}]}}", **sim)  # type: ignore[arg-type]
    return res.vars.get("out")


def test_scopes_and_paths() -> None:
    res = run_doc(
        """
sections:
  main:
    - set:
        staff: [{name: Ann}, {name: Bo}]
        who: '${staff[1].name}'
        caller: '${call.from}'
        header: '${call.headers[0].value}'
        env: '${envs.REGION}'
        unprefixed_env: '${REGION}'
        missing: '[${nothing.here}]'
        prefixed: '${vars.who}'
""",
        headers={"X-Account": "42"},
        envs={"REGION": "eu"},
        from_="+15550001111",
    )
    v = res.vars
    assert v["who"] == "Bo"
    assert v["caller"] == "+15550001111"
    assert v["header"] == "42"
    assert v["env"] == "eu" and v["unprefixed_env"] == "eu"
    assert v["missing"] == "[]"
    assert v["prefixed"] == "Bo"


def test_unprefixed_lookup_order_vars_then_envs_then_call() -> None:
    res = run_doc(
        "sections: {main: [{set: {a: '${from}'}}, {set: {from: mine}}, {set: {b: '${from}', c: '${REGION}'}}]}",
        envs={"REGION": "eu", "from": "env-from"},
        from_="+1555",
    )
    assert res.vars["a"] == "env-from"  # envs before call
    assert res.vars["b"] == "mine"  # vars before envs
    assert res.vars["c"] == "eu"


def test_whole_placeholder_keeps_json_type_and_text_inside_strings() -> None:
    res = run_doc(
        """
sections:
  main:
    - set: {n: 2}
    - set:
        num: '${n * 3}'
        flag: '${n > 1}'
        obj: '${ {a: n, b: [1, 2]} }'
        text: 'n=${n * 1.5} ok=${n > 1} o=${ {a: 1} }'
        percent: '%{n + 1}'
        js_string: '${"a" + "b".toUpperCase()}'
        nested: '${staff_${n}}'
        staff_2: Zed
"""
    )
    v = res.vars
    assert v["num"] == 6 and isinstance(v["num"], int)
    assert v["flag"] is True
    assert v["obj"] == {"a": 2, "b": [1, 2]}
    assert v["text"] == 'n=3 ok=true o={"a":1}'
    assert v["percent"] == 3
    assert v["js_string"] == "aB"


def test_template_functions() -> None:
    res = run_doc(
        """
sections:
  main:
    - set: {name: 'Ada Lovelace', q: 'a b&c'}
    - set:
        low: '${lc:name}'
        up: '${uc:name}'
        enc: '${enc:url:q}'
        spaced: '@{separate 1234}'
        sum: '@{expr 2 * (3 + 4)}'
"""
    )
    v = res.vars
    assert v["low"] == "ada lovelace"
    assert v["up"] == "ADA LOVELACE"
    assert v["enc"] == "a%20b%26c"
    assert v["spaced"] == "1 2 3 4"
    assert v["sum"] in (14, "14")


def test_runaway_expression_fails_the_step_quickly_and_the_call_goes_on() -> None:
    started = time.perf_counter()
    res = run_doc(
        """
sections:
  main:
    - set: {x: '${(() => { while (true) {} })()}'}
    - set: {after: reached}
"""
    )
    wall = time.perf_counter() - started
    errors = [e for e in res.events if e["type"] == "error"]
    assert len(errors) == 1
    assert errors[0]["where"] == "sections.main[0].set"
    assert "took longer than 150 ms and was stopped" in errors[0]["message"]
    assert res.vars == {"after": "reached"}
    assert wall < 5  # generous: the limit itself is 150 ms of V8 time (bench/ measures speed)


def test_an_expression_taking_100_ms_as_the_spec_allows_gives_its_value() -> None:
    """expressions.mdx: expect expressions to complete within 150 ms. One that runs 100 ms (V8 runs here
    without its JIT: heavy but valid arithmetic takes longer than on the hosted engine) is not stopped."""
    res = run_doc(
        "sections: {main: [{set: {x: '${(() => { const end = Date.now() + 100; while (Date.now() < end) {} "
        "return 7; })()}'}}]}"
    )
    assert [e for e in res.events if e["type"] == "error"] == []
    assert res.vars == {"x": 7}


def test_expression_errors_name_the_place_and_memory_is_capped() -> None:
    res = run_doc(
        """
sections:
  main:
    - play: {url: 'say:${(}'}
    - set: {big: '${(() => { let a = []; while (true) { a.push(new Array(1e6).fill(1)); } })()}'}
    - set: {after: ok}
"""
    )
    errors = [e for e in res.events if e["type"] == "error"]
    assert errors[0]["message"].startswith("sections.main[0].play.url: ")
    assert "SyntaxError" in errors[0]["message"]
    assert errors[1]["where"] == "sections.main[1].set"
    assert res.vars["after"] == "ok"


def test_unset(tmp_path: Path) -> None:
    res = run_doc("sections: {main: [{set: {a: 1, b: 2, c: 3}}, {unset: a}, {unset: [b, c]}, {set: {d: '[${a}]'}}]}")
    assert res.vars == {"d": "[]"}
    assert vars_set(res, "a") == [1]


def test_set_and_unset_take_the_vars_prefix() -> None:
    # unset took `vars.x`; set made a variable named 'vars.x' that neither ${vars.x} nor ${x} read.
    res = run_doc("sections: {main: [{set: {vars.x: 1, vars.y: 2}}, {unset: vars.y}, {set: {a: '${vars.x}-${x}'}}]}")
    assert res.vars == {"x": 1, "a": "1-1"}
    # A name that comes from a placeholder is checked once filled.
    res = run_doc("sections: {main: [{set: {x: 1, y: 2, n: x}}, {unset: '${vars.n}'}, {unset: ['${\"y.z\"}']}]}")
    assert res.vars == {"y": 2, "n": "x"}
    errors = [e["message"] for e in res.events if e["type"] == "error"]
    assert errors == [
        "sections.main[2].unset[0]: 'y.z' is not a variable name: ${y.z} reads a field of y, never a variable "
        "of this name; set or unset y as a whole"
    ]


def test_an_expression_is_one_value_not_statements_or_a_function() -> None:
    res = run_doc("sections: {main: [{set: {a: '${1); (2}', b: '${function(x){return x}}', c: '${(1, 2)}'}}]}")
    errors = sorted(e["message"] for e in res.events if e["type"] == "error")
    assert "a" not in res.vars and "b" not in res.vars and res.vars["c"] == 2
    assert errors[0].startswith("sections.main[0].set.a: SyntaxError")
    assert errors[1].startswith("sections.main[0].set.b: TypeError: the expression is a function, not a value")


def test_a_stopped_heavy_expression_fails_only_its_own_step() -> None:
    steps = "".join(f", {{set: {{n{i}: '${{{i}+1}}'}}}}" for i in range(10))
    heavy = '${(() => { let n = 0; for (;;) { n += "x".repeat(5e7).length } })()}'
    res = run_doc(f"sections: {{main: [{{set: {{f: '{heavy}'}}}}{steps}]}}")
    errors = [e["message"] for e in res.events if e["type"] == "error"]
    assert len(errors) == 1 and "set.f: expression took longer than" in errors[0]
    assert [res.vars[f"n{i}"] for i in range(10)] == list(range(1, 11))


def test_an_unfinished_expression_is_said_to_end_too_early_not_at_a_bracket_it_does_not_hold() -> None:
    """The check that an expression is one value wraps it in brackets; V8's message for "x ===" named
    that bracket ("Unexpected token ']'"), a character nowhere in what the user wrote."""
    res = run_doc(
        "sections: {main: [{set: {a: '${vars.x ===}', b: '${(1 + 2}', c: '${a]}'}}, "
        "{goto: {label: end, when: 'vars.x =='}}, {label: end}]}"
    )
    errors = sorted(e["message"] for e in res.events if e["type"] == "error")
    early = "SyntaxError: the expression ends before it is complete (a value or a closing parenthesis missing?)"
    assert errors == [
        f"sections.main[0].set.a: {early} in expression 'vars.x ==='",
        f"sections.main[0].set.b: {early} in expression '(1 + 2'",
        "sections.main[0].set.c: SyntaxError: Unexpected token ']' in expression 'a]'",
        f"sections.main[1].goto.when: {early} in expression 'vars.x =='",
    ]


def test_call_state_is_the_calls_state_now(http_server) -> None:  # type: ignore[no-untyped-def]
    # calling-overview.mdx: call.call_state is "the current state of the call"; it stayed 'created'.
    http_server.files["/swml"] = (b"sections: {main: [{return: ok}]}", "application/yaml")
    res = run_doc(
        f"""
sections:
  main:
    - set: {{before: '${{call.call_state}}'}}
    - play: {{url: 'silence:0.1', auto_answer: false}}
    - set: {{early: '%{{call.call_state}}'}}
    - answer: {{}}
    - set: {{after: '${{call.call_state == "answered"}}'}}
    - execute: '{http_server.url("/swml")}'
"""
    )
    assert (res.vars["before"], res.vars["early"], res.vars["after"]) == ("ringing", "early_media", True)
    assert http_server.requests[0]["json"]["call"]["call_state"] == "answered"


def test_a_snapshot_of_vars_is_a_copy_as_they_were() -> None:
    # `${vars}` as a whole value was vars itself: set put vars inside vars, and writing the events and
    # vars.json then failed (swml run ended in a RecursionError, writing nothing).
    res = run_doc("sections: {main: [{set: {a: {n: 1}}}, {set: {snapshot: '${vars}', b: '${a}'}}, {set: {c: 2}}]}")
    assert res.vars == {"a": {"n": 1}, "snapshot": {"a": {"n": 1}}, "b": {"n": 1}, "c": 2}


def test_an_expression_whose_value_nests_too_deep_fails_its_step() -> None:
    # A value 900 deep from V8 ended swml run with a RecursionError (writing the vars.set event).
    res = run_doc(
        """sections: {main: [{set: {d: "${JSON.parse('['.repeat(900) + ']'.repeat(900))}"}}, {set: {after: 1}}]}"""
    )
    (error,) = [e["message"] for e in res.events if e["type"] == "error"]
    assert error.startswith("sections.main[0].set.d: the value has lists and objects nested more than 300 levels")
    assert res.vars == {"after": 1}


def test_text_with_many_braces_that_open_no_function_is_filled_at_once() -> None:
    # Each @{ was read to the end of the text looking for its close: 20,000 took a minute, on the event loop.
    started = time.monotonic()
    res = run_doc("sections: {main: [{set: {p: '" + "@{" * 20_000 + "@{echo ok}'}}]}")
    assert res.vars["p"] == "@{" * 20_000 + "ok"
    assert time.monotonic() - started < 10
