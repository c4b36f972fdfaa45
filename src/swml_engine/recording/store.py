"""Where recordings live: ``<data>/recordings/<recording_id>.<format>`` beside ``<recording_id>.json``.

Files are named by a generated ``recording_id`` only, never by ``control_id`` or any other value from a
script, so nothing a script writes can reach a path outside the recordings directory.

A recording's URL is the store's own: ``file://`` in ``swml run`` (or under a public base URL when one is
set), and the store maps its URLs back to files, so ``play`` of ``record_call_url`` in the same call reads
the file directly (only the call's own recordings: :meth:`RecordingStore.resolver_for`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from swml_engine.recording.crypt import Keyring
from swml_engine.recording.encoders import part_path

METADATA_FIELDS = [
    "recording_id",
    "call_id",
    "control_id",
    "method",
    "state",
    "format",
    "sample_rate",
    "channels",
    "channel_layout",
    "direction",
    "stereo",
    "duration",
    "size",
    "start_time",
    "end_time",
    "end_reason",
    "terminator",
    "url",
    "call_time",
    "bridges",
    # With --storage: where the audio went once uploaded ({audio, size, sha256, uploaded_at}); null while
    # the recording is in the local spool (docs/serve.md, "Object storage").
    "storage",
]


#: Each recording format's media type (HTTP, object storage).
MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "mp4": "audio/mp4"}


class PublicUrls(Protocol):
    """How a service with an HTTP API names recordings: under its public base URL, signed."""

    base: str  # e.g. https://rec.example.com/recordings

    def url(self, name: str) -> str: ...


class RecordingStore:
    #: What a metadata document holds, in order.
    fields = METADATA_FIELDS

    def __init__(
        self,
        root: Path,
        base_url: str | None = None,
        *,
        public: PublicUrls | None = None,
        on_write: Callable[[dict[str, Any]], None] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.root = root
        #: Recordings are written sealed under its newest key (``--encrypt-key-file``); None: plain.
        self.keyring = keyring
        self.public = public
        self.base_url = public.base if public is not None else base_url.rstrip("/") if base_url else None
        #: Told of every metadata write (the service's index).
        self.on_write = on_write

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def audio_path(self, recording_id: str, fmt: str) -> Path:
        return self.root / f"{recording_id}.{fmt}"

    def meta_path(self, recording_id: str) -> Path:
        return self.root / f"{recording_id}.json"

    def url_for(self, recording_id: str, fmt: str) -> str:
        if self.public is not None:
            return self.public.url(f"{recording_id}.{fmt}")
        if self.base_url:
            return f"{self.base_url}/{recording_id}.{fmt}"
        return self.audio_path(recording_id, fmt).resolve().as_uri()

    def resolver_for(self, call_id: str) -> Callable[[str], Path | None]:
        """A call's ``url_resolver``: the file behind a URL of one of *that call's* recordings, so
        ``play`` of ``record_call_url`` reads it directly. Another call's recording is not resolved,
        signed or not: its URL goes over the network like any other (the service's signature check
        applies; ``file://`` is refused where file URLs are), so no call reads another's audio."""

        def resolve(url: str) -> Path | None:
            path = self.resolve(url)
            if path is None:
                return None
            recording_id = path.name.split(".", 1)[0]
            try:
                owner = self.read_metadata(recording_id).get("call_id")
            except (OSError, ValueError, AttributeError):
                return None
            return path if owner == call_id else None

        return resolve

    def resolve(self, url: str) -> Path | None:
        """The local file behind one of this store's URLs (None for any other URL), whichever call
        made it: calls use :meth:`resolver_for`."""
        name: str | None = None
        if self.base_url and url.startswith(self.base_url + "/"):
            name = url[len(self.base_url) + 1 :].split("?")[0]
        elif url.startswith("file://"):
            try:
                path = Path(unquote(urlsplit(url).path))
            except ValueError:  # not a URL urlsplit reads (an unbalanced bracket): not ours
                return None
            if path.parent.resolve() == self.root.resolve():
                name = path.name
        if not name or "/" in name or name.startswith("."):
            return None
        path = self.root / name
        if path.is_file():
            return path
        growing = part_path(path)  # an MP4 still being recorded
        return growing if growing.is_file() else None

    def write_metadata(self, meta: dict[str, Any]) -> None:
        """Atomically replace ``<recording_id>.json`` (a crash leaves the old or the new, never half)."""
        path = self.meta_path(str(meta["recording_id"]))
        tmp = path.with_suffix(".json.tmp")
        text = (json.dumps({k: meta.get(k) for k in METADATA_FIELDS}, indent=2) + "\n").encode()
        try:
            tmp.write_bytes(text)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            if not path.is_file():
                raise
            # A full disk has no room for a second copy; the old one's blocks, freed by truncating it,
            # hold the new text (a few bytes longer at most), so the recording's last state is not lost.
            with path.open("r+b") as f:
                f.truncate(0)
                f.write(text)
        if self.on_write is not None:
            self.on_write({k: meta.get(k) for k in METADATA_FIELDS})

    def delete(self, recording_id: str, fmt: str) -> None:
        """Remove a recording's local audio and metadata (audio first: metadata never points at nothing).
        ``service/storage.py``'s ``delete_recording`` removes it everywhere."""
        self.remove_local(recording_id, fmt)

    def remove_local(self, recording_id: str, fmt: str) -> None:
        """Remove a recording's files from this directory (audio first: metadata never points at nothing)."""
        audio = self.audio_path(recording_id, fmt)
        for path in (audio, part_path(audio), self.meta_path(recording_id)):
            path.unlink(missing_ok=True)

    def read_metadata(self, recording_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.meta_path(recording_id).read_text())
        return data
