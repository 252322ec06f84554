"""Command-line options shared by ``python -m certs`` and ``python -m webhook``, and the
:class:`~certs.rotation.CertManager` they describe."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import kube
from certs.authority import Hosts, Lifetimes
from certs.rotation import CertManager
from certs.store import SecretRef
from kube.cli import connection_from_args


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def add_cert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cert-dir", type=Path, required=True, help="directory of PEM files (created if missing)"
    )
    parser.add_argument("--service", help="Service name: adds its four DNS names to the certificate")
    parser.add_argument("--namespace", default="agentops-system", help="namespace of --service")
    parser.add_argument(
        "--san", action="append", default=[], metavar="NAME_OR_IP", help="extra subject alternative name"
    )
    parser.add_argument(
        "--secret", type=SecretRef.parse, metavar="NS/NAME", help="store certificates in this Secret"
    )
    parser.add_argument(
        "--mutating", action="append", default=[], help="MutatingWebhookConfiguration to inject"
    )
    parser.add_argument(
        "--validating", action="append", default=[], help="ValidatingWebhookConfiguration to inject"
    )
    parser.add_argument("--ca-days", type=positive_float, default=3650, help="CA lifetime in days")
    parser.add_argument(
        "--serving-days", type=positive_float, default=90, help="serving certificate lifetime in days"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=2.0,
        help="after a CA rotation, wait this long between injecting the new caBundle and serving"
        " a certificate signed by the new CA (the API server applies caBundle through a watch)",
    )


def hosts_from_args(args: argparse.Namespace) -> Hosts:
    if args.service:
        return Hosts.for_service(args.service, args.namespace, extra=args.san)
    return Hosts.local(extra=args.san)


def manager_from_args(args: argparse.Namespace, api: kube.Client | None = None) -> CertManager:
    """The manager the options describe.  A Secret or caBundle injection needs the API: ``api``,
    else a client built from ``--kubeconfig``/``--in-cluster`` (:mod:`kube.cli`), which raises
    :class:`kube.ConfigError` when there is no configuration."""
    if api is None and (args.secret or args.mutating or args.validating):
        api = kube.Client(connection_from_args(args), user_agent="agentops-certs")
    return CertManager(
        cert_dir=args.cert_dir,
        hosts=hosts_from_args(args),
        lifetimes=Lifetimes(ca=dt.timedelta(days=args.ca_days), serving=dt.timedelta(days=args.serving_days)),
        secret=args.secret,
        api=api,
        mutating=args.mutating,
        validating=args.validating,
        settle_seconds=args.settle_seconds,
    )
