"""``send_digits``: send DTMF to the party (RFC 4733 events on SIP); ``W`` waits 1 s, ``w`` 0.5 s."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from swml_engine.document.params import Chars, param
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext

#: How long each digit sounds, and the pause after it (common telephony defaults).
DIGIT_SECONDS = 0.1
GAP_SECONDS = 0.05
PAUSES = {"W": 1.0, "w": 0.5}


@dataclass(frozen=True, kw_only=True)
class SendDigitsParams:
    digits: str = param(Chars("0123456789*#ABCDWw", "DTMF digits (0-9 * # A-D, W w for pauses)"), required=True)


class SendDigits(Method[SendDigitsParams]):
    name = "send_digits"
    params = SendDigitsParams
    result_var = "send_digits_result"

    async def run(self, ctx: StepContext, p: SendDigitsParams) -> None:
        if not ctx.call.answered:
            raise ParamError(ctx.where, "the call is not answered yet; add an answer step before send_digits")
        for ch in p.digits:
            if ctx.call.is_ended:
                break
            if ch in PAUSES:
                await ctx.runner.call_sleep(PAUSES[ch])
                continue
            await ctx.call.send_dtmf(ch, DIGIT_SECONDS)
            await asyncio.sleep(GAP_SECONDS)
        result = "failed" if ctx.call.is_ended else "success"
        ctx.set_var("send_digits_result", result)
        ctx.result = result
