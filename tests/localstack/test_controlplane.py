"""The control plane's own lifecycle: detached start, stop from another process, clear errors.

These start a second control plane of their own (a few seconds with a warm build cache),
separate from the session's ``control_plane`` fixture.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack import controlplane, gobuild
from localstack.controlplane import ControlPlane, StartError
from tests.support.kubectl import Kubectl
from tests.support.processes import processes_using

REPO = Path(__file__).resolve().parents[2]
GCLOUD_BIN = Path("/usr/lib/google-cloud-sdk/bin")


@pytest.fixture
def detached_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane started by a process that has already exited, as ``python -m localstack up`` does."""
    workdir = tmp_path / "cp"
    script = (
        "from pathlib import Path; from localstack.controlplane import ControlPlane; "
        f"ControlPlane(Path({str(workdir)!r})).start()"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=180, capture_output=True)
    plane = ControlPlane(workdir)
    try:
        yield plane
    finally:
        plane.stop()


def test_detached_plane_outlives_its_starter_and_stops_from_another_process(
    detached_plane: ControlPlane,
) -> None:
    assert detached_plane.running
    assert detached_plane.server.startswith("https://127.0.0.1:")
    assert len(processes_using(detached_plane.workdir)) == 3  # etcd, kube-apiserver, kube-controller-manager

    kubectl = Kubectl(detached_plane.kubeconfig)
    assert "default" in kubectl("get", "namespaces", "-o", "name").stdout
    # The admin certificate is in system:masters; RBAC is on, so an impersonated stranger is refused.
    denied = kubectl("get", "secrets", "-A", as_user="mallory", check=False)
    assert denied.returncode != 0
    assert 'User "mallory" cannot list resource "secrets"' in denied.stderr

    with pytest.raises(StartError, match="already running"):
        ControlPlane(detached_plane.workdir).start()

    ControlPlane(detached_plane.workdir).stop()
    assert not detached_plane.running
    assert processes_using(detached_plane.workdir) == []
    ControlPlane(detached_plane.workdir).stop()  # stopping twice is harmless


def test_taken_port_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plane = ControlPlane(tmp_path / "cp", apiserver_port=port)
        with pytest.raises(StartError, match=rf"port {port} on 127.0.0.1 is taken: stop what listens there"):
            plane.start()
    assert processes_using(tmp_path / "cp") == []


def test_missing_go_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTOPS_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gobuild, "GO_FALLBACKS", ())
    with pytest.raises(StartError, match=r"`go` is not on PATH: install Go >= 1.24"):
        controlplane.ensure_binary(progress=lambda _: None)


def test_binary_is_cached_by_source_hash() -> None:
    path = controlplane.binary_path()
    assert path.name == f"kcp-{controlplane.source_hash()[:16]}"
    assert controlplane.cache_dir() in path.parents
    # The session fixture already built or found it; asking again must not rebuild.
    before = path.stat().st_mtime_ns
    assert controlplane.ensure_binary(progress=pytest.fail) == path
    assert path.stat().st_mtime_ns == before


def _installed_kubectls() -> list[str]:
    found = sorted(str(p) for p in GCLOUD_BIN.glob("kubectl.1.*"))
    return found or ["kubectl"]


@pytest.mark.parametrize("binary", _installed_kubectls(), ids=lambda b: os.path.basename(b))
def test_every_installed_kubectl_works(cluster_kubectl: Kubectl, namespace: str, binary: str) -> None:
    kubectl = Kubectl(cluster_kubectl.kubeconfig, namespace, binary=binary)
    agent = "apiVersion: agentops.agentops.io/v1alpha1\nkind: AgentDeployment\nmetadata: {name: a}\n"
    agent += "spec: {model: claude-sonnet-4-20250514, systemPrompt: hi}\n"
    kubectl("apply", "-f", "-", input=agent)
    kubectl("scale", "agdep", "a", "--replicas=2")
    assert "claude-sonnet-4-20250514" in kubectl("get", "agdep").stdout
    assert kubectl.json("get", "agdep", "a")["spec"]["replicas"] == 2
