"""Text to speech for ``say:``: espeak-ng run as a separate process (its GPL stays at arm's length).

Voice choice (see docs/methods.md, play): a ``say_voice`` that names an espeak-ng voice (``en-us``,
``espeak.fr``, ``de+m3``) is used as is; a hosted voice name (``Polly.Joanna``,
``gcloud.en-US-Neural2-A``, ``azure.en-US-AvaNeural``) lends its language code when it has one;
otherwise ``say_language`` (default ``en-US``) picks the espeak-ng voice, and ``say_gender`` picks a
female or male variant. Results are cached: the same prompt in many calls is synthesised once.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import numpy as np

from swml_engine.media.audio import resample
from swml_engine.media.frame import Samples


class TtsError(Exception):
    pass


@dataclass(frozen=True)
class Voice:
    voice: str | None = None
    language: str | None = None
    gender: str | None = None


_LANG_IN_NAME = re.compile(r"(?<![A-Za-z])([a-z]{2,3})[-_]([A-Z]{2})(?![A-Za-z])")


@cache
def espeak_voices() -> frozenset[str]:
    """Language codes espeak-ng knows (``en-us``, ``fr-fr``, ``de``...)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return frozenset()
    try:
        out = subprocess.run([exe, "--voices"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    codes: set[str] = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 2:
            codes.add(cols[1].lower())
    return frozenset(codes)


def espeak_voice_for(v: Voice) -> str:
    known = espeak_voices()
    named = _named_voice(v, known)
    if named is not None:
        lang_part, variant = named
        return lang_part + (f"+{variant}" if variant else _variant(v.gender))
    code = _language_code(_language_of(v) or "en-US", known) or FALLBACK
    return code + _variant(v.gender)


#: The voice of a language espeak-ng does not speak.
FALLBACK = "en-us"


def voice_note(v: Voice) -> str | None:
    """Why ``v`` is not spoken as asked, for a warning: its language (``say_language``, or the code in a
    hosted voice's name) has no espeak-ng voice, so it is spoken in English. None when it is (or when
    espeak-ng is not installed: synthesis fails with its own error then)."""
    known = espeak_voices()
    language = _language_of(v)
    if not known or _named_voice(v, known) is not None or language is None:
        return None
    if _language_code(language, known) is not None:
        return None
    return f"espeak-ng has no voice for language {language!r}: spoken with {FALLBACK} (`espeak-ng --voices` lists them)"


def _named_voice(v: Voice, known: frozenset[str]) -> tuple[str, str] | None:
    """An espeak-ng voice ``say_voice`` names (``fr``, ``espeak.de+m3``): its language and variant."""
    name = (v.voice or "").strip()
    base = name[len("espeak.") :] if name.lower().startswith("espeak.") else name
    lang_part, _, variant = base.partition("+")
    lang_part = lang_part.lower()
    if not name or not (lang_part in known or re.fullmatch(r"[a-z]{2,3}", lang_part)):
        return None
    code = lang_part if lang_part in known else _language_code(lang_part, known)  # (a bare "fr": fr-fr)
    return (code, variant) if code is not None else None


def _language_of(v: Voice) -> str | None:
    """``say_language``, else the language code in a hosted voice's name (``gcloud.en-US-Neural2-A``)."""
    if v.language:
        return v.language
    m = _LANG_IN_NAME.search((v.voice or "").strip())
    return f"{m.group(1)}-{m.group(2)}" if m else None


def _language_code(language: str, known: frozenset[str]) -> str | None:
    lang = language.strip().lower().replace("_", "-")
    if lang in known:
        return lang
    if lang in _SPOKEN_AS and _SPOKEN_AS[lang] in known:
        return _SPOKEN_AS[lang]
    primary = lang.split("-")[0]
    for code in (primary, _SPOKEN_AS.get(primary, f"{primary}-{primary}")):  # "en": en-us, not en-029
        if code in known:
            return code
    for code in sorted(known):
        if code.startswith(primary + "-"):
            return code
    return None


#: Codes espeak-ng names otherwise: a bare language whose first region alphabetically is not the usual
#: one ("en" would be en-029), Chinese by its spoken language (zh-CN, zh-TW: Mandarin; zh-HK: Cantonese),
#: Norwegian as Bokmål.
_SPOKEN_AS = {"en": "en-us", "zh": "cmn", "zh-hk": "yue", "no": "nb"}


def _variant(gender: str | None) -> str:
    g = (gender or "female").strip().lower()
    if g.startswith("m"):
        return "+m3"
    return "+f3"


#: Bytes of speech the cache holds (per process). Bounded by size, not by count: a ``say:`` may be 10,000
#: characters (10 minutes: 20 MB at 16 kHz), and 256 such texts, another in each call (a remote document's,
#: or a caller's value in the text), were once all kept: 5 GB for the life of the process.
CACHE_BYTES = 64 * 1024 * 1024
#: A result larger than this share of the cache is not kept: it would push out many prompts to save the
#: synthesis of one long text (a few seconds at most).
CACHE_ONE_SHARE = 8


class EspeakTts:
    """Synthesises text to mono int16 at the call's rate, caching recent results (at most ``cache_bytes``
    of them, the least recently used going first)."""

    def __init__(self, cache_bytes: int = CACHE_BYTES) -> None:
        self.exe = shutil.which("espeak-ng")
        self._cache: OrderedDict[tuple[str, str, int], Samples] = OrderedDict()
        self._cache_bytes = cache_bytes
        #: The bytes of speech the cache holds now.
        self.cached_bytes = 0
        self._lock = threading.Lock()

    def synthesize(self, text: str, voice: Voice, rate: int) -> Samples:
        if self.exe is None:
            raise TtsError("espeak-ng is not installed (Debian package espeak-ng; `make demo` installs it)")
        name = espeak_voice_for(voice)
        key = (text, name, rate)
        with self._lock:  # synthesize runs in worker threads (run_io); the LRU order must stay consistent
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        if not text.strip():
            samples = np.zeros(0, dtype=np.int16)
        else:
            try:
                proc = subprocess.run(
                    [self.exe, "--stdout", "-v", name, "-s", "165"],
                    input=text.encode("utf-8"),
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise TtsError("espeak-ng took longer than 30 s") from None
            if proc.returncode != 0 or len(proc.stdout) < 44:
                msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}"
                raise TtsError(f"espeak-ng failed: {msg}")
            pcm, src_rate = _wav_payload(proc.stdout)
            samples = resample(pcm, src_rate, rate)
        samples.flags.writeable = False
        with self._lock:
            if key not in self._cache and samples.nbytes <= self._cache_bytes // CACHE_ONE_SHARE:
                self._cache[key] = samples
                self.cached_bytes += samples.nbytes
                while self.cached_bytes > self._cache_bytes:
                    _, gone = self._cache.popitem(last=False)
                    self.cached_bytes -= gone.nbytes
        return samples


def _wav_payload(data: bytes) -> tuple[Samples, int]:
    """PCM of a WAV written to a pipe (its sizes may be placeholders, so read to the end of data)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TtsError("espeak-ng did not produce WAV audio")
    pos = 12
    rate = 22050
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            rate = struct.unpack("<I", data[body + 4 : body + 8])[0]
        elif cid == b"data":
            raw = data[body:]
            raw = raw[: len(raw) - (len(raw) % 2)]
            return np.frombuffer(raw, dtype="<i2").astype(np.int16), rate
        pos = body + size + (size & 1)
    raise TtsError("espeak-ng output has no audio")
