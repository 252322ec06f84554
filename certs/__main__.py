"""``python -m certs``: create, inspect and rotate the webhook's certificates.

Examples::

    # local stack: a CA and a serving cert for 127.0.0.1/localhost in ./certs-dir
    python -m certs ensure --cert-dir ./certs-dir

    # cluster: keep the Secret current and caBundle injected (renews when due, checks every minute)
    python -m certs run --in-cluster --cert-dir /var/run/agentops/certs --service agentops-webhook \\
        --namespace agentops-system --secret agentops-system/agentops-webhook-tls \\
        --mutating agentops-admission --validating agentops-admission --interval 60

    python -m certs show --cert-dir ./certs-dir
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from certs.authority import CertificateError, Hosts, Lifetimes, renewal_time, san_hosts
from certs.rotation import CertManager
from certs.store import SecretRef, load_dir


def add_cert_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m certs`` and ``python -m webhook``."""
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


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster")
    group.add_argument("--in-cluster", action="store_true", help="use the pod's service account")


def hosts_from_args(args: argparse.Namespace) -> Hosts:
    if args.service:
        return Hosts.for_service(args.service, args.namespace, extra=args.san)
    return Hosts.local(extra=args.san)


def manager_from_args(args: argparse.Namespace) -> CertManager:
    needs_api = bool(args.secret or args.mutating or args.validating)
    core_v1 = admission = None
    if needs_api:
        from kubernetes import client

        from certs.kube import api_client

        if not (args.kubeconfig or args.in_cluster):
            raise SystemExit("--secret/--mutating/--validating need --kubeconfig PATH or --in-cluster")
        api = api_client(args.kubeconfig, in_cluster=args.in_cluster)
        core_v1 = client.CoreV1Api(api)
        admission = client.AdmissionregistrationV1Api(api)
    return CertManager(
        cert_dir=args.cert_dir,
        hosts=hosts_from_args(args),
        lifetimes=Lifetimes(ca=dt.timedelta(days=args.ca_days), serving=dt.timedelta(days=args.serving_days)),
        secret=args.secret,
        core_v1=core_v1,
        admission_api=admission,
        mutating=args.mutating,
        validating=args.validating,
        settle_seconds=args.settle_seconds,
    )


def _show(cert_dir: Path) -> int:
    try:
        bundle = load_dir(cert_dir)
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if bundle is None:
        print(f"error: no certificates in {cert_dir}", file=sys.stderr)
        return 1
    serving = bundle.serving.certificate
    hosts = san_hosts(serving)
    info = {
        "ca": {
            "subject": bundle.ca.certificate.subject.rfc4514_string(),
            "notAfter": bundle.ca.not_after.isoformat(),
        },
        "serving": {
            "dnsNames": list(hosts.dns_names),
            "ipAddresses": list(hosts.ip_addresses),
            "notAfter": bundle.serving.not_after.isoformat(),
            "renewAfter": renewal_time(serving).isoformat(),
        },
    }
    print(json.dumps(info, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ensure", "create or renew once"), ("run", "renew in a loop")):
        p = sub.add_parser(name, help=text)
        add_cert_arguments(p)
        add_kube_arguments(p)
        if name == "run":
            p.add_argument("--interval", type=float, default=60, help="seconds between checks")
    show = sub.add_parser("show", help="print SANs and expiry of the certificates in a directory")
    show.add_argument("--cert-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "show":
        return _show(args.cert_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    manager = manager_from_args(args)
    manager.ensure()
    if args.command == "run":
        rotation = manager.start(args.interval)
        try:
            rotation.threads[0].join()
        except KeyboardInterrupt:
            rotation.stop()
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
