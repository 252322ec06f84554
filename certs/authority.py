"""Key and certificate generation: private CAs and the leaf certificates they sign.

This is the one place certificates are built: the webhook's CA and serving certificate, and
(through :mod:`localstack._pki`) the local control plane's CAs, serving and client certificates.

Everything here is pure computation over ``cryptography`` objects and PEM bytes: no files, no
network, and the clock is always passed in, so rotation decisions are testable to the second.

Keys are ECDSA P-256: the API server (Go's crypto/tls) accepts them and a P-256 handshake is far
cheaper than RSA-2048, which matters when every admission opens or resumes a TLS session.

Rotation rule: a certificate is renewed once less than a third of its lifetime is left.  The
serving certificate is short-lived and reissued under the same CA, so the ``caBundle`` the API
server trusts does not change.  When the CA itself is renewed, the old CA stays in the trusted
bundle until it expires, so certificates it signed keep verifying while the new ones roll out.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Renew when less than this fraction of a certificate's lifetime is left.
RENEW_FRACTION = 1 / 3
DEFAULT_CA_LIFETIME = dt.timedelta(days=3650)
DEFAULT_LEAF_LIFETIME = dt.timedelta(days=90)
DEFAULT_SERVING_LIFETIME = DEFAULT_LEAF_LIFETIME
#: Certificates are backdated a little so a peer whose clock lags ours still accepts them (at most
#: a twentieth of the lifetime, so very short test lifetimes keep their one-third renewal point).
CLOCK_SKEW = dt.timedelta(minutes=5)

#: What a leaf certificate is for: a TLS server or a TLS client (one extended key usage each).
Usage = Literal["server", "client"]
_EXTENDED_KEY_USAGE: dict[Usage, x509.ObjectIdentifier] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}


def _backdate(lifetime: dt.timedelta) -> dt.timedelta:
    return min(CLOCK_SKEW, lifetime / 20)


class CertificateError(ValueError):
    """Certificate material is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"expected an EC private key, got {type(key).__name__}")
        return key


@dataclass(frozen=True)
class Hosts:
    """The names a serving certificate must cover."""

    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @classmethod
    def for_service(
        cls, service: str, namespace: str, *, local: bool = True, extra: Sequence[str] = ()
    ) -> Hosts:
        """SANs for a Service (all four DNS forms) plus, for the local stack, localhost/127.0.0.1."""
        dns = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
        dns.append(f"{service}.{namespace}.svc.cluster.local")
        ips: list[str] = []
        if local:
            dns.append("localhost")
            ips.append("127.0.0.1")
        for name in extra:
            (ips if _is_ip(name) else dns).append(name)
        return cls(dns_names=tuple(dict.fromkeys(dns)), ip_addresses=tuple(dict.fromkeys(ips)))

    @classmethod
    def local(cls, extra: Sequence[str] = ()) -> Hosts:
        """localhost and 127.0.0.1 (the local stack and the tests), plus ``extra`` names or IPs."""
        dns = ["localhost"] + [n for n in extra if not _is_ip(n)]
        ips = ["127.0.0.1"] + [n for n in extra if _is_ip(n)]
        return cls(dns_names=tuple(dict.fromkeys(dns)), ip_addresses=tuple(dict.fromkeys(ips)))

    def subject_alternative_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in self.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.ip_addresses]
        return names


@dataclass(frozen=True)
class CertBundle:
    """Everything the webhook needs: its CA, its serving pair and the CAs clients should trust.

    ``trusted_pem`` is what goes into ``caBundle``: the current CA followed by any previous CA
    that has not expired yet (see the module docstring).
    """

    ca: KeyPair
    serving: KeyPair
    trusted_pem: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if not self.trusted_pem:
            object.__setattr__(self, "trusted_pem", self.ca.cert_pem)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def generate_key_pem() -> bytes:
    """A bare private key (PKCS#8 PEM) of the same kind as every certificate's, e.g. a token signer."""
    return _key_pem(_new_key())


