"""Uninstalling agentops-operator from a real node, both ways the README gives, with agents running.

On a node of this module's own (an uninstall must never reach the session's shared product):

* ``kubectl delete -k`` removes every object of ours: both webhook configurations (a leftover
  fail-closed one would block every later change to our resources), the CRDs, the cluster RBAC,
  the namespace, the agents' Deployments and pods (garbage-collected with their AgentDeployments),
  and the kopf peering object with its CRD.  Afterwards the cluster takes changes as before: a
  ConfigMap, the CRDs again, an AgentDeployment with no webhook in the way.  The agents are deleted
  first with ``kubectl agentops uninstall``, while the controller runs: each carries kopf's
  finalizer, which only the controller removes, and ``kubectl delete -k`` with agents still there
  races the controller's own deletion (the README gives this order).
* ``helm uninstall`` removes the release: no webhook configuration, no RBAC, no workload, no Secret
  of it is left.  What stays, by Helm's conventions, is listed and checked: the CRDs (Helm never
  deletes what a chart's ``crds/`` installed, so the users' agents survive an uninstall/reinstall),
  the users' objects of those kinds with the Deployments they own, the controller's kopf peering
  object, and the namespace ``--create-namespace`` made (Helm never deletes a namespace).
* Removing those CRDs afterwards, with no controller left to release kopf's finalizers on the
  agents and pipelines: ``kubectl agentops uninstall --crds`` (as the README says) releases them
  and deletes the CRDs; the agents' workloads go with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.resources import LABEL_AGENT
from localstack.cluster import SYSTEM_NAMESPACE, NodeCluster
from localstack.crds import CRD_DIR
from localstack.helm import ensure_helm
from tests.cluster.agents import agent, agent_pods, apply, run_the_article
from tests.cluster.own_node import CHART, CHART_LOCAL_VALUES, OVERLAY, helm, own_node
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

GROUPS = (".agentops.agentops.io", ".kopf.dev")
RELEASE = "agentops"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with own_node(tmp_path_factory.mktemp("uninstall"), install=False) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def nk(node: NodeCluster) -> Kubectl:
    return Kubectl(node.kubeconfig)


@pytest.fixture
def agents_namespace(nk: Kubectl) -> Iterator[str]:
    """A namespace for the article's agents; afterwards nothing of one test reaches the next,
    whatever state it stopped in (an install of either kind, stuck finalizers, leftover CRDs)."""
    name = f"agents-{uuid.uuid4().hex[:6]}"
    nk("create", "namespace", name)
    try:
        yield name
    finally:
        # The webhook configurations first: fail closed, they would refuse the finalizer patches.
        nk("delete", "-k", str(OVERLAY), "--ignore-not-found", "--wait=false")
        nk("delete", "namespace", name, "--wait=false")

        def all_gone() -> bool:
            release_stuck_objects(nk)
            return crds(nk) == [] and not namespace_exists(nk, SYSTEM_NAMESPACE)

        eventually("no CRD and no system namespace of ours is left", all_gone, within=180)


def names(kubectl: Kubectl, *args: str) -> list[str]:
    return kubectl("get", *args, "-o", "name").stdout.split()


def crds(kubectl: Kubectl) -> list[str]:
    return [n for n in names(kubectl, "crd") if n.endswith(GROUPS)]


def namespace_exists(kubectl: Kubectl, namespace: str) -> bool:
    return kubectl("get", "namespace", namespace, check=False).returncode == 0


def leftovers(kubectl: Kubectl, app_namespace: str) -> dict[str, list[str]]:
    """Every object of ours still in the cluster, by what it is (empty: nothing)."""
    found = {
        "webhook configurations": [
            n
            for n in names(kubectl, "mutatingwebhookconfigurations,validatingwebhookconfigurations")
            if "agentops" in n
        ],
        "CRDs": crds(kubectl),
        "cluster RBAC": [n for n in names(kubectl, "clusterroles,clusterrolebindings") if "/agentops" in n],
        "system namespace": [SYSTEM_NAMESPACE] if namespace_exists(kubectl, SYSTEM_NAMESPACE) else [],
        "agent workloads": names(
            kubectl,
            "deployments,replicasets,pods,services,configmaps",
            "-n",
            app_namespace,
            "-l",
            LABEL_AGENT,
        ),
    }
    return {what: items for what, items in found.items() if items}


def finalized_objects(kubectl: Kubectl) -> list[str]:
    """Agents and pipelines that still exist, with their finalizers (none if the CRDs are gone)."""
    found = []
    for kind in ("agentdeployments.agentops.agentops.io", "agentpipelines.agentops.agentops.io"):
        listed = kubectl("get", kind, "--all-namespaces", "-o", "json", check=False)
        if listed.returncode != 0:
            continue
        for item in json.loads(listed.stdout)["items"]:
            meta = item["metadata"]
            found.append(f"{kind}/{meta['namespace']}/{meta['name']} finalizers={meta.get('finalizers')}")
    return found


def release_stuck_objects(kubectl: Kubectl) -> None:
    """The known workaround for finalizers nobody will remove: remove them by hand."""
    for kind in ("agentdeployments.agentops.agentops.io", "agentpipelines.agentops.agentops.io"):
        listed = kubectl("get", kind, "--all-namespaces", "-o", "json", check=False)
        if listed.returncode != 0:
            continue
        for item in json.loads(listed.stdout)["items"]:
            meta = item["metadata"]
            if meta.get("finalizers"):
                kubectl(
                    "patch", kind, meta["name"], "-n", meta["namespace"], "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip


def agentops_uninstall(node: NodeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl agentops uninstall`` as the README gives it."""
    done = subprocess.run(
        [sys.executable, "-m", "agentops", "uninstall", *args, "--kubeconfig", str(node.kubeconfig)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done


def test_kubectl_delete_k_after_the_agents_removes_everything(
    node: NodeCluster, nk: Kubectl, agents_namespace: str
) -> None:
    node.install(timeout=240)
    kubectl = nk.in_namespace(agents_namespace)
    run_the_article(kubectl)

    # The controller is still there to finish every deletion (withdrawing queued pipeline tasks)
    # and release its finalizers; the Deployments go with their owners.
    done = agentops_uninstall(node)
    assert "deleted 2 agentdeployments" in done.stdout.splitlines(), done.stdout
    assert "no controller finished" not in done.stdout, done.stdout
    eventually("the agents' pods are gone", lambda: agent_pods(kubectl) == [], within=120)
    nk("delete", "-k", str(OVERLAY), "--timeout=180s", timeout=200)

    assert leftovers(nk, agents_namespace) == {}
    assert nk("api-resources", "--api-group=agentops.agentops.io", "-o", "name").stdout.split() == []
    assert nk("api-resources", "--api-group=kopf.dev", "-o", "name").stdout.split() == []

    # The cluster takes changes as before.  An AgentDeployment is what a leftover fail-closed
    # webhook configuration would refuse ("failed calling webhook ...").
    kubectl("create", "configmap", "after-uninstall", "--from-literal=still=works")
    nk("apply", "--server-side", "-f", str(CRD_DIR))
    nk("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    assert "created" in apply(kubectl, agent("after-uninstall"))
    # Nothing reconciles it: no controller, so no Deployment, and no finalizer to wait for.
    kubectl("delete", "agentdeployment", "after-uninstall", "--timeout=30s")
    assert names(kubectl, "deployments") == []


def helm_install_run_and_uninstall(node: NodeCluster, nk: Kubectl, agents_namespace: str) -> Path:
    """``helm install``, the article's agents, ``helm uninstall``: returns once the release's pods
    are gone (so no controller runs anywhere), with the helm binary used."""
    binary = ensure_helm()
    helm(
        binary, node, "install", RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE, "--create-namespace",
        *CHART_LOCAL_VALUES, "--wait", "--timeout=240s",
    )  # fmt: skip
    for workload in ("statefulset/redis", "deployment/agentops-webhook", "deployment/agentops-controller"):
        nk("rollout", "status", workload, "--timeout=120s", namespace=SYSTEM_NAMESPACE, timeout=130)
    run_the_article(nk.in_namespace(agents_namespace))

    helm(binary, node, "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", "--timeout=180s")
    eventually(
        "the release's pods are gone",
        lambda: nk.json("get", "pods", namespace=SYSTEM_NAMESPACE)["items"] == [],
        within=120,
    )
    return binary


def test_helm_uninstall_removes_the_release_and_keeps_the_crds(
    node: NodeCluster, nk: Kubectl, agents_namespace: str
) -> None:
    binary = helm_install_run_and_uninstall(node, nk, agents_namespace)
    kubectl = nk.in_namespace(agents_namespace)

    assert helm(binary, node, "list", "--all-namespaces", "-q").stdout.split() == []
    left = leftovers(nk, agents_namespace)
    assert "webhook configurations" not in left, left
    assert "cluster RBAC" not in left, left
    # In the namespace, only what Kubernetes puts into every namespace (and Events).
    inside = names(
        nk, "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,leases",
        "-n", SYSTEM_NAMESPACE,
    )  # fmt: skip
    assert sorted(inside) == ["configmap/kube-root-ca.crt", "serviceaccount/default"]

    # What Helm keeps by design: the namespace it created, the CRDs of the chart's crds/...
    assert left["system namespace"] == [SYSTEM_NAMESPACE]
    assert sorted(left["CRDs"]) == sorted(
        f"customresourcedefinition.apiextensions.k8s.io/{name}"
        for name in (
            "agentdeployments.agentops.agentops.io",
            "agentpipelines.agentops.agentops.io",
            "agentpolicies.agentops.agentops.io",
            "agentpolicyexceptions.agentops.agentops.io",
            "agentpromptrevisions.agentops.agentops.io",
            "clusteragentpolicies.agentops.agentops.io",
            "clusterkopfpeerings.kopf.dev",
            "kopfpeerings.kopf.dev",
        )
    )
    # ...so the users' objects of those kinds stay, with the Deployments they own (nothing is
    # orphaned: every workload left has an owner that still exists)...
    assert sorted(names(kubectl, "agentdeployments")) == [
        "agentdeployment.agentops.agentops.io/research-agent",
        "agentdeployment.agentops.agentops.io/summarizer-agent",
    ]
    owners = {a["metadata"]["uid"] for a in kubectl.json("get", "agentdeployments")["items"]}
    for deployment in kubectl.json("get", "deployments")["items"]:
        assert {ref["uid"] for ref in deployment["metadata"]["ownerReferences"]} <= owners, deployment
    # ...and the kopf peering object the controller created (not the chart: Helm never owned it).
    assert names(nk, "clusterkopfpeerings") == ["clusterkopfpeering.kopf.dev/agentops-controller"]
    assert set(left) == {"system namespace", "CRDs", "agent workloads"}, left


def test_deleting_the_kept_crds_after_helm_uninstall_removes_the_agents(
    node: NodeCluster, nk: Kubectl, agents_namespace: str
) -> None:
    helm_install_run_and_uninstall(node, nk, agents_namespace)
    # No controller is left to release its finalizers: the README's `kubectl agentops uninstall
    # --crds` does, then deletes the CRDs (kopf's too: no other kopf operator runs here).
    done = agentops_uninstall(node, "--crds", "--wait", "2")
    lines = done.stdout.splitlines()
    assert "deleted 1 agentpipelines" in lines, done.stdout
    assert "deleted 2 agentdeployments" in lines, done.stdout
    assert sum("no controller finished" in line for line in lines) == 3, done.stdout
    assert "deleted 6 CRDs of agentops.agentops.io" in lines, done.stdout
    assert "deleted kopf's peering CRDs (no other kopf operator uses them)" in lines, done.stdout
    eventually(
        "the CRDs, the agents and their workloads are gone",
        lambda: crds(nk) == [] and "agent workloads" not in leftovers(nk, agents_namespace),
        within=90,
    )
    assert leftovers(nk, agents_namespace) == {"system namespace": [SYSTEM_NAMESPACE]}
