"""Plays a list of sounds on a call, one after another: the body of ``play`` and ``prompt``.

The next sound is loaded while the current one plays, so a list of URLs plays without gaps on a
real clock. A sound that cannot be loaded emits ``play.end`` with ``error`` and the list stops there
(the step fails, the script goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from swml_engine.call import Call
from swml_engine.document.params import shorten
from swml_engine.media.frame import Frame
from swml_engine.media.sources import Sound, SoundLoader, SourceError
from swml_engine.media.sources.tts import Voice, voice_note


class PlayFailed(Exception):
    """A sound of the list could not be played; the message names the sound and why."""


class Playlist:
    def __init__(
        self,
        call: Call,
        sounds: list[tuple[str, Sound]],
        *,
        voice: Voice,
        volume_db: float = 0.0,
        where: str = "",
        warn_voice: bool = True,
    ) -> None:
        self.call = call
        self.sounds = sounds
        self.voice = voice
        #: The step playing (for warnings about its sounds).
        self.where = where
        self._voice_noted = not warn_voice  # (a list played again and again warns once, the first time)
        self.volume_db = volume_db
        self.loader = SoundLoader(call.rate, call.options)
        self._stop = asyncio.Event()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop playing now (barge-in); ``play`` returns ``stopped``."""
        self._stop.set()

    async def play(self) -> str:
        """``finished``, ``stopped`` or ``hangup``; raises PlayFailed when a sound cannot be loaded."""
        pending: asyncio.Task[Iterator[Frame]] | None = None
        try:
            for i, (text, sound) in enumerate(self.sounds):
                task = pending or asyncio.ensure_future(self.loader.load(sound, self.voice))
                pending = None
                try:
                    frames = await self._loaded(task)
                except SourceError as e:
                    error = shorten(str(e), 400)
                    self.call.events.emit("play.end", url=shorten(text), result="error", error=error)
                    # (the source's message names the URL already)
                    raise PlayFailed(error if text in str(e) else f"cannot play {shorten(text)!r}: {error}") from None
                if frames is None or self.stopped or self.call.is_ended:
                    return "hangup" if self.call.is_ended else "stopped"
                if sound.kind == "say":
                    self._note_voice()
                if i + 1 < len(self.sounds):
                    pending = asyncio.ensure_future(self.loader.load(self.sounds[i + 1][1], self.voice))
                self.call.events.emit("play.start", url=text)
                result = await self.call.play_frames(frames, self.volume_db, self._stop)
                self.call.events.emit("play.end", url=text, result=result)
                if result != "finished":
                    return result
                if self.stopped:
                    return "stopped"
            return "finished"
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    def _note_voice(self) -> None:
        """Once per list: a warning when its words are spoken in another language than asked (cheap:
        the synthesis that just ran has read espeak-ng's voices)."""
        if not self._voice_noted and (note := voice_note(self.voice)) is not None:
            self.call.events.emit("warning", where=self.where or "say", message=note)
        self._voice_noted = True

    async def _loaded(self, task: asyncio.Task[Iterator[Frame]]) -> Iterator[Frame] | None:
        """The sound once loaded; None when stopped (or the call ended) first — a slow URL does not hold a
        stop: the load is given up (connect's ringback stops so when the far party answers)."""
        if not task.done():
            waits = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self.call.ended.wait())}
            given_up = False
            try:
                await asyncio.wait({task, *waits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                if not task.done():  # stopped first (or this play itself cancelled): the load is not wanted
                    task.cancel()
                    given_up = True
            if given_up:
                return None
        return task.result()
