"""Replicas racing over one Secret and one pair of configurations, in-process, with forced interleavings.

Several :class:`~certs.rotation.CertManager` instances share the session's real API server.  The
interleavings that matter are forced, not hoped for: a clock that holds every manager's first
reading until all have read the Secret (so all of them decide on the same resourceVersion), and a
``confirm`` step during which another replica rotates the CA.  Write counts come from the API
server's watch history.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import kube
import kube.config
from certs.authority import CertBundle, Hosts, Lifetimes, next_change, plan, split_pem
from certs.inject import ADMISSION, StaleBundle, inject_ca_bundle
from certs.rotation import MIN_DELAY, CertManager
from certs.store import SecretRef, load_dir, load_secret, read_secret
from tests.certs.conftest import MANIFEST_LABELS, NOBODY
from tests.certs.replicas import webhook_identity, writes_since
from tests.support.waiting import eventually
from webhook.registration import ClientConfig, configurations, register

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SHORT = Lifetimes(ca=dt.timedelta(days=30), serving=dt.timedelta(days=3))


class StartLine:
    """The real clock, except that each thread's FIRST reading waits until ``parties`` threads read it.

    :meth:`CertManager.ensure` reads the clock right after reading the Secret, so every manager has
    read the same (empty) Secret before any of them may write: a guaranteed race, every time.
    """

    def __init__(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties, timeout=30)
        self._local = threading.local()

    def __call__(self) -> dt.datetime:
        if not getattr(self._local, "passed", False):
            self._local.passed = True
            self._barrier.wait()
        return dt.datetime.now(dt.UTC)


def _configuration(kind: str, name: str) -> str:
    return kube.path(ADMISSION, f"{kind}webhookconfigurations", name)


def _ca_bundles(config: Any) -> list[str]:
    return [str(webhook["clientConfig"].get("caBundle")) for webhook in config.get("webhooks") or []]


def _version(api: kube.Client, path: str) -> str:
    return str(api.request("GET", path)["metadata"]["resourceVersion"])


# --- scheduling (pure) ----------------------------------------------------------------------------


def test_next_change_is_the_first_moment_plan_has_work() -> None:
    bundle, _ = plan(None, Hosts.local(), NOW, SHORT)
    due = next_change(bundle)
    assert plan(bundle, Hosts.local(), due - dt.timedelta(seconds=1), SHORT)[1] == []
    assert plan(bundle, Hosts.local(), due + dt.timedelta(seconds=1), SHORT)[1] != []
    # After a CA rotation the old CA's expiry is a change too (it is dropped from the bundle).
    rotated, _ = plan(bundle, Hosts.local(), NOW + dt.timedelta(days=21), SHORT)
    old_ca_expiry = bundle.ca.not_after
    assert next_change(rotated) <= old_ca_expiry
    assert len(split_pem(rotated.trusted_pem)) == 2


def test_a_manager_sleeps_until_the_renewal_is_due_never_longer_than_the_interval(tmp_path: Path) -> None:
    clock = [NOW]
    manager = CertManager(cert_dir=tmp_path, hosts=Hosts.local(), lifetimes=SHORT, clock=lambda: clock[0])
    assert manager.next_delay(60) == 60  # nothing in force yet
    bundle = manager.ensure()
    until_due = (next_change(bundle) - NOW).total_seconds()
    assert manager.next_delay(10 * until_due) == pytest.approx(until_due, abs=0.1)
    assert manager.next_delay(60) == 60
    clock[0] = next_change(bundle) + dt.timedelta(hours=1)  # overdue: run at once
    assert manager.next_delay(60) == MIN_DELAY
    # After failures: 1, 2, 4 ... seconds, capped by the interval.
    assert [manager.next_delay(60, failures=n) for n in (1, 2, 3, 8)] == [1, 2, 4, 60]


# --- against the real API server ----------------------------------------------------------------------


def test_replicas_racing_on_an_empty_secret_store_one_bundle_and_inject_it_once(
    control_plane: Any,
    k8s_api: kube.Client,
    empty_secret: SecretRef,
    inert_configurations: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="certs")
    name = inert_configurations
    replicas = 4
    secret_before = _version(k8s_api, empty_secret.path)
    configs_before = {
        kind: _version(k8s_api, _configuration(kind, name)) for kind in ("mutating", "validating")
    }
    start = StartLine(replicas)
    managers = [
        CertManager(
            cert_dir=tmp_path / f"replica-{i}",
            hosts=Hosts.for_service("agentops-webhook", "agentops-system"),
            secret=empty_secret,
            api=k8s_api,
            mutating=[name],
            validating=[name],
            clock=start,
        )
        for i in range(replicas)
    ]
    with ThreadPoolExecutor(replicas) as pool:
        bundles = list(pool.map(lambda m: m.ensure(), managers))

    stored = load_secret(k8s_api, empty_secret)
    assert stored.bundle is not None
    assert bundles == [stored.bundle] * replicas
    assert [load_dir(tmp_path / f"replica-{i}") for i in range(replicas)] == [stored.bundle] * replicas
    # Every replica wrote on the same resourceVersion: one update landed, the rest lost and adopted.
    assert writes_since(k8s_api, empty_secret.path, secret_before, stored.resource_version) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("certificates renewed") == 1
    assert (
        messages.count("another replica renewed the certificates first; adopting its bundle") == replicas - 1
    )
    # The manifest's labels survive the update (an update replaces the whole object).
    secret = k8s_api.request("GET", empty_secret.path)
    assert secret["metadata"]["labels"] == MANIFEST_LABELS
    # One injection per configuration, whoever did it; caBundle is the one CA.
    expected = base64.b64encode(stored.bundle.trusted_pem).decode()
    for kind in ("mutating", "validating"):
        config = k8s_api.request("GET", _configuration(kind, name))
        assert set(_ca_bundles(config)) == {expected}, kind
        version = config["metadata"]["resourceVersion"]
        assert writes_since(k8s_api, _configuration(kind, name), configs_before[kind], version) == 1, kind


def test_a_replica_holding_an_old_bundle_never_writes_it_over_a_newer_one(
    k8s_api: kube.Client, empty_secret: SecretRef, inert_configurations: str, tmp_path: Path
) -> None:
    """The flip-flop: B read the configuration wanting to inject X; before B's write lands, A rotates
    the CA and injects Y.  B's write must fail (it was conditional on the version B read) and B,
    re-checking the Secret, must give up X instead of writing it over Y."""
    name = inert_configurations

    def manager(replica: str, clock: Any = None) -> CertManager:
        extra = {"clock": clock} if clock else {}
        return CertManager(
            cert_dir=tmp_path / replica, hosts=Hosts.local(), lifetimes=SHORT, secret=empty_secret,
            api=k8s_api, mutating=[name], validating=[name],
            settle_seconds=0, **extra,
        )  # fmt: skip

    old = manager("a").ensure()
    # The configurations are re-applied without caBundle (kubectl apply of the manifests), so
    # every replica now wants to inject.
    register(k8s_api, configurations(ClientConfig(url="https://127.0.0.1:1"), name=name, scope_label=NOBODY))
    # A, 21 days later, finds its 30-day CA due.
    a_later = manager("a", clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=21))
    rotated: list[CertBundle] = []

    def confirm_while_a_rotates() -> bool:
        bundle, _ = read_secret(k8s_api, empty_secret)
        still_current = bundle is not None and bundle.trusted_pem == old.trusted_pem
        if not rotated:
            rotated.append(a_later.ensure())  # between B's confirmation and B's write
        return still_current

    with pytest.raises(StaleBundle):
        inject_ca_bundle(
            k8s_api, old.trusted_pem, mutating=[name], validating=[name], confirm=confirm_while_a_rotates
        )
    (new,) = rotated
    assert new.ca != old.ca
    assert split_pem(new.trusted_pem) == [new.ca.certificate, old.ca.certificate]  # overlap
    expected = base64.b64encode(new.trusted_pem).decode()
    for kind in ("mutating", "validating"):
        assert set(_ca_bundles(k8s_api.request("GET", _configuration(kind, name)))) == {expected}
    # B as a whole: its next cycle adopts the newer bundle and writes nothing.
    version = _version(k8s_api, empty_secret.path)
    assert manager("b").ensure() == new
    assert _version(k8s_api, empty_secret.path) == version


def test_a_renewal_by_another_replica_is_picked_up_through_the_secret_watch(
    k8s_api: kube.Client, empty_secret: SecretRef, tmp_path: Path
) -> None:
    a = CertManager(cert_dir=tmp_path / "a", hosts=Hosts.local(), secret=empty_secret, api=k8s_api)
    first = a.ensure()
    # A 10-minute interval and a 90-day certificate: only the watch can make A look again in time.
    rotation = a.start(interval=600)
    try:
        # B needs one more name in the certificate, so it reissues and stores it.
        b = CertManager(
            cert_dir=tmp_path / "b", hosts=Hosts.local(extra=["10.0.0.9"]), secret=empty_secret, api=k8s_api
        )
        renewed = b.ensure()
        assert renewed.serving != first.serving
        # A writes the files it serves, then records the bundle as current: wait for both.
        eventually(
            "A picks up B's renewal",
            lambda: load_dir(tmp_path / "a") == renewed and a.current == renewed,
            within=15,
            interval=0.05,
        )
    finally:
        rotation.stop()
    for thread in rotation.threads:  # stopping closes the watch connection at once
        thread.join(timeout=10)
        assert not thread.is_alive(), thread.name


def test_without_watch_permission_a_replica_says_so_and_keeps_rotating(
    control_plane: Any,
    k8s_api: kube.Client,
    empty_secret: SecretRef,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RBAC granting only get/update on the Secret (as rbac-webhook.yaml did before ``watch``)."""
    caplog.set_level(logging.INFO, logger="certs")
    with (
        webhook_identity(
            k8s_api, control_plane, empty_secret, "unused", tmp_path, secret_verbs=("get", "update")
        ) as kubeconfig,
        kube.Client(kube.config.from_kubeconfig(kubeconfig)) as api,
    ):
        manager = CertManager(cert_dir=tmp_path / "certs", hosts=Hosts.local(), secret=empty_secret, api=api)
        manager.ensure()
        rotation = manager.start(interval=600)
        try:
            watcher = rotation.threads[1]
            watcher.join(timeout=15)
            assert not watcher.is_alive(), "the watch neither ran nor gave up"
            assert any(
                "not allowed to watch the certificate Secret" in r.getMessage() for r in caplog.records
            )
            assert rotation.threads[0].is_alive()  # renewals still run when due
        finally:
            rotation.stop()
        rotation.threads[0].join(timeout=10)
        assert not rotation.threads[0].is_alive()


def test_unreadable_material_in_the_secret_is_replaced_in_one_conditional_update(
    k8s_api: kube.Client, empty_secret: SecretRef, tmp_path: Path
) -> None:
    secret = k8s_api.request("GET", empty_secret.path)
    secret["data"] = {"tls.crt": base64.b64encode(b"not a certificate").decode()}
    secret = k8s_api.replace(empty_secret.path, secret)
    snapshot = load_secret(k8s_api, empty_secret)
    assert snapshot.bundle is None
    assert snapshot.problem is not None
    assert "missing" in snapshot.problem
    # The version a replacement is conditional on is the one the bad material was read at.
    assert snapshot.resource_version == secret["metadata"]["resourceVersion"]
    bundle = CertManager(cert_dir=tmp_path, hosts=Hosts.local(), secret=empty_secret, api=k8s_api).ensure()
    stored = load_secret(k8s_api, empty_secret)
    assert stored.bundle == bundle
    assert stored.problem is None
    assert writes_since(k8s_api, empty_secret.path, snapshot.resource_version, stored.resource_version) == 1
    assert k8s_api.request("GET", empty_secret.path)["metadata"]["labels"] == MANIFEST_LABELS
