"""End to end: ``python -m webhook`` as a real process, called by the real kube-apiserver.

The module's webhook registers itself (``--register-url https://127.0.0.1:PORT``, a generated CA
injected as ``caBundle``) for namespaces labelled ``agentops.agentops.io/test-webhook=true`` only,
and every change is made with the machine's real ``kubectl``.  Each test gets its own namespace
and its own ClusterAgentPolicy whose ``namespaceSelector`` matches only that namespace, so tests
do not see each other's policies (nor other suites' objects).

A policy takes effect when the webhook's watch has delivered it; :func:`wait_for_default` probes
for that with a server-side dry run (which, as a test below shows, stores nothing).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import kube
from certs.authority import Hosts
from certs.inject import ADMISSION
from certs.rotation import CertManager
from certs.store import SecretRef
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually
from tests.webhook.conftest import (
    WebhookProcess,
    free_port,
    label_namespace,
    start_webhook,
    stop_webhook,
    wait_ready,
)
from tests.webhook.objects import (
    API_VERSION,
    DEFAULT_TOKENS,
    agent,
    cluster_policy,
    denied,
    dump,
    limits,
    wait_for_default,
)
from webhook.registration import ClientConfig, configurations, register, unregister

PREFIX = "agentops.agentops.io/"


@pytest.fixture
def org_policy(gated_namespace: str, cluster_kubectl: Kubectl, kubectl: Kubectl) -> Iterator[str]:
    """An Enforce ClusterAgentPolicy for this test's namespace only; returns its name."""
    name = f"org-{gated_namespace}"
    policy = cluster_policy(
        name,
        gated_namespace,
        mode="Enforce",
        limits={
            "maxTokensPerCall": {"default": DEFAULT_TOKENS, "max": 16000},
            "maxConcurrentTasks": {"default": 2, "max": 20},
            "timeoutSeconds": {"default": 60, "max": 600},
        },
        replicas={"max": 10},
        models={"allowed": ["claude-*", "offline-*"]},
    )
    cluster_kubectl("apply", "-f", "-", input=dump(policy))
    try:
        wait_for_default(kubectl, DEFAULT_TOKENS)
        yield name
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def bob(k8s_api: kube.Client, kubectl: Kubectl, gated_namespace: str) -> str:
    """A user who may manage agents in the test namespace (for ``kubectl --as=bob``)."""
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "agent-editor"},
            "rules": [
                {
                    "apiGroups": ["agentops.agentops.io"],
                    "resources": ["agentdeployments", "agentdeployments/scale"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "bob-agent-editor"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent-editor"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    return "bob"


def stored(kubectl: Kubectl, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kubectl.json("get", "agdep", name)
    return obj


# --- the scenarios -----------------------------------------------------------------------------------


def test_over_limit_apply_fails_with_our_message(kubectl: Kubectl, org_policy: str) -> None:
    result = kubectl(
        "apply", "-f", "-", input=dump(agent("greedy", limits=limits(tokens=50000))), check=False
    )
    message = denied(result)
    assert 'admission webhook "validate.agentops.agentops.io" denied the request' in message
    assert (
        f"spec.limits.maxTokensPerCall: 50000 exceeds 16000 set by ClusterAgentPolicy/{org_policy}" in message
    )
    assert kubectl("get", "agdep", "greedy", check=False).returncode != 0  # nothing stored


def test_model_outside_the_allow_list_is_denied(kubectl: Kubectl, org_policy: str) -> None:
    message = denied(kubectl("apply", "-f", "-", input=dump(agent("gpt", model="gpt-4o")), check=False))
    assert "spec.model" in message
    assert "gpt-4o" in message
    assert org_policy in message


def test_missing_limits_come_back_filled_in_and_stamped(kubectl: Kubectl, org_policy: str) -> None:
    kubectl("apply", "-f", "-", input=dump(agent("lazy")))
    obj = stored(kubectl, "lazy")
    assert obj["spec"]["limits"] == {
        "maxTokensPerCall": DEFAULT_TOKENS,
        "maxConcurrentTasks": 2,
        "timeoutSeconds": 60,
    }
    annotations = obj["metadata"]["annotations"]
    assert len(annotations[PREFIX + "prompt-sha256"]) == 64
    assert annotations[PREFIX + "prompt-changed-by"]
    assert PREFIX + "prompt-changed-at" in annotations


def test_scale_above_the_ceiling_is_denied(kubectl: Kubectl, org_policy: str) -> None:
    kubectl("apply", "-f", "-", input=dump(agent("scaled", limits=limits())))
    message = denied(kubectl("scale", "agdep", "scaled", "--replicas=11", check=False))
    assert f"spec.replicas: 11 exceeds 10 set by ClusterAgentPolicy/{org_policy}" in message
    # The scale subresource through patch is gated too.
    patch = '{"spec":{"replicas":12}}'
    message = denied(
        kubectl("patch", "agdep", "scaled", "--subresource=scale", "--type=merge", "-p", patch, check=False)
    )
    assert "spec.replicas: 12 exceeds 10" in message
    kubectl("scale", "agdep", "scaled", "--replicas=4")
    assert stored(kubectl, "scaled")["spec"]["replicas"] == 4


def test_warn_mode_shows_kubectl_warnings_and_allows(
    kubectl: Kubectl, cluster_kubectl: Kubectl, org_policy: str, gated_namespace: str
) -> None:
    name = f"warn-{gated_namespace}"
    warn = cluster_policy(name, gated_namespace, mode="Warn", limits={"maxTokensPerCall": {"max": 1000}})
    cluster_kubectl("apply", "-f", "-", input=dump(warn))
    try:
        chatty = dump(agent("chatty", limits=limits(tokens=2000)))
        eventually(
            "the Warn policy in effect (a dry run comes back with a warning)",
            lambda: "Warning:" in kubectl("apply", "--dry-run=server", "-f", "-", input=chatty).stderr,
            within=20,
            interval=0.1,
        )
        result = kubectl("apply", "-f", "-", input=dump(agent("chatty", limits=limits(tokens=2000))))
        assert (
            f"Warning: spec.limits.maxTokensPerCall: 2000 exceeds 1000 set by ClusterAgentPolicy/{name}"
            in result.stderr
        )
        assert stored(kubectl, "chatty")["spec"]["limits"]["maxTokensPerCall"] == 2000
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")


def test_changes_made_as_another_user_are_stamped_with_that_user(
    kubectl: Kubectl, org_policy: str, bob: str
) -> None:
    kubectl("apply", "-f", "-", input=dump(agent("bobs", limits=limits())), as_user=bob, as_groups=["team-a"])
    annotations = stored(kubectl, "bobs")["metadata"]["annotations"]
    assert annotations[PREFIX + "prompt-changed-by"] == "bob"
    assert "team-a" in annotations[PREFIX + "prompt-changed-by-groups"]
    first_sha = annotations[PREFIX + "prompt-sha256"]
    # A prompt change by someone else: new author, previous hash recorded.
    patch = json.dumps({"spec": {"systemPrompt": "You help, briefly."}})
    kubectl("patch", "agdep", "bobs", "--type=merge", "-p", patch)
    annotations = stored(kubectl, "bobs")["metadata"]["annotations"]
    assert annotations[PREFIX + "prompt-changed-by"] != "bob"
    assert annotations[PREFIX + "prompt-previous-sha256"] == first_sha
    assert annotations[PREFIX + "prompt-sha256"] != first_sha


def test_forged_stamps_are_overwritten(kubectl: Kubectl, org_policy: str, bob: str) -> None:
    forged = agent("forged", limits=limits())
    forged["metadata"]["annotations"] = {
        PREFIX + "prompt-changed-by": "mallory",
        PREFIX + "prompt-sha256": "0" * 64,
        PREFIX + "change-reason": "routine update",
    }
    kubectl("apply", "-f", "-", input=dump(forged), as_user=bob)
    annotations = stored(kubectl, "forged")["metadata"]["annotations"]
    assert annotations[PREFIX + "prompt-changed-by"] == "bob"
    assert annotations[PREFIX + "prompt-sha256"] != "0" * 64
    assert annotations[PREFIX + "change-reason"] == "routine update"  # the user's reason is kept
    # Editing a stamp later (no prompt change) is reverted too.
    kubectl("annotate", "agdep", "forged", f"{PREFIX}prompt-changed-by=mallory", "--overwrite", as_user=bob)
    assert stored(kubectl, "forged")["metadata"]["annotations"][PREFIX + "prompt-changed-by"] == "bob"


def test_server_dry_run_stamps_the_returned_object_and_stores_nothing(
    kubectl: Kubectl, org_policy: str
) -> None:
    result = kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=dump(agent("dry")))
    returned = json.loads(result.stdout)
    assert returned["spec"]["limits"]["maxTokensPerCall"] == DEFAULT_TOKENS
    assert len(returned["metadata"]["annotations"][PREFIX + "prompt-sha256"]) == 64
    assert kubectl("get", "agdep", "dry", check=False).returncode != 0
    assert kubectl.json("get", "agdep")["items"] == []
    assert kubectl.json("get", "agentpromptrevisions")["items"] == []


def test_edit_patch_replace_and_apply_are_all_gated(
    kubectl: Kubectl, org_policy: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", input=dump(agent("gated", limits=limits())))
    over = dump(agent("gated", limits=limits(tokens=60000)))
    expected = "spec.limits.maxTokensPerCall: 60000 exceeds 16000"

    assert expected in denied(kubectl("apply", "-f", "-", input=over, check=False))
    current = stored(kubectl, "gated")
    current["spec"]["limits"]["maxTokensPerCall"] = 60000
    assert expected in denied(kubectl("replace", "-f", "-", input=json.dumps(current), check=False))
    for patch_type, patch in (
        ("merge", '{"spec":{"limits":{"maxTokensPerCall":60000}}}'),
        ("json", '[{"op":"replace","path":"/spec/limits/maxTokensPerCall","value":60000}]'),
    ):
        # (Strategic merge patch does not exist for custom resources: the API server refuses it.)
        assert expected in denied(
            kubectl("patch", "agdep", "gated", f"--type={patch_type}", "-p", patch, check=False)
        )
    # kubectl edit, with an "editor" that rewrites the limit in place.
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nsed -i "s/maxTokensPerCall: 1000/maxTokensPerCall: 60000/" "$1"\n')
    editor.chmod(0o755)
    monkeypatch.setenv("KUBE_EDITOR", str(editor))
    edit = kubectl("edit", "agdep", "gated", check=False)
    assert edit.returncode != 0
    assert expected in edit.stdout + edit.stderr
    # Server-side apply as well.
    assert expected in denied(
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=over, check=False)
    )
    assert stored(kubectl, "gated")["spec"]["limits"]["maxTokensPerCall"] == 1000


def test_a_namespaced_policy_cannot_loosen_the_cluster_policy(kubectl: Kubectl, org_policy: str) -> None:
    loose = {
        "apiVersion": API_VERSION,
        "kind": "AgentPolicy",
        "metadata": {"name": "loose"},
        "spec": {"limits": {"maxTokensPerCall": {"max": 32000}}},
    }
    message = denied(kubectl("apply", "-f", "-", input=dump(loose), check=False))
    assert f"ClusterAgentPolicy/{org_policy}" in message
    assert "32000" in message


def test_a_pipeline_naming_a_missing_agent_gets_a_warning(kubectl: Kubectl, org_policy: str) -> None:
    pipeline = {
        "apiVersion": API_VERSION,
        "kind": "AgentPipeline",
        "metadata": {"name": "pipe"},
        "spec": {"steps": [{"name": "one", "agentDeployment": "not-there-yet", "inputs": {"prompt": "hi"}}]},
    }
    result = kubectl("apply", "-f", "-", input=dump(pipeline))
    assert "Warning:" in result.stderr
    assert "not-there-yet" in result.stderr


def test_webhook_metrics_saw_the_traffic(webhook: WebhookProcess, kubectl: Kubectl, org_policy: str) -> None:
    kubectl("apply", "-f", "-", input=dump(agent("counted", limits=limits())))
    with webhook.client() as http:
        text = http.get("/metrics").text
    assert (
        'agentops_webhook_requests_total{decision="allowed",endpoint="mutate",operation="CREATE",resource="agentdeployments"}'
        in text
    )
    assert "agentops_webhook_policy_cache_synced 1.0" in text
    assert '"level": "info"' in webhook.logs() or '"level":"info"' in webhook.logs()
    assert "You help." not in webhook.logs()  # no prompt text in the logs


# --- certificate rotation under load -------------------------------------------------------------------

ROTATION_LABEL = ("agentops.agentops.io/test-webhook-rotation", "true")


def test_rotated_certificates_keep_admissions_working(
    control_plane: Any, k8s_api: kube.Client, namespace: str, cluster_kubectl: Kubectl, tmp_path: Path
) -> None:
    """A webhook with a ~26 s CA and ~9 s serving certificates rotates both while we admit."""
    hook = start_webhook(
        control_plane, tmp_path, f"agentops-rotation-{namespace[-8:]}",
        "--ca-days", "0.0003", "--serving-days", "0.0001", "--rotation-interval", "0.5",
        scope_label=ROTATION_LABEL,
    )  # fmt: skip
    kubectl = cluster_kubectl.in_namespace(namespace)
    name = f"org-{namespace}"
    rules = {
        "maxTokensPerCall": {"default": DEFAULT_TOKENS, "max": 16000},
        "maxConcurrentTasks": {"default": 2},
        "timeoutSeconds": {"default": 60},
    }
    policy = cluster_policy(name, namespace, limits=rules)
    policy["metadata"]["labels"] = {ROTATION_LABEL[0]: ROTATION_LABEL[1]}
    try:
        label_namespace(k8s_api, namespace, ROTATION_LABEL)
        cluster_kubectl("apply", "-f", "-", input=dump(policy))
        wait_for_default(kubectl, DEFAULT_TOKENS)
        first_ca = (hook.cert_dir / "ca-signer.crt").read_bytes()
        first_serving = (hook.cert_dir / "tls.crt").read_bytes()
        admitted = 0
        after_ca_rotation = 0
        failures: list[str] = []

        def admit_until_both_rotated() -> bool:
            """One admission; True once both certificates rotated and admissions went on after the CA's,
            else raises, saying how far it got."""
            nonlocal admitted, after_ca_rotation
            ca_rotated = (hook.cert_dir / "ca-signer.crt").read_bytes() != first_ca
            result = kubectl(
                "apply", "--dry-run=server", "-o", "json", "-f", "-",
                input=dump(agent(f"a{admitted}")), check=False,
            )  # fmt: skip
            if result.returncode != 0:
                failures.append(result.stderr.strip())
            elif json.loads(result.stdout)["spec"]["limits"]["maxTokensPerCall"] == DEFAULT_TOKENS:
                admitted += 1
                after_ca_rotation += ca_rotated
            serving_rotated = (hook.cert_dir / "tls.crt").read_bytes() != first_serving
            done = serving_rotated and admitted > 20 and after_ca_rotation >= 10
            assert done, (
                f"serving certificate rotated: {serving_rotated}; {admitted} admitted,"
                f" {after_ca_rotation} after the CA rotated; {len(failures)} failed"
            )
            return True

        # interval 0: each admission is a kubectl run, which paces the stream by itself.
        eventually(
            "both certificates rotated under a stream of admissions",
            admit_until_both_rotated,
            within=40,
            interval=0,
        )
        assert (hook.cert_dir / "tls.crt").read_bytes() != first_serving, "serving cert never rotated"
        assert (hook.cert_dir / "ca-signer.crt").read_bytes() != first_ca, "CA never rotated"
        assert failures == [], f"{len(failures)} admissions failed during rotation, first: {failures[0]}"
        with hook.client() as http:
            text = http.get("/metrics").text
        reloads = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("agentops_webhook_certificate_reloads_total")
        )
        assert reloads >= 2
        print(
            f"{admitted} admissions through kube-apiserver across {reloads:.0f} certificate reloads, 0 failed"
        )
        assert hook.alive()
        # A graceful stop with --unregister-on-exit removes both configurations, so a stopped
        # local webhook never blocks the cluster.
        hook.process.terminate()
        assert hook.process.wait(timeout=15) in (0, -signal.SIGTERM)
        names = [
            c["metadata"]["name"]
            for kind in ("mutating", "validating")
            for c in k8s_api.list_items(
                kube.path(ADMISSION, f"{kind}webhookconfigurations"), metadata_only=True
            )
        ]
        assert hook.registration_name not in names
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")
        stop_webhook(hook, k8s_api)


# --- cluster mode: certificates in a Secret, caBundle injected into existing configurations -------------

SECRET_MODE_LABEL = ("agentops.agentops.io/test-webhook-secret", "true")


def test_secret_mode_fills_the_secret_injects_the_ca_bundle_and_admits(
    control_plane: Any, k8s_api: kube.Client, namespace: str, cluster_kubectl: Kubectl, tmp_path: Path
) -> None:
    """The in-cluster flow, minus the pod: configurations applied without caBundle (as the manifests
    are), an empty Secret, then ``python -m webhook --secret ... --mutating ... --validating ...``."""
    secret = SecretRef(namespace, "webhook-tls")
    k8s_api.create(kube.path("v1", "secrets", namespace=namespace), {"metadata": {"name": secret.name}})
    port = free_port()
    name = f"agentops-secret-{namespace[-8:]}"
    register(k8s_api, configurations(ClientConfig(url=f"https://127.0.0.1:{port}"), name=name,
                                       scope_label=SECRET_MODE_LABEL))  # fmt: skip
    cert_dir = tmp_path / "certs"
    argv = [
        sys.executable, "-m", "webhook", "--kubeconfig", str(control_plane.kubeconfig), "--port", str(port),
        "--cert-dir", str(cert_dir), "--secret", f"{namespace}/webhook-tls",
        "--mutating", name, "--validating", name,
    ]  # fmt: skip
    log_file = tmp_path / "webhook.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    kubectl = cluster_kubectl.in_namespace(namespace)
    policy_name = f"org-{namespace}"
    try:
        # Ready = the policy cache has synced; before that it denies everything.
        wait_ready(WebhookProcess(f"https://127.0.0.1:{port}", cert_dir, log_file, name, process))
        stored = k8s_api.request("GET", secret.path).get("data") or {}
        assert set(stored) >= {"ca.crt", "tls.crt", "tls.key", "ca-signer.crt", "ca-signer.key"}
        assert stored["ca.crt"] == base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode()
        for kind in ("mutating", "validating"):
            config = k8s_api.request("GET", kube.path(ADMISSION, f"{kind}webhookconfigurations", name))
            # Each webhook entry (the validating one has a second for cluster-scoped kinds).
            bundles = [hook["clientConfig"]["caBundle"] for hook in config["webhooks"]]
            assert bundles
            assert bundles == [stored["ca.crt"]] * len(bundles)
        label_namespace(k8s_api, namespace, SECRET_MODE_LABEL)
        defaults = {
            "maxTokensPerCall": {"default": DEFAULT_TOKENS},
            "maxConcurrentTasks": {"default": 2},
            "timeoutSeconds": {"default": 60},
        }
        policy = cluster_policy(policy_name, namespace, limits=defaults)
        policy["metadata"]["labels"] = {SECRET_MODE_LABEL[0]: SECRET_MODE_LABEL[1]}
        cluster_kubectl("apply", "-f", "-", input=dump(policy))
        wait_for_default(kubectl, DEFAULT_TOKENS)
        # A second replica started later adopts the same bundle from the Secret.
        second = CertManager(cert_dir=tmp_path / "replica-2", hosts=Hosts.local(), secret=secret, api=k8s_api)
        assert second.ensure().serving.cert_pem == (cert_dir / "tls.crt").read_bytes()
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", policy_name, "--ignore-not-found", "--wait=false")
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        unregister(k8s_api, name)


def test_a_missing_secret_is_a_clear_startup_error(
    control_plane: Any, namespace: str, tmp_path: Path
) -> None:
    argv = [
        sys.executable, "-m", "webhook", "--kubeconfig", str(control_plane.kubeconfig),
        "--port", str(free_port()), "--cert-dir", str(tmp_path / "certs"),
        "--secret", f"{namespace}/not-created",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"Secret {namespace}/not-created does not exist: create it empty" in result.stderr


def test_without_a_cluster_configuration_the_webhook_says_how_to_give_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    argv = [
        sys.executable,
        "-m",
        "webhook",
        "--port",
        str(free_port()),
        "--cert-dir",
        str(tmp_path / "certs"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "--kubeconfig PATH or set $KUBECONFIG" in result.stderr
    assert "service account" in result.stderr
    assert not (tmp_path / "c").exists()  # nothing done before the configuration was known
