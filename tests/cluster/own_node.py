"""A node of a test module's own, for tests that break or remove the install on purpose, and the
``helm`` command line against it.

The session's ``product`` is shared; uninstalling it, stopping its Redis or pointing its controller
at a missing image would disturb every other test.  :func:`own_node` starts a separate
:class:`localstack.cluster.NodeCluster` (same images, its own work directory, network and API
port), optionally installs the product the way ``product`` does, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

from localstack.cluster import OVERLAY, NodeCluster

__all__ = ["CHART", "CHART_LOCAL_VALUES", "OVERLAY", "helm", "own_node"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "chart"
#: What the local node needs from the chart: no storage provisioner, no API key.
CHART_LOCAL_VALUES = ("--set", "redis.persistence.enabled=false", "--set", "provider.offlineFallback=true")


@contextlib.contextmanager
def own_node(workdir: Path, *, install: bool) -> Iterator[NodeCluster]:
    cluster = NodeCluster(workdir, die_with_parent=True)
    try:
        cluster.start(timeout=600)
        if install:
            cluster.install(timeout=300)
        yield cluster
    finally:
        cluster.stop()


def helm(
    binary: Path, cluster: NodeCluster, *args: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``helm --kubeconfig=<the node's> ARGS``; a failure quotes helm's own output when ``check``."""
    argv = [str(binary), f"--kubeconfig={cluster.kubeconfig}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(
            f"`{shlex.join(argv)}` exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result
