"""``play``: play one sound (``url``) or several (``urls``); ``play: 'say:Hi'`` is shorthand for ``url``.

Answers the call first unless ``auto_answer`` is false, in which case the sounds go out as early media.
TTS voice: ``say_voice``/``say_language``/``say_gender`` from the step, else from the variables of the
same names (play.mdx, *Variables read by the method*).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from swml_engine.callbacks import StatusReporter
from swml_engine.document.model import BlockLoader
from swml_engine.document.params import Bool, HttpUrl, ListOf, Num, Spec, Str, param
from swml_engine.errors import ParamError
from swml_engine.media.playlist import PlayFailed, Playlist
from swml_engine.media.sources import Sound, parse_sound
from swml_engine.media.sources.tts import Voice
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext
from swml_engine.urls import redact


class SoundSpec(Spec):
    """One playable sound: say:, silence:, ring:, http(s)://, file://."""

    def check(self, value: object, path: str) -> object:
        text = Str().check(value, path)
        assert isinstance(text, str)
        parse_sound(text, path)
        return text


VOLUME = Num(minimum=-40, maximum=40, unit="dB")


@dataclass(frozen=True, kw_only=True)
class VoiceParams:
    say_voice: str | None = param(Str())
    say_language: str | None = param(Str())
    say_gender: str | None = param(Str(choices=("female", "male", "neutral")))


@dataclass(frozen=True, kw_only=True)
class PlayParams(VoiceParams):
    url: str | None = param(SoundSpec())
    urls: list[str] | None = param(ListOf(SoundSpec(), min_items=1))
    volume: float = param(VOLUME, default=0.0)
    auto_answer: bool = param(Bool(), default=True)
    status_url: str | None = param(HttpUrl())


def voice_of(ctx: StepContext, p: VoiceParams) -> Voice:
    """The TTS voice: the step's own settings, then the say_* variables."""

    def pick(own: str | None, name: str) -> str | None:
        if own:
            return own
        found, value = ctx.variables.lookup(name)
        return str(value) if found and value not in (None, "") else None

    return Voice(pick(p.say_voice, "say_voice"), pick(p.say_language, "say_language"), pick(p.say_gender, "say_gender"))


def sounds_of(texts: list[str], path: str) -> list[tuple[str, Sound]]:
    """Each sound parsed, with the text events and messages show for it (credentials in a URL
    redacted: ``https://***@host/a.wav``)."""
    return [(redact(t), parse_sound(t, f"{path}[{i}]")) for i, t in enumerate(texts)]


async def play_sounds(ctx: StepContext, playlist: Playlist) -> str:
    """Play a playlist, turning a sound that cannot be loaded into a step failure."""
    try:
        return await playlist.play()
    except PlayFailed as e:
        raise ParamError(ctx.where, str(e)) from None


class Play(Method[PlayParams]):
    name = "play"
    params = PlayParams

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if isinstance(raw, str):
            return {"url": raw}
        if isinstance(raw, list):
            return {"urls": raw}
        return super().prepare(raw, where, blocks)

    def check(self, params: object, where: str) -> list[ParamError]:
        errors = super().check(params, where)
        if isinstance(params, dict) and ("url" in params) == ("urls" in params):
            errors.append(ParamError(where, "give exactly one of url (one sound) or urls (a list of sounds)"))
        return errors

    async def run(self, ctx: StepContext, p: PlayParams) -> None:
        if p.url is not None:
            sounds = sounds_of([p.url], f"{ctx.where}.url")[:1]
        else:
            sounds = sounds_of(p.urls or [], f"{ctx.where}.urls")
        status = StatusReporter(
            ctx.call, p.status_url, "calling.call.play", str(uuid.uuid4()), where=f"{ctx.where}.status_url"
        )
        if p.auto_answer:
            await ctx.call.answer()
        else:
            await ctx.call.early_media()
        status.send({"state": "playing"})
        try:
            playlist = Playlist(ctx.call, sounds, voice=voice_of(ctx, p), volume_db=p.volume, where=ctx.where)
            ctx.result = await play_sounds(ctx, playlist)
        except ParamError:
            status.send({"state": "error"})
            raise
        status.send({"state": "finished"})
