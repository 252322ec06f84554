"""Fixtures of the install-path tests: the ``helm`` binary and throwaway clusters.

``helm`` is built once from ``localstack/helm`` (minutes when cold, then cached).  ``fresh_cluster``
is a control plane of its own, started empty for one test: the install tests apply webhook
configurations that fail closed, which must never reach the session's shared cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.controlplane import ControlPlane
from localstack.helm import ensure_helm
from tests.support.kubectl import Kubectl


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Kubectl]:
    plane = ControlPlane(tmp_path / "controlplane", die_with_parent=True)
    try:
        plane.start(timeout=120)
        yield Kubectl(plane.kubeconfig)
    finally:
        plane.stop()
