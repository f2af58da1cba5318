"""``RedisPersistenceLayer(url=...)`` against servers that demand credentials or TLS.

Production Redis is rarely open: it wants a password (``requirepass``), an ACL user, or TLS.
The URL is the only thing a user passes, so each form is tested end to end (claim, complete,
replay, lookup) on both the sync path (redis-py) and the async path (the layer's own
connection for ``redis://`` and ``rediss://`` URLs), and bad credentials must surface as the
typed ``IdempotencyPersistenceLayerError`` (HTTP 503), not as a hang or an untyped crash.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from idempotent_middleware import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyPersistenceLayerError,
    RedisPersistenceLayer,
)
from idempotent_middleware.persistence.base import STATUS_COMPLETED
from tests.redis_servers import RedisProcess, free_port, redis_binary, start_redis

pytestmark = pytest.mark.redis

PASSWORD = "pw-for-default"
#: An ACL password with URL-reserved characters: it must be percent-encoded in the URL.
ODD_PASSWORD = "s3cr@t:/?#%"


def _no_redis(reason: str) -> None:
    """Skip, or fail under REQUIRE_REDIS=1 (as conftest's redis_server fixture does)."""
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(f"REQUIRE_REDIS=1 but the real-Redis tests cannot run: {reason}")
    pytest.skip(reason)


def _round_trip(layer: RedisPersistenceLayer, mode: str, key: str) -> None:
    """Claim, complete, replay (a second claim returns the stored bytes), look up."""
    body = b"\x00receipt\xff"

    async def scenario() -> None:
        claim = layer.new_inprogress_record(key, "fp", 30, 60)
        retry = layer.new_inprogress_record(key, "fp", 30, 60)
        if mode == "sync":
            layer._put_record(claim)
            layer._update_record(layer.completed_record(claim, body, 60))
            with pytest.raises(IdempotencyItemAlreadyExistsError) as replay:
                layer._put_record(retry)
            stored = layer._get_record(key)
        else:
            await layer._put_record_async(claim)
            await layer._update_record_async(layer.completed_record(claim, body, 60))
            with pytest.raises(IdempotencyItemAlreadyExistsError) as replay:
                await layer._put_record_async(retry)
            stored = await layer._get_record_async(key)
        assert replay.value.old_data_record is not None
        assert replay.value.old_data_record.response_data == body
        assert stored.status == STATUS_COMPLETED
        assert stored.response_data == body

    try:
        asyncio.run(scenario())
    finally:
        layer.close()


def _claim_fails(url: str, mode: str) -> IdempotencyPersistenceLayerError:
    """Claim through ``url``; return the typed error it must raise."""
    layer = RedisPersistenceLayer(url=url, socket_timeout=2.0, socket_connect_timeout=2.0)
    record = layer.new_inprogress_record("scope#denied", "fp", 30, 60)

    async def claim() -> None:
        if mode == "sync":
            layer._put_record(record)
        else:
            await layer._put_record_async(record)

    try:
        with pytest.raises(IdempotencyPersistenceLayerError) as info:
            asyncio.run(asyncio.wait_for(claim(), 10))
    finally:
        layer.close()
    return info.value


# --- Password and ACL users ------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisProcess]:
    """A server with ``requirepass`` and three ACL users (full, odd password, no key access)."""
    if redis_binary() is None:
        _no_redis("redis-server is not installed")
    server = start_redis(password=PASSWORD)
    try:
        for rule in (
            ("app", "on", ">secret", "~*", "+@all"),
            ("odd", "on", f">{ODD_PASSWORD}", "~*", "+@all"),
            ("narrow", "on", ">narrow", "~other:*", "+@all"),
        ):
            assert server.cli("ACL", "SETUSER", *rule) == "OK"
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


def _url(server: RedisProcess, credentials: str, db: int = 0) -> str:
    return f"redis://{credentials}@127.0.0.1:{server.port}/{db}"


MODES = ["sync", "async"]
USERS = {
    "requirepass": f":{PASSWORD}",
    "acl_user": "app:secret",
    "acl_user_encoded_password": f"odd:{quote(ODD_PASSWORD, safe='')}",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", list(USERS))
def test_authenticated_urls_work(auth_server: RedisProcess, user: str, mode: str) -> None:
    auth_server.cli("FLUSHALL")
    layer = RedisPersistenceLayer(url=_url(auth_server, USERS[user]))
    _round_trip(layer, mode, f"scope#{user}-{mode}")


@pytest.mark.parametrize("mode", MODES)
def test_database_number_in_the_url_is_honoured(auth_server: RedisProcess, mode: str) -> None:
    """``/3`` in the URL: records land in database 3 (AUTH then SELECT on connect)."""
    auth_server.cli("FLUSHALL")
    layer = RedisPersistenceLayer(url=_url(auth_server, "app:secret", db=3))
    _round_trip(layer, mode, f"scope#db-{mode}")
    assert auth_server.cli("-n", "3", "EXISTS", f"idempotency:scope#db-{mode}") == "1"
    assert auth_server.cli("-n", "0", "DBSIZE") == "0"


DENIED = {
    "wrong_password": ":not-the-password",
    "no_password": "",
    "acl_user_wrong_password": "app:wrong",
    "unknown_user": "nobody:secret",
    "acl_user_without_key_access": "narrow:narrow",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(DENIED))
def test_rejected_credentials_raise_the_typed_error(
    auth_server: RedisProcess, case: str, mode: str
) -> None:
    """WRONGPASS / NOAUTH / NOPERM all end as IdempotencyPersistenceLayerError (a 503).

    The message keeps the server's reason. redis-py (sync path) drops the error code
    (``WRONGPASS``) and, without credentials, reports its own HELLO being refused; the async
    path keeps the code. Both carry the phrase checked here.
    """
    credentials = DENIED[case]
    url = (
        _url(auth_server, credentials) if credentials else f"redis://127.0.0.1:{auth_server.port}/0"
    )
    message = str(_claim_fails(url, mode)).lower()
    expected = {
        "acl_user_without_key_access": "no permissions",
        "no_password": "authenticat",
    }.get(case, "invalid username-password pair")
    assert expected in message


# --- TLS -------------------------------------------------------------------------------------
@dataclass
class TlsFiles:
    directory: str
    ca: str
    cert: str
    key: str


def _redis_tls_support() -> str | None:
    """None when this redis-server takes ``--tls-port``, else why not (the skip reason).

    A TLS build given ``--port 0 --tls-port 0`` starts, finds nothing to listen on and says
    so; a build without TLS rejects the directive before that.
    """
    binary = redis_binary()
    if binary is None:
        return "redis-server is not installed"
    done = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    output = done.stdout + done.stderr
    if "not listen anywhere" in output:
        return None
    return f"this redis-server was built without TLS: {output.strip()[-300:]}"


def _make_certificates_with_cryptography(files: TlsFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idempotency test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(files.ca, "wb") as handle:
        handle.write(ca_cert.public_bytes(pem))
    with open(files.cert, "wb") as handle:
        handle.write(cert.public_bytes(pem))
    with open(files.key, "wb") as handle:
        handle.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def _make_certificates_with_openssl(files: TlsFiles) -> None:
    ca_key = os.path.join(files.directory, "ca.key")
    csr = os.path.join(files.directory, "server.csr")
    extensions = os.path.join(files.directory, "server.ext")
    with open(extensions, "w", encoding="ascii") as handle:
        handle.write(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "extendedKeyUsage=serverAuth\n"
            "authorityKeyIdentifier=keyid\n"
        )
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_subject = [
        *("-subj", "/CN=idempotency test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    ]
    signing = [
        *("-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial", "-extfile", extensions),
    ]
    days = ("-days", "2")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], capture_output=True, timeout=30, check=True)

    openssl("req", "-x509", *ec_key, *days, "-keyout", ca_key, "-out", files.ca, *ca_subject)
    openssl("req", *ec_key, "-keyout", files.key, "-out", csr, "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", *days, "-in", csr, "-out", files.cert, *signing)


def make_certificates(directory: str) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, signed by it.

    ``cryptography`` when importable (no subprocess), else the openssl CLI; the test skips
    when neither exists (they are not dependencies of the package).
    """
    files = TlsFiles(
        directory,
        os.path.join(directory, "ca.crt"),
        os.path.join(directory, "server.crt"),
        os.path.join(directory, "server.key"),
    )
    try:
        _make_certificates_with_cryptography(files)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl can make certificates")
        _make_certificates_with_openssl(files)
    return files


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[RedisProcess, TlsFiles]]:
    """A redis-server that speaks only TLS (plain port closed), clients not authenticated.

    Skips (even under REQUIRE_REDIS=1) when the binary has no TLS: that is a property of the
    Redis build, not a missing install step.
    """
    if redis_binary() is None:
        _no_redis("redis-server is not installed")
    unsupported = _redis_tls_support()
    if unsupported is not None:
        pytest.skip(unsupported)
    directory = tempfile.mkdtemp(prefix="idem-tls-")
    try:
        files = make_certificates(directory)
        port = free_port()
        server = start_redis(
            (
                *("--port", "0", "--tls-port", str(port)),
                *("--tls-cert-file", files.cert, "--tls-key-file", files.key),
                *("--tls-ca-cert-file", files.ca, "--tls-auth-clients", "no"),
            ),
            port=port,  # start_redis waits for this port: the TLS one
        )
        try:
            yield server, files
        finally:
            server.stop()
            shutil.rmtree(server.directory, ignore_errors=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize(
    ("verify", "mode"),
    [
        ("ssl_cert_reqs_none", "sync"),
        ("ssl_cert_reqs_none", "async"),
        ("ssl_ca_certs", "sync"),
        ("ssl_ca_certs", "async"),
    ],
)
def test_tls_urls_work(tls_server: tuple[RedisProcess, TlsFiles], verify: str, mode: str) -> None:
    """``rediss://`` without verification, and verified against the test CA."""
    server, files = tls_server
    query = "ssl_cert_reqs=none" if verify == "ssl_cert_reqs_none" else f"ssl_ca_certs={files.ca}"
    layer = RedisPersistenceLayer(url=f"rediss://127.0.0.1:{server.port}/0?{query}")
    _round_trip(layer, mode, f"scope#tls-{verify}-{mode}")


@pytest.mark.parametrize("mode", MODES)
def test_tls_server_with_an_untrusted_certificate_is_refused(
    tls_server: tuple[RedisProcess, TlsFiles], mode: str
) -> None:
    """Verification on (the default) and no CA given: the handshake fails, typed and bounded."""
    server, _ = tls_server
    _claim_fails(f"rediss://127.0.0.1:{server.port}/0", mode)


@pytest.mark.parametrize("mode", MODES)
def test_plain_url_on_a_tls_port_fails_typed_and_bounded(
    tls_server: tuple[RedisProcess, TlsFiles], mode: str
) -> None:
    server, _ = tls_server
    _claim_fails(f"redis://127.0.0.1:{server.port}/0", mode)