def public_key_pem(key_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private key made by :func:`generate_key_pem`."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name(attrs)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    # ECDSA keys only ever sign: key_encipherment would be meaningless for them.
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    lifetime: dt.timedelta,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """The parts every certificate shares: names, key, a random serial and the validity window."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _backdate(lifetime))
        .not_valid_after(not_after)
    )


def generate_ca(
    now: dt.datetime,
    *,
    lifetime: dt.timedelta = DEFAULT_CA_LIFETIME,
    common_name: str = "agentops-webhook-ca",
) -> KeyPair:
    """A self-signed CA that may only sign end-entity certificates (path length 0)."""
    key = _new_key()
    name = _name(f"{common_name}@{int(now.timestamp())}")
    cert = (
        _builder(name, name, key, now, lifetime, now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def issue_cert(
    ca: KeyPair,
    common_name: str,
    now: dt.datetime,
    *,
    usage: Usage,
    organizations: Sequence[str] = (),
    hosts: Hosts | None = None,
    lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
) -> KeyPair:
    """An end-entity certificate signed by ``ca`` for one ``usage``; never outlives the CA.

    ``organizations`` become O= attributes (Kubernetes reads them as the client's groups);
    ``hosts``, if given, become the subject alternative names.
    """
    ca_cert = ca.certificate
    ca_key = ca.private_key()
    key = _new_key()
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    builder = _builder(_name(common_name, organizations), ca_cert.subject, key, now, lifetime, not_after)
    if hosts is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(hosts.subject_alternative_names()), critical=False
        )
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_EXTENDED_KEY_USAGE[usage]]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def issue_serving_cert(
    ca: KeyPair, hosts: Hosts, now: dt.datetime, *, lifetime: dt.timedelta = DEFAULT_SERVING_LIFETIME
) -> KeyPair:
    """A TLS server certificate for ``hosts``, signed by ``ca``; never outlives the CA."""
    if not hosts.dns_names and not hosts.ip_addresses:
        raise CertificateError("a serving certificate needs at least one DNS name or IP address")
    common_name = hosts.dns_names[0] if hosts.dns_names else hosts.ip_addresses[0]
    return issue_cert(ca, common_name, now, usage="server", hosts=hosts, lifetime=lifetime)


def issue_client_cert(
    ca: KeyPair,
    common_name: str,
    now: dt.datetime,
    *,
    organizations: Sequence[str] = (),
    lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
) -> KeyPair:
    """A TLS client certificate for the user ``common_name`` in the groups ``organizations``."""
    return issue_cert(ca, common_name, now, usage="client", organizations=organizations, lifetime=lifetime)


def needs_renewal(cert: x509.Certificate, now: dt.datetime, fraction: float = RENEW_FRACTION) -> bool:
    """True once less than ``fraction`` of the certificate's lifetime remains (or it is expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return end - now < (end - start) * fraction


def renewal_time(cert: x509.Certificate, fraction: float = RENEW_FRACTION) -> dt.datetime:
    """When :func:`needs_renewal` starts returning True for this certificate."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return end - (end - start) * fraction


def san_hosts(cert: x509.Certificate) -> Hosts:
    """The DNS names and IP addresses a certificate covers."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Hosts()
    return Hosts(
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    )


def covers(cert: x509.Certificate, hosts: Hosts) -> bool:
    have = san_hosts(cert)
    return set(hosts.dns_names) <= set(have.dns_names) and set(hosts.ip_addresses) <= set(have.ip_addresses)


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def split_pem(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (empty for empty input)."""
    return x509.load_pem_x509_certificates(pem) if pem.strip() else []


def _trusted_after_ca_rotation(new_ca: KeyPair, old_trusted_pem: bytes, now: dt.datetime) -> bytes:
    """New CA first, then every previously trusted CA that is still valid (deduplicated)."""
    out = [new_ca.cert_pem]
    seen = {new_ca.certificate.fingerprint(hashes.SHA256())}
    for cert in split_pem(old_trusted_pem):
        fp = cert.fingerprint(hashes.SHA256())
        if fp in seen or cert.not_valid_after_utc <= now:
            continue
        seen.add(fp)
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def _prune_expired(trusted_pem: bytes, ca: KeyPair, now: dt.datetime) -> bytes:
    return _trusted_after_ca_rotation(ca, trusted_pem, now)


def next_change(bundle: CertBundle) -> dt.datetime:
    """The earliest moment :func:`plan` will want to change ``bundle`` (all else being equal).

    That is when the serving certificate or the CA reaches its renewal time, or when a previous CA
    kept in the trusted bundle expires and is dropped.  A rotation loop sleeps until then instead
    of polling, so every replica acts on a shared bundle at the same moment.
    """
    moments = [renewal_time(bundle.serving.certificate), renewal_time(bundle.ca.certificate)]
    current = bundle.ca.certificate.fingerprint(hashes.SHA256())
    moments += [
        cert.not_valid_after_utc
        for cert in split_pem(bundle.trusted_pem)
        if cert.fingerprint(hashes.SHA256()) != current
    ]
    return min(moments)


@dataclass(frozen=True)
class Lifetimes:
    ca: dt.timedelta = DEFAULT_CA_LIFETIME
    serving: dt.timedelta = DEFAULT_SERVING_LIFETIME


def plan(
    existing: CertBundle | None, hosts: Hosts, now: dt.datetime, lifetimes: Lifetimes = Lifetimes()
) -> tuple[CertBundle, list[str]]:
    """The bundle to use from now on, and the reasons it differs from ``existing`` (empty: keep it).

    - no bundle, or an unreadable one: a new CA and serving certificate;
    - CA due for renewal: a new CA, the old one kept in the trusted bundle, a new serving cert;
    - serving certificate due, not signed by the current CA, or missing a requested name: reissued.
    """
    reasons: list[str] = []
    if existing is None:
        ca = generate_ca(now, lifetime=lifetimes.ca)
        return CertBundle(ca, issue_serving_cert(ca, hosts, now, lifetime=lifetimes.serving)), [
            "no certificates"
        ]
    ca, trusted = existing.ca, existing.trusted_pem
    if needs_renewal(ca.certificate, now):
        reasons.append(f"CA expires {ca.not_after.isoformat()}")
        ca = generate_ca(now, lifetime=lifetimes.ca)
        trusted = _trusted_after_ca_rotation(ca, existing.trusted_pem, now)
    serving = existing.serving
    serving_cert = serving.certificate
    if ca is not existing.ca:
        reasons.append("CA renewed")
    elif not signed_by(serving_cert, ca.certificate):
        reasons.append("serving certificate not signed by the current CA")
    elif needs_renewal(serving_cert, now):
        reasons.append(f"serving certificate expires {serving.not_after.isoformat()}")
    elif not covers(serving_cert, hosts):
        reasons.append("serving certificate does not cover every requested name")
    if reasons:
        serving = issue_serving_cert(ca, hosts, now, lifetime=lifetimes.serving)
    pruned = _prune_expired(trusted, ca, now)
    if pruned != existing.trusted_pem and not reasons:
        reasons.append("expired CA dropped from the trusted bundle")
    return CertBundle(ca, serving, pruned), reasons
