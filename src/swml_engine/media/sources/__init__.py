"""Playable sounds (the play page's *Playable sounds*): parse a play URL and turn it into 20 ms frames.

``say:TEXT``, ``silence:SECONDS``, ``ring:[SECONDS:]COUNTRY``, ``http(s)://...`` audio files, and
``file://`` paths when the run allows them. Loading may do real I/O, in threads so virtual time waits
for it (:func:`~swml_engine.media.clock.run_io`): TTS and decoding on the work pool, network fetches on
the network pool through the call's fetch slots (:class:`~swml_engine.fetch.CallFetches`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from swml_engine.call import CallOptions
from swml_engine.document.params import shorten
from swml_engine.errors import ParamError
from swml_engine.fetch import FetchError, FetchStopped
from swml_engine.media.audio import AudioError, decode, frames_of
from swml_engine.media.clock import run_io
from swml_engine.media.frame import Frame
from swml_engine.media.sources.tones import RING_CADENCES, ring_frames, silence_frames
from swml_engine.media.sources.tts import EspeakTts, TtsError, Voice
from swml_engine.media.sources.url import fetch_audio, file_path, local_source, target_of
from swml_engine.recording.crypt import CryptError, playable
from swml_engine.urls import UrlError, parse_http_url, redact, scheme_of

_RING = re.compile(r"^(?:(?P<secs>\d+(?:\.\d+)?)\s*:\s*)?(?P<cc>[A-Za-z]{2})$")
#: Longest ``silence:`` accepted (a day; longer is certainly a typo in milliseconds).
MAX_SILENCE = 86400.0


#: Longest text one ``say:`` speaks (about 10 minutes of speech): more is almost surely a variable
#: holding something else, and would hold the call while the synthesiser works through it.
MAX_SAY = 10_000


class SourceError(Exception):
    """A sound could not be loaded (fetch, decode or TTS failed); the play fails, the script goes on."""


@dataclass(frozen=True)
class Sound:
    kind: str  # say, silence, ring, url
    text: str = ""
    seconds: float | None = None
    country: str = ""
    url: str = ""


def parse_sound(value: str, path: str) -> Sound:
    """Parse one playable sound; raises ParamError naming ``path`` for an unknown or malformed one."""
    v = value.strip()
    low = v.lower()
    if low.startswith("say:"):
        text = v[4:]
        if not text.strip():
            raise ParamError(path, "say: needs text to speak, e.g. 'say:Hello'")
        if len(text) > MAX_SAY:
            raise ParamError(
                path, f"say: text of {len(text)} characters; at most {MAX_SAY} (split it over several plays)"
            )
        return Sound("say", text=text)
    if low.startswith("silence:"):
        try:
            secs = float(v[8:])
        except ValueError:
            raise ParamError(path, f"{v!r}: silence: takes seconds, e.g. 'silence:2' or 'silence:1.5'") from None
        if not 0 <= secs <= MAX_SILENCE:
            raise ParamError(path, f"{v!r}: silence must be between 0 and {MAX_SILENCE:g} seconds")
        return Sound("silence", seconds=secs)
    if low.startswith("ring:"):
        m = _RING.match(v[5:].strip())
        if m is None:
            raise ParamError(path, f"{v!r}: write ring:COUNTRY or ring:SECONDS:COUNTRY, e.g. 'ring:20:us'")
        cc = m.group("cc").lower()
        if cc not in RING_CADENCES:
            known = ", ".join(sorted(RING_CADENCES))
            raise ParamError(path, f"{v!r}: no ring cadence for country {cc!r}; known: {known}")
        ring_secs = float(m.group("secs")) if m.group("secs") else None
        return Sound("ring", seconds=ring_secs, country=cc)
    scheme = scheme_of(v)
    if scheme in ("http", "https"):
        try:
            parse_http_url(v)
        except UrlError as e:
            raise ParamError(path, shorten(str(e), 400)) from None
    if scheme == "file":
        try:
            file_path(v)
        except ValueError as e:
            raise ParamError(path, f"{shorten(v)!r}: {e}") from None
    if scheme in ("http", "https", "file"):
        return Sound("url", url=v)
    raise ParamError(path, f"{shorten(redact(value))!r} is not a playable sound; {_PLAYABLE}{_as_file(v)}")


#: What may be played, and where (``file://`` reads the machine's files: a script ``swml serve`` runs
#: must not; it plays a call's own recording URL only, which is no file name a user writes).
_PLAYABLE = (
    "use say:TEXT, silence:SECONDS, ring:[SECONDS:]CC or an http(s) URL, or, in swml run only (not swml "
    "serve), a file URL with an absolute path"
)


def _as_file(value: str) -> str:
    """The file URL of a value that reads as a path (``caller.wav``, ``/srv/a.wav``): the fix to show."""
    if not value or scheme_of(value) or any(c.isspace() for c in value) or "." not in Path(value).name:
        return ""
    shown = f"file://{value}" if value.startswith("/") else f"file:///abs/path/{value.removeprefix('./')}"
    return f"; this one as a file URL: {shorten(shown)}"


class SoundLoader:
    """Turns sounds into frames for one call."""

    _tts = EspeakTts()

    def __init__(self, rate: int, options: CallOptions) -> None:
        self.rate = rate
        self.options = options

    async def load(self, sound: Sound, voice: Voice) -> Iterator[Frame]:
        if sound.kind == "silence":
            return silence_frames(sound.seconds or 0.0, self.rate)
        if sound.kind == "ring":
            return ring_frames(sound.country, sound.seconds, self.rate)
        if sound.kind == "say":
            try:
                samples = await run_io(self._tts.synthesize, sound.text, voice, self.rate)
            except TtsError as e:
                raise SourceError(f"text to speech failed: {e}") from None
            return frames_of(samples, self.rate)
        try:
            samples = await run_io(decode, await self._source(sound.url), self.rate)
        except FetchStopped:
            return iter(())  # the call ended during the fetch: nothing to play (the play ends "hangup")
        except (FetchError, AudioError, CryptError) as e:
            raise SourceError(f"{redact(sound.url)}: {e}") from None
        return frames_of(samples, self.rate)

    async def _source(self, url: str) -> bytes | Path:
        """The sound's file: local (the call's own recording, decrypted when it was written encrypted;
        an allowed file://) or fetched over the network on the call's fetch slots (their deadline,
        stopped when the call ends)."""
        local = await run_io(local_source, url, self.options)
        if local is not None:
            store = self.options.recording_store
            return await run_io(playable, local, store.keyring if store is not None else None)
        target = target_of(url)
        options = self.options
        return await options.fetches.run(partial(fetch_audio, target, options), options.fetch_timeout, target.shown)
