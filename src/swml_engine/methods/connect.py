"""``connect``: dial far parties, bridge the caller to the first that answers, go on when it hangs up.

Parameters (connect.mdx): four shapes of the same dial plan, checked when the document loads.

``to`` is one destination; ``serial`` a list tried one after another; ``parallel`` a list dialled at
once; ``serial_parallel`` a list of such parallel groups tried one after another. The top-level values
(``from``, ``timeout``, ``confirm``, ...) are the defaults of every destination, which may override
them. Destinations this engine cannot reach by their nature — queues, WebSocket streams, Resource
Addresses — and what it cannot do (SRTP, WebRTC media) are "not supported by this engine" (exit 3 of
``swml validate``); a destination that is none of the known kinds is an error naming the place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from swml_engine.callbacks import NODE_ID, StatusReporter
from swml_engine.dialing import DialTarget
from swml_engine.dialplan import DialPlan, Leg, LegSettings, Ringback, check_confirm_steps
from swml_engine.document.loader import load_text
from swml_engine.document.model import Block, BlockLoader, Document, MethodTable, Step
from swml_engine.document.params import (
    Any_,
    Bool,
    HttpUrl,
    ListOf,
    MapOf,
    NotSupported,
    Num,
    Spec,
    Str,
    check_params,
    describe,
    is_templated,
    param,
    parse_params,
)
from swml_engine.errors import DocumentError, ParamError
from swml_engine.methods.answer import KNOWN_CODECS, codec_names
from swml_engine.methods.base import Method
from swml_engine.methods.cond import Cond
from swml_engine.methods.play import SoundSpec, VoiceParams, sounds_of, voice_of
from swml_engine.methods.switch import Switch
from swml_engine.methods.transfer import transfer_dest
from swml_engine.script.step import StepContext
from swml_engine.transports.sip.codecs import SUPPORTED
from swml_engine.transports.sip.message import header_key, header_spelling, unfit_for_a_header
from swml_engine.transports.sip.uri import UriError, parse_uri
from swml_engine.vocabulary import ConnectState, DisconnectReason, FailReason

#: ``call_state_events`` a script may ask for (connect.mdx; the schema's CallStatus).
CALL_STATE_EVENTS = ("created", "ringing", "answered", "ended")
ENCRYPTIONS = ("mandatory", "optional", "forbidden")
#: Bounds on what one ``connect`` may ask (a document server may send anything).
MAX_DESTINATIONS = 64  # in all groups together
MAX_PARALLEL = 16  # far legs ringing at once
MAX_HEADERS = 32
MAX_HEADER_VALUE = 1024
MAX_TIMEOUT = 3600  # seconds of ringing, of a confirm script
MAX_BRIDGE = 86400  # max_duration, session_timeout: a day

#: connect.mdx defaults.
DEFAULT_TIMEOUT = 60
DEFAULT_MAX_DURATION = 14400
DEFAULT_CALL_STATE_EVENTS = ("ended",)

#: What a destination is, by its form.
DestinationKind = Literal["sip", "phone"]

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: SIP header names a script may not set: the engine writes them (RFC 3261 §20) or they would break the call.
_RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Content-Length",
        "Content-Type",
        "Content-Encoding",
        "Authorization",
        "Proxy-Authorization",
        "Session-Expires",
        "Min-SE",
        "Supported",
        "Require",
        "Allow",
        "Expires",
    )
)
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]{1,64}")


def destination_kind(to: str, path: str) -> DestinationKind:
    """What ``to`` is: a SIP URI or an E.164 number. Raises :class:`NotSupported` for the kinds this
    engine does not dial (queues, streams, Resource Addresses) and ParamError for anything else."""
    text = to.strip()
    low = text.lower()
    if not text:
        raise ParamError(path, "is empty: give a phone number in E.164 form (+15551234567) or a sip: URI")
    if unfit_for_a_header(text):  # (a caller's value in it must not put bytes like these into the INVITE)
        raise ParamError(path, f"{describe(to)} holds a line break or control character")
    if low.startswith(("sip:", "sips:")):
        try:
            uri = parse_uri(text)
        except UriError as e:
            raise ParamError(path, f"{describe(to)} is not a SIP URI: {e}") from None
        if not uri.host:
            raise ParamError(path, f"{describe(to)} is not a SIP URI: no host")
        return "sip"
    if low.startswith("queue:"):
        raise NotSupported(path, f"{describe(to)} (a queue)")
    if low.startswith("stream:"):
        raise NotSupported(path, f"{describe(to)} (a WebSocket stream)")
    if text.startswith("/"):
        raise NotSupported(path, f"{describe(to)} (a Resource Address)")
    if _E164.fullmatch(text):
        return "phone"
    if text.startswith("+"):
        raise ParamError(
            path, f"{describe(to)} is not a phone number in E.164 form: + then up to 15 digits, e.g. +15551234567"
        )
    raise ParamError(
        path, f"{describe(to)} is not a destination: give a phone number in E.164 form (+15551234567) or a sip: URI"
    )


class Address(Str):
    """``to``: its kind is checked when the document loads; a value substituted at run time is checked
    when it is dialled (a bad one fails that far leg, not the call)."""

    def __init__(self) -> None:
        super().__init__(allow_empty=False)

    def check(self, value: object, path: str) -> object:
        # Substituted to nothing (``${agent2}`` unset): kept as "", which fails that far leg only, when it
        # is dialled (its error event says it is empty). Written empty, load_check refuses it.
        return "" if value == "" else super().check(value, path)

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        if is_templated(value):
            return
        if (number := _unquoted_number(value, path)) is not None:
            errors.append(number)
            return
        try:
            text = self.check(value, path)
            assert isinstance(text, str)
            destination_kind(text, path)
        except ParamError as e:
            errors.append(e)


def _unquoted_number(value: object, path: str) -> ParamError | None:
    """YAML reads an unquoted +15551234567 as a number, its + gone — silently a different number in a
    caller id, a destination refused: said so, with the quoted form to write."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    key = path.rpartition(".")[2]
    return ParamError(path, f"{value} is a number (YAML drops the + of one unquoted); quote it: {key}: '+{value}'")


