"""``sip_refer``: transfer the caller to another SIP party with a REFER (a blind transfer, RFC 3515).

The call is answered first (a REFER goes only in an answered call); the caller is then asked to call
``to_uri`` itself, and the engine follows the transfer through the caller's NOTIFYs. When the target
answers the caller, the engine hangs up (end reason ``transferred``) and the script ends; when the transfer
fails — refused, the target busy, no answer in time — the caller is still ours and the script goes on.

Sets ``sip_refer_to`` (``to_uri``), ``sip_refer_result`` and ``return_value`` (``success`` or ``failed``),
``sip_refer_response_code`` (the caller's answer to the REFER, e.g. ``"202"``) and
``sip_refer_to_response_code`` (the target's answer to the caller's INVITE, as the NOTIFYs told it, e.g.
``"200"``); a code is ``""`` when none came. ``status_url`` gets a ``calling.call.refer`` callback at
each step (``pending``, then ``success`` or ``failed``). A SIP caller is sent a REFER; ``swml run``'s simulated
caller calls a ``--peer``; a call whose transport cannot send a REFER fails the step with an ``error``
event. See docs/methods.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

from swml_engine.callbacks import StatusReporter
from swml_engine.document.params import HttpUrl, Str, describe, param
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.flow import EndScript
from swml_engine.script.step import StepContext
from swml_engine.transports.base import CannotRefer, ReferStatus
from swml_engine.transports.sip.uri import UriError, parse_uri
from swml_engine.waiting import unless

#: The longest ``to_uri`` taken (it goes in a Refer-To header of a datagram).
MAX_TO_URI = 1024
_PAIR = "username and password go together (they answer the caller's challenge to the REFER): give both, or neither"


class ReferTarget(Str):
    """``to_uri``: a ``sip:``/``sips:`` URI with a host, without a password (it would reach the caller)."""

    def __init__(self) -> None:
        super().__init__(allow_empty=False)

    def check(self, value: object, path: str) -> object:
        text = super().check(value, path)
        assert isinstance(text, str)
        if len(text) > MAX_TO_URI:
            raise ParamError(path, f"a URI of {len(text)} characters; at most {MAX_TO_URI}")
        try:
            uri = parse_uri(text)
        except UriError as e:
            raise ParamError(path, f"{describe(text)} is not a SIP URI: {e}") from None
        if not uri.is_sip or not uri.host:
            raise ParamError(path, f"{describe(text)} is not a SIP URI: give sip:user@host (or sips:)")
        if uri.password is not None:
            raise ParamError(path, "the URI holds a password, which the caller would be sent: leave it out")
        return text


@dataclass(frozen=True, kw_only=True)
class SipReferParams:
    to_uri: str = param(ReferTarget(), required=True)
    status_url: str | None = param(HttpUrl())
    username: str | None = param(Str(allow_empty=False))
    password: str | None = param(Str(allow_empty=False))


class SipRefer(Method[SipReferParams]):
    name = "sip_refer"
    params = SipReferParams
    result_var = "sip_refer_result"

    def check(self, params: object, where: str) -> list[ParamError]:
        errors = super().check(params, where)
        if isinstance(params, dict) and ("username" in params) != ("password" in params):
            errors.append(ParamError(where, _PAIR))
        return errors

    def failed(self, ctx: StepContext, raw: object, error: ParamError) -> None:
        """A value that was bad only once substituted: the result is ``failed`` as for a refused transfer."""
        given = raw if isinstance(raw, dict) else {}
        to_uri, url = given.get("to_uri"), given.get("status_url")
        to_uri = to_uri if isinstance(to_uri, str) else ""
        _Report(ctx, to_uri, url if isinstance(url, str) else None).done(ReferStatus("failed", reason=str(error)))

    async def run(self, ctx: StepContext, p: SipReferParams) -> None:
        if (p.username is None) != (p.password is None):
            raise ParamError(ctx.where, _PAIR)
        credentials = (p.username, p.password) if p.username is not None and p.password is not None else None
        report = _Report(ctx, p.to_uri, p.status_url)
        call = ctx.call
        await call.answer()
        status: ReferStatus | None = None
        if not call.is_ended:
            try:
                status = await _until_hangup(ctx, call.transport.refer(p.to_uri, credentials, report.step))
            except CannotRefer as e:
                ctx.events.emit("error", where=ctx.where, message=f"{ctx.where}: {e}")
                status = ReferStatus("failed", reason=str(e))
        if status is None:  # the call ended first: what was heard so far stays in the codes
            last = report.last or ReferStatus("failed")
            status = replace(last, state="failed", reason="the call ended before the transfer's outcome came")
        report.done(status)
        if status.state == "success":
            await call.hangup("transferred")
            raise EndScript


async def _until_hangup(ctx: StepContext, refer: Awaitable[ReferStatus]) -> ReferStatus | None:
    """The transfer's outcome, or None when the call ends first (the wait for it is then cancelled)."""
    return await unless(ctx.call.ended, refer)


class _Report:
    """What one ``sip_refer`` step tells: each step as a ``sip.refer`` event and a status callback; the
    outcome in the variables too."""

    def __init__(self, ctx: StepContext, to_uri: str, status_url: str | None) -> None:
        self.ctx = ctx
        self.to_uri = to_uri
        self.callbacks = StatusReporter(
            ctx.call, status_url, "calling.call.refer", str(uuid.uuid4()), f"{ctx.where}.status_url"
        )
        self.last: ReferStatus | None = None

    def step(self, status: ReferStatus) -> None:
        if status == self.last:
            return
        self.last = status
        params: dict[str, Any] = {"sip_refer_to": self.to_uri, "state": status.state}
        if status.refer_code is not None:
            params["sip_refer_response_code"] = str(status.refer_code)
        if status.notify_code is not None:
            params["sip_notify_response_code"] = str(status.notify_code)
        reason = {"reason": status.reason} if status.reason and status.state == "failed" else {}
        self.ctx.events.emit("sip.refer", **params, **reason)
        self.callbacks.send(params)

    def done(self, status: ReferStatus) -> None:
        self.step(status)
        ctx = self.ctx
        ctx.set_var("sip_refer_to", self.to_uri)
        ctx.set_var("sip_refer_result", status.state)
        ctx.set_var("return_value", status.state)
        ctx.set_var("sip_refer_response_code", _code(status.refer_code))
        ctx.set_var("sip_refer_to_response_code", _code(status.notify_code))
        ctx.result = status.state


def _code(code: int | None) -> str:
    return "" if code is None else str(code)
