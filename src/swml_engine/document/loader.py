"""Load a SWML document from YAML or JSON text and check every step of every section.

Shorthands accepted (as the public docs use them; see docs/documents.md):

* a step written as a bare string, ``- hangup`` = ``- hangup: {}``;
* a section written as one step mapping instead of a list, ``main: {execute: ...}``;
* a document given as a bare list of steps = ``sections: {main: [...]}``;
* per-method shorthands (``play: 'say:Hi'``, ``sleep: 1000``, ``unset: name``...) live in each method's
  module, in its ``prepare``.

The methods a document may use come as a table from the caller (``methods=REGISTRY``, from
``swml_engine.methods``): this module knows no method by name beyond the schema's list.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from swml_engine.document.model import Block, Document, MethodTable, Step
from swml_engine.document.params import NotSupported, describe, placeholder_problem, shorten
from swml_engine.errors import DocumentError, ParamError
from swml_engine.nesting import MAX_DEPTH, too_deep

#: Every calling method named by the official SWML schema (SWMLObject.json, $defs.SWMLMethod).
SCHEMA_METHODS: frozenset[str] = frozenset(
    [
        "answer",
        "ai",
        "ai_sidecar",
        "amazon_bedrock",
        "cond",
        "connect",
        "denoise",
        "enter_queue",
        "execute",
        "goto",
        "label",
        "live_transcribe",
        "live_translate",
        "hangup",
        "join_room",
        "join_conference",
        "play",
        "prompt",
        "receive_fax",
        "record",
        "record_call",
        "request",
        "return",
        "send_digits",
        "send_fax",
        "send_sms",
        "set",
        "sleep",
        "sip_refer",
        "stop_denoise",
        "stop_record_call",
        "stop_stream",
        "stop_tap",
        "stream",
        "switch",
        "tap",
        "transcribe",
        "transcribe_stop",
        "transfer",
        "unset",
        "pay",
        "detect_machine",
        "user_event",
    ]
)

_TOP_LEVEL = ("version", "sections")

#: Values (strings, numbers, lists, objects...) a document may hold once its YAML aliases are expanded,
#: and the characters of its strings: far beyond any script (100,000 steps of a few values each), far
#: below what an alias bomb expands to (twelve levels of nine aliases: 9^12 values from 600 bytes).
MAX_VALUES = 1_000_000
MAX_TEXT = 16 * 1024 * 1024
#: Below this size a YAML error is parsed again by PyYAML's Python parser, whose messages name more
#: (the alias, the character) than libyaml's; above it that second parse would cost too much.
_RETELL_LIMIT = 64 * 1024
#: A check of the time budget every this many values built.
_CHECK_EVERY = 4096

#: libyaml's parser when PyYAML has it (5x faster on large documents), else the Python one.
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Budget = Callable[[], None]
"""Called now and then while a document is read; raises to stop (a remote document's deadline)."""


class _CountingLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader, counting the values it builds and the aliases it meets (an alias is
    built once and shared, so the count is the text's size; the expansion is measured afterwards)."""

    def __init__(self, text: str, budget: Budget | None) -> None:
        super().__init__(text)
        self.budget = budget
        self.built = 0
        self.aliases = 0
        self.duplicates: list[tuple[int, int, ParamError]] = []  # (line, column, error)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            self.aliases += 1
        else:
            self.built += 1
            if self.budget is not None and self.built % _CHECK_EVERY == 0:
                self.budget()
        return super().construct_object(node, deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys without a word; a second `main:` or case '1' would
        # silently drop the first. Keys a merge (`<<: *base`) brings in may be overridden: not counted.
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key_node.tag, key_node.value), key_node)
            if first is not key_node:
                mark = key_node.start_mark
                self.duplicates.append((mark.line, mark.column, _duplicate(key_node.value, mark, first.start_mark)))
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def _duplicate(key: str, mark: yaml.Mark, first: yaml.Mark | None) -> ParamError:
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    earlier = f" (first at line {first.line + 1}, column {first.column + 1})" if first is not None else ""
    return ParamError(
        "", f"{where}the key {shorten(key)!r} is given twice in one object{earlier}: merge the two or rename one"
    )


def _load_yaml(text: str, budget: Budget | None) -> object:
    loader = _CountingLoader(text, budget)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:  # in the text's order (outer objects are built before the ones they hold)
        raise DocumentError([error for _, _, error in sorted(loader.duplicates, key=lambda d: d[:2])])
    if loader.aliases:
        _check_expansion(data)
    return data


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):
        raise _DuplicateJsonKey
    return out