class Text(Str):
    """A string of at most ``limit`` characters on one line (it goes into a SIP header or a payload)."""

    def __init__(self, limit: int = 256) -> None:
        super().__init__()
        self.limit = limit

    def check(self, value: object, path: str) -> object:
        text = super().check(value, path)
        assert isinstance(text, str)
        if len(text) > self.limit:
            raise ParamError(path, f"{describe(text)} is longer than {self.limit} characters")
        if unfit_for_a_header(text):
            raise ParamError(path, f"{describe(text)} holds a line break or control character")
        return text


class CallerId(Text):
    """``from``: a number or SIP URI shown to the far party; one YAML read as a number is refused."""

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        if (number := _unquoted_number(value, path)) is not None:
            errors.append(number)
            return
        super().load_check(value, path, errors)


class Codecs(Str):
    """``codecs``: a comma-separated list of codec names answer.mdx knows (``PCMU,G722@16000h``)."""

    def check(self, value: object, path: str) -> object:
        text = super().check(value, path)
        assert isinstance(text, str)
        unknown = [c for c in codec_names(text) if c not in KNOWN_CODECS]
        if unknown:
            raise ParamError(path, f"unknown codec(s) {', '.join(unknown)}; known: {', '.join(KNOWN_CODECS)}")
        return text


def none_spoken(codecs: str) -> str | None:
    """Why a SIP leg offered ``codecs`` cannot be placed: none of them is one this engine speaks (SIP
    offers only what the engine speaks; the others are left out). None when one is, or none is named."""
    names = codec_names(codecs)
    if not names or any(n in SUPPORTED for n in names):
        return None
    return f"{codecs!r} (none of them is a codec this engine speaks: {', '.join(SUPPORTED)})"


#: The media settings a SIP destination may ask for that this engine does not do (_media_unsupported).
_MEDIA_SETTINGS = ("encryption", "webrtc_media")


def _media_unsupported(encryption: object, webrtc_media: object) -> list[tuple[str, str]]:
    """What a SIP destination's media settings ask that this engine does not do, as (setting, why):
    ``encryption: mandatory`` (SRTP), ``webrtc_media: true`` (ICE, DTLS-SRTP on a placed leg; its WebRTC
    takes browser callers, docs/phone.md). connect.mdx: both apply to SIP destinations only, so a phone
    number's are no concern."""
    out = []
    if encryption == "mandatory":
        out.append(("encryption", "'mandatory' (SRTP media encryption)"))
    if webrtc_media is True or (isinstance(webrtc_media, str) and webrtc_media.strip().lower() == "true"):
        out.append(("webrtc_media", "true (WebRTC media)"))
    return out


