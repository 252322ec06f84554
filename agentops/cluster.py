"""How the cluster commands (``history``, ``rollback``, ``pipeline``) pick their cluster and namespace.

The cluster comes from :mod:`kube.config`'s rule (``--kubeconfig``, else ``$KUBECONFIG``, else the
pod's service account), so ``kubectl agentops`` reaches the cluster kubectl does: kubectl hands
its plugins the environment it runs in.  The namespace is ``-n``, else the kubeconfig context's,
else ``default``, as kubectl picks it.
"""

from __future__ import annotations

import argparse

import kube
from kube.cli import add_kube_arguments, connection_from_args


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    add_kube_arguments(parser)


def api_and_namespace(args: argparse.Namespace) -> tuple[kube.Client, str]:
    """A client and the namespace to use.  Raises :class:`kube.ConfigError` with the fix in its
    message when no cluster is configured."""
    connection = connection_from_args(args)
    return kube.Client(connection, user_agent="agentops-cli"), str(args.namespace or connection.namespace)
