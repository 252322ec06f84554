"""Where certificate bundles live: a directory of PEM files and a Kubernetes Secret.

The directory is what the TLS server reads (and watches for changes); the Secret is the shared
source of truth when several webhook replicas run in a cluster.  Both use the same file names:

========================  ===========================================================
``ca.crt``                the trusted bundle for clients (the ``caBundle``): current CA
                          first, then previous CAs that have not expired
``ca-signer.crt/.key``    the current CA, used to issue serving certificates
``tls.crt`` / ``tls.key`` the serving certificate and its key
========================  ===========================================================

Files are replaced atomically (write to a temporary file, then ``os.replace``) so a reader never
sees half a PEM; keys are written with mode 0600.  Secret updates carry the ``resourceVersion``
they were read at, so two replicas renewing at once cannot overwrite each other: the loser gets a
409 Conflict and adopts the winner's bundle.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kube
from certs.authority import CertBundle, CertificateError, KeyPair, split_pem

TRUSTED = "ca.crt"
CA_CERT = "ca-signer.crt"
CA_KEY = "ca-signer.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
_ALL = (TRUSTED, CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)


def bundle_files(bundle: CertBundle) -> dict[str, bytes]:
    return {
        TRUSTED: bundle.trusted_pem,
        CA_CERT: bundle.ca.cert_pem,
        CA_KEY: bundle.ca.key_pem,
        TLS_CERT: bundle.serving.cert_pem,
        TLS_KEY: bundle.serving.key_pem,
    }


def bundle_from_files(files: dict[str, bytes]) -> CertBundle:
    """Rebuild a bundle; raises :class:`CertificateError` naming what is missing or unreadable."""
    missing = [name for name in _ALL if not files.get(name)]
    if missing:
        raise CertificateError(f"certificate material incomplete: missing {', '.join(missing)}")
    bundle = CertBundle(
        ca=KeyPair(files[CA_CERT], files[CA_KEY]),
        serving=KeyPair(files[TLS_CERT], files[TLS_KEY]),
        trusted_pem=files[TRUSTED],
    )
    try:
        # Parse everything once so corrupt material is reported here, not at handshake time.
        bundle.ca.certificate  # noqa: B018
        bundle.ca.private_key()
        bundle.serving.certificate  # noqa: B018
        bundle.serving.private_key()
        split_pem(bundle.trusted_pem)
    except ValueError as exc:
        raise CertificateError(f"certificate material unreadable: {exc}") from exc
    return bundle


# --- directory ------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dir(bundle: CertBundle, directory: Path) -> None:
    """Write every file of the bundle; the serving pair last, key before certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    files = bundle_files(bundle)
    # Order matters for readers that poll: the CA material a client needs is in place before the
    # serving certificate it signs, and tls.crt (which readers key their reload on) comes last.
    for name in (TRUSTED, CA_CERT, CA_KEY, TLS_KEY, TLS_CERT):
        _atomic_write(directory / name, files[name], 0o600 if name.endswith(".key") else 0o644)


def load_dir(directory: Path) -> CertBundle | None:
    """The bundle in ``directory``, or None when there is none yet (no files at all)."""
    if not any((directory / name).exists() for name in _ALL):
        return None
    files = {name: (directory / name).read_bytes() for name in _ALL if (directory / name).exists()}
    return bundle_from_files(files)


# --- Secret --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, value: str) -> SecretRef:
        """``namespace/name``."""
        namespace, sep, name = value.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"expected a Secret as NAMESPACE/NAME, got {value!r}")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        return kube.path("v1", "secrets", self.name, namespace=self.namespace)


class SecretConflict(RuntimeError):
    """Someone else updated the Secret since we read it."""


@dataclass(frozen=True)
class SecretSnapshot:
    """What one read of the Secret returned: its bundle and the ``resourceVersion`` to write at.

    ``bundle`` is None when the Secret holds no certificate material, or (with ``problem`` saying
    why) when the material is incomplete or unreadable.  Everything comes from ONE read, so an
    update carrying ``resource_version`` replaces exactly what was judged here and nothing newer.
    """

    bundle: CertBundle | None
    resource_version: str
    problem: str | None = None
    #: Carried into the update so the manifest's labels and annotations survive a renewal.
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    type: str = "Opaque"


def load_secret(api: kube.Client, ref: SecretRef) -> SecretSnapshot:
    """Read the Secret once; unusable material is reported in ``problem``, never raised.

    The Secret must exist (:class:`kube.ApiError` 404 otherwise): the webhook's RBAC only allows
    get/update/watch on that one name (``create`` cannot be restricted by name), so the manifests
    create it empty.
    """
    secret = api.request("GET", ref.path)
    data: dict[str, str] = dict(secret.get("data") or {})
    meta = secret.get("metadata") or {}
    common: dict[str, Any] = {
        "resource_version": str(meta.get("resourceVersion") or ""),
        "labels": dict(meta.get("labels") or {}),
        "annotations": dict(meta.get("annotations") or {}),
        "type": secret.get("type") or "Opaque",
    }
    if not any(data.get(name) for name in _ALL):
        return SecretSnapshot(bundle=None, **common)
    try:
        files = {name: base64.b64decode(value) for name, value in data.items() if name in _ALL}
        return SecretSnapshot(bundle=bundle_from_files(files), **common)
    except (CertificateError, ValueError) as exc:
        return SecretSnapshot(bundle=None, problem=str(exc), **common)


def read_secret(api: kube.Client, ref: SecretRef) -> tuple[CertBundle | None, str]:
    """The bundle stored in the Secret (None when it is empty) and the Secret's resourceVersion.

    Raises :class:`CertificateError` when the Secret holds incomplete or unreadable material.
    """
    snapshot = load_secret(api, ref)
    if snapshot.problem is not None:
        raise CertificateError(snapshot.problem)
    return snapshot.bundle, snapshot.resource_version


def write_secret(
    api: kube.Client,
    ref: SecretRef,
    bundle: CertBundle,
    resource_version: str,
    *,
    read: SecretSnapshot | None = None,
) -> str:
    """Store the bundle if the Secret is still at ``resource_version``; returns the new version.

    ``read`` is the snapshot the decision was based on: its labels, annotations and type are kept
    (an update replaces the whole object).  Raises :class:`SecretConflict` when another writer got
    there first; the caller re-reads and adopts what that writer stored.
    """
    if not resource_version:
        # An update without a resourceVersion is unconditional: it would overwrite a concurrent
        # writer's bundle instead of losing to it.
        raise ValueError(f"refusing to update Secret {ref} without the resourceVersion it was read at")
    data = {name: base64.b64encode(value).decode() for name, value in bundle_files(bundle).items()}
    metadata: dict[str, Any] = {
        "name": ref.name,
        "namespace": ref.namespace,
        "resourceVersion": resource_version,
    }
    if read is not None and read.labels:
        metadata["labels"] = read.labels
    if read is not None and read.annotations:
        metadata["annotations"] = read.annotations
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": read.type if read else "Opaque",
        "data": data,
    }
    try:
        stored = api.replace(ref.path, body)
    except kube.ApiError as exc:
        if exc.status == 409:
            raise SecretConflict(f"Secret {ref} changed while renewing certificates") from exc
        raise
    return str(stored["metadata"]["resourceVersion"])