class Header(Spec):
    """One ``headers[]`` entry, ``{name, value}``: a SIP header the engine does not write itself."""

    templatable = False

    def check(self, value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise ParamError(path, f"{describe(value)} is not a {{name, value}} object")
        extra = sorted(set(map(str, value)) - {"name", "value"})
        if extra:
            raise ParamError(f"{path}.{extra[0]}", "unknown key; a header has name and value")
        name, text = value.get("name"), value.get("value")
        if name is None:
            raise ParamError(f"{path}.name", "is required")
        if text is None:
            raise ParamError(f"{path}.value", "is required")
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ParamError(f"{path}.name", f"{describe(name)} is not a SIP header name (letters, digits, -)")
        key = header_key(name)  # a compact form (i, l, v, ...) is the header it stands for
        if key in _RESERVED_HEADERS:
            shown = repr(name) if key == name.lower() else f"{name!r} ({header_spelling(name)})"
            raise ParamError(f"{path}.name", f"{shown} is written by the engine; use a header of your own (X-...)")
        checked = Text(MAX_HEADER_VALUE).check(text, f"{path}.value")
        return {"name": name, "value": checked}

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        if isinstance(value, dict) and any(is_templated(v) for v in value.values()):
            return  # checked when the step runs
        super().load_check(value, path, errors)


class Confirm(Spec):
    """``confirm``: a list of steps (already a Block, see :func:`prepare_confirm`) or the http(s) URL
    of a SWML document."""

    templatable = False

    def check(self, value: object, path: str) -> object:
        if isinstance(value, Block):
            return value
        if isinstance(value, str):
            return Str(allow_empty=False).check(value, path)
        raise ParamError(path, f"{describe(value)} is not a URL of a SWML document or a list of steps")

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        if isinstance(value, str):
            HttpUrl().load_check(value, path, errors)
        else:
            super().load_check(value, path, errors)


@dataclass(frozen=True, kw_only=True)
class LegParams:
    """What may be set for every destination at the top level and overridden by each one. None: not
    given here (the destination takes the top-level value, else the default)."""

    from_: str | None = param(CallerId(), key="from")
    from_name: str | None = param(Text(128))
    username: str | None = param(Text())
    password: str | None = param(Text())
    timeout: int | None = param(Num(minimum=1, maximum=MAX_TIMEOUT, integer=True, unit="seconds"))
    call_state_events: list[str] | None = param(ListOf(Str(choices=CALL_STATE_EVENTS)))
    call_state_url: str | None = param(HttpUrl())
    confirm: Block | str | None = param(Confirm())
    confirm_timeout: int | None = param(Num(minimum=1, maximum=MAX_TIMEOUT, integer=True, unit="seconds"))
    encryption: str | None = param(Str(choices=ENCRYPTIONS))
    headers: list[dict[str, str]] | None = param(ListOf(Header()))
    codecs: str | None = param(Codecs())
    session_timeout: int | None = param(Num(minimum=1, maximum=MAX_BRIDGE, integer=True, unit="seconds"))
    webrtc_media: bool | None = param(Bool())
    # Stream destinations only (not dialled by this engine): accepted, with their types checked.
    name: str | None = param(Text())
    codec: str | None = param(Text(64))
    realtime: bool | None = param(Bool())
    status_url_method: str | None = param(Str(choices=("GET", "POST")))
    authorization_bearer_token: str | None = param(Text(4096))
    custom_parameters: dict[str, Any] | None = param(MapOf())


@dataclass(frozen=True, kw_only=True)
class DestinationParams(LegParams):
    """One destination of ``serial``, ``parallel`` or ``serial_parallel``."""

    to: str = param(Address(), required=True)


class Destination(Spec):
    """A destination object, checked and parsed as :class:`DestinationParams`."""

    templatable = False

    def check(self, value: object, path: str) -> object:
        return parse_params(DestinationParams, value, path)

    def load_check(self, value: object, path: str, errors: list[ParamError]) -> None:
        errors.extend(check_params(DestinationParams, value, path))


class Destinations(ListOf):
    """A list of destinations (``serial``, ``parallel``, one group of ``serial_parallel``)."""

    templatable = False

    def __init__(self) -> None:
        super().__init__(Destination(), min_items=1)


@dataclass(frozen=True, kw_only=True)
class ConnectParams(LegParams):
    to: str | None = param(Address())
    serial: list[DestinationParams] | None = param(Destinations())
    parallel: list[DestinationParams] | None = param(Destinations())
    serial_parallel: list[list[DestinationParams]] | None = param(ListOf(Destinations(), min_items=1))
    answer_on_bridge: bool = param(Bool(), default=False)
    max_duration: int = param(
        Num(minimum=1, maximum=MAX_BRIDGE, integer=True, unit="seconds"), default=DEFAULT_MAX_DURATION
    )
    ringback: list[str] | None = param(ListOf(SoundSpec(), allow_single=True, min_items=1))
    status_url: str | None = param(HttpUrl())
    transfer_after_bridge: str | None = param(Str(allow_empty=False))
    #: ``(method, params)``: a ``switch`` (an object) or a ``cond`` (a list), prepared at load time.
    result: Any = param(Any_())

    def groups(self) -> list[list[LegParams]]:
        """The dial plan: groups tried one after another, the destinations of a group dialled at once.
        ``to`` is one group of one (the top level is its own destination)."""
        if self.serial is not None:
            return [[d] for d in self.serial]
        if self.parallel is not None:
            return [list(self.parallel)]
        if self.serial_parallel is not None:
            return [list(g) for g in self.serial_parallel]
        return [[self]]


#: The four shapes: exactly one is given.
SHAPES = ("to", "serial", "parallel", "serial_parallel")


def destination_of(leg: LegParams) -> str:
    """The ``to`` of a destination (the top level's for the ``to`` shape)."""
    to = getattr(leg, "to", None)
    return to if isinstance(to, str) else ""


def setting(name: str, leg: LegParams, top: LegParams) -> Any:
    """A destination's value of ``name``: its own, else the top level's (None when neither gives it)."""
    own = getattr(leg, name)
    return own if own is not None else getattr(top, name)


# --- load time ----------------------------------------------------------------------------------------


def prepare_connect(raw: object, where: str, blocks: BlockLoader, result: Any) -> dict[str, Any]:
    """The written ``connect`` with its step lists loaded: every ``confirm`` list (top level and per
    destination) becomes a Block; ``result`` is what the method made of ``result``."""
    if not isinstance(raw, dict):
        raise ParamError(where, f"{describe(raw)} is not an object with to, serial, parallel or serial_parallel")
    out: dict[str, Any] = _with_confirm(raw, where, blocks)
    for shape in ("serial", "parallel"):
        items = raw.get(shape)
        if isinstance(items, list):
            out[shape] = [_with_confirm(d, f"{where}.{shape}[{i}]", blocks) for i, d in enumerate(items)]
    groups = raw.get("serial_parallel")
    if isinstance(groups, list):
        out["serial_parallel"] = [
            [_with_confirm(d, f"{where}.serial_parallel[{g}][{i}]", blocks) for i, d in enumerate(group)]
            if isinstance(group, list)
            else group
            for g, group in enumerate(groups)
        ]
    if "result" in raw:
        out["result"] = result
    return out


def _with_confirm(item: object, where: str, blocks: BlockLoader) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("confirm"), list | dict):
        return item
    out = dict(item)
    path = f"{where}.confirm"
    block = blocks(item["confirm"], path)
    check_confirm_steps(block.steps)
    out["confirm"] = block
    return out


