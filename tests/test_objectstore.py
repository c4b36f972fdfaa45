"""recording/objectstore.py against a real S3-speaking server (moto, its own process): --storage values
and the environment checked at start, a multipart upload of a long file, ranged reads, deletes, and the
metadata documents an index is rebuilt from."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3_server import S3Server, s3_server_fixture, sha256  # noqa: F401  (the session fixture)
from swml_engine.recording.objectstore import ObjectStore, StorageError, StorageUnreachable, StorageUrl


def store(server: S3Server, url: str, **env: str) -> ObjectStore:
    return ObjectStore.from_option(url, {**server.env, **env})


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("bucket/x", "give s3://BUCKET/PREFIX"),
        ("http://bucket/x", "give s3://BUCKET/PREFIX"),
        ("s3://B_ad/x", "'B_ad' is not a bucket name"),
        ("s3://ok-bucket/a/../b", "the prefix 'a/../b'"),
    ],
)
def test_unusable_values_are_named(value: str, says: str) -> None:
    with pytest.raises(StorageError, match="--storage") as e:
        StorageUrl.parse(value)
    assert says in str(e.value)


def test_the_url_keeps_bucket_and_prefix() -> None:
    url = StorageUrl.parse("s3://rec-bucket/site-a/calls/")
    assert (url.bucket, url.prefix, url.url_of("x.wav")) == (
        "rec-bucket",
        "site-a/calls",
        "s3://rec-bucket/site-a/calls/x.wav",
    )


def test_start_checks_name_the_problem(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    asyncio.run(store(s3_server, f"s3://{bucket}/p").check())  # there: fine
    with pytest.raises(
        StorageError, match=r"bucket 'no-such-bucket-here' not found at http://127\.0\.0\.1:\d+: create it"
    ):
        asyncio.run(store(s3_server, "s3://no-such-bucket-here/p").check())
    env = {k: v for k, v in s3_server.env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    with pytest.raises(StorageError, match="no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        ObjectStore.from_option(f"s3://{bucket}/p", env)
    # A server that does not answer, whatever digits its port has: the port 40345 once read as a 403 (a
    # refusal, which stops the start) instead of a server down (which lets it start and wait).
    for port in (9, 40399, 40409):
        down = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        with pytest.raises(StorageUnreachable, match="check AWS_ENDPOINT_URL and that the server is up"):
            asyncio.run(ObjectStore.from_option(f"s3://{bucket}/p", down).check())
    # One that takes the connection and never answers (hung, overloaded) is given CHECK_TIMEOUT, not the
    # request timeout (120 s): the start goes on without it, taking calls.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        hung = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        with pytest.raises(StorageUnreachable, match=r"no answer from http://127\.0\.0\.1:\d+ within 5 s: check"):
            asyncio.run(ObjectStore.from_option(f"s3://{bucket}/p", hung).check())


@contextlib.contextmanager
def tls_in_front(server: S3Server, directory: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS endpoint on loopback passing each connection on to ``server``, its certificate signed by
    a CA of this test's own (as a MinIO of one's own is): the endpoint's URL and the CA's PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def signed(subject: str, public: ec.EllipticCurvePublicKey, ca: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("test CA"))
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip

    ca = signed("test CA", ca_key.public_key(), True).sign(ca_key, hashes.SHA256())
    leaf = signed("127.0.0.1", key.public_key(), False).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.pem").write_bytes(leaf.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            try:
                client = context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                continue  # (a client that refused the certificate)
            upstream = socket.create_connection(("127.0.0.1", server.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", directory / "ca.pem"


def test_an_endpoint_a_private_ca_signs_is_trusted_from_aws_ca_bundle(s3_server: S3Server, tmp_path: Path) -> None:
    """A MinIO behind a CA of one's own: the certificate's refusal is named, with what to do (it read
    "error sending request ... check AWS_ENDPOINT_URL and that the server is up", and the start went on
    as if the server were down), and AWS_CA_BUNDLE, as the AWS tools read it, makes it trusted."""
    bucket = s3_server.bucket()
    with tls_in_front(s3_server, tmp_path) as (endpoint, ca):
        env = {**s3_server.env, "AWS_ENDPOINT_URL": endpoint}
        untrusted = ObjectStore.from_option(f"s3://{bucket}/p", env)
        with pytest.raises(StorageError) as e:
            asyncio.run(untrusted.check())
        assert not isinstance(e.value, StorageUnreachable)  # (a setting to fix: the start stops)
        assert str(e.value) == (
            f"--storage s3://{bucket}/p: the certificate of {endpoint} is not trusted (UnknownIssuer): if a CA "
            "of your own signs it, give its PEM file in AWS_CA_BUNDLE"
        )
        trusted = ObjectStore.from_option(f"s3://{bucket}/p", {**env, "AWS_CA_BUNDLE": str(ca)})
        asyncio.run(trusted.check())
        asyncio.run(trusted.put_bytes("r.json", b"{}", {}))
        assert s3_server.objects(bucket) == {"p/r.json": b"{}"}
    with pytest.raises(StorageError, match=r"AWS_CA_BUNDLE \S+none\.pem cannot be read \(No such file or directory\)"):
        ObjectStore.from_option(f"s3://{bucket}/p", {**env, "AWS_CA_BUNDLE": str(tmp_path / "none.pem")})


def test_a_refusal_says_what_the_storage_answered(s3_server: S3Server) -> None:
    """The bucket removed under a running service: its uploads' error (the log line an operator reads)
    gives S3's error code and message, which the first line of the client's error cut off."""
    bucket = s3_server.bucket()
    objects = store(s3_server, f"s3://{bucket}/p")
    s3_server.client().delete_bucket(Bucket=bucket)
    with pytest.raises(StorageError) as e:
        asyncio.run(objects.put_bytes("r.json", b"{}", {}))
    assert str(e.value).startswith(f"upload of s3://{bucket}/p/r.json failed: ")
    assert str(e.value).endswith("404 Not Found: NoSuchBucket (The specified bucket does not exist)"), e.value


def test_a_long_file_goes_up_in_parts_and_reads_back_by_range(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    objects = store(s3_server, f"s3://{bucket}/site")
    objects.part_size = 5 * 1024 * 1024  # S3's smallest part: 11 MiB go up in 3 parts
    data = os.urandom(11 * 1024 * 1024 + 123)
    (tmp_path / "long.wav").write_bytes(data)

    async def run() -> tuple[int | None, bytes, int | None]:
        await objects.put_file("long.wav", tmp_path / "long.wav", {"Content-Type": "audio/wav", "sha256": sha256(data)})
        size = await objects.size_of("long.wav")
        span = b"".join([chunk async for chunk in objects.read("long.wav", 5_000_000, 5_300_000)])
        await objects.delete("long.wav")
        return size, span, await objects.size_of("long.wav")

    size, span, after = asyncio.run(run())
    assert size == len(data) and span == data[5_000_000:5_300_000] and after is None


def test_multipart_object_is_the_file_with_its_checksum(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    objects = store(s3_server, f"s3://{bucket}/p")
    objects.part_size = 5 * 1024 * 1024
    data = os.urandom(6 * 1024 * 1024)
    (tmp_path / "a.mp3").write_bytes(data)
    asyncio.run(objects.put_file("a.mp3", tmp_path / "a.mp3", {"Content-Type": "audio/mpeg", "sha256": sha256(data)}))
    head = s3_server.client().head_object(Bucket=bucket, Key="p/a.mp3")
    assert head["ETag"].endswith('-2"')  # two parts
    assert head["Metadata"] == {"sha256": sha256(data)} and head["ContentType"] == "audio/mpeg"
    assert sha256(s3_server.objects(bucket, "p/")["p/a.mp3"]) == sha256(data)


def test_metadata_documents_are_the_recordings_json(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    objects = store(s3_server, f"s3://{bucket}/p")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="p/r1.json", Body=json.dumps({"recording_id": "r1", "state": "finished"}))
    client.put_object(Bucket=bucket, Key="p/r1.wav", Body=b"RIFF")
    client.put_object(Bucket=bucket, Key="p/bad.json", Body=b"{not json")
    client.put_object(Bucket=bucket, Key="p/other.json", Body=json.dumps({"recording_id": "r9"}))
    client.put_object(Bucket=bucket, Key="elsewhere/r2.json", Body=json.dumps({"recording_id": "r2"}))

    async def collect() -> list[dict[str, object]]:
        return [doc async for doc in objects.metadata_documents()]

    assert asyncio.run(collect()) == [{"recording_id": "r1", "state": "finished"}]
