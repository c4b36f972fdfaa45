"""Object storage for recordings: ``swml serve --storage s3://bucket/prefix`` (docs/serve.md, "Object storage").

One S3-compatible bucket, reached through obstore (Rust's object_store: request signing, multipart
uploads, retries), configured from the environment as the AWS tools name it: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (another S3 server: MinIO, Ceph, moto), ``AWS_REGION`` or ``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``.

Objects are named by recording only — ``<prefix>/<recording_id>.<format>`` and
``<prefix>/<recording_id>.json`` — so uploading a recording again replaces the same objects: never two
copies. Files are streamed from disk by obstore's own threads in parts of :data:`PART_SIZE` (at most
:data:`PART_CONCURRENCY` in memory at once), so the event loop and the media never wait on an upload.

This module does not decide when to upload or retry (``service/uploads.py`` does), nor what the HTTP API
serves (``service/storage.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import obstore
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore import Attributes

#: A file larger than this goes up as a multipart upload, in parts of this size (S3's smallest part is 5 MiB).
PART_SIZE = 8 * 1024 * 1024
#: Parts of one upload in flight (and in memory) at once.
PART_CONCURRENCY = 2
#: A metadata document larger than this in the bucket is not ours (ours are a few KiB): skipped.
MAX_METADATA_BYTES = 1024 * 1024
#: Metadata documents read at once while an index is rebuilt from the bucket.
METADATA_CONCURRENCY = 16
#: One request's limits; a failed upload is retried by the uploader's own schedule, so the client
#: itself retries little.
CONNECT_TIMEOUT = timedelta(seconds=5)
REQUEST_TIMEOUT = timedelta(seconds=120)
CLIENT_RETRIES = 2
CLIENT_RETRY_TIMEOUT = timedelta(seconds=20)
#: How long the start waits for the bucket's first answer (a server that takes connections but never
#: answers would otherwise hold the start for REQUEST_TIMEOUT, no calls taken meanwhile).
CHECK_TIMEOUT = 5.0

#: The error in an S3 answer's XML body: its code (NoSuchBucket, AccessDenied ...) and message.
_S3_ERROR = re.compile(r"<Code>([^<]{1,100})</Code>\s*(?:<Message>([^<]{0,200})</Message>)?")
#: A TLS certificate the client refused, in its error's debug text, and why (UnknownIssuer, Expired ...).
_UNTRUSTED = re.compile(r"InvalidCertificate\((?:\s*\w+\()*\s*(\w+)")
#: S3's rules for a bucket name (3-63 characters: lower-case letters, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: A prefix: path segments of safe characters (no "..", no empty segment).
_SEGMENT = re.compile(r"[A-Za-z0-9._=+-]{1,200}")
#: Environment variables that name credentials obstore can use without keys (web identity, containers).
_OTHER_CREDENTIALS = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                      "AWS_CONTAINER_CREDENTIALS_FULL_URI")  # fmt: skip


class StorageError(Exception):
    """Object storage cannot be used as configured, or one operation on it failed: the message names
    the place and what to do."""


class StorageUnreachable(StorageError):
    """The storage did not answer (or answered 5xx): it may be down for a while, not misconfigured."""


@dataclass(frozen=True)
class StorageUrl:
    """``s3://bucket/prefix`` as given to ``--storage``."""

    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)

    @classmethod
    def parse(cls, text: str) -> StorageUrl:
        """Raise StorageError naming what is wrong with the value."""
        scheme, sep, rest = text.partition("://")
        if not sep or scheme != "s3":
            raise StorageError(f"--storage {text!r}: give s3://BUCKET/PREFIX (an S3-compatible bucket)")
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise StorageError(
                f"--storage {text!r}: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.', '-')"
            )
        prefix = prefix.strip("/")
        if prefix and not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in prefix.split("/")):
            raise StorageError(
                f"--storage {text!r}: the prefix {prefix!r} may hold letters, digits and ._=+- in segments split by '/'"
            )
        return cls(bucket, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def url_of(self, key: str) -> str:
        """The s3:// URL of one object of ours (what a recording's metadata records)."""
        return f"{self}/{key}"


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom the bucket is reached, from the environment (AWS's names)."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    #: A PEM file of the CA(s) that sign the endpoint's certificate (a private CA: a MinIO of one's own),
    #: trusted beside the system's.
    ca_bundle: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> S3Settings:
        def get(*names: str) -> str | None:
            return next((env[n] for n in names if env.get(n)), None)

        return cls(
            endpoint=get("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=get("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
            access_key=get("AWS_ACCESS_KEY_ID"),
            secret_key=get("AWS_SECRET_ACCESS_KEY"),
            session_token=get("AWS_SESSION_TOKEN", "AWS_TOKEN"),
            ca_bundle=get("AWS_CA_BUNDLE"),
        )

    def where(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"


class Bucket(Protocol):
    """What the uploader and the API need of object storage (a fake in unit tests)."""

    url: StorageUrl

    async def put_file(self, key: str, path: Path, attributes: dict[str, str]) -> None: ...

    async def put_bytes(self, key: str, data: bytes, attributes: dict[str, str]) -> None: ...

    async def size_of(self, key: str) -> int | None: ...

    async def delete(self, key: str) -> None: ...


class ObjectStore:
    """One bucket and prefix, through obstore. Every method raises StorageError (with a one-line reason)
    when the storage cannot be reached or refuses."""

    def __init__(
        self, url: StorageUrl, settings: S3Settings, *, part_size: int = PART_SIZE, env: Mapping[str, str] = os.environ
    ) -> None:
        self.url = url
        self.settings = settings
        self.part_size = part_size
        if not settings.access_key and not any(env.get(n) for n in _OTHER_CREDENTIALS):
            raise StorageError(
                f"--storage {url}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(and AWS_SESSION_TOKEN for temporary ones) in the service's environment"
            )
        if settings.access_key and not settings.secret_key:
            raise StorageError(f"--storage {url}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
        config: dict[str, Any] = {"region": settings.region}
        if settings.endpoint:
            config["endpoint"] = settings.endpoint
        if settings.access_key:
            config["access_key_id"] = settings.access_key
            config["secret_access_key"] = settings.secret_key
        if settings.session_token:
            config["token"] = settings.session_token
        client: dict[str, Any] = {
            "allow_http": bool(settings.endpoint and settings.endpoint.startswith("http://")),
            "connect_timeout": CONNECT_TIMEOUT,
            "timeout": REQUEST_TIMEOUT,
        }
        if settings.ca_bundle:
            try:
                client["root_certificate"] = Path(settings.ca_bundle).read_bytes()
            except OSError as e:
                raise StorageError(
                    f"--storage {url}: AWS_CA_BUNDLE {settings.ca_bundle} cannot be read ({e.strerror or e}): give "
                    "the PEM file of the CA that signs the endpoint's certificate"
                ) from None
        try:
            self._s3 = S3Store(
                url.bucket,
                prefix=url.prefix or None,
                config=config,  # type: ignore[arg-type]  # (a TypedDict built key by key)
                client_options=client,  # type: ignore[arg-type]  # (the same)
                retry_config={"max_retries": CLIENT_RETRIES, "retry_timeout": CLIENT_RETRY_TIMEOUT},
            )
        except Exception as e:  # obstore's own errors for a value it cannot use (an endpoint URL)
            raise StorageError(f"--storage {url}: {_reason(e)} (endpoint {settings.where()})") from None

    @classmethod
    def from_option(cls, text: str, env: Mapping[str, str] = os.environ) -> ObjectStore:
        return cls(StorageUrl.parse(text), S3Settings.from_environment(env), env=env)

    async def check(self) -> None:
        """At start: the bucket exists and lets us in (one listing of at most one object). StorageError
        when it is missing or refuses us, or its certificate is not trusted; StorageUnreachable when the
        server does not answer (within :data:`CHECK_TIMEOUT`)."""

        async def first() -> None:
            async for _ in obstore.list(self._s3, chunk_size=1):
                break

        try:
            await asyncio.wait_for(first(), CHECK_TIMEOUT)
        except TimeoutError:
            raise StorageUnreachable(
                f"--storage {self.url}: no answer from {self.settings.where()} within {CHECK_TIMEOUT:g} s: "
                "check AWS_ENDPOINT_URL and that the server is up"
            ) from None
        except Exception as e:
            untrusted = _UNTRUSTED.search(str(e))
            if untrusted is not None:  # (a setting to fix, not a server away: the start stops)
                raise StorageError(
                    f"--storage {self.url}: the certificate of {self.settings.where()} is not trusted "
                    f"({untrusted[1]}): if a CA of your own signs it, give its PEM file in AWS_CA_BUNDLE"
                ) from None
            why = _reason(e)
            hint = "create it, or fix the name or the endpoint"
            if "NoSuchBucket" in why or _status(why, 404):
                why = f"bucket {self.url.bucket!r} not found"
            elif _status(why, 403) or "AccessDenied" in why or "InvalidAccessKeyId" in why or "Signature" in why:
                hint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy"
            else:
                hint = "check AWS_ENDPOINT_URL and that the server is up"
                raise StorageUnreachable(f"--storage {self.url}: {why} at {self.settings.where()}: {hint}") from None
            raise StorageError(f"--storage {self.url}: {why} at {self.settings.where()}: {hint}") from None

    async def put_file(self, key: str, path: Path, attributes: dict[str, str]) -> None:
        """Stream a file up (multipart past ``part_size``); the same key again replaces the object."""
        await self._call(
            "upload",
            key,
            obstore.put_async(
                self._s3,
                key,
                path,
                attributes=_attributes(attributes),
                chunk_size=self.part_size,
                max_concurrency=PART_CONCURRENCY,
            ),
        )

    async def put_bytes(self, key: str, data: bytes, attributes: dict[str, str]) -> None:
        await self._call("upload", key, obstore.put_async(self._s3, key, data, attributes=_attributes(attributes)))

    async def size_of(self, key: str) -> int | None:
        """The object's size, None when there is none."""
        try:
            meta = await obstore.head_async(self._s3, key)
        except FileNotFoundError:
            return None
        except Exception as e:
            raise StorageError(f"{self.url.url_of(key)}: cannot be read: {_reason(e)}") from None
        return int(meta["size"])

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of an object, as they arrive (bounded chunks)."""
        try:
            result = await obstore.get_async(self._s3, key, options={"range": (start, end)})
        except FileNotFoundError:
            raise StorageError(f"{self.url.url_of(key)}: not in the bucket") from None
        except Exception as e:
            raise StorageError(f"{self.url.url_of(key)}: cannot be read: {_reason(e)}") from None
        try:
            async for chunk in result.stream(min_chunk_size=64 * 1024):
                yield bytes(chunk)
        except Exception as e:
            raise StorageError(f"{self.url.url_of(key)}: read cut short: {_reason(e)}") from None

    async def delete(self, key: str) -> None:
        """Remove an object (one that is not there is no error: S3 says so too)."""
        await self._call("delete", key, obstore.delete_async(self._s3, key))

    async def metadata_documents(self) -> AsyncIterator[dict[str, Any]]:
        """Every recording metadata document in the bucket (``<prefix>/<id>.json``), for rebuilding an
        index from storage; read :data:`METADATA_CONCURRENCY` at a time. A document that is too large,
        unreadable or not a recording's is skipped."""
        try:
            async for batch in obstore.list(self._s3, chunk_size=500):
                keys = [
                    str(entry["path"])
                    for entry in batch
                    if "/" not in str(entry["path"])
                    and str(entry["path"]).endswith(".json")
                    and int(entry["size"]) <= MAX_METADATA_BYTES
                ]
                for i in range(0, len(keys), METADATA_CONCURRENCY):
                    group = keys[i : i + METADATA_CONCURRENCY]
                    for meta in await asyncio.gather(*(self._document(key) for key in group)):
                        if meta is not None:
                            yield meta
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"{self.url}: cannot list the recordings' metadata: {_reason(e)}") from None

    async def _document(self, key: str) -> dict[str, Any] | None:
        """One metadata document; None when it is gone since the listing or is not a recording's."""
        try:
            result = await obstore.get_async(self._s3, key)
            meta = json.loads(bytes(await result.bytes_async()))
        except FileNotFoundError:  # deleted since the listing
            return None
        except ValueError:
            return None
        except Exception as e:
            raise StorageError(f"{self.url.url_of(key)}: cannot be read: {_reason(e)}") from None
        ok = isinstance(meta, dict) and meta.get("recording_id") == key.removesuffix(".json")
        return meta if ok else None

    async def _call(self, what: str, key: str, operation: Any) -> None:
        try:
            await operation
        except Exception as e:
            raise StorageError(f"{what} of {self.url.url_of(key)} failed: {_reason(e)}") from None


def _attributes(values: dict[str, str]) -> Attributes:
    return dict(values)


def _status(why: str, code: int) -> bool:
    """Whether an error's text gives HTTP status ``code`` — a number of its own, not digits of the
    endpoint's port (``127.0.0.1:40345``) or of a time (``286.404ms``) the text also holds."""
    return re.search(rf"(?<![\d.:]){code}(?![\d.])", why) is not None


def _reason(e: BaseException) -> str:
    """An obstore error's first line (the rest is a debug dump of the request), bounded; the S3 error
    the server answered (its Code and Message, from the XML body the first line cuts off or ends with)
    in words: ``404 Not Found: NoSuchBucket (The specified bucket does not exist)``."""
    whole = str(e).strip()
    text = whole.splitlines()[0] if whole else type(e).__name__
    untrusted = _UNTRUSTED.search(whole)
    if untrusted is not None:  # (the first line says only "error sending request")
        return (
            f"{text[:300]}: the server's certificate is not trusted ({untrusted[1]}): if a CA of your own "
            "signs it, give its PEM file in AWS_CA_BUNDLE"
        )
    answered = _S3_ERROR.search(whole)
    if answered is None:
        return text[:300]
    code, message = answered[1], answered[2]  # (kept whole: what the server said matters most)
    return text.split("<?xml", 1)[0].rstrip(" :")[:300] + f": {code}" + (f" ({message})" if message else "")