def check_connect(params: object, where: str) -> list[ParamError]:
    """Errors beyond each value's own: one shape, bounded sizes, credentials in pairs, a codec a SIP leg
    can offer."""
    errors = check_params(ConnectParams, params, where)
    if not isinstance(params, dict):
        return errors
    given = [s for s in SHAPES if s in params]
    if len(given) != 1:
        shown = ", ".join(given) if given else "none"
        errors.append(ParamError(where, f"give exactly one of to, serial, parallel or serial_parallel (found {shown})"))
    destinations = list(_literal_destinations(params, where))
    if len(destinations) > MAX_DESTINATIONS:
        errors.append(ParamError(where, f"{len(destinations)} destinations; at most {MAX_DESTINATIONS}"))
    for group, path in _literal_groups(params, where):
        if len(group) > MAX_PARALLEL:
            errors.append(ParamError(path, f"{len(group)} destinations dialled at once; at most {MAX_PARALLEL}"))
    for dest, path in [(params, where), *(d for d in destinations if d[0] is not params)]:
        own = dest.get("headers")
        if isinstance(own, list) and len(own) > MAX_HEADERS:
            errors.append(ParamError(f"{path}.headers", f"{len(own)} headers; at most {MAX_HEADERS}"))
    # What a SIP destination asks that this engine does not do (a phone number's codecs, encryption and
    # webrtc_media are not used), each named at the level that gives it: the destination's, else the top's.
    unspoken: dict[str, str] = {}  # codecs' place -> why
    media: dict[str, str] = {}  # encryption's and webrtc_media's place -> why
    for dest, path in destinations:
        to = dest.get("to")
        if not (isinstance(to, str) and to.strip().lower().startswith(("sip:", "sips:"))):
            continue
        level = {name: (dest, path) if name in dest else (params, where) for name in ("codecs", *_MEDIA_SETTINGS)}
        values = {name: holder.get(name) for name, (holder, _) in level.items()}
        codecs = values["codecs"]
        if isinstance(codecs, str) and not is_templated(codecs) and (why := none_spoken(codecs)):
            unspoken[f"{level['codecs'][1]}.codecs"] = why
        for name, asked in _media_unsupported(values["encryption"], values["webrtc_media"]):
            media[f"{level[name][1]}.{name}"] = asked
    errors.extend(NotSupported(place, why) for place, why in unspoken.items())
    errors.extend(NotSupported(place, why) for place, why in media.items())
    for dest, path in destinations:
        has_user = "username" in dest or "username" in params
        has_password = "password" in dest or "password" in params
        if has_user != has_password:
            errors.append(ParamError(path, CREDENTIALS_PAIR))
    return errors


