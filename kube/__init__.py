"""The one way this project reaches the Kubernetes API outside kopf's handlers.

Owns: where credentials come from (:mod:`kube.config`: an explicit kubeconfig, else the in-cluster
service account, never silently ``~/.kube/config``), requests with a typed error, server-side
apply, reads, merge and JSON patches, status and scale subresources, Events, CRD installation
(:mod:`kube.client`), list+watch including ``PartialObjectMetadata`` (:mod:`kube.watch`), and the
``--kubeconfig``/``--in-cluster`` flags (:mod:`kube.cli`).

May import: nothing of ours.
"""

from kube.client import ApiError, AsyncClient, Client, WatchExpired, path
from kube.config import ConfigError, Connection, load

__all__ = ["ApiError", "AsyncClient", "Client", "ConfigError", "Connection", "WatchExpired", "load", "path"]
