"""``denoise``: accepted and recorded, but audio is passed through unchanged (see docs/methods.md)."""

from __future__ import annotations

from swml_engine.methods.base import Method, NoParams
from swml_engine.script.step import StepContext


class Denoise(Method[NoParams]):
    name = "denoise"
    params = NoParams
    result_var = "denoise_result"

    async def run(self, ctx: StepContext, p: NoParams) -> None:
        ctx.set_var("denoise_result", "on")
        ctx.result = "on"
