"""Recordings encrypted at rest (``--encrypt-key-file``): keys, and the sealed block format.

A sealed file is a header and a run of blocks, each authenticated on its own (AES-256-GCM), so a
recording is written as the call goes and a process killed mid-way leaves every block it completed
readable (docs/recording.md, "Encryption at rest", describes the bytes):

- **Per-file key.** Each file gets a random 16-byte id; its key is derived from the key file's key with
  HKDF-SHA256 (salt: the file id). A block can therefore not be moved into another file, and the bound
  on random nonces (2**32 writes per key) applies to one file, not to every recording a key ever sealed.
- **Blocks.** Block ``i`` holds plaintext bytes ``[i*B, (i+1)*B)`` at a fixed place on disk, ``nonce ||
  ciphertext || tag``; every block but the last is full. Its associated data is the whole header, the
  block's index and a final flag: reordering, dropping or replacing a block fails authentication, and a
  file cut at a block boundary has no final block, so it reads as *unfinished*, never as complete.
- **Rewrites.** Encoders patch headers after the fact (WAV sizes, the MP3 Info frame, an MP4's ``mdat``
  size): :class:`SealedFile` is a random-access file object; a changed block is sealed again with a
  fresh random nonce (never a nonce used before under the file's key).

:class:`SealedFile` reads and writes a sealed file as if it were the plain one, so encoders, recovery,
PyAV and the HTTP API use it where they would use a file. Metadata is not sealed here (see
docs/recording.md for why).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import os
import re
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

MAGIC = b"SWMLSEAL"
VERSION = 1
#: Cipher suite 1: AES-256-GCM under a per-file key derived with HKDF-SHA256 (salt: the file id).
SUITE_AES256GCM_HKDF = 1
#: Plaintext bytes per block: 1 s of 8 kHz mono audio. A kill costs at most the block being rewritten.
BLOCK = 16384
#: Block sizes a header may declare (a hostile header cannot make a reader allocate much).
BLOCK_LIMITS = (512, 1 << 20)
NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
KEY_BYTES = 32
_HKDF_INFO = b"swml-engine sealed recording v1"
_FIXED = struct.Struct(">8sBBI16sB")  # magic, version, suite, block size, file id, key id length
#: Key ids are names (a date, a version): they appear in headers, logs and file listings.
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: A key file is a few lines; more is not a key file.
KEY_FILE_LIMIT = 64 * 1024
#: Clean (unchanged) blocks kept decrypted for reading; changed ones are few (the tail, a patched header).
_CACHE_BLOCKS = 4

SealState = Literal["finished", "unfinished"]


class CryptError(Exception):
    """A sealed file cannot be read or written as asked; the message names the file and what to do."""


class KeyFileError(CryptError):
    """The key file is missing, unreadable or malformed."""


class TamperedError(CryptError):
    """A block failed authentication: the file was altered (or blocks moved, or taken from another file)."""

    def __init__(self, name: str, block: int, why: str) -> None:
        super().__init__(f"{name}: block {block} fails authentication ({why}); its audio is not given out")
        self.block = block


# --- keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """The keys of a key file, by id; new recordings are sealed with the newest (the last line)."""

    keys: dict[str, bytes]
    newest: str
    source: str = "the key file"

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read a key file: one key a line, ``KEY_ID BASE64_KEY`` (32 bytes), ``#`` comments and blank
        lines ignored. Raises KeyFileError saying what is wrong and how to make a good one."""
        where = f"key file {path}"
        try:
            with path.open("rb") as f:
                raw = f.read(KEY_FILE_LIMIT + 1)
                mode = os.fstat(f.fileno()).st_mode
        except OSError as e:
            raise KeyFileError(f"{where}: cannot read it: {e.strerror or e}") from None
        if mode & 0o077:  # not a reason to refuse (a group may be meant to read it), but worth a line
            log.warning("%s: readable by other users than its owner (mode %03o); chmod 600 it", where, mode & 0o777)
        if len(raw) > KEY_FILE_LIMIT:
            raise KeyFileError(f"{where}: larger than {KEY_FILE_LIMIT // 1024} KiB; a key file holds a few lines")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{where}: not a text file; write one key a line: KEY_ID BASE64_KEY") from None
        keys: dict[str, bytes] = {}
        newest = ""
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2 or not _KEY_ID.match(fields[0]):
                raise KeyFileError(
                    f"{where}, line {number}: write KEY_ID BASE64_KEY (an id of letters, digits, '.', '_' or "
                    "'-', then 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`)"
                )
            key_id, encoded = fields
            try:
                secret = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyFileError(f"{where}, line {number}: key {key_id!r} is not valid base64") from None
            if len(secret) != KEY_BYTES:
                raise KeyFileError(
                    f"{where}, line {number}: key {key_id!r} is {len(secret)} bytes; it must be {KEY_BYTES} "
                    "(`head -c 32 /dev/urandom | base64`)"
                )
            if key_id in keys:
                raise KeyFileError(f"{where}, line {number}: key id {key_id!r} is given twice; ids must differ")
            keys[key_id] = secret
            newest = key_id
        if not keys:
            raise KeyFileError(f"{where}: holds no key; add a line KEY_ID BASE64_KEY")
        return cls(keys, newest, str(path))

    def key(self, key_id: str, name: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise CryptError(
                f"{name}: sealed with key {key_id!r}, which {self.source} does not hold; "
                "keep old keys in the file after adding a new one"
            ) from None


# --- the header --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    key_id: str
    file_id: bytes
    block_size: int = BLOCK

    def pack(self) -> bytes:
        key_id = self.key_id.encode("ascii")
        fixed = _FIXED.pack(MAGIC, VERSION, SUITE_AES256GCM_HKDF, self.block_size, self.file_id, len(key_id))
        return fixed + key_id

    @classmethod
    def read(cls, f: BinaryIO, name: str) -> Header:
        fixed = f.read(_FIXED.size)
        if len(fixed) < _FIXED.size or not fixed.startswith(MAGIC):
            raise CryptError(f"{name}: not a sealed recording (no {MAGIC.decode()} header)")
        _, version, suite, block, file_id, id_len = _FIXED.unpack(fixed)
        if version != VERSION or suite != SUITE_AES256GCM_HKDF:
            raise CryptError(f"{name}: sealed by a newer engine (format {version}, suite {suite}); upgrade to read it")
        key_id = f.read(id_len).decode("ascii", "replace")
        if not BLOCK_LIMITS[0] <= block <= BLOCK_LIMITS[1] or not _KEY_ID.match(key_id):
            raise CryptError(f"{name}: its header is damaged (block size {block}, key id {key_id!r})")
        return cls(key_id, file_id, block)


def is_sealed(path: Path) -> bool:
    """Whether the file starts as a sealed recording does (a missing or short file is not sealed)."""
    try:
        with path.open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def sealed_with(path: Path) -> str | None:
    """The id of the key that sealed a recording file (None: not sealed, or not there)."""
    try:
        with path.open("rb") as f:
            return Header.read(f, path.name).key_id
    except (OSError, CryptError):
        return None


def _file_key(secret: bytes, file_id: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=file_id, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(secret))


class Blocks:
    """One sealed file's block arithmetic and cipher, without I/O: where block ``i`` lies, sealing a
    block's plaintext, opening what was read from there."""

    def __init__(self, header: Header, secret: bytes) -> None:
        self.head = header.pack()
        self.block = header.block_size
        self.slot = header.block_size + OVERHEAD
        self._aead = _file_key(secret, header.file_id)

    def offset(self, index: int) -> int:
        return len(self.head) + index * self.slot

    def count(self, stored: int) -> int:
        """How many blocks (whole or not) a sealed file of ``stored`` bytes holds."""
        body = stored - len(self.head)
        return -(-body // self.slot) if body > 0 else 0

    def _aad(self, index: int, final: bool) -> bytes:
        return self.head + struct.pack(">QB", index, final)

    def seal(self, plain: bytes, index: int, final: bool) -> bytes:
        nonce = os.urandom(NONCE)  # fresh for every write, rewrites included: never reused under the key
        return nonce + self._aead.encrypt(nonce, plain, self._aad(index, final))

    def open(self, sealed: bytes, index: int, final: bool) -> bytes | None:
        """The block's plaintext, or None when it does not authenticate as block ``index`` (final or not)."""
        if len(sealed) < OVERHEAD:
            return None
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], self._aad(index, final))
        except InvalidTag:
            return None