CREDENTIALS_PAIR = (
    "username and password go together (the far end's digest challenge is answered with them): give both, or neither"
)


def _literal_groups(params: dict[str, Any], where: str) -> list[tuple[list[Any], str]]:
    """The groups dialled at once, as written, with their paths."""
    out: list[tuple[list[Any], str]] = []
    if isinstance(params.get("parallel"), list):
        out.append((params["parallel"], f"{where}.parallel"))
    groups = params.get("serial_parallel")
    if isinstance(groups, list):
        out.extend((g, f"{where}.serial_parallel[{i}]") for i, g in enumerate(groups) if isinstance(g, list))
    return out


def _literal_destinations(params: dict[str, Any], where: str) -> list[tuple[dict[str, Any], str]]:
    """Every destination object as written, with its path (the top level for the ``to`` shape)."""
    if "to" in params:
        return [(params, where)]
    out: list[tuple[dict[str, Any], str]] = []
    for shape in ("serial", "parallel"):
        items = params.get(shape)
        if isinstance(items, list):
            out.extend((d, f"{where}.{shape}[{i}]") for i, d in enumerate(items) if isinstance(d, dict))
    groups = params.get("serial_parallel")
    if isinstance(groups, list):
        for g, group in enumerate(groups):
            if isinstance(group, list):
                out.extend(
                    (d, f"{where}.serial_parallel[{g}][{i}]") for i, d in enumerate(group) if isinstance(d, dict)
                )
    return out


#: ``result`` is read as one of these (an object as a switch, a list as a cond), as execute's is.
_SWITCH, _COND = Switch(), Cond()


def prepare_result(raw: object, where: str, blocks: BlockLoader) -> tuple[str, Any]:
    """``result``: an object is a ``switch`` on ``connect_result`` (unless it names its variable), a
    list a ``cond``; kept as ``(method, params)`` and run as that step once the far leg has ended."""
    if isinstance(raw, dict):
        given = dict(raw)
        given.setdefault("variable", "connect_result")
        return (_SWITCH.name, _SWITCH.prepare(given, where, blocks))
    if isinstance(raw, list):
        return (_COND.name, _COND.prepare(raw, where, blocks))
    raise ParamError(where, f"{describe(raw)} is not a switch object or a cond list")


