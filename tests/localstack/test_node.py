"""The real node: pods on containerd and runc, cluster DNS, Services, volumes, probes, isolation.

Everything here runs against :class:`localstack.cluster.NodeCluster` (the session's ``node_cluster``
and, for start/stop, clusters of their own): real kubelet, real containerd, real runc, real CNI
bridge and kube-proxy rules, real CoreDNS.  Nothing is mocked, and no packet is sent off the
machine: "no route off the machine" is checked by asking the kernel's routing table, not by trying.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from localstack import images
from localstack._pki import SERVICE_CLUSTER_IP_RANGE
from localstack.cluster import NodeCluster
from localstack.controlplane import KUBERNETES_VERSION
from localstack.node import NODE_IP, NODE_NAME, POD_CIDR
from tests.support.kubectl import Kubectl
from tests.support.processes import processes_using
from tests.support.waiting import eventually

#: TEST-NET-1 (RFC 5737): documentation only, routed nowhere; the routing question is never sent.
UNROUTABLE = "192.0.2.1"


def in_node_netns(cluster: NodeCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    pid = cluster.sandbox_pid()
    assert pid is not None, "the node's sandbox is not running"
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_node_is_ready_on_containerd_with_the_pinned_kubelet(node_kubectl: Kubectl) -> None:
    node = node_kubectl.json("get", "node", NODE_NAME)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == KUBERNETES_VERSION
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True", node["status"]["conditions"]


def test_the_node_network_has_no_route_off_the_machine(node_cluster: NodeCluster) -> None:
    default = in_node_netns(node_cluster, "ip", "-4", "route", "show", "default")
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == "", f"a default route: {default.stdout}"
    lookup = in_node_netns(node_cluster, "ip", "-4", "route", "get", UNROUTABLE)
    assert lookup.returncode != 0, lookup.stdout
    assert "unreachable" in lookup.stderr.lower(), lookup.stderr
    # The only routes are the pods' bridge and the Service range kube-proxy rewrites: no other
    # network is reachable from the node.
    routes = in_node_netns(node_cluster, "ip", "-4", "-json", "route", "show").stdout
    assert {r["dst"] for r in json.loads(routes)} == {POD_CIDR, SERVICE_CLUSTER_IP_RANGE}, routes
    # And it is not the host's network: the host's interfaces are not in it.
    links = {link["ifname"] for link in json.loads(in_node_netns(node_cluster, "ip", "-json", "link").stdout)}
    assert links <= {"lo", "cni0"} | {name for name in links if name.startswith("veth")}, links


def test_every_image_was_imported_before_any_pod_and_none_is_pulled(node_cluster: NodeCluster) -> None:
    state = node_cluster.state()
    assert state["images_imported_at"] < state["kubelet_started_at"]
    imported = set(state["images"])
    assert {images.PRODUCT_IMAGE, images.REDIS_IMAGE, images.COREDNS_IMAGE, images.PAUSE_IMAGE} <= imported
    kubectl = Kubectl(node_cluster.kubeconfig)
    pods = kubectl.json("get", "pods", "--all-namespaces")["items"]
    assert pods, "no pod runs on the node"
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["imagePullPolicy"] in ("IfNotPresent", "Never"), container
    for pod in pods:
        for status in pod["status"].get("containerStatuses", []):
            assert status["image"] in imported, f"{status['image']} was not imported: {sorted(imported)}"
    events = kubectl.json("get", "events", "--all-namespaces", "--field-selector=reason=Pulling")["items"]
    assert events == [], [e["message"] for e in events]


SERVER = """
import http.server, os, pathlib
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ready" and not pathlib.Path("/cache/ready").exists():
            self.send_response(503); self.end_headers(); return
        words = [pathlib.Path(p).read_text() for p in ("/secret/word", "/config/word")]
        body = " ".join(words).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

CLIENT = """
import json, socket, ssl, sys, urllib.request
name, path = sys.argv[1], "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{path}/token").read()
api = urllib.request.Request(
    "https://kubernetes.default.svc/version", headers={"Authorization": f"Bearer {token}"}
)
context = ssl.create_default_context(cafile=f"{path}/ca.crt")
print(json.dumps({
    "resolved": socket.gethostbyname(name),
    "served": urllib.request.urlopen(f"http://{name}/", timeout=10).read().decode(),
    "api": json.load(urllib.request.urlopen(api, context=context, timeout=10))["gitVersion"],
}))
"""


