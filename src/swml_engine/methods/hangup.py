"""``hangup``: end the call; ``reason`` hangup (default), busy or decline (SIP 486 / 603 before answer)."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.params import Str, param
from swml_engine.methods.base import Method
from swml_engine.script.flow import EndScript
from swml_engine.script.step import StepContext
from swml_engine.vocabulary import HangupReason, values

REASONS = values(HangupReason)


@dataclass(frozen=True, kw_only=True)
class HangupParams:
    reason: HangupReason = param(Str(choices=REASONS), default="hangup")


class Hangup(Method[HangupParams]):
    name = "hangup"
    params = HangupParams

    async def run(self, ctx: StepContext, p: HangupParams) -> None:
        ctx.result = p.reason
        await ctx.call.hangup(p.reason)
        raise EndScript
