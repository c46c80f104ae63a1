"""Certificates for the local control plane: one CA, serving and client certificates, the
ServiceAccount signing key. Made once per test-bed folder and reused across restarts, so a
kubeconfig handed out earlier keeps working."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Pki:
    dir: Path

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _load(pki: Pki, name: str):
    cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
    key = serialization.load_pem_private_key(pki.key(name).read_bytes(), None)
    return cert, key


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(pki: Pki, name: str, cn: str, org: str | None, *, server_sans: list[str] | None = None,
           client: bool = False) -> None:
    ca_cert, ca_key = _load(pki, "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    usages = []
    if server_sans is not None:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server_sans:
        alt: list[x509.GeneralName] = []
        for san in server_sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alt.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pki.key(name), key)
    pki.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _make_ca(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    name = _name("modelship-testbed-ca")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(pki.key("ca"), key)
    pki.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure(dir: Path, service_ip: str) -> Pki:
    """Create whatever is missing: CA, serving certs, client certs, ServiceAccount key pair."""
    pki = Pki(dir)
    dir.mkdir(parents=True, exist_ok=True)
    if not pki.ca.exists():
        _make_ca(pki)
    local = ["127.0.0.1", "localhost"]
    wanted = {
        "apiserver": dict(cn="kube-apiserver", org=None,
                          server_sans=[*local, service_ip, "kubernetes", "kubernetes.default",
                                       "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]),
        "apiserver-kubelet-client": dict(cn="kube-apiserver-kubelet-client", org="system:masters", client=True),
        "admin": dict(cn="modelship-admin", org="system:masters", client=True),
        "controller-manager": dict(cn="system:kube-controller-manager", org=None, client=True),
        "scheduler": dict(cn="system:kube-scheduler", org=None, client=True),
        "kubelet": dict(cn="kubelet", org=None, server_sans=local),
    }
    for name, opts in wanted.items():
        if not pki.cert(name).exists():
            _issue(pki, name, opts["cn"], opts["org"], server_sans=opts.get("server_sans"),
                   client=opts.get("client", False))
    if not pki.sa_key.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki.sa_key, key)
        pki.sa_pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def kubeconfig(pki: Pki, server: str, user: str, cluster: str = "modelship-testbed") -> str:
    """A kubeconfig with the certificates inlined, so it can be copied anywhere."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {b64(pki.ca)}
users:
- name: {user}
  user:
    client-certificate-data: {b64(pki.cert(user))}
    client-key-data: {b64(pki.key(user))}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
current-context: {cluster}
"""
