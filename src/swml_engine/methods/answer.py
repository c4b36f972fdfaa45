"""``answer``: answer the call (SIP 200 OK); ``max_duration`` hangs it up after that many seconds."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.params import Num, Str, param
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext

#: Codec names ``answer.codecs`` may list (comma-separated, optionally with @rate or ptime suffixes).
KNOWN_CODECS = ("PCMU", "PCMA", "G722", "G729", "OPUS", "VP8", "H264")


@dataclass(frozen=True, kw_only=True)
class AnswerParams:
    max_duration: int = param(Num(minimum=1, integer=True, unit="seconds"), default=14400)
    codecs: str | None = param(Str())
    username: str | None = param(Str())
    password: str | None = param(Str())


def codec_names(codecs: str | None) -> list[str]:
    """``"PCMU,G722@16000h"`` → ["PCMU", "G722"] (upper case, suffixes dropped)."""
    if not codecs:
        return []
    return [c.split("@")[0].strip().upper() for c in codecs.split(",") if c.strip()]


class Answer(Method[AnswerParams]):
    name = "answer"
    params = AnswerParams

    async def run(self, ctx: StepContext, p: AnswerParams) -> None:
        unknown = [c for c in codec_names(p.codecs) if c not in KNOWN_CODECS]
        if unknown:
            from swml_engine.errors import ParamError

            raise ParamError(
                f"{ctx.where}.codecs",
                f"unknown codec(s) {', '.join(unknown)}; known: {', '.join(KNOWN_CODECS)}",
            )
        ctx.call.codecs = codec_names(p.codecs)
        await ctx.call.answer(p.max_duration)
        ctx.result = "success"