class _DuplicateJsonKey(Exception):
    """A JSON object with one key twice (json keeps the last): the YAML reader then names its line."""


def _load_json(text: str, budget: Budget | None) -> object:
    try:
        return json.loads(text, object_pairs_hook=_json_pairs)
    except _DuplicateJsonKey:
        pass
    with contextlib.suppress(yaml.YAMLError):  # JSON is YAML: the YAML reader says where the keys are
        _load_yaml(text, budget)
    raise DocumentError([ParamError("", "a key is given twice in one object: merge the two or rename one")])


def _json_message(text: str, e: json.JSONDecodeError) -> str:
    msg = e.msg
    before = text[: e.pos].rstrip()
    if e.pos < len(text) and text[e.pos] in "]}" and before.endswith(","):
        msg = f"a comma before {text[e.pos]!r}: JSON allows no comma after the last item"
    return f"line {e.lineno}, column {e.colno}: invalid JSON: {msg}"


def _check_expansion(root: object) -> None:
    """Refuse a document whose aliases expand past MAX_VALUES / MAX_TEXT, or that contains itself.
    Each distinct list or object is measured once (an alias bomb costs what its text costs), without
    recursion: the size of a node is 1 plus its children's, keys and strings adding their length."""
    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            values, chars = 1, 0
            for child in _children(node):
                v, c = sizes[id(child)] if isinstance(child, dict | list) else (1, _chars(child))
                values, chars = values + v, chars + c
            if values > MAX_VALUES or chars > MAX_TEXT:
                raise DocumentError(
                    [
                        ParamError(
                            "",
                            f"the document holds more than {MAX_VALUES} values or {MAX_TEXT // (1024 * 1024)} MiB "
                            "of text once its YAML aliases are expanded (an alias bomb?)",
                        )
                    ]
                )
            sizes[key] = (values, chars)
            on_path.discard(key)
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if isinstance(child, dict | list) and id(child) not in sizes:
                if id(child) in on_path:
                    raise DocumentError([ParamError("", "a YAML alias refers to a value that contains it")])
                stack.append((child, False))


def _children(node: object) -> list[object]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    return list(node) if isinstance(node, list) else []


def _chars(value: object) -> int:
    return len(value) if isinstance(value, str) else 0


def parse_text(
    text: str, source: str = "<document>", budget: Budget | None = None, *, json_only: bool = False
) -> object:
    """Parse YAML or JSON text (JSON is tried first when the text looks like JSON, for its messages;
    ``json_only``: a ``.json`` file, never read as YAML, whose looser rules would let a trailing comma
    pass). A key given twice in one object is an error.

    YAML aliases may not expand the document past MAX_VALUES values (see _check_expansion); ``budget``
    is called now and then while YAML is built and may raise to stop (a remote document's deadline)."""
    stripped = text.lstrip()
    json_error: json.JSONDecodeError | None = None
    if json_only or stripped.startswith(("{", "[")):
        try:
            return _load_json(text, budget)
        except json.JSONDecodeError as e:
            json_error = e
        except RecursionError:
            raise DocumentError([ParamError("", "the document is nested too deeply to read")]) from None
        if json_only:
            raise DocumentError([ParamError("", _json_message(text, json_error))])
    try:
        return _load_yaml(text, budget)
    except RecursionError:
        raise DocumentError([ParamError("", "the document is nested too deeply to read")]) from None
    except yaml.YAMLError as e:
        if json_error is not None:
            raise DocumentError([ParamError("", _json_message(text, json_error))]) from None
        raise DocumentError([ParamError("", _yaml_message(_retold(text, e)))]) from None


def _retold(text: str, error: yaml.YAMLError) -> yaml.YAMLError:
    """The same error as PyYAML's Python parser words it (it names the alias or character libyaml
    leaves out), for documents small enough to parse twice."""
    if _SafeBase is yaml.SafeLoader or len(text) > _RETELL_LIMIT:
        return error
    try:
        yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as python_error:
        return python_error
    except RecursionError:
        return error
    return error


