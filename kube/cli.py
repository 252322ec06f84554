"""The command-line side of :mod:`kube.config`: ``--kubeconfig`` / ``--in-cluster``, the same in
every program (certs, webhook, controller, the agentops CLI)."""

from __future__ import annotations

import argparse

from kube.config import Connection, load


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig of the cluster (default: $KUBECONFIG, else the pod's service account)",
    )
    group.add_argument(
        "--in-cluster", action="store_true", help="use the pod's service account, even if $KUBECONFIG is set"
    )


def connection_from_args(args: argparse.Namespace) -> Connection:
    """The connection the flags (or, without them, :func:`kube.config.load`'s rule) select.

    Raises :class:`kube.config.ConfigError` with a message fit for the user.
    """
    return load(args.kubeconfig, in_cluster=args.in_cluster)
