"""``prompt``: play a prompt and collect DTMF digits.

Digits pressed while the prompt plays stop it (barge-in) and count. Collection ends on a terminator
(``prompt_digit_terminator``), on ``max_digits``, after ``digit_timeout`` without a further digit, or
after ``initial_timeout`` with no digit at all once the prompt has finished (``no_input``).

Speech recognition is not part of this engine yet: a prompt that asks only for speech (speech
parameters, no digit parameters) still plays, then sets ``prompt_result`` to ``failed`` and emits an
``error`` event saying so. With both speech and digit parameters, digits are collected.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from swml_engine.callbacks import StatusReporter
from swml_engine.document.model import BlockLoader
from swml_engine.document.params import Chars, HttpUrl, ListOf, Num, Str, param
from swml_engine.errors import ParamError
from swml_engine.media.playlist import Playlist
from swml_engine.methods.base import Method
from swml_engine.methods.play import VOLUME, SoundSpec, VoiceParams, play_sounds, sounds_of, voice_of
from swml_engine.script.step import StepContext
from swml_engine.waiting import unless

DIGITS = "0123456789*#ABCD"
_DIGIT_KEYS = ("max_digits", "terminators", "digit_timeout", "initial_timeout")
_SPEECH_KEYS = ("speech_timeout", "speech_end_timeout", "speech_language", "speech_hints")
TIMEOUT = Num(minimum=0, maximum=3600, unit="seconds")


@dataclass(frozen=True, kw_only=True)
class PromptParams(VoiceParams):
    play: list[str] = param(ListOf(SoundSpec(), allow_single=True, min_items=1), required=True)
    volume: float = param(VOLUME, default=0.0)
    max_digits: int = param(Num(minimum=1, maximum=100, integer=True), default=1)
    terminators: str = param(Chars(DIGITS, "DTMF digits"), default="")
    digit_timeout: float = param(TIMEOUT, default=5.0)
    initial_timeout: float = param(TIMEOUT, default=5.0)
    speech_timeout: float | None = param(TIMEOUT)
    speech_end_timeout: float | None = param(TIMEOUT)
    speech_language: str | None = param(Str())
    speech_hints: list[str] | None = param(ListOf(Str()))
    speech_engine: str | None = param(Str())
    status_url: str | None = param(HttpUrl())


class Prompt(Method[PromptParams]):
    name = "prompt"
    params = PromptParams
    result_var = "prompt_result"

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if isinstance(raw, str | list):
            return {"play": raw}
        return super().prepare(raw, where, blocks)

    async def run(self, ctx: StepContext, p: PromptParams) -> None:
        raw = ctx.step.params if isinstance(ctx.step.params, dict) else {}
        speech_only = any(k in raw for k in _SPEECH_KEYS) and not any(k in raw for k in _DIGIT_KEYS)
        status = StatusReporter(
            ctx.call, p.status_url, "calling.call.collect", str(uuid.uuid4()), f"{ctx.where}.status_url"
        )
        await ctx.call.answer()
        digits: asyncio.Queue[str] = asyncio.Queue()
        playlist = Playlist(
            ctx.call,
            sounds_of(p.play, f"{ctx.where}.play"),
            voice=voice_of(ctx, p),
            volume_db=p.volume,
            where=ctx.where,
        )

        def on_digit(d: str) -> None:
            if not speech_only:
                digits.put_nowait(d)
                playlist.stop()  # barge-in

        ctx.call.dtmf_listeners.append(on_digit)
        try:
            try:
                await play_sounds(ctx, playlist)
            except ParamError:
                status.send({"result": {"type": "error"}})
                raise
            if speech_only:
                self._outcome(ctx, status, "failed", "", "")
                ctx.events.emit(
                    "error",
                    where=ctx.where,
                    message="no speech recognition in this engine: this prompt asks only for speech; "
                    "add max_digits or terminators to collect digits",
                )
                return
            await self._collect(ctx, p, digits, status)
        finally:
            ctx.call.dtmf_listeners.remove(on_digit)

    async def _collect(
        self, ctx: StepContext, p: PromptParams, digits: asyncio.Queue[str], status: StatusReporter
    ) -> None:
        value = ""
        timeout = p.initial_timeout
        while True:
            got = await _next_digit(ctx, digits, timeout)
            if got is None:
                if ctx.call.is_ended:
                    self._outcome(ctx, status, "failed" if not value else "match_digits", value, "")
                elif value:
                    self._outcome(ctx, status, "match_digits", value, "")
                else:
                    self._outcome(ctx, status, "no_input", "", "")
                return
            if got in p.terminators:
                self._outcome(ctx, status, "match_digits", value, got)
                return
            value += got
            if len(value) >= p.max_digits:
                self._outcome(ctx, status, "match_digits", value, "")
                return
            timeout = p.digit_timeout

    def _outcome(self, ctx: StepContext, status: StatusReporter, result: str, value: str, terminator: str) -> None:
        ctx.set_var("prompt_result", result)
        ctx.set_var("prompt_value", value)
        ctx.set_var("prompt_digit_terminator", terminator)
        ctx.result = result
        status.send({"result": _collect_result(result, value, terminator)})


def _collect_result(result: str, digits: str, terminator: str) -> dict[str, object]:
    """prompt_result -> the ``result`` of the calling.call.collect callback (prompt.mdx, StatusCallbacks)."""
    if result == "match_digits":
        return {"type": "digit", "params": {"digits": digits, "terminator": terminator}}
    return {"type": "no_input" if result == "no_input" else "error"}


async def _next_digit(ctx: StepContext, digits: asyncio.Queue[str], timeout: float) -> str | None:
    """The next digit, or None after ``timeout`` seconds or when the call ends."""
    if not digits.empty():
        return digits.get_nowait()
    return await unless(ctx.call.ended, digits.get(), timeout)
