"""Loading documents: shorthands, every error with its path, unsupported methods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_doc
from http_peers import alias_bomb
from swml_engine.document.loader import load_text
from swml_engine.errors import DocumentError
from swml_engine.methods import REGISTRY


def errors_of(text: str) -> list[str]:
    with pytest.raises(DocumentError) as info:
        load_text(text, methods=REGISTRY)
    return [str(e) for e in info.value.errors]


def test_shorthands_load_to_canonical_steps() -> None:
    doc = load_text(
        """
sections:
  main:
    - answer
    - play: 'say:Hi'
    - play: ['silence:1', 'ring:us']
    - sleep: 1000
    - unset: a
    - label: here
    - execute: other
  other:
    execute: {dest: last}
  last: [hangup]
""",
        methods=REGISTRY,
    )
    main = doc.sections["main"]
    assert [s.method for s in main] == ["answer", "play", "play", "sleep", "unset", "label", "execute"]
    assert main[0].params == {}
    assert main[1].params == {"url": "say:Hi"}
    assert main[2].params == {"urls": ["silence:1", "ring:us"]}
    assert main[3].params == {"duration": 1000}
    assert main[4].params == ["a"]
    assert main[5].params == {"name": "here"}
    assert main[6].params == {"dest": "other"}
    assert doc.sections["other"][0].method == "execute"  # a section given as one step mapping
    assert doc.labels("main") == {"here": 5}


def test_bare_list_is_main_and_json_is_accepted() -> None:
    assert load_text("[{hangup: {}}]", methods=REGISTRY).sections["main"][0].method == "hangup"
    doc = load_text('{"version": "1.0.0", "sections": {"main": [{"sleep": {"duration": 5}}]}}', methods=REGISTRY)
    assert doc.sections["main"][0].params == {"duration": 5}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sections: {main: [{play: {url: 'nope:1'}}]}", "sections.main[0].play.url: 'nope:1' is not a playable sound"),
        (
            "sections: {main: [{play: {urls: ['say:a', 'ring:zz']}}]}",
            "sections.main[0].play.urls[1]: 'ring:zz': no ring cadence for country 'zz'",
        ),
        (
            "sections: {main: [{play: {url: 'say:a', volume: 50}}]}",
            "sections.main[0].play.volume: 50 is above the maximum 40 dB",
        ),
        ("sections: {main: [{play: {}}]}", "sections.main[0].play: give exactly one of url"),
        (
            "sections: {main: [{sleep: {duration: -5}}]}",
            "sections.main[0].sleep.duration: -5 is below the minimum 0 ms",
        ),
        ("sections: {main: [{goto: {label: x, max: 101}}, {label: x}]}", "sections.main[0].goto.max: 101 is above"),
        ("sections: {main: [{goto: {label: nowhere}}]}", "sections.main[0].goto.label: no label 'nowhere'"),
        (  # a copied block whose label was not renamed: goto never reached the second
            "sections: {main: [{label: a}, {goto: {label: a}}, {label: a}]}",
            "sections.main[2].label: 'a' labels sections.main[0] already: goto jumps there, never here",
        ),
        ("sections: {main: [{execute: {dest: missing}}]}", "sections.main[0].execute.dest: no section 'missing'"),
        ("sections: {main: [{transfer: {dest: 5}}]}", "sections.main[0].transfer.dest: no section '5'"),
        ("sections: {main: [{hangup: {reason: angry}}]}", "sections.main[0].hangup.reason: 'angry' is not one of"),
        (  # the reference's own text writes it so: YAML reads the # as a comment, the value as null
            "sections:\n  main:\n    - record_call:\n        terminators: #\n",
            "sections.main[0].record_call.terminators: null is not a string of DTMF digits (in YAML an unquoted #",
        ),
        (
            "sections: {main: [{send_digits: {digits: '12x'}}]}",
            "sections.main[0].send_digits.digits: '12x' has characters",
        ),
        (
            "sections: {main: [{prompt: {play: 'say:a', max_digits: 0}}]}",
            "sections.main[0].prompt.max_digits: 0 is below",
        ),
        (
            "sections: {main: [{answer: {max_duration: 'long'}}]}",
            "sections.main[0].answer.max_duration: 'long' is not an integer",
        ),
        (  # (1e30 s of call: swml run wrote what the caller heard for minutes, and never ended)
            "sections: {main: [{answer: {max_duration: 1e30}}]}",
            "sections.main[0].answer.max_duration: '1e30' is above the maximum 86400 seconds",
        ),
        ("sections: {main: [{answer: {username: alice}}]}", "sections.main[0].answer: username and password go"),
        (
            "sections: {main: [{play: {url: 'say:a', status_url: 'example.com'}}]}",
            "sections.main[0].play.status_url: 'example.com' is not an http(s) URL",
        ),
        ("sections: {main: [{play: {url: 'say:a', colour: red}}]}", "sections.main[0].play.colour: unknown parameter"),
        ("sections: {main: [{plya: {url: 'say:a'}}]}", "sections.main[0]: unknown method 'plya'; did you mean 'play'?"),
        ("sections: {main: [{answer: {}, hangup: {}}]}", "sections.main[0]: a step names exactly one method"),
        ("sections: {main: [{cond: [{when: 'true'}]}]}", "sections.main[0].cond[0].then: is required with when"),
        (  # cond.mdx allows "a single, optional" else: what followed one was never evaluated
            "sections: {main: [{cond: [{when: a, then: []}, {else: []}, {when: b, then: [hangup]}]}]}",
            "sections.main[0].cond[2]: never runs: the else at sections.main[0].cond[1] runs whenever it is reached",
        ),
        (  # such a variable was made, and ${obj.c} (field c of obj) never read it
            "sections: {main: [{set: {obj.c: 3}}]}",
            "sections.main[0].set.obj.c: 'obj.c' is not a variable name: ${obj.c} reads a field of obj",
        ),
        ("sections: {main: [{unset: [a, call.from]}]}", "sections.main[0].unset[1]: 'call.from' is not a variable"),
        (  # compared as 'True', it matched nothing: a variable holding 'yes' went to default
            "sections: {main: [{switch: {variable: answer, case: {yes: [hangup], 'no': [answer]}}}]}",
            "sections.main[0].switch.case: a key YAML reads as true, not text (written yes, on or true unquoted), "
            "which no value matches: quote it, e.g. 'yes'",
        ),
        ("sections: {other: []}", "sections.main: is required"),
        (
            "sections: {main: [{cond: [{when: 'a', then: [{sleep: {duration: x}}]}]}]}",
            "sections.main[0].cond[0].then[0].sleep.duration",
        ),
        (
            "sections: {main: [{execute: {dest: a, on_return: [{hangup: {reason: 1}}]}}], a: []}",
            "on_return[0].hangup.reason",
        ),
        ("sections:\n  main: [answer\n", "line "),
        # A value where the parameters go: what to write instead.
        (
            "sections: {main: [{goto: end}, {label: end}]}",
            "sections.main[0].goto: 'end' is not an object of parameters; write {label: 'end'}",
        ),
        (
            "sections: {main: [{hangup: busy}]}",
            "sections.main[0].hangup: 'busy' is not an object of parameters; its parameters: reason",
        ),
    ],
)
def test_errors_name_the_place(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_not_only_the_first() -> None:
    errors = errors_of("sections: {main: [{sleep: {duration: x}}, {play: {url: 'bad'}}, {hangup: {reason: no}}]}")
    assert len(errors) == 3
    assert [e.split(":")[0] for e in errors] == [
        "sections.main[0].sleep.duration",
        "sections.main[1].play.url",
        "sections.main[2].hangup.reason",
    ]


def test_templated_values_are_checked_when_the_step_runs() -> None:
    doc = load_text("sections: {main: [{play: {url: '${u}', volume: '${v}'}}, {sleep: '${d}'}]}", methods=REGISTRY)
    assert doc.sections["main"][0].params == {"url": "${u}", "volume": "${v}"}


def test_unsupported_methods_are_listed_separately() -> None:
    with pytest.raises(DocumentError) as info:
        load_text(
            "sections: {main: [answer, {ai: {prompt: {text: hi}}}, {tap: {uri: 'wss://example.com'}}]}",
            methods=REGISTRY,
        )
    assert info.value.errors == []
    assert [str(e) for e in info.value.unsupported] == [
        "sections.main[1].ai: not supported by this engine",
        "sections.main[2].tap: not supported by this engine",
    ]


def test_hostile_documents_get_an_error_not_a_traceback_or_a_hang() -> None:
    import time

    deep_json = "[" * 5000 + "]" * 5000
    deep_steps = "sections: {main: [" + "{cond: [{when: 'true', then: [" * 60 + "hangup" + "]}]}" * 60 + "]}"
    # 24 levels of a block repeated twice by YAML aliases: 2^24 steps if walked naively.
    bomb = ["sections:", "  main:", "    - &b0 {set: {a: 1}}"]
    bomb += [f"    - &b{i} {{cond: [{{when: 'true', then: [*b{i - 1}, *b{i - 1}]}}]}}" for i in range(1, 25)]
    # 8^6 steps of one value each: under the cap on values, over the one on steps.
    steps_bomb = ["sections:", "  main:", "    - &c0 hangup"]
    steps_bomb += [
        f"    - &c{i} {{cond: [{{when: 'true', then: [{', '.join([f'*c{i - 1}'] * 8)}]}}]}}" for i in range(1, 7)
    ]
    # Read by the parser, but a RecursionError traceback in the loader's walks (and the run's).
    deep_value = '{"sections": {"main": [{"set": {"p": ' + "[" * 900 + "]" * 900 + "}}]}}"
    # Each ${ looked for its close to the end of the text: 100,000 of them nested took hours.
    nested_placeholders = "sections: {main: [{set: {p: '" + "${" * 100_000 + "}" * 100_000 + "'}}]}"
    unclosed_functions = "sections: {main: [{set: {p: '" + "@{echo " * 50_000 + "'}}]}"
    cases = {
        unclosed_functions: "the '@{' at character 1 has no closing '}'",
        nested_placeholders: "the '${' at character 21 is inside 10 other placeholders",
        deep_json: "nested too deeply to read",
        deep_value: "sections.main[0].set.p[0][0][0]...: lists and objects nested more than 300 levels deep",
        deep_steps: "steps nested more than 50 levels deep",
        "\n".join(bomb): "once its YAML aliases are expanded",
        "\n".join(steps_bomb): "more than 100000 steps in one document",
    }
    for text, message in cases.items():
        started = time.monotonic()
        with pytest.raises(DocumentError) as info:
            load_text(text, methods=REGISTRY)
        # (a hang, not a speed: these took minutes to hours before; 5 s was passed on a machine running
        # two suites — 5.6 s for the steps bomb in pair 24)
        assert message in str(info.value.errors[0]) and time.monotonic() - started < 60


def test_long_values_are_cut_short_in_messages() -> None:
    res = run_doc("sections: {main: [{set: {f: '${\"x\".repeat(100000)}'}}, {record_call: {format: '${f}'}}]}")
    (error,) = [e for e in res.events if e["type"] == "error"]
    assert len(error["message"]) < 400 and "(100000 characters)" in error["message"]


def test_missing_sections_and_labels_are_reported_beside_other_errors() -> None:
    errors = errors_of("sections: {main: [{play: 'ring:zz'}, {execute: {dest: nowhere}}, {goto: {label: nolabel}}]}")
    assert len(errors) == 3
    assert any("execute.dest: no section 'nowhere'" in e for e in errors)
    assert any("goto.label: no label 'nolabel'" in e for e in errors)


def test_an_alias_bomb_inside_a_value_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 1000
    # swml validate as a user runs it: it used to walk the expanded value for minutes
    res = subprocess.run(
        [sys.executable, "-m", "swml_engine", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1, res.stderr
    assert "once its YAML aliases are expanded" in res.stderr and "Traceback" not in res.stderr
    # aliases that expand modestly are fine, and a value holding itself is refused
    doc = load_text("sections: {main: [{set: {a: &x [1, 2], b: *x, c: [*x, *x]}}, hangup]}", methods=REGISTRY)
    assert doc.sections["main"][0].params == {"a": [1, 2], "b": [1, 2], "c": [[1, 2], [1, 2]]}
    assert errors_of("sections: {main: [{set: {a: &x [1, *x]}}]}") == [
        "a YAML alias refers to a value that contains it"
    ]


def test_yaml_is_read_by_libyaml_and_errors_keep_their_place() -> None:
    import yaml

    from swml_engine.document import loader

    if yaml.__with_libyaml__:
        assert issubclass(loader._CountingLoader, yaml.CSafeLoader)
    assert errors_of("sections:\n  main:\n    - set: {a: *nope}\n") == [
        "line 3, column 16: invalid YAML: found undefined alias 'nope'"
    ]
    [message] = errors_of("sections:\n  main: [answer\n")
    assert message.startswith("line 3, column 1: invalid YAML:")
    # a long document's error is libyaml's own, with its place
    long = "sections:\n  main:\n" + "    - set: {a: 1}\n" * 5000 + "    - set: {a: *nope}\n"
    [message] = errors_of(long)
    assert message.startswith("line 5003, column 16: invalid YAML: found undefined alias")


def test_a_key_given_twice_is_an_error_with_its_line_not_the_first_silently_dropped() -> None:
    yaml_text = "sections:\n  main:\n    - switch:\n        variable: x\n        case:\n          '1': [hangup]\n"
    yaml_text += "          '1': [answer]\n  main: [answer]\n"
    assert errors_of(yaml_text) == [
        "line 7, column 11: the key '1' is given twice in one object (first at line 6, column 11): merge the two or "
        "rename one",
        "line 8, column 3: the key 'main' is given twice in one object (first at line 2, column 3): merge the two or "
        "rename one",
    ]
    assert errors_of('{"sections": {"main": [{"hangup": {}}],\n "main": []}}') == [
        "line 2, column 2: the key 'main' is given twice in one object (first at line 1, column 15): merge the two "
        "or rename one"
    ]
    # Keys a YAML merge brings in may be overridden: that is what a merge is for.
    doc = load_text(
        "sections:\n  main:\n    - play: &p {url: 'say:a', volume: 2}\n    - play: {<<: *p, volume: 3}\n",
        methods=REGISTRY,
    )
    assert doc.sections["main"][1].params["volume"] == 3


def test_a_json_file_is_read_as_json_only(tmp_path: Path) -> None:
    """A trailing comma is valid YAML flow, so a .json file read as YAML passed `swml validate` and then
    failed wherever the document went as JSON; the message says what the comma is."""
    from swml_engine.document.loader import load_file

    text = '{"sections": {"main": [{"answer": {}},\n  ]}}'
    path = tmp_path / "call.json"
    path.write_text(text)
    with pytest.raises(DocumentError) as info:
        load_file(path, methods=REGISTRY)
    assert [str(e) for e in info.value.errors] == [
        "line 2, column 3: invalid JSON: a comma before ']': JSON allows no comma after the last item"
    ]
    path = tmp_path / "call.yaml"
    path.write_text(text)  # the same text as YAML is YAML
    assert load_file(path, methods=REGISTRY).sections["main"][0].method == "answer"


def test_a_placeholder_left_open_is_an_error_where_it_is() -> None:
    """'say:Hi ${call.from' passed validation and the caller heard the text as written."""
    text = (
        "sections:\n  main:\n    - play: 'say:Hi ${call.from'\n    - set: {a: '${1} and %{b'}\n"
        "    - cond:\n        - when: \"'${y' == 1\"\n          then: [{play: {url: 'say:a', status_url: 'http://h/${x'}}]\n"
        "    - set: {fine: '${contacts.${lc:dept}} ${\"}\"} ${`a${b}`}'}\n"
    )
    assert errors_of(text) == [
        "sections.main[0].play.url: 'say:Hi ${call.from': the '${' at character 8 has no closing '}'",
        "sections.main[1].set.a: '${1} and %{b': the '%{' at character 10 has no closing '}'",
        "sections.main[2].cond[0].then[0].play.status_url: 'http://h/${x': the '${' at character 10 has no closing '}'",
        "sections.main[2].cond[0].when: \"'${y' == 1\": the '${' at character 2 has no closing '}'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sections:\n  main:\n    - play: url: 'say:hi'\n",
            "line 3, column 16: invalid YAML: mapping values are not allowed here (a value holding ': ' must be "
            "quoted ('say: Hi'), and a method's parameters go on lines of their own, indented under it)",
        ),
        (
            "sections:\n  main:\n  - play:\n      url: 'say:hi'\n    - hangup\n",
            "line 5, column 5: invalid YAML: expected <block end>, but found '-' (check this line's indentation: the "
            "items of one list, and the keys of one object, start in one column)",
        ),
        (
            "sections:\n  main:\n    - play: 'say:it's me'\n",
            "line 3, column 21: invalid YAML: expected <block end>, but found '<scalar>' (text after a quoted value "
            "ended: a ' inside '...' is written twice ('it''s'), or quote with \"...\")",
        ),
        (
            "sections:\n\tmain: [hangup]\n",
            "line 2, column 1: invalid YAML: found character '\\t' that cannot start any token (indent with spaces: "
            "YAML does not take tabs)",
        ),
        (
            "sections: {main: [hangup]}\n---\nsections: {main: [answer]}\n",
            "line 2, column 1: invalid YAML: expected a single document in the stream, but found another document",
        ),
        (
            "sections:\n  main:\n    - play: 'say:hi\n",
            "line 4, column 1: invalid YAML: while scanning a quoted scalar at line 3, column 13, found unexpected "
            "end of stream",
        ),
    ],
)
def test_yaml_mistakes_people_make_are_told_with_what_to_do(text: str, expected: str) -> None:
    """PyYAML's words alone ("but found another document", "expected <block end>") do not say what is
    wrong in the script."""
    assert errors_of(text) == [expected]
