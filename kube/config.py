"""Where a process's Kubernetes credentials come from: one rule, one :class:`Connection`.

The rule (:func:`load`), the same for every component:

1. an explicit kubeconfig: the ``--kubeconfig`` flag, else ``$KUBECONFIG`` (which the caller set on
   purpose: kubectl, the tests and the local stack all do);
2. else the pod's service account (``--in-cluster`` forces this step);
3. else a :class:`ConfigError` naming both ways.  ``~/.kube/config`` is never used silently: a
   controller started on a laptop must not reconcile whatever cluster that file happens to name.

A kubeconfig is read by the official ``kubernetes`` package (contexts, embedded or file
certificates, ``exec`` credential plugins and their token refresh); that is the only use of it.
The service account is read here: the token is read again on every request, so a projected token
the kubelet rotates is picked up at once.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(Exception):
    """No usable Kubernetes configuration; the message says what to give instead."""


@dataclass(frozen=True)
class Connection:
    """Everything needed to reach one API server as one identity.

    ``authorization`` returns the current ``Authorization`` header value (None: client
    certificates only); clients call it for every request.
    """

    server: str
    #: The default namespace: the kubeconfig context's, or the service account's.
    namespace: str
    #: What this came from, for messages ("kubeconfig /path", "in-cluster service account").
    source: str
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    #: Overrides the name the server certificate is checked against (kubeconfig ``tls-server-name``).
    tls_server_name: str | None = None
    authorization: Callable[[], str | None] = lambda: None

    def ssl_context(self) -> ssl.SSLContext:
        """A new client TLS context: the cluster CA (or no verification, if configured) and the
        client certificate, if any."""
        if self.verify:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def headers(self) -> dict[str, str]:
        value = self.authorization()
        return {"Authorization": value} if value else {}


def load(
    kubeconfig: str | os.PathLike[str] | None = None,
    *,
    in_cluster: bool = False,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """The connection the rule in the module docstring picks."""
    env = os.environ if environ is None else environ
    if kubeconfig and in_cluster:
        raise ConfigError("give either --kubeconfig PATH or --in-cluster, not both")
    if in_cluster:
        return from_service_account(environ=env, directory=service_account_dir)
    path = os.fspath(kubeconfig) if kubeconfig else env.get("KUBECONFIG", "")
    if path:
        return from_kubeconfig(path)
    if _service_account_present(env, service_account_dir):
        return from_service_account(environ=env, directory=service_account_dir)
    raise ConfigError(
        "no Kubernetes configuration: pass --kubeconfig PATH or set $KUBECONFIG"
        " (to use your kubectl default, say so: --kubeconfig ~/.kube/config), or run in a pod"
        f" with a service account ($KUBERNETES_SERVICE_HOST and {service_account_dir / 'token'})"
    )


def from_kubeconfig(path: str | os.PathLike[str]) -> Connection:
    """The current context of a kubeconfig (``a:b`` lists are merged, as kubectl does)."""
    text = os.fspath(path)
    files = [Path(p).expanduser() for p in text.split(os.pathsep) if p]
    missing = [str(p) for p in files if not p.is_file()]
    if not files or missing:
        raise ConfigError(f"kubeconfig {', '.join(missing) or repr(text)} does not exist")
    import yaml
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        # persist_config=False: a refreshed token is never written back into the user's file.
        config.load_kube_config(config_file=text, client_configuration=cfg, persist_config=False)  # type: ignore[no-untyped-call]
        _, active = config.list_kube_config_contexts(config_file=text)  # type: ignore[no-untyped-call]
    except (config.ConfigException, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"kubeconfig {text} is not usable: {exc}") from exc
    namespace = ((active or {}).get("context") or {}).get("namespace") or "default"
    return Connection(
        server=str(cfg.host),
        namespace=str(namespace),
        source=f"kubeconfig {text}",
        ca_file=cfg.ssl_ca_cert,
        verify=bool(cfg.verify_ssl),
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        tls_server_name=getattr(cfg, "tls_server_name", None) or None,
        authorization=_configuration_token(cfg),
    )


def _configuration_token(cfg: Any) -> Callable[[], str | None]:
    def authorization() -> str | None:
        # auth_settings() runs the loader's refresh hook (exec plugins, expiring tokens) first.  The
        # key it files the token under changed between client releases, hence the loop.
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                return str(setting["value"])
        return None

    return authorization


def _service_account_present(environ: Mapping[str, str], directory: Path) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (directory / "token").is_file()


def from_service_account(
    *, environ: Mapping[str, str] | None = None, directory: Path = SERVICE_ACCOUNT_DIR
) -> Connection:
    """The pod's service account: ``$KUBERNETES_SERVICE_HOST``/``_PORT`` and the mounted token,
    CA and namespace files."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    token_file, ca_file = directory / "token", directory / "ca.crt"
    if not host:
        raise ConfigError("--in-cluster: $KUBERNETES_SERVICE_HOST is not set (not running in a pod?)")
    for needed in (token_file, ca_file):
        if not needed.is_file():
            raise ConfigError(f"--in-cluster: {needed} does not exist (is a service account token mounted?)")
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else "default"
    server_host = f"[{host}]" if ":" in host else host

    def authorization() -> str | None:
        # Read on every request: the kubelet replaces a projected token before it expires.
        token = token_file.read_text().strip()
        return f"Bearer {token}" if token else None

    return Connection(
        server=f"https://{server_host}:{port}",
        namespace=namespace or "default",
        source="in-cluster service account",
        ca_file=str(ca_file),
        authorization=authorization,
    )
