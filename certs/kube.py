"""Building a Kubernetes API client from a kubeconfig file or the in-cluster service account.

Shared by :mod:`certs` and :mod:`webhook` so both authenticate the same way.  Each call returns
its own :class:`kubernetes.client.ApiClient` with its own configuration: nothing touches the
library's process-wide default, so tests can talk to several clusters from one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def configuration(kubeconfig: Path | None, *, in_cluster: bool = False) -> Any:
    """A ``kubernetes.client.Configuration`` for the given source.

    Exactly one of ``kubeconfig`` and ``in_cluster`` must be given, so a process never silently
    falls back to whatever ``~/.kube/config`` happens to point at.
    """
    from kubernetes import client, config

    if (kubeconfig is None) == (not in_cluster):
        raise ValueError("give exactly one of --kubeconfig PATH and --in-cluster")
    cfg = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        assert kubeconfig is not None
        if not kubeconfig.is_file():
            raise FileNotFoundError(f"kubeconfig {kubeconfig} does not exist")
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=cfg, persist_config=False
        )
    return cfg


def api_client(kubeconfig: Path | None, *, in_cluster: bool = False) -> Any:
    from kubernetes import client

    return client.ApiClient(configuration(kubeconfig, in_cluster=in_cluster))
