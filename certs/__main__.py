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
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from certs.authority import CertificateError, renewal_time, san_hosts
from certs.cli import add_cert_arguments, manager_from_args
from certs.store import load_dir
from contracts import logline
from kube.cli import add_kube_arguments
from kube.config import ConfigError


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
    logline.configure()
    try:
        manager = manager_from_args(args)
    except ConfigError as exc:
        parser.error(f"--secret/--mutating/--validating need the API server: {exc}")
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