#: What a parser's wording means for a script's author, for the mistakes people make most: (the start
#: of PyYAML's problem, what to do). The first that matches is added to the message.
_YAML_HINTS: tuple[tuple[str, str], ...] = (
    (
        "mapping values are not allowed here",
        "a value holding ': ' must be quoted ('say: Hi'), and a method's "
        "parameters go on lines of their own, indented under it",
    ),
    (
        "expected <block end>, but found '<scalar>'",
        "text after a quoted value ended: a ' inside '...' is written twice ('it''s'), or quote with \"...\"",
    ),
    (
        "expected <block end>",
        "check this line's indentation: the items of one list, and the keys of one object, start in one column",
    ),
    ("found character '\\t'", "indent with spaces: YAML does not take tabs"),
)


def _yaml_message(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    if problem.startswith("but ") and context:  # "expected a single document in the stream", "but found ..."
        problem = f"{context}, {problem}"
    opened = getattr(e, "context_mark", None)
    if problem.startswith("found unexpected end of stream") and context and opened is not None:
        problem = f"{context} at line {opened.line + 1}, column {opened.column + 1}, {problem}"  # a quote left open
    hint = next((h for start, h in _YAML_HINTS if problem.startswith(start)), None)
    return f"{where}invalid YAML: {problem}" + (f" ({hint})" if hint else "")


def load_file(path: str | Path, *, methods: MethodTable) -> Document:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise DocumentError([ParamError("", f"cannot read {p}: {e.strerror or e}")]) from None
    except UnicodeDecodeError:
        raise DocumentError([ParamError("", f"{p} is not UTF-8 text")]) from None
    return load_document(parse_text(text, str(p), json_only=p.suffix.lower() == ".json"), str(p), methods=methods)


def load_text(text: str, source: str = "<document>", budget: Budget | None = None, *, methods: MethodTable) -> Document:
    return load_document(parse_text(text, source, budget), source, budget, methods=methods)


#: More steps than any real script has (the largest public example has a few hundred).
MAX_STEPS = 100_000
#: Blocks inside blocks (cond/switch/execute on_return...): deeper is not a script a person wrote.
MAX_NESTING = 50


class _Loader:
    def __init__(self, methods: MethodTable, budget: Budget | None = None) -> None:
        self.methods = methods
        self.budget = budget
        self.errors: list[ParamError] = []
        self.unsupported: list[ParamError] = []
        self.count = 0
        self.checked = 0
        self.depth = 0

    def steps(self, raw: object, path: str) -> list[Step]:
        if isinstance(raw, dict):
            raw = [raw]  # a single step written without the list
        if not isinstance(raw, list):
            self.errors.append(ParamError(path, f"{describe(raw)} is not a list of steps"))
            return []
        # Limits a hostile document (a YAML alias bomb repeats one block 2^n times) hits long before
        # any real script: it is refused at once instead of being walked for minutes.
        self.count += len(raw)
        if self.count > MAX_STEPS:
            raise DocumentError(
                [ParamError(path, f"more than {MAX_STEPS} steps in one document (repeated YAML aliases?)")]
            )
        if self.depth >= MAX_NESTING:
            raise DocumentError([ParamError(path, f"steps nested more than {MAX_NESTING} levels deep")])
        self.depth += 1
        try:
            out: list[Step] = []
            for i, item in enumerate(raw):
                step = self.step(item, f"{path}[{i}]")
                if step is not None:
                    out.append(step)
            return out
        finally:
            self.depth -= 1

    def block(self, raw: object, path: str) -> Block:
        return Block(self.steps(raw, path), path)

    def step(self, raw: object, path: str) -> Step | None:
        self.checked += 1
        if self.budget is not None and self.checked % 256 == 0:
            self.budget()
        if isinstance(raw, str):
            name, value = raw.strip(), None  # "- hangup" is "- hangup: {}"
        elif isinstance(raw, dict):
            if len(raw) != 1:
                keys = ", ".join(repr(str(k)) for k in raw) or "none"
                self.errors.append(
                    ParamError(path, f"a step names exactly one method; found keys {keys} (split it into steps)")
                )
                return None
            ((name, value),) = raw.items()
            name = str(name)
        else:
            self.errors.append(ParamError(path, f"{describe(raw)} is not a step (expected e.g. {{play: ...}})"))
            return None
        method = self.methods.get(name)
        where = f"{path}.{name}"
        if method is None:
            if name in SCHEMA_METHODS:
                self.unsupported.append(ParamError(where, "not supported by this engine"))
            else:
                hint = difflib.get_close_matches(name, sorted(SCHEMA_METHODS), n=1)
                tip = f"; did you mean {hint[0]!r}?" if hint else ""
                self.errors.append(ParamError(path, f"unknown method {name!r}{tip}"))
            return None
        try:
            params = method.prepare(value, where, self.block)
        except ParamError as e:
            self.errors.append(e)
            return None
        for error in method.check(params, where):
            # A value the reference allows but this engine does not run counts as an unsupported method does.
            (self.unsupported if isinstance(error, NotSupported) else self.errors).append(error)
        self.errors.extend(_unclosed(params, where))
        return Step(name, params, path)


def _unclosed(value: object, path: str) -> list[ParamError]:
    """Every string of a step's parameters holding a ``${``/``%{`` that no ``}`` closes: the run would say
    or send it as written (``'say:Hi ${call.from'``). Nested steps (Blocks) are checked as their own steps."""
    if isinstance(value, str):
        problem = placeholder_problem(value)
        return [] if problem is None else [ParamError(path, f"{describe(value)}: {problem[1]}")]
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in _unclosed(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _unclosed(v, f"{path}[{i}]")]
    if isinstance(value, tuple):  # (method, params) of an execute's result
        return [e for v in value for e in _unclosed(v, path)]
    return []


def load_document(
    raw: object, source: str = "<document>", budget: Budget | None = None, *, methods: MethodTable
) -> Document:
    """Build a Document from parsed YAML/JSON, its steps checked against ``methods``; raises
    DocumentError listing every problem found (``budget``: as for parse_text)."""
    loader = _Loader(methods, budget)
    deep = too_deep(raw)
    if deep is not None:
        path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in deep).lstrip(".")
        raise DocumentError([ParamError(f"{path}...", f"lists and objects nested more than {MAX_DEPTH} levels deep")])
    if isinstance(raw, list):
        raw = {"sections": {"main": raw}}  # a bare list of steps is the main section
    if not isinstance(raw, dict):
        raise DocumentError([ParamError("", f"a SWML document is an object with 'sections'; got {describe(raw)}")])
    for key in raw:
        if key not in _TOP_LEVEL:
            loader.errors.append(ParamError(str(key), "unknown top-level key; expected 'version' and 'sections'"))
    version = raw.get("version")
    if version is not None and not isinstance(version, str | int | float):
        loader.errors.append(ParamError("version", f"{describe(version)} is not a version string"))
    sections_raw: Any = raw.get("sections")
    sections: dict[str, list[Step]] = {}
    if not isinstance(sections_raw, dict):
        what = "is required" if sections_raw is None else f"{describe(sections_raw)} is not an object of sections"
        loader.errors.append(ParamError("sections", what))
    else:
        if "main" not in sections_raw:
            loader.errors.append(ParamError("sections.main", "is required: the script starts there"))
        for name, steps in sections_raw.items():
            sections[str(name)] = loader.steps(steps, f"sections.{name}")
    doc = Document(sections, source, None if version is None else str(version))
    doc.unsupported = [e.path for e in loader.unsupported]
    _check_references(doc, methods, loader.errors)  # beside other errors too: every error is reported at once
    if loader.errors or loader.unsupported:
        raise DocumentError(loader.errors, loader.unsupported)
    return doc


def _check_references(doc: Document, methods: MethodTable, errors: list[ParamError]) -> None:
    """Literal goto labels and execute sections must exist (templated ones are checked when they run)."""
    for section, steps in doc.sections.items():
        labels = doc.labels(section)
        for step in _walk(steps):
            errors.extend(methods[step.method].check_references(step, doc, labels, methods))


def _walk(steps: list[Step]) -> list[Step]:
    out: list[Step] = []
    for step in steps:
        out.append(step)
        for block in _blocks(step.params):
            out.extend(_walk(block.steps))
    return out


def _blocks(value: object) -> list[Block]:
    if isinstance(value, Block):
        return [value]
    if isinstance(value, dict):
        return [b for v in value.values() for b in _blocks(v)]
    if isinstance(value, list | tuple):
        return [b for v in value for b in _blocks(v)]
    return []