# --- the sealed file ---------------------------------------------------------------------------------


class SealedFile(io.RawIOBase):
    """A sealed file read and written as if it were the plain one (read, write, seek, truncate).

    Changed blocks are kept in memory and sealed when full, at :meth:`flush` and at :meth:`close` (which
    marks the last block final and syncs the file). Memory stays at a few blocks however long the file.
    Opening an existing file checks its last block: a file whose last block is not final is
    ``unfinished`` (cut short by a crash); a last block that does not authenticate at all (a write cut
    in the middle) is left out (``torn``), so what is read is every block that was completed.
    """

    def __init__(self, fd: int, name: str, header: Header, secret: bytes, *, writable: bool) -> None:
        super().__init__()
        self._fd = fd
        self.name = name
        self.header = header
        self._cipher = Blocks(header, secret)
        self._block = header.block_size
        self._writable = writable
        self._pos = 0
        self.size = 0
        self._blocks = 0  # blocks of the plaintext (on disk or in memory)
        #: The block on disk sealed as final (a finished file), if any.
        self._final_on_disk: int | None = None
        self._cache: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty: set[int] = set()
        self._shrunk = False
        self.state: SealState = "unfinished"
        #: The last block on disk did not authenticate and was left out (a write a crash cut short).
        self.torn = False

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, keyring: Keyring) -> SealedFile:
        """A new, empty sealed file under the keyring's newest key (OSError if it cannot be created)."""
        header = Header(keyring.newest, os.urandom(16))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)  # (less the umask, as a plain file)
        try:
            _write_all(fd, header.pack(), 0)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, path.name, header, keyring.keys[keyring.newest], writable=True)

    @classmethod
    def open(cls, path: Path, keyring: Keyring, *, writable: bool = False) -> SealedFile:
        """An existing sealed file; CryptError when it is not one, its key is not in the keyring or its
        header is damaged (OSError when it cannot be opened)."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        sealed: SealedFile | None = None
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                header = Header.read(f, path.name)
            sealed = cls(fd, path.name, header, keyring.key(header.key_id, path.name), writable=writable)
            sealed._scan(os.fstat(fd).st_size)
            sealed._shrunk = sealed.torn and writable  # the torn bytes go when the file is closed
        except BaseException:
            if sealed is not None:
                sealed.abandon()
            else:
                os.close(fd)
            raise
        return sealed

    def _scan(self, disk: int) -> None:
        slots = self._cipher.count(disk)
        if not slots or self._take_last(slots - 1, (True, False)):
            return
        # The last block does not authenticate: a write a crash cut short (or an altered last block).
        # What is before it is what was completed, and must read as a non-final block.
        self.torn = True
        if slots == 1:
            # Its only block: nothing in the file opens. Taken as torn it would read as empty, and a
            # repair would cut the file to nothing — the usual cause is a key replaced under its id.
            raise TamperedError(self.name, 0, self._none_opens())
        if not self._take_last(slots - 2, (False,)):
            # More than a torn write: name the first block that fails (every one is checked: fast).
            bad = next(i for i in range(slots - 1) if self._cipher.open(self._read_slot(i), i, False) is None)
            why = self._none_opens() if bad == 0 else "altered, moved, or taken from another file"
            raise TamperedError(self.name, bad, why)

    def _none_opens(self) -> str:
        """Why a file's first block fails, when it may be that no block of it opens with this key."""
        key_id = self.header.key_id
        return (
            f"altered, or sealed with another key than the key file's {key_id!r}: was that key replaced"
            " under the same id? the file is left as it is"
        )

    def _take_last(self, last: int, finals: tuple[bool, ...]) -> bool:
        """Take block ``last`` as the file's last if it authenticates (as final or not, in that order)."""
        sealed = self._read_slot(last)
        for final in finals:
            plain = self._cipher.open(sealed, last, final)
            if plain is not None:
                self._blocks = last + 1
                self.size = last * self._block + len(plain)
                self._final_on_disk = last if final else None
                self.state = "finished" if final else "unfinished"
                self._cache[last] = bytearray(plain)
                return True
        return False

    # --- file object -----------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(22, f"{self.name}: seek before the start")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            index, offset = divmod(self._pos, self._block)
            plain = self._plain(index)
            part = plain[offset : offset + len(view) - done]
            view[done : done + len(part)] = part
            done += len(part)
            self._pos += len(part)
        return done

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._writable:
            raise io.UnsupportedOperation(f"{self.name}: opened for reading")
        data = memoryview(data).cast("B")
        if self._pos > self.size:  # writing past the end: the gap reads as zeros, as in a file
            gap, self._pos = self._pos - self.size, self.size
            self.write(bytes(gap))
        done = 0
        touched = -1
        while done < len(data):
            index, offset = divmod(self._pos, self._block)
            if index == self._blocks:  # a new block; the one before it is full, and no longer final
                if self._final_on_disk is not None and index and self._final_on_disk == index - 1:
                    self._dirty.add(index - 1)
                    self._final_on_disk = None
                self._cache[index] = bytearray()
                self._blocks += 1
            plain = self._plain(index)
            part = data[done : done + self._block - offset]
            plain[offset : offset + len(part)] = part
            self._dirty.add(index)
            done += len(part)
            self._pos += len(part)
            self.size = max(self.size, self._pos)
            touched = index
        # Full blocks other than the one written last go to disk now: memory stays at a few blocks.
        for index in sorted(self._dirty):
            if index != touched and len(self._cache[index]) == self._block:
                self._seal(index, final=False)
        self._trim_cache()
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if not self._writable:
            raise io.UnsupportedOperation(f"{self.name}: opened for reading")
        if size >= self.size:
            return self.size
        blocks = -(-size // self._block)
        if blocks:
            last = self._plain(blocks - 1)
            del last[size - (blocks - 1) * self._block :]
            self._dirty.add(blocks - 1)
        for index in [i for i in self._cache if i >= blocks]:
            del self._cache[index]
            self._dirty.discard(index)
        if self._final_on_disk is not None and self._final_on_disk >= blocks - 1:
            self._final_on_disk = None
        self._blocks, self.size, self._shrunk = blocks, size, True
        os.ftruncate(self._fd, self._cipher.offset(blocks))  # the last block's old bytes stay until it is sealed again
        return size

    def flush(self) -> None:
        """Seal every changed block (none marked final: the file stays open for more)."""
        if self.closed or not self._writable:
            return
        for index in sorted(self._dirty):
            self._seal(index, final=False)
        self._cut()

    def close(self) -> None:
        """Seal what changed, mark the last block final, sync and close."""
        if self.closed:
            return
        try:
            if self._writable:
                last = self._blocks - 1
                if last < 0:  # an empty file still ends with a (empty) final block
                    self._cache[0] = bytearray()
                    self._blocks, last = 1, 0
                for index in sorted(self._dirty - {last}):
                    self._seal(index, final=False)
                if self._final_on_disk != last or last in self._dirty:
                    self._seal(last, final=True)
                self._cut()
                os.fsync(self._fd)
                self.state = "finished"
        finally:
            self._writable = False  # (IOBase.close flushes: nothing more to write)
            os.close(self._fd)
            super().close()

    def __del__(self) -> None:
        # Dropped without close (an error path): leave it unfinished rather than seal it as complete.
        with contextlib.suppress(OSError):
            self.abandon()

    def abandon(self) -> None:
        """Close without writing anything more (the storage refused a write): the file stays unfinished,
        readable up to its last sealed block, and recovery repairs it as after a crash."""
        if not self.closed:
            self._dirty.clear()
            self._writable = False
            os.close(self._fd)
            super().close()

    # --- reading whole ---------------------------------------------------------------------------

    def verify(self) -> None:
        """Authenticate every block (TamperedError naming the first that fails)."""
        for index in range(self._blocks):
            self._plain(index)
            self._trim_cache()

    def blank(self, index: int) -> None:
        """Take block ``index`` as zeros, whatever is on disk, and seal it so (recovery of a block a kill
        cut in the middle of a rewrite: its bytes are lost, the blocks around it are not)."""
        if not self._writable or not 0 <= index < self._blocks:
            raise io.UnsupportedOperation(f"{self.name}: block {index} cannot be blanked")
        length = self._block if index < self._blocks - 1 else self.size - index * self._block
        self._cache[index] = bytearray(length)
        self._dirty.add(index)

    def chunks(self, start: int, end: int, size: int = 64 * 1024) -> Iterator[bytes]:
        """The plaintext ``[start, end)`` in pieces of at most ``size`` bytes."""
        self.seek(start)
        while self._pos < min(end, self.size):
            piece = self.read(min(size, end - self._pos))
            if not piece:
                return
            yield piece

    # --- blocks ----------------------------------------------------------------------------------

    def _read_slot(self, index: int) -> bytes:
        return os.pread(self._fd, self._cipher.slot, self._cipher.offset(index))

    def _plain(self, index: int) -> bytearray:
        plain = self._cache.get(index)
        if plain is not None:
            self._cache.move_to_end(index)
            return plain
        sealed = self._read_slot(index)
        final = index == self._final_on_disk
        opened = self._cipher.open(sealed, index, final)
        if opened is None or (index < self._blocks - 1 and len(opened) != self._block):
            why = "altered, moved, or taken from another file"
            if self._cipher.open(sealed, index, not final) is not None:
                why = "a final block with more after it" if not final else "the final block is missing"
            raise TamperedError(self.name, index, why)
        self._cache[index] = plain = bytearray(opened)
        return plain

    def _seal(self, index: int, *, final: bool) -> None:
        _write_all(self._fd, self._cipher.seal(bytes(self._cache[index]), index, final), self._cipher.offset(index))
        self._dirty.discard(index)
        if final:
            self._final_on_disk = index
        elif self._final_on_disk == index:
            self._final_on_disk = None

    def _cut(self) -> None:
        """After a truncate, drop the old bytes past the last block once it has been sealed again."""
        if self._shrunk and not self._dirty:
            last = self._blocks - 1
            end = self._cipher.offset(last) + OVERHEAD + len(self._plain(last)) if last >= 0 else len(self._cipher.head)
            os.ftruncate(self._fd, end)
            self._shrunk = False

    def _trim_cache(self) -> None:
        while len(self._cache) > _CACHE_BLOCKS:
            clean = next((i for i in self._cache if i not in self._dirty and i != self._blocks - 1), None)
            if clean is None:
                return
            del self._cache[clean]


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``: a short write (the disk filling) is continued, so its cause
    comes as the OSError of the next write (ENOSPC, EFBIG), never as a block silently cut short."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        if done <= 0:
            raise OSError(28, "no space left for the block")
        view, offset = view[done:], offset + done


# --- helpers for the rest of the engine ----------------------------------------------------------------


#: A recording file as encoders, recovery and readers use it: the plain file, or a sealed one's plaintext.
AudioFile = BinaryIO | SealedFile


def open_output(path: Path, keyring: Keyring | None) -> AudioFile:
    """A new recording file, written plain or sealed (OSError when it cannot be created)."""
    if keyring is None:
        return path.open("w+b")
    return SealedFile.create(path, keyring)


def open_existing(path: Path, keyring: Keyring | None, *, writable: bool = False) -> AudioFile:
    """A recording file as it is on disk, plain or sealed, read (or repaired) through its plaintext.
    CryptError for a sealed file without the key that sealed it."""
    if not is_sealed(path):
        return path.open("r+b" if writable else "rb")
    if keyring is None:
        raise CryptError(f"{path.name}: the recording is encrypted; give the key file (--encrypt-key-file)")
    return SealedFile.open(path, keyring, writable=writable)


def plain_size(path: Path, keyring: Keyring | None) -> int:
    """The size of a recording's audio as it is given out (a sealed file's plaintext)."""
    if not is_sealed(path) or keyring is None:
        return path.stat().st_size
    with SealedFile.open(path, keyring) as f:
        return f.size


#: Longest sealed recording ``play`` decrypts into memory (about 4.5 h of 8 kHz mono WAV).
PLAY_LIMIT = 256 * 1024 * 1024


def playable(path: Path, keyring: Keyring | None, limit: int = PLAY_LIMIT) -> Path | bytes:
    """What ``play`` decodes for a local recording: its path, or a sealed one's audio (CryptError when it
    cannot be read, or is longer than ``limit``)."""
    if not is_sealed(path):
        return path
    with open_existing(path, keyring) as f:
        if isinstance(f, SealedFile) and f.size > limit:
            raise CryptError(f"{path.name}: {f.size} bytes of audio; play decrypts at most {limit} into memory")
        return f.read()


@dataclass
class SealedAudio:
    """A sealed recording's audio as the HTTP API serves it (``service/storage.py``'s ``AudioSource``):
    its decrypted size, and any span of it decrypted on the way, block by block, off the event loop."""

    path: Path
    keyring: Keyring
    size: int
    #: Its last block is sealed as final. Not so for a live recording, one a crash cut short — and a
    #: finished one whose last block was altered or cut off: what is before it reads, the rest is lost.
    finished: bool = True
    #: Bytes handed over at a time.
    chunk: int = 64 * 1024

    @classmethod
    def open(cls, path: Path, keyring: Keyring) -> SealedAudio:
        """CryptError when it cannot be read (its key is not in the keyring, its header or last blocks
        are damaged); OSError when the file cannot be opened."""
        with SealedFile.open(path, keyring) as f:
            return cls(path, keyring, f.size, finished=f.state == "finished")

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The plaintext ``[start, end)``. A block that fails authentication ends the stream short (the
        client sees fewer bytes than announced) with an error in the log naming it: never altered audio."""
        try:
            sealed = await asyncio.to_thread(SealedFile.open, self.path, self.keyring)
        except (OSError, CryptError) as e:
            log.error("%s: cannot be read: %s", self.path.name, e)
            return
        try:
            pos = start
            while pos < end:
                piece = await asyncio.to_thread(_read_at, sealed, pos, min(self.chunk, end - pos))
                if not piece:
                    return
                pos += len(piece)
                yield piece
        except CryptError as e:
            log.error("%s", e)
        finally:
            sealed.close()


def _read_at(f: SealedFile, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


#: Bytes ``start`` to ``end`` of a stored object, as they arrive (``ObjectStore.read`` of one key).
RangeRead = Callable[[int, int], AsyncIterator[bytes]]


@dataclass
class SealedObject:
    """A sealed recording in object storage, as the HTTP API serves it: a few blocks fetched at a time
    with ranged reads and opened on the way. Its plaintext ``size`` is its metadata's (the object itself
    is ``stored`` bytes). A block that fails ends the stream short with an error in the log naming it."""

    read: RangeRead
    keyring: Keyring
    name: str
    size: int
    stored: int
    #: Blocks fetched by one ranged read (128 KiB at the default block size).
    batch: int = 8

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            head = await _gather(self.read(0, min(self.stored, _FIXED.size + 64)))
            header = Header.read(io.BytesIO(head), self.name)
            cipher = Blocks(header, self.keyring.key(header.key_id, self.name))
            total = cipher.count(self.stored)
            index = start // cipher.block
            while start < end and index < total:
                upto = min(total, index + self.batch)
                raw = await _gather(self.read(cipher.offset(index), min(self.stored, cipher.offset(upto))))
                for i in range(index, upto):
                    sealed = raw[(i - index) * cipher.slot : (i - index + 1) * cipher.slot]
                    plain = cipher.open(sealed, i, i == total - 1)  # a stored recording is a finished one
                    if plain is None or (i < total - 1 and len(plain) != cipher.block):
                        raise TamperedError(self.name, i, "altered, moved, taken from another file, or cut short")
                    base = i * cipher.block
                    piece = plain[max(0, start - base) : max(0, end - base)]
                    if piece:
                        yield piece
                        start += len(piece)
                    if start >= end:
                        return
                index = upto
        except CryptError as e:
            log.error("%s", e)


async def _gather(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
