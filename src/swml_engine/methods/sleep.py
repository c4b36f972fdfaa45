"""``sleep``: wait ``duration`` milliseconds (``-1``: until the call ends). ``sleep: 1000`` is shorthand."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.model import BlockLoader
from swml_engine.document.params import Num, param
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class SleepParams:
    duration: int = param(Num(minimum=0, integer=True, unit="ms", extra=(-1,)), required=True)


class Sleep(Method[SleepParams]):
    name = "sleep"
    params = SleepParams

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if isinstance(raw, int | float | str) and not isinstance(raw, bool):
            return {"duration": raw}
        return super().prepare(raw, where, blocks)

    async def run(self, ctx: StepContext, p: SleepParams) -> None:
        await ctx.runner.call_sleep(None if p.duration < 0 else p.duration / 1000)
        ctx.result = "success"
