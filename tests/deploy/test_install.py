"""Both install paths against a real, empty API server (a throwaway control plane per test).

No pod runs here (the control plane has no nodes): these tests prove what the API server does with
the objects - that ``helm install`` and ``kubectl apply -k`` create all of them, that the webhook's
certificate bootstrap works with exactly the RBAC they grant (``python -m certs ensure``, the code
the webhook runs at start-up, authenticated as the webhook's ServiceAccount), and that a later
``helm upgrade`` or re-apply keeps what the webhook wrote: the certificates in the Secret and the
caBundle in both webhook configurations.  Running pods is the job of the full local install.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.render import CHART, DEPLOY, NAMESPACE, RELEASE, REPO, kustomize, set_args
from tests.support.kubectl import Kubectl

pytestmark = pytest.mark.cluster

CONFIGURATIONS = ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")


def run_helm(helm: Path, cluster: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(helm), f"--kubeconfig={cluster.kubeconfig}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def service_account_kubeconfig(cluster: Kubectl, account: str, target: Path) -> Path:
    token = cluster("-n", NAMESPACE, "create", "token", account, "--duration=10m").stdout.strip()
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    target.write_text(yaml.safe_dump(config))
    return target


def bootstrap_certificates_as_the_webhook(cluster: Kubectl, tmp_path: Path) -> None:
    """What the webhook does when it starts: fill the Secret, inject the caBundle."""
    kubeconfig = service_account_kubeconfig(cluster, "agentops-webhook", tmp_path / "webhook.kubeconfig")
    argv = [
        sys.executable, "-m", "certs", "ensure", "--kubeconfig", str(kubeconfig),
        "--cert-dir", str(tmp_path / "certs"), "--service", "agentops-webhook", "--namespace", NAMESPACE,
        "--secret", f"{NAMESPACE}/agentops-webhook-tls",
        "--mutating", "agentops-admission", "--validating", "agentops-admission",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr


def certificates(cluster: Kubectl) -> tuple[str, list[str]]:
    """The CA bundle in the Secret, and the caBundle of each webhook configuration."""
    secret = cluster.json("-n", NAMESPACE, "get", "secret", "agentops-webhook-tls")
    bundles = [
        hook["clientConfig"].get("caBundle", "")
        for kind in CONFIGURATIONS
        for hook in cluster.json("get", kind, "agentops-admission")["webhooks"]
    ]
    return (secret.get("data") or {}).get("ca.crt", ""), bundles


def assert_all_exist(cluster: Kubectl, docs: list[dict[str, Any]]) -> None:
    result = cluster("get", "-f", "-", "-o", "name", input=yaml.safe_dump_all(docs), check=False)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == len(docs)


def test_helm_installs_everything_and_upgrades_keep_the_webhooks_certificates(
    helm: Path, fresh_cluster: Kubectl, tmp_path: Path
) -> None:
    cluster = fresh_cluster
    run_helm(helm, cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace")
    manifest = run_helm(helm, cluster, "get", "manifest", RELEASE, "-n", NAMESPACE).stdout
    installed = [d for d in yaml.safe_load_all(manifest) if d]
    crds = [
        d for p in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    assert_all_exist(cluster, installed + crds)

    bootstrap_certificates_as_the_webhook(cluster, tmp_path)
    ca, bundles = certificates(cluster)
    assert ca, "the webhook stored no CA in its Secret"
    assert bundles == [ca, ca]
    # The webhook's update keeps Helm's ownership marks, so the release still owns its Secret.
    meta = cluster.json("-n", NAMESPACE, "get", "secret", "agentops-webhook-tls")["metadata"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert meta["annotations"]["meta.helm.sh/release-name"] == RELEASE

    run_helm(
        helm, cluster, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE,
        *set_args({
            "webhook.failurePolicy": "Ignore", "webhook.timeoutSeconds": "9", "webhook.replicas": "1",
            "redis.external.url": "redis://redis.shared.svc:6379/1",
        }),
    )  # fmt: skip
    assert certificates(cluster) == (ca, bundles), "the upgrade dropped what the webhook wrote"
    for kind in CONFIGURATIONS:
        (hook,) = cluster.json("get", kind, "agentops-admission")["webhooks"]
        assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 9)
    gone = cluster(
        "-n", NAMESPACE, "get", "pdb/agentops-webhook", "statefulset/redis", "service/redis", check=False
    )
    assert gone.stderr.count("NotFound") == 3, gone.stdout + gone.stderr
    controller = cluster.json("-n", NAMESPACE, "get", "deployment", "agentops-controller")
    (container,) = controller["spec"]["template"]["spec"]["containers"]
    assert {"name": "AGENTOPS_REDIS_URL", "value": "redis://redis.shared.svc:6379/1"} in container["env"]


def apply_base(cluster: Kubectl) -> None:
    """``kubectl apply -k deploy/``: one pass on an empty cluster."""
    cluster("apply", "-k", str(DEPLOY))


def test_kustomize_base_installs_in_one_pass(fresh_cluster: Kubectl) -> None:
    fresh_cluster("apply", "-k", str(DEPLOY))


def test_kustomize_base_installs_everything_and_a_reapply_keeps_the_webhooks_certificates(
    fresh_cluster: Kubectl, tmp_path: Path
) -> None:
    cluster = fresh_cluster
    apply_base(cluster)
    assert_all_exist(cluster, kustomize(DEPLOY))

    bootstrap_certificates_as_the_webhook(cluster, tmp_path)
    ca, bundles = certificates(cluster)
    assert ca, "the webhook stored no CA in its Secret"
    assert bundles == [ca, ca]
    pem = base64.b64decode(ca).decode()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    # The webhook's update keeps the labels and kubectl's last-applied configuration.
    meta = cluster.json("-n", NAMESPACE, "get", "secret", "agentops-webhook-tls")["metadata"]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "agentops-webhook",
        "app.kubernetes.io/part-of": "agentops",
    }
    assert "kubectl.kubernetes.io/last-applied-configuration" in meta["annotations"]

    cluster("apply", "-k", str(DEPLOY))
    assert certificates(cluster) == (ca, bundles), "the re-apply dropped what the webhook wrote"
    assert cluster("diff", "-k", str(DEPLOY), check=False).returncode == 0, "the base does not converge"


def test_the_webhook_never_gates_its_own_namespace(fresh_cluster: Kubectl) -> None:
    """With the configurations installed and no webhook running, agentops objects can still be
    created in agentops-system (the recovery path) and nowhere else (fail closed)."""
    cluster = fresh_cluster
    apply_base(cluster)
    policy = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPolicy",
        "metadata": {"name": "probe"},
        "spec": {},
    }
    cluster("create", "namespace", "team-a")
    inside = cluster(
        "-n", NAMESPACE, "apply", "--dry-run=server", "-f", "-", input=json.dumps(policy), check=False
    )
    outside = cluster(
        "-n", "team-a", "apply", "--dry-run=server", "-f", "-", input=json.dumps(policy), check=False
    )
    assert inside.returncode == 0, inside.stderr
    assert outside.returncode != 0
    assert 'failed calling webhook "validate.agentops.agentops.io"' in outside.stderr
