"""``answer``: answer the call (SIP 200 OK); ``max_duration`` hangs it up after that many seconds.

``codecs`` narrows what the SIP transport may choose; ``username``/``password`` make a SIP caller
authenticate (digest) before the answer — on a simulated call there is nobody to challenge.
"""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.params import Num, Str, param
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext

#: The longest call a document may ask for (a day, as connect's max_duration): a bound on what a document
#: from anywhere can hold (``swml run`` writes what the caller heard for the whole of it).
MAX_DURATION = 86400
#: Codec names ``answer.codecs`` may list (comma-separated, optionally with @rate or ptime suffixes).
KNOWN_CODECS = ("PCMU", "PCMA", "G722", "G729", "AMR-WB", "OPUS", "VP8", "H264")


@dataclass(frozen=True, kw_only=True)
class AnswerParams:
    max_duration: int = param(Num(minimum=1, maximum=MAX_DURATION, integer=True, unit="seconds"), default=14400)
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

    def check(self, params: object, where: str) -> list[ParamError]:
        errors = super().check(params, where)
        if isinstance(params, dict) and ("username" in params) != ("password" in params):
            errors.append(ParamError(where, _PAIR))
        return errors

    async def run(self, ctx: StepContext, p: AnswerParams) -> None:
        unknown = [c for c in codec_names(p.codecs) if c not in KNOWN_CODECS]
        if unknown:
            raise ParamError(
                f"{ctx.where}.codecs",
                f"unknown codec(s) {', '.join(unknown)}; known: {', '.join(KNOWN_CODECS)}",
            )
        ctx.call.codecs = codec_names(p.codecs)
        if p.username is not None and p.password is not None:
            ctx.call.credentials = (p.username, p.password)
        elif p.username is not None or p.password is not None:
            raise ParamError(ctx.where, _PAIR)
        await ctx.call.answer(p.max_duration)
        ctx.result = "success"


_PAIR = "username and password go together (the caller authenticates with them): give both, or neither"