class Connect(Method[ConnectParams]):
    name = "connect"
    params = ConnectParams
    result_var = "connect_result"

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        result = None
        if isinstance(raw, dict) and "result" in raw:
            result = prepare_result(raw["result"], f"{where}.result", blocks)
        return prepare_connect(raw, where, blocks, result)

    def check(self, params: object, where: str) -> list[ParamError]:
        return check_connect(params, where)

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        after = step.params.get("transfer_after_bridge") if isinstance(step.params, dict) else None
        return check_document_text(after, f"{step.where}.transfer_after_bridge", methods)

    async def run(self, ctx: StepContext, p: ConnectParams) -> None:
        caller = ctx.call
        groups = legs_of(ctx, p)
        status = status_of(ctx, p.status_url)
        where = f"{ctx.where}.ringback"
        ringback = Ringback(caller, sounds_of(p.ringback or [], where), voice_of(ctx, VoiceParams()), where)
        plan = DialPlan(caller, ctx.variables, cast("Mapping[str, Method[Any]]", ctx.runner.methods), ctx.where)
        plan.ringback = ringback
        ended: DisconnectReason | None = None
        try:
            # answer_on_bridge: the caller is answered only once a far party is (meanwhile early media).
            await (caller.early_media() if p.answer_on_bridge else caller.answer())
            if not caller.is_ended:
                report(ctx, status, "connecting")
                ringback.start()
                leg = await plan.dial(groups)
                early = await ringback.stop(leg)
                if leg is not None:
                    await caller.answer()
                if leg is not None and not caller.is_ended:
                    report(ctx, status, "connected", peer=peer_of(leg))
                    ended = await plan.bridge(leg, p.max_duration, early)
                    report(ctx, status, "disconnected", reason=ended)
        finally:
            await ringback.stop(None)
            await plan.close()
        if ended is None:
            reason = "cancelled" if caller.is_ended else plan.failure
            report(ctx, status, "failed", failed_reason=reason)
        self.outcome(ctx, reason if ended is None else None)
        if caller.is_ended:
            return
        await self._result(ctx, p.result)
        if ended is not None and p.transfer_after_bridge is not None:
            await transfer_dest(ctx, p.transfer_after_bridge, f"{ctx.where}.transfer_after_bridge")

    def outcome(self, ctx: StepContext, failure: FailReason | None) -> None:
        """The documented variables: connect_result, connect_failed_reason, return_value."""
        result = "connected" if failure is None else "failed"
        ctx.set_var("connect_result", result)
        if failure is not None:
            ctx.set_var("connect_failed_reason", failure)
        elif "connect_failed_reason" in ctx.variables.vars:
            # An earlier connect's reason must not outlive this one's success.
            del ctx.variables.vars["connect_failed_reason"]
            ctx.events.emit("vars.unset", name="connect_failed_reason")
        ctx.set_var("return_value", result)
        ctx.result = result

    async def _result(self, ctx: StepContext, result: tuple[str, Any] | None) -> None:
        """``result``: the switch (or cond) on how the connect went, run as a step of its own."""
        if result is not None:
            kind, params = result
            await ctx.runner.run_step(Step(kind, params, f"{ctx.step.path}.connect.result"), ctx.section_run)

    async def after_failure(self, ctx: StepContext) -> None:
        # A connect that could not run (a value substituted wrong) failed as a connect: its result's
        # "failed" branch runs, as for a leg that failed — the voicemail a script falls back to.
        written = ctx.step.params
        result = written.get("result") if isinstance(written, dict) else None
        if isinstance(result, tuple) and not ctx.call.is_ended:
            await self._result(ctx, result)

    def failed(self, ctx: StepContext, raw: object, error: ParamError) -> None:
        # The step could not run (a value substituted at run time was wrong): it failed as a connect,
        # and its listeners (the connect.state event, status_url) hear so, as of any failed connect.
        url = raw.get("status_url") if isinstance(raw, dict) else None
        report(ctx, status_of(ctx, url if isinstance(url, str) else None), "failed", failed_reason="error")
        ctx.set_var("connect_failed_reason", "error")
        ctx.set_var("return_value", "failed")


def status_of(ctx: StepContext, url: str | None) -> StatusReporter:
    """The step's ``calling.call.connect`` callbacks to ``status_url`` (none without one)."""
    return StatusReporter(ctx.call, url, "calling.call.connect", None, f"{ctx.where}.status_url")


def report(ctx: StepContext, status: StatusReporter, state: ConnectState, **fields: Any) -> None:
    """One step of the connect: a ``connect.state`` event and a ``calling.call.connect`` callback."""
    ctx.events.emit("connect.state", state=state, **fields)
    params: dict[str, Any] = {"connect_state": state}
    if "failed_reason" in fields:
        params["failed_reason"] = fields["failed_reason"]
    if "peer" in fields:
        params["peer"] = fields["peer"]
    status.send(params)


