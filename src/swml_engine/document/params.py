"""Parameter specifications: one small typed checker per kind of value.

The same specification checks a method's parameters twice: when the document is loaded (literal
values only; a value written as ``${...}``/``%{...}`` is accepted and checked later) and when the step
runs (after substitution, every value). Errors name the place and the allowed values.

A method declares its parameters as a frozen dataclass whose fields carry a spec (see :func:`param`);
:func:`parse_params` turns a mapping into that dataclass, :func:`check_params` only collects errors.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from swml_engine.errors import ParamError
from swml_engine.script.template_functions import AT_OPENER
from swml_engine.urls import UrlError, parse_http_url

_TEMPLATE = re.compile(r"[$%]\{")
#: What filling reads as the start of a placeholder: ``${``, ``%{``, and the ``@{`` of a function call.
_OPENER = re.compile(rf"[$%]\{{|{AT_OPENER.pattern}")


def is_templated(value: object) -> bool:
    """True for a string that holds a ``${...}`` or ``%{...}`` placeholder (checked at run time)."""
    return isinstance(value, str) and _TEMPLATE.search(value) is not None


def closing_brace(text: str, open_at: int, stop: int | None = None) -> int:
    """The index of the ``}`` closing the ``{`` at ``open_at`` (braces inside JS string literals do not
    count), or -1 when the text (or its part before ``stop``) ends first."""
    depth = 0
    i = open_at
    end = len(text) if stop is None else stop
    quote: str | None = None
    while i < end:
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


#: Placeholders inside placeholders (``${contacts.${lc:dept}}`` is two levels): deeper is not a value a
#: person wrote, and filling reads each level again.
MAX_PLACEHOLDER_DEPTH = 10


def placeholder_problem(text: str) -> tuple[int, str] | None:
    """The first ``${``/``%{`` that no ``}`` closes (it would stay in the text as written), or that nests
    deeper than MAX_PLACEHOLDER_DEPTH: its index and what is wrong; None when there is neither.

    Read as filling reads it: each placeholder's body is searched again for the ones inside it, so a text
    is read once per level. Looking for a close from every ``${`` to the end of the text, as this once
    did, cost its length squared: a 4 MiB remote document of ``${`` nested in one another took hours."""
    problems: list[tuple[int, str]] = []
    spans = [(0, len(text), 1)]  # parts of the text to search, and the depth of what is found there
    while spans:
        lo, hi, depth = spans.pop()
        at = lo
        while (m := _OPENER.search(text, at, hi)) is not None:
            end = closing_brace(text, m.start() + 1, hi)
            if end < 0:
                problems.append((m.start(), f"the {m.group()!r} at character {m.start() + 1} has no closing '}}'"))
                break
            if depth > MAX_PLACEHOLDER_DEPTH:
                where = f"the {m.group()!r} at character {m.start() + 1}"
                problems.append((m.start(), f"{where} is inside {MAX_PLACEHOLDER_DEPTH} other placeholders"))
                break
            spans.append((m.start() + 2, end, depth + 1))
            at = end + 1
    return min(problems) if problems else None


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters for a message (a substituted value can be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def describe(value: object) -> str:
    """Show a value in an error message the way the user wrote it (long text cut short)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 120 else f"{shorten(value)!r}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return str(value)


class NotSupported(ParamError):
    """A value the SWML reference allows but this engine does not run (a ``connect`` to a queue, say):
    the loader reports it as it reports an unsupported method (``swml validate`` exit 3), not as invalid."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(path, f"{what}: not supported by this engine")


class Spec:
    """Checks one value; returns it converted (numeric strings to numbers, ...) or raises ParamError."""

    #: Whether a ``${...}`` string is accepted at load time in place of this value.
    templatable = True

    def check(self, value: object, path: str) -> object:
        raise NotImplementedError

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        """Check at load time: collect errors; accept placeholders to be checked when the step runs."""
        if self.templatable and is_templated(value):
            return
        try:
            self.check(value, path)
        except ParamError as e:
            errors.append(e)


class Any_(Spec):
    """Any JSON value."""

    def check(self, value: object, path: str) -> object:
        return value


class Str(Spec):
    def __init__(self, *, choices: Sequence[str] | None = None, allow_empty: bool = True) -> None:
        self.choices = tuple(choices) if choices else None
        self.allow_empty = allow_empty

    def check(self, value: object, path: str) -> object:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise ParamError(path, f"{describe(value)} is not a string")
        text = value if isinstance(value, str) else _number_text(value)
        if self.choices is not None and text not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ParamError(path, f"{describe(value)} is not one of {allowed}")
        if not self.allow_empty and text == "":
            raise ParamError(path, "must not be empty")
        return text


class HttpUrl(Str):
    """Where status callbacks go: an http(s) URL with a host, parsed strictly (:mod:`swml_engine.urls`:
    a password holding ``@ : / ? #`` must be percent-encoded) when the document is loaded.

    At run time a substituted value only has to be text: one that does not parse drops that step's
    callbacks with an ``error`` event (:class:`~swml_engine.callbacks.StatusReporter`) and the step
    runs — a recording is never lost to its ``status_url``.
    """

    def __init__(self) -> None:
        super().__init__(allow_empty=False)

    def check(self, value: object, path: str) -> object:
        # Substituted to nothing (``${cb}`` with ``cb`` unset): kept as "", which costs the step its
        # callbacks (an ``error`` event says so), never the step. Written empty, load_check refuses it.
        return "" if value == "" else super().check(value, path)

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        if is_templated(value):
            return
        try:
            self.strict(value, path)
        except ParamError as e:
            errors.append(e)

    def strict(self, value: object, path: str) -> str:
        """The URL if it parses strictly; else ParamError naming ``path``."""
        text = self.check(value, path)
        assert isinstance(text, str)
        try:
            parse_http_url(text)
        except UrlError as e:
            raise ParamError(path, str(e)) from None
        return text


class Num(Spec):
    """A number; numeric strings are accepted (a substituted ``${...}`` is a string)."""

    def __init__(
        self,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        integer: bool = False,
        unit: str = "",
        extra: Sequence[float] = (),
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.integer = integer
        self.unit = unit
        self.extra = tuple(extra)

    def check(self, value: object, path: str) -> object:
        kind = "an integer" if self.integer else "a number"
        number: float
        if isinstance(value, bool) or value is None:
            raise ParamError(path, f"{describe(value)} is not {kind}")
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ParamError(path, f"{describe(value)} is not {kind}") from None
        else:
            raise ParamError(path, f"{describe(value)} is not {kind}")
        if math.isnan(number) or math.isinf(number):
            raise ParamError(path, f"{describe(value)} is not a finite number")
        if self.integer and number != int(number):
            raise ParamError(path, f"{describe(value)} is not an integer")
        if number in self.extra:
            return int(number) if self.integer else number
        unit = f" {self.unit}" if self.unit else ""
        if self.minimum is not None and number < self.minimum:
            raise ParamError(path, f"{describe(value)} is below the minimum {_number_text(self.minimum)}{unit}")
        if self.maximum is not None and number > self.maximum:
            raise ParamError(path, f"{describe(value)} is above the maximum {_number_text(self.maximum)}{unit}")
        if self.integer:
            return int(number)
        return float(number)


class Bool(Spec):
    """A boolean; the strings "true"/"false" are accepted (a substituted ``${...}`` is a string)."""

    def check(self, value: object, path: str) -> object:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ParamError(path, f"{describe(value)} is not a boolean (true or false)")


class Chars(Spec):
    """A string made only of the given characters, such as DTMF digits."""

    def __init__(self, allowed: str, what: str) -> None:
        self.allowed = allowed
        self.what = what

    def check(self, value: object, path: str) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None and "#" in self.allowed:
            # `terminators: #` (as the reference's own text has it): YAML reads # as a comment's start.
            raise ParamError(
                path, f"null is not a string of {self.what} (in YAML an unquoted # starts a comment: write '#')"
            )
        if not isinstance(value, str):
            raise ParamError(path, f"{describe(value)} is not a string of {self.what}")
        bad = sorted({c for c in value if c not in self.allowed})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise ParamError(path, f"{describe(value)} has characters that are not {self.what}: {shown}")
        return value


class ListOf(Spec):
    def __init__(self, item: Spec, *, allow_single: bool = False, min_items: int = 0) -> None:
        self.item = item
        self.allow_single = allow_single
        self.min_items = min_items

    def check(self, value: object, path: str) -> object:
        if not isinstance(value, list):
            if self.allow_single and not isinstance(value, dict):
                return [self.item.check(value, path)]
            raise ParamError(path, f"{describe(value)} is not a list")
        if len(value) < self.min_items:
            raise ParamError(path, f"needs at least {self.min_items} item(s)")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        if is_templated(value):
            return
        if isinstance(value, list):
            if len(value) < self.min_items:
                errors.append(ParamError(path, f"needs at least {self.min_items} item(s)"))
            for i, v in enumerate(value):
                self.item.load_check(v, f"{path}[{i}]", errors)
        else:
            super().load_check(value, path, errors)


class MapOf(Spec):
    """An object with free keys (``set``, ``execute.params``)."""

    templatable = False

    def check(self, value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise ParamError(path, f"{describe(value)} is not an object")
        return value


def param(spec: Spec, *, default: Any = dataclasses.MISSING, required: bool = False, key: str | None = None) -> Any:
    """Declare a parameter field of a method's params dataclass; ``key``: the name written in documents
    when it cannot be the field's (``from``, a Python keyword)."""
    meta = {"spec": spec, "required": required, "key": key}
    if default is dataclasses.MISSING and not required:
        default = None
    if isinstance(default, list | dict):
        template: list[Any] | dict[str, Any] = default
        return dataclasses.field(default_factory=lambda: type(template)(template), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


P = TypeVar("P")


def _fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    """The fields of ``cls`` by the name documents write them with."""
    return {f.metadata.get("key") or f.name: f for f in dataclasses.fields(cls)}


def _unknown_key(key: str, fields: Mapping[str, object], path: str) -> ParamError:
    allowed = ", ".join(sorted(fields)) or "no parameters"
    return ParamError(f"{path}.{key}", f"unknown parameter; {('expected one of ' + allowed) if fields else allowed}")


def _not_an_object(cls: type[Any], raw: object, path: str) -> ParamError:
    """``goto: end`` and the like: say what to write instead (the one required parameter, or the list)."""
    fields = _fields(cls)
    required = [name for name, f in fields.items() if f.metadata.get("required")]
    if len(required) == 1 and isinstance(raw, str):
        tip = f"write {{{required[0]}: {describe(raw)}}}"
    else:
        tip = f"its parameters: {', '.join(sorted(fields))}" if fields else "write {}"
    return ParamError(path, f"{describe(raw)} is not an object of parameters; {tip}")


def check_params(cls: type[Any], raw: object, path: str) -> list[ParamError]:
    """Load-time check of a params mapping against the dataclass ``cls``; returns every error."""
    errors: list[ParamError] = []
    if not isinstance(raw, dict):
        return [_not_an_object(cls, raw, path)]
    fields = _fields(cls)
    for key, value in raw.items():
        f = fields.get(str(key))
        if f is None:
            errors.append(_unknown_key(str(key), fields, path))
            continue
        cast(Spec, f.metadata["spec"]).load_check(value, f"{path}.{key}", errors)
    for name, f in fields.items():
        if f.metadata.get("required") and name not in raw:
            errors.append(ParamError(f"{path}.{name}", "is required"))
    return errors


def parse_params(cls: type[P], raw: object, path: str) -> P:
    """Run-time parse: every value (already substituted) is checked and converted; first error raised."""
    if not isinstance(raw, dict):
        raise _not_an_object(cls, raw, path)
    fields = _fields(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = fields.get(str(key))
        if f is None:
            raise _unknown_key(str(key), fields, path)
        if value is None and not f.metadata.get("required"):
            continue  # an explicit null means "use the default"
        values[f.name] = cast(Spec, f.metadata["spec"]).check(value, f"{path}.{key}")
    for name, f in fields.items():
        if f.metadata.get("required") and f.name not in values:
            raise ParamError(f"{path}.{name}", "is required")
    return cls(**values)


def _number_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Steps(Spec):
    """A nested list of steps, already loaded into a Block by the method's ``prepare``."""

    templatable = False

    def check(self, value: object, path: str) -> object:
        from swml_engine.document.model import Block

        if not isinstance(value, Block):
            raise ParamError(path, f"{describe(value)} is not a list of steps")
        return value
