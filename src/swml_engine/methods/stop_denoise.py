"""``stop_denoise``: the counterpart of ``denoise``, also a no-op on the audio (see docs/methods.md)."""

from __future__ import annotations

from swml_engine.methods.base import Method, NoParams
from swml_engine.script.step import StepContext


class StopDenoise(Method[NoParams]):
    name = "stop_denoise"
    params = NoParams
    result_var = "denoise_result"

    async def run(self, ctx: StepContext, p: NoParams) -> None:
        ctx.set_var("denoise_result", "off")
        ctx.result = "off"