def workload(namespace: str) -> list[dict[str, object]]:
    labels = {"app": "probe-me"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "word"},
            "stringData": {"word": "sesame"},
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "word"}, "data": {"word": "open"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "probe-me"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "probe-me"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                        "containers": [
                            {
                                "name": "server",
                                "image": images.PRODUCT_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python", "-c", SERVER],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8080},
                                    "periodSeconds": 1,
                                },
                                "securityContext": {
                                    "readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                },
                                "volumeMounts": [
                                    {"name": "secret", "mountPath": "/secret"},
                                    {"name": "config", "mountPath": "/config"},
                                    {"name": "cache", "mountPath": "/cache"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "secret", "secret": {"secretName": "word"}},
                            {"name": "config", "configMap": {"name": "word"}},
                            {"name": "cache", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
    ]


def test_pods_get_dns_services_tokens_volumes_and_kubelet_probes(node_kubectl: Kubectl) -> None:
    namespace = f"node-{os.getpid()}-{int(time.monotonic())}"
    node_kubectl("create", "namespace", namespace)
    kubectl = node_kubectl.in_namespace(namespace)
    try:
        docs = "\n---\n".join(yaml.safe_dump(d) for d in workload(namespace))
        kubectl("apply", "-f", "-", input=docs)
        # The kubelet runs the readiness probe: not ready while /cache/ready is missing...
        eventually(
            "the kubelet's readiness probe fails",
            lambda: [
                e
                for e in kubectl.json("get", "events", "--field-selector=reason=Unhealthy")["items"]
                if "Readiness probe failed" in e["message"]
            ],
        )
        (pod,) = kubectl.json("get", "pods", "-l", "app=probe-me")["items"]
        name = pod["metadata"]["name"]
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"
        # ...and ready once the emptyDir holds it.
        kubectl("exec", name, "--", "python", "-c", "open('/cache/ready', 'w').close()")
        kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s")

        service = kubectl.json("get", "service", "probe-me")
        fqdn = f"probe-me.{namespace}.svc.cluster.local"
        # A Ready pod reaches the Service only once the EndpointSlice has it and kube-proxy has
        # synced its rules (until then the ClusterIP rejects), so the first answer is the signal.
        seen = eventually(
            "the pod reaches its Service by name, and the API server with its token",
            lambda: json.loads(kubectl("exec", name, "--", "python", "-c", CLIENT, fqdn, timeout=60).stdout),
        )
        assert seen == {
            "resolved": service["spec"]["clusterIP"],
            "served": "sesame open",
            "api": KUBERNETES_VERSION,
        }
    finally:
        node_kubectl("delete", "namespace", namespace, "--wait=false")


def waiting_reason(kubectl: Kubectl, pod: str) -> str | None:
    statuses = kubectl.json("get", "pod", pod)["status"].get("containerStatuses", [])
    reason: str | None = statuses[0].get("state", {}).get("waiting", {}).get("reason") if statuses else None
    return reason


def test_an_image_that_is_not_there_says_so_and_is_never_pulled(node_kubectl: Kubectl) -> None:
    namespace = f"missing-{os.getpid()}-{int(time.monotonic())}"
    node_kubectl("create", "namespace", namespace)
    kubectl = node_kubectl.in_namespace(namespace)
    try:
        kubectl("run", "nowhere", "--image=agentops-operator:does-not-exist", "--image-pull-policy=Never")
        reason = eventually(
            "the kubelet says the image is missing",
            lambda: waiting_reason(kubectl, "nowhere") not in (None, "ContainerCreating"),
        )
        assert reason is True
        assert waiting_reason(kubectl, "nowhere") == "ErrImageNeverPull"
        events = kubectl.json("get", "events", "--field-selector=involvedObject.name=nowhere")["items"]
        assert any("agentops-operator:does-not-exist" in e["message"] for e in events), events
    finally:
        node_kubectl("delete", "namespace", namespace, "--wait=false")


def namespaces_of(pid: int) -> dict[str, int]:
    """The node's namespaces, by the sandbox process that holds them.  Its own PID namespace is
    the host's: the node's is the one its children are born into."""
    where = {"net": "net", "mnt": "mnt", "pid": "pid_for_children"}
    return {kind: os.stat(f"/proc/{pid}/ns/{link}").st_ino for kind, link in where.items()}


def holders_of(inodes: dict[str, int]) -> list[str]:
    """Processes that are still in any of the given namespaces."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for kind, inode in inodes.items():
            try:
                if os.stat(entry / "ns" / kind).st_ino == inode:
                    found.append(f"{entry.name} ({kind})")
            except OSError:
                continue
    return found


def cgroups_of(cluster: NodeCluster) -> list[str]:
    root = cluster.layout.cgroup_root.lstrip("/")
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{root}")]


def small_cluster_images() -> list[Path]:
    """Only what the node itself runs (the sandbox and CoreDNS): a quicker start."""
    archives = images.ensure_images()
    keep = ("pause-", "coredns-")
    return [a for a in archives if a.name.startswith(keep)]


@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_a_stopped_or_killed_node_leaves_nothing_behind(tmp_path: Path, how: str) -> None:
    cluster = NodeCluster(tmp_path / "node", die_with_parent=True)
    cluster.start(timeout=300, images=small_cluster_images())
    try:
        pid = cluster.sandbox_pid()
        assert pid is not None
        inodes = namespaces_of(pid)
        containers = Kubectl(cluster.kubeconfig).json("get", "pods", "-n", "kube-system")["items"]
        assert containers, "CoreDNS should run in a container"
        assert cgroups_of(cluster)
        if how == "stop":
            assert cluster.stop() is True
        else:
            os.kill(pid, signal.SIGKILL)
        eventually("no process is left in the node's namespaces", lambda: holders_of(inodes) == [], within=30)
    finally:
        cluster.stop()
    assert processes_using(tmp_path) == []
    assert cgroups_of(cluster) == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts
    assert "/run/netns/cni-" not in mounts
