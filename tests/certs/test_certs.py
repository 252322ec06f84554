"""Certificates: SANs, the rotation decision, directory and Secret round trips, caBundle injection.

The pure parts run with a fixed clock.  The Secret round trip, the optimistic-concurrency conflict
and the caBundle patch run against the real API server of the test session.  Races between
replicas are in ``test_concurrency.py`` (in-process) and ``test_replicas.py`` (real processes).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import kube
from certs.authority import (
    CertBundle,
    Hosts,
    Lifetimes,
    covers,
    generate_ca,
    issue_serving_cert,
    needs_renewal,
    plan,
    signed_by,
    split_pem,
)
from certs.inject import inject_ca_bundle
from certs.rotation import CertManager
from certs.store import SecretConflict, SecretRef, load_dir, read_secret, write_dir, write_secret
from webhook.registration import ClientConfig, configurations, register, unregister

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SHORT = Lifetimes(ca=dt.timedelta(days=30), serving=dt.timedelta(days=3))


def fresh_bundle(now: dt.datetime = NOW, lifetimes: Lifetimes = SHORT) -> CertBundle:
    bundle, reasons = plan(None, Hosts.local(), now, lifetimes)
    assert reasons == ["no certificates"]
    return bundle


def test_service_sans_cover_every_dns_form_and_loopback() -> None:
    hosts = Hosts.for_service("agentops-webhook", "agentops-system")
    ca = generate_ca(NOW)
    cert = issue_serving_cert(ca, hosts, NOW).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "agentops-webhook",
        "agentops-webhook.agentops-system",
        "agentops-webhook.agentops-system.svc",
        "agentops-webhook.agentops-system.svc.cluster.local",
        "localhost",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert signed_by(cert, ca.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_serving_cert_verifies_with_python_tls_against_its_ca(tmp_path: Path) -> None:
    bundle = fresh_bundle(dt.datetime.now(dt.UTC))
    write_dir(bundle, tmp_path)
    # The same check a TLS client makes: chain to the CA and match 127.0.0.1.
    store = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_in, server_in = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_out, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = store.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    c.do_handshake()  # raises if verification failed
    assert c.getpeercert() is not None


@pytest.mark.parametrize(
    ("elapsed_fraction", "due"),
    [(0.0, False), (0.5, False), (0.66, False), (0.67, True), (0.9, True), (1.5, True)],
)
def test_renewal_is_due_when_less_than_a_third_of_the_lifetime_is_left(
    elapsed_fraction: float, due: bool
) -> None:
    ca = generate_ca(NOW, lifetime=dt.timedelta(days=300))
    cert = ca.certificate
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert needs_renewal(cert, cert.not_valid_before_utc + lifetime * elapsed_fraction) is due


def test_plan_keeps_a_healthy_bundle_unchanged() -> None:
    bundle = fresh_bundle()
    again, reasons = plan(bundle, Hosts.local(), NOW + dt.timedelta(days=1), SHORT)
    assert reasons == []
    assert again == bundle


def test_plan_reissues_the_serving_cert_under_the_same_ca() -> None:
    bundle = fresh_bundle()
    later = NOW + dt.timedelta(days=2, hours=12)  # 3-day cert: less than a third left
    renewed, reasons = plan(bundle, Hosts.local(), later, SHORT)
    assert len(reasons) == 1
    assert "serving certificate expires" in reasons[0]
    assert renewed.ca == bundle.ca
    assert renewed.trusted_pem == bundle.trusted_pem  # caBundle unchanged: nothing to inject
    assert renewed.serving != bundle.serving
    assert signed_by(renewed.serving.certificate, bundle.ca.certificate)
    assert renewed.serving.not_after > bundle.serving.not_after


def test_plan_rotates_the_ca_and_keeps_trusting_the_old_one_until_it_expires() -> None:
    bundle = fresh_bundle()
    later = NOW + dt.timedelta(days=21)  # 30-day CA: less than a third left
    renewed, reasons = plan(bundle, Hosts.local(), later, SHORT)
    assert any("CA" in r for r in reasons)
    assert renewed.ca != bundle.ca
    trusted = split_pem(renewed.trusted_pem)
    assert [c.subject for c in trusted] == [renewed.ca.certificate.subject, bundle.ca.certificate.subject]
    assert signed_by(renewed.serving.certificate, renewed.ca.certificate)
    # Once the old CA has expired it is dropped from the bundle.
    after_expiry = bundle.ca.not_after + dt.timedelta(seconds=1)
    pruned, reasons = plan(renewed, Hosts.local(), after_expiry, SHORT)
    assert len(split_pem(pruned.trusted_pem)) == 1


def test_plan_reissues_when_a_requested_name_is_missing() -> None:
    bundle = fresh_bundle()
    wider = Hosts.for_service("agentops-webhook", "agentops-system")
    renewed, reasons = plan(bundle, wider, NOW, SHORT)
    assert reasons == ["serving certificate does not cover every requested name"]
    assert covers(renewed.serving.certificate, wider)


def test_directory_round_trip_and_key_permissions(tmp_path: Path) -> None:
    bundle = fresh_bundle()
    assert load_dir(tmp_path) is None
    write_dir(bundle, tmp_path)
    assert load_dir(tmp_path) == bundle
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca-signer.key").stat().st_mode & 0o777 == 0o600


def test_a_corrupt_directory_is_regenerated_not_served(tmp_path: Path) -> None:
    write_dir(fresh_bundle(), tmp_path)
    (tmp_path / "tls.crt").write_text("not a certificate")
    manager = CertManager(cert_dir=tmp_path, hosts=Hosts.local())
    bundle = manager.ensure()
    assert load_dir(tmp_path) == bundle
    assert signed_by(bundle.serving.certificate, bundle.ca.certificate)


# --- against the real API server --------------------------------------------------------------------


def test_secret_round_trip_and_conflict(k8s_api: kube.Client, empty_secret: SecretRef) -> None:
    assert read_secret(k8s_api, empty_secret)[0] is None
    bundle = fresh_bundle()
    _, version = read_secret(k8s_api, empty_secret)
    write_secret(k8s_api, empty_secret, bundle, version)
    stored, _ = read_secret(k8s_api, empty_secret)
    assert stored == bundle
    # A writer holding the old resourceVersion loses instead of overwriting.
    with pytest.raises(SecretConflict):
        write_secret(k8s_api, empty_secret, fresh_bundle(), version)
    assert read_secret(k8s_api, empty_secret)[0] == bundle


def test_two_replicas_converge_on_one_bundle(
    k8s_api: kube.Client, empty_secret: SecretRef, tmp_path: Path
) -> None:
    first = CertManager(cert_dir=tmp_path / "a", hosts=Hosts.local(), secret=empty_secret, api=k8s_api)
    second = CertManager(cert_dir=tmp_path / "b", hosts=Hosts.local(), secret=empty_secret, api=k8s_api)
    a = first.ensure()
    b = second.ensure()
    assert a == b == load_dir(tmp_path / "a") == load_dir(tmp_path / "b")


def _hooks(api: kube.Client, kind: str, name: str) -> list[dict[str, Any]]:
    config = api.get(kube.path("admissionregistration.k8s.io/v1", f"{kind}webhookconfigurations", name))
    return list((config or {}).get("webhooks") or [])


def test_ca_bundle_is_injected_into_both_configurations(k8s_api: kube.Client, tmp_path: Path) -> None:
    name = f"certs-test-{tmp_path.name[-8:].lower().strip('-_')}".replace("_", "-")
    # Scoped to a label no namespace carries: this configuration must not gate other tests.
    configs = configurations(
        ClientConfig(url="https://127.0.0.1:1"),
        name=name,
        scope_label=("agentops.agentops.io/test-none", "x"),
    )
    register(k8s_api, configs)
    try:
        bundle = fresh_bundle()
        patched = inject_ca_bundle(k8s_api, bundle.trusted_pem, mutating=[name], validating=[name])
        assert patched == [f"MutatingWebhookConfiguration/{name}", f"ValidatingWebhookConfiguration/{name}"]
        expected = base64.b64encode(bundle.trusted_pem).decode()
        for kind in ("mutating", "validating"):
            # Every entry (the validating configuration has a second, for cluster-scoped kinds).
            bundles = [w["clientConfig"].get("caBundle") for w in _hooks(k8s_api, kind, name)]
            assert bundles == [expected] * (2 if kind == "validating" else 1)
        # Idempotent: nothing to patch the second time.
        assert inject_ca_bundle(k8s_api, bundle.trusted_pem, mutating=[name], validating=[name]) == []
        # A configuration that does not exist yet is skipped, not an error.
        assert inject_ca_bundle(k8s_api, bundle.trusted_pem, mutating=[f"{name}-missing"]) == []
        # Re-applied without a caBundle (as the manifests are): the next rotation cycle repairs it.
        register(k8s_api, configs)
        manager = CertManager(
            cert_dir=tmp_path / "certs",
            hosts=Hosts.local(),
            api=k8s_api,
            mutating=[name],
            validating=[name],
        )
        repaired = manager.ensure()
        hook = _hooks(k8s_api, "validating", name)[0]
        assert hook["clientConfig"]["caBundle"] == base64.b64encode(repaired.trusted_pem).decode()
    finally:
        unregister(k8s_api, name)


def test_certs_command_creates_then_keeps_then_shows(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "certs", "ensure", "--cert-dir", str(tmp_path), "--san", "10.0.0.7"]
    subprocess.run(argv, check=True, capture_output=True)
    first = load_dir(tmp_path)
    subprocess.run(argv, check=True, capture_output=True)
    assert load_dir(tmp_path) == first  # nothing due: nothing changed
    shown = subprocess.run(
        [sys.executable, "-m", "certs", "show", "--cert-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(shown.stdout)
    assert info["serving"]["ipAddresses"] == ["127.0.0.1", "10.0.0.7"]
    missing = subprocess.run(
        [sys.executable, "-m", "certs", "show", "--cert-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert "no certificates" in missing.stderr