def peer_of(leg: Leg) -> dict[str, Any]:
    """``params.peer`` of the ``connected`` callback."""
    return {"call_id": leg.call_id, "node_id": NODE_ID, "device": leg.device()}


def legs_of(ctx: StepContext, p: ConnectParams) -> list[list[LegSettings]]:
    """The dial plan's groups, each destination with the top-level values filled in."""
    shape = next(s for s in SHAPES if getattr(p, s) is not None)
    out: list[list[LegSettings]] = []
    for g, group in enumerate(p.groups()):
        out.append([leg_settings(ctx, leg, p, _place_of(ctx.where, shape, g, i)) for i, leg in enumerate(group)])
    return out


def _place_of(where: str, shape: str, group: int, index: int) -> str:
    """Where a destination is written: the step itself for ``to``, else its item (``.parallel[1]``)."""
    if shape == "serial":
        return f"{where}.serial[{group}]"
    if shape == "parallel":
        return f"{where}.parallel[{index}]"
    if shape == "serial_parallel":
        return f"{where}.serial_parallel[{group}][{index}]"
    return where


def leg_settings(ctx: StepContext, leg: LegParams, top: ConnectParams, where: str) -> LegSettings:
    """One destination as the dial plan takes it; a value it cannot dial (substituted at run time) is
    its ``problem``: that leg fails, the others are dialled."""
    to = destination_of(leg).strip()
    problem: str | None = None
    device: DestinationKind = "sip"
    try:
        device = destination_kind(to, f"{where}.to")
    except ParamError as e:
        problem = str(e)
    if device == "sip":  # (a phone number's are of no effect: connect.mdx)
        for name, asked in _media_unsupported(setting("encryption", leg, top), setting("webrtc_media", leg, top)):
            problem = f"{where}.{name}: {asked} is not supported by this engine"
    codecs = setting("codecs", leg, top)
    if device == "sip" and codecs and (why := none_spoken(codecs)):
        problem = f"{where}.codecs: {why}: not supported by this engine"
    username, password = setting("username", leg, top), setting("password", leg, top)
    if (username is None) != (password is None):
        problem = f"{where}: {CREDENTIALS_PAIR}"
    timeout = setting("timeout", leg, top) or DEFAULT_TIMEOUT
    headers = setting("headers", leg, top) or []
    events = setting("call_state_events", leg, top)  # [] asks for none: only a list not given defaults
    hops = ctx.call.transport.hops_left()
    if hops is not None and hops < 1:
        problem = (
            f"{where}: not placed: the call came with Max-Forwards {hops}, so no further hop may be taken "
            "(a loop through this engine?)"
        )
    caller_from = ctx.variables.call.get("from")
    target = DialTarget(
        to=to,
        from_=setting("from_", leg, top) or (str(caller_from) if caller_from else ""),
        from_name=setting("from_name", leg, top),
        username=username,
        password=password,
        headers=tuple((h["name"], h["value"]) for h in headers),
        codecs=tuple(codec_names(codecs)),
        session_timeout=setting("session_timeout", leg, top),
        caller_call_id=ctx.call.call_id,
        max_forwards=None if hops is None else max(0, hops - 1),
    )
    return LegSettings(
        to=to,
        target=None if problem else target,
        device=device,
        timeout=float(timeout),
        confirm=setting("confirm", leg, top),
        confirm_timeout=float(setting("confirm_timeout", leg, top) or timeout),
        call_state_url=setting("call_state_url", leg, top),
        call_state_events=tuple(DEFAULT_CALL_STATE_EVENTS if events is None else events),
        where=where,
        problem=problem,
    )


def check_document_text(value: object, where: str, methods: MethodTable) -> list[ParamError]:
    """``transfer_after_bridge`` written as text: an http(s) URL (parsed strictly) or an inline JSON
    SWML document (loaded against ``methods``); a placeholder is checked when the step runs."""
    if not isinstance(value, str) or is_templated(value):
        return []
    if value.lstrip().startswith("{"):
        try:
            load_text(value, where, methods=methods)
        except DocumentError as e:
            return [ParamError(where, f"inline SWML: {e}")]
        return []
    errors: list[ParamError] = []
    HttpUrl().load_check(value, where, errors)
    return errors
