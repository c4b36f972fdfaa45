"""The sealed block format (recording/crypt.py): what is written reads back exactly, a kill leaves every
completed block readable, and any change to the blocks fails with an error naming the block."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from swml_engine.recording.crypt import (
    BLOCK,
    OVERHEAD,
    CryptError,
    Header,
    KeyFileError,
    Keyring,
    SealedFile,
    TamperedError,
    is_sealed,
)


def key_line(key_id: str, secret: bytes | None = None) -> str:
    return f"{key_id} {base64.b64encode(secret or os.urandom(32)).decode()}\n"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    keys = tmp_path / "keys"
    keys.write_text("# recordings\n" + key_line("2026-11"))
    return Keyring.load(keys)


def seal(path: Path, keyring: Keyring, data: bytes, *, close: bool = True) -> SealedFile:
    f = SealedFile.create(path, keyring)
    f.write(data)
    if close:
        f.close()
    else:
        f.flush()
    return f


def read_all(path: Path, keyring: Keyring) -> tuple[bytes, SealedFile]:
    with SealedFile.open(path, keyring) as f:
        return f.read(), f


def blocks_of(path: Path) -> tuple[bytes, list[bytes]]:
    raw = path.read_bytes()
    with path.open("rb") as f:
        head = len(Header.read(f, path.name).pack())
    slot = BLOCK + OVERHEAD
    return raw[:head], [raw[i : i + slot] for i in range(head, len(raw), slot)]


def test_round_trip_with_header_patches(tmp_path: Path, keyring: Keyring) -> None:
    # An encoder appends, then patches its header in place (WAV sizes): a rewritten block reads back.
    data = bytearray(os.urandom(3 * BLOCK + 1234))
    path = tmp_path / "a.wav"
    f = SealedFile.create(path, keyring)
    for i in range(0, len(data), 1000):
        f.write(data[i : i + 1000])
        f.flush()
    f.seek(4)
    f.write(b"SIZE")
    data[4:8] = b"SIZE"
    f.close()
    assert is_sealed(path)
    plain, opened = read_all(path, keyring)
    assert plain == data
    assert opened.state == "finished" and not opened.torn
    assert b"SIZE" not in path.read_bytes()


def test_rewriting_a_block_uses_a_fresh_nonce(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "a.wav"
    f = seal(path, keyring, b"x" * 100, close=False)
    first = blocks_of(path)[1][0]
    f.seek(0)
    f.write(b"x")  # the same plaintext again
    f.flush()
    second = blocks_of(path)[1][0]
    f.close()
    assert first[:12] != second[:12] and first[12:] != second[12:]


def test_killed_mid_way_reads_every_completed_block(tmp_path: Path, keyring: Keyring) -> None:
    # Written, flushed, never closed (the process killed): no final block, every byte flushed reads.
    data = os.urandom(2 * BLOCK + 500)
    path = tmp_path / "a.wav"
    f = seal(path, keyring, data, close=False)
    f.write(b"in memory only")
    f.abandon()  # the kill: nothing more reaches the file
    plain, opened = read_all(path, keyring)
    assert plain == data and opened.state == "unfinished"


def test_a_torn_last_block_is_left_out(tmp_path: Path, keyring: Keyring) -> None:
    # The kill came while the last block was being rewritten: all but that block read.
    data = os.urandom(3 * BLOCK + 10)
    path = tmp_path / "a.wav"
    seal(path, keyring, data, close=False).abandon()
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1
    path.write_bytes(raw)
    plain, opened = read_all(path, keyring)
    assert plain == data[: 3 * BLOCK] and opened.torn and opened.state == "unfinished"


def test_truncated_at_a_block_boundary_is_unfinished_not_finished(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "a.wav"
    seal(path, keyring, os.urandom(3 * BLOCK))
    head, blocks = blocks_of(path)
    path.write_bytes(head + b"".join(blocks[:2]))
    plain, opened = read_all(path, keyring)
    assert len(plain) == 2 * BLOCK and opened.state == "unfinished" and not opened.torn


@pytest.mark.parametrize("change", ["flipped bit", "swapped blocks", "block from another file", "key id"])
def test_tampering_fails_naming_the_block(tmp_path: Path, keyring: Keyring, change: str) -> None:
    path, other = tmp_path / "a.wav", tmp_path / "b.wav"
    seal(path, keyring, os.urandom(4 * BLOCK + 7))
    seal(other, keyring, os.urandom(4 * BLOCK + 7))
    head, blocks = blocks_of(path)
    if change == "flipped bit":
        block = bytearray(blocks[1])
        block[100] ^= 0x10
        blocks[1] = bytes(block)
        expected = 1
    elif change == "swapped blocks":
        blocks[1], blocks[2] = blocks[2], blocks[1]
        expected = 1
    elif change == "block from another file":
        blocks[2] = blocks_of(other)[1][2]
        expected = 2
    else:  # the header is bound into every block: a changed key id (same key) fails block 0
        keyring = Keyring({**keyring.keys, "2026-1x": keyring.keys["2026-11"]}, "2026-11")
        head = head.replace(b"2026-11", b"2026-1x")
        expected = 0
    path.write_bytes(head + b"".join(blocks))
    with pytest.raises(TamperedError) as caught, SealedFile.open(path, keyring) as f:  # (at open, or at reading)
        f.read()
    assert caught.value.block == expected
    assert f"a.wav: block {expected} fails authentication" in str(caught.value)


def test_a_dropped_middle_block_fails(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "a.wav"
    seal(path, keyring, os.urandom(4 * BLOCK + 7))
    head, blocks = blocks_of(path)
    path.write_bytes(head + b"".join(blocks[:1] + blocks[2:]))
    with pytest.raises(TamperedError, match="block 1 fails"), SealedFile.open(path, keyring) as f:
        f.verify()


def test_a_key_file_others_can_read_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys"
    keys.write_text(key_line("k1"))
    keys.chmod(0o600)
    Keyring.load(keys)
    assert not caplog.records
    keys.chmod(0o644)
    Keyring.load(keys)
    assert "readable by other users than its owner (mode 644); chmod 600 it" in caplog.text


def test_key_rotation_old_files_still_read(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(key_line("old"))
    old = tmp_path / "old.wav"
    seal(old, Keyring.load(keys), b"before the rotation")
    with keys.open("a") as f:
        f.write(key_line("new"))
    rotated = Keyring.load(keys)
    assert rotated.newest == "new"
    new = tmp_path / "new.wav"
    seal(new, rotated, b"after")
    assert read_all(old, rotated)[0] == b"before the rotation"
    assert read_all(new, rotated)[0] == b"after"
    assert read_all(new, rotated)[1].header.key_id == "new"
    keys.write_text(key_line("new"))  # the old key removed too soon
    with pytest.raises(CryptError, match=r"sealed with key 'old', which .* does not hold"):
        SealedFile.open(old, Keyring.load(keys))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("", "holds no key"),
        ("k1 " + base64.b64encode(b"short").decode(), "is 5 bytes; it must be 32"),
        ("k1 not-base64!", "not valid base64"),
        ("just-one-field", "write KEY_ID BASE64_KEY"),
        (key_line("k1", b"\x01" * 32) + key_line("k1", b"\x02" * 32), "given twice"),
    ],
)
def test_bad_key_files_say_what_is_wrong(tmp_path: Path, content: str | None, message: str) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    with pytest.raises(KeyFileError, match=message) as caught:
        Keyring.load(keys)
    assert str(keys) in str(caught.value)


def test_repair_through_the_plaintext(tmp_path: Path, keyring: Keyring) -> None:
    # Recovery's path: open a killed file for writing, cut it, patch it, close: finished and final.
    data = os.urandom(2 * BLOCK + 300)
    path = tmp_path / "a.wav"
    seal(path, keyring, data, close=False).abandon()
    with SealedFile.open(path, keyring, writable=True) as f:
        f.truncate(BLOCK + 7)
        f.seek(0)
        f.write(b"HDR")
    plain, opened = read_all(path, keyring)
    assert plain == b"HDR" + data[3 : BLOCK + 7] and opened.state == "finished"
    assert path.stat().st_size == len(blocks_of(path)[0]) + 2 * OVERHEAD + BLOCK + 7


def test_sealed_audio_serves_any_span_and_stops_short_at_an_altered_block(tmp_path: Path, keyring: Keyring) -> None:
    # What the HTTP API streams: any byte range of the plaintext; an altered block ends the stream
    # before it (the client gets fewer bytes than announced), never its garbage.
    import asyncio

    from swml_engine.recording.crypt import SealedAudio

    data = os.urandom(3 * BLOCK + 99)
    path = tmp_path / "a.wav"
    seal(path, keyring, data)
    audio = SealedAudio.open(path, keyring)
    assert audio.size == len(data)

    async def span(start: int, end: int) -> bytes:
        return b"".join([piece async for piece in audio.chunks(start, end)])

    for start, end in [(0, len(data)), (100, 200), (BLOCK - 3, 2 * BLOCK + 5), (len(data) - 10, len(data))]:
        assert asyncio.run(span(start, end)) == data[start:end]
    head, blocks = blocks_of(path)
    altered = bytearray(blocks[2])
    altered[50] ^= 1
    path.write_bytes(head + blocks[0] + blocks[1] + bytes(altered) + blocks[3])
    got = asyncio.run(span(0, len(data)))
    assert len(got) <= 2 * BLOCK and data.startswith(got)


def test_sealed_object_read_by_ranges(tmp_path: Path, keyring: Keyring) -> None:
    # A sealed recording in object storage: spans decrypted from ranged reads of the stored bytes.
    import asyncio
    from collections.abc import AsyncIterator

    from swml_engine.recording.crypt import SealedObject

    data = os.urandom(20 * BLOCK + 1234)
    path = tmp_path / "a.wav"
    seal(path, keyring, data)
    stored = path.read_bytes()
    reads: list[tuple[int, int]] = []

    async def read(start: int, end: int) -> AsyncIterator[bytes]:
        reads.append((start, end))
        for i in range(start, end, 5000):  # in pieces, as a bucket streams them
            yield stored[i : min(end, i + 5000)]

    obj = SealedObject(read, keyring, "a.wav", len(data), len(stored))

    async def span(start: int, end: int) -> bytes:
        return b"".join([piece async for piece in obj.chunks(start, end)])

    for start, end in [(0, len(data)), (100, 200), (9 * BLOCK - 1, 17 * BLOCK + 2), (len(data) - 5, len(data))]:
        reads.clear()
        assert asyncio.run(span(start, end)) == data[start:end]
        assert all(e - s <= 8 * (BLOCK + OVERHEAD) for s, e in reads[1:])  # a few blocks at a time
    altered = bytearray(stored)
    altered[len(altered) // 2] ^= 1
    stored = bytes(altered)
    got = asyncio.run(span(0, len(data)))
    assert len(got) < len(data) // 2 + BLOCK and data.startswith(got)
