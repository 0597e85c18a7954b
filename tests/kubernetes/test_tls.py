"""HTTPS as in a real cluster: the API server's CA from the kubeconfig, a client certificate,
and the webhook serving TLS. Certificates are made here (cryptography), valid for 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.client
import ipaddress
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from albingress.sources.kube import (
    KubeClient,
    KubeTransportError,
    SyncKubeClient,
    load_kubeconfig,
)
from albingress.sources.kube.client import SERVICE
from tests.e2e.harness import ROOT, free_port, wait_until
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import service
from tests.kubernetes.test_webhook import admission, broken_ingress


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey],
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, ("test-ca", ca_key), ca=True)
    files = {"ca": tmp_path / "ca.crt"}
    files["ca"].write_bytes(_pem(ca))
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / f"{name}.crt").write_bytes(
            _pem(_cert(name, key, ("test-ca", ca_key), server=server))
        )
        (tmp_path / f"{name}.key").write_bytes(_key_pem(key))
        files[name] = tmp_path / f"{name}.crt"
        files[f"{name}-key"] = tmp_path / f"{name}.key"
    return files


@pytest.fixture
def tls_api(pki: dict[str, Path]) -> Iterator[ApiServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    ctx.load_cert_chain(pki["server"], pki["server-key"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # the client must show a certificate, as kubeconfigs do
    with ApiServer(tls=ctx) as server:
        yield server


def kubeconfig(path: Path, server: str, pki: dict[str, Path], with_ca: bool = True) -> Path:
    cluster: dict[str, str] = {"server": server}
    if with_ca:
        cluster["certificate-authority-data"] = base64.b64encode(pki["ca"].read_bytes()).decode()
    user = {
        "client-certificate-data": base64.b64encode(pki["client"].read_bytes()).decode(),
        "client-key": pki["client-key"].name,  # relative to the kubeconfig's directory
    }
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    path.write_text(json.dumps(doc))
    return path


def test_client_certificate_and_ca_from_the_kubeconfig(
    tls_api: ApiServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    tls_api.apply(service("tea"))
    config = load_kubeconfig(kubeconfig(tmp_path / "kubeconfig", tls_api.url, pki))
    assert config.server.startswith("https://")
    got = SyncKubeClient(config).request("GET", SERVICE.path("default", "tea"))
    assert got["metadata"]["name"] == "tea"

    async def main() -> None:
        client = KubeClient(config)
        try:
            page = await client.list(SERVICE)
            assert [i["metadata"]["name"] for i in page["items"]] == ["tea"]
        finally:
            await client.close()

    asyncio.run(main())


def test_an_unknown_ca_is_refused(tls_api: ApiServer, pki: dict[str, Path], tmp_path: Path) -> None:
    config = load_kubeconfig(kubeconfig(tmp_path / "kubeconfig", tls_api.url, pki, with_ca=False))
    with pytest.raises(KubeTransportError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        SyncKubeClient(config).request("GET", SERVICE.path())


def test_webhook_serves_tls(pki: dict[str, Path]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "albingress", "webhook", "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))

    def post() -> bool:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        try:
            body = json.dumps(admission(broken_ingress()))
            conn.request("POST", "/validate", body, {"Content-Type": "application/json"})
            answer = json.loads(conn.getresponse().read())
            return answer["response"]["allowed"] is False
        finally:
            conn.close()

    try:
        wait_until(post, 15, "the webhook over TLS")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
