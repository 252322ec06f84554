"""The real node, from the inside: PID 1 of the namespaces :mod:`localstack.sandbox` creates.

Runs, in this order, and supervises until SIGTERM:

1. its own mounts (``/proc`` of the new PID namespace; tmpfs over the few paths containerd,
   runc, CNI and the kubelet insist on, so nothing they write there reaches the host) and its
   own network (loopback, also carrying :data:`NODE_IP`, forwarding and
   ``bridge-nf-call-iptables`` on; **no default route**, so nothing can leave the machine);
2. the control plane (:class:`localstack.controlplane.ControlPlane` with ``with_node=True``);
3. containerd with runc and the standard CNI plugins (bridge, host-local, portmap, loopback),
   and every image imported from archives built on this machine, before any pod can start;
4. kube-scheduler, kubelet and kube-proxy (iptables mode) from the same ``kcp`` binary;
5. CoreDNS as a Deployment behind the ``kube-dns`` Service at :data:`CLUSTER_DNS_IP`.

Progress and the final verdict go to ``<workdir>/node-state.json`` (``{"phase": "starting" |
"ready" | "failed", ...}``), which the host side waits on.  When this process exits, the kernel
kills every process of its PID namespace (containers included) and the namespaces and their
mounts disappear with them: a stopped or killed node leaves nothing running or mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localstack import _process, images
from localstack._pki import NODE_IP, NODE_NAME, SERVICE_CLUSTER_IP_RANGE, Pki
from localstack.controlplane import ControlPlane, write_kubeconfig

__all__ = [
    "API_PORT",
    "CLUSTER_DNS_IP",
    "NODE_IP",
    "NODE_NAME",
    "POD_CIDR",
    "SANDBOX_IMAGE",
    "NodeLayout",
    "main",
]

#: The API server's port inside the node's network namespace (the host reaches it by a relay).
API_PORT = 6443
POD_CIDR = "10.244.0.0/24"
CLUSTER_DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
#: Built here (localstack/pause) and imported with the other images; never pulled.
SANDBOX_IMAGE = images.PAUSE_IMAGE
#: Paths containerd, runc, CNI and the kubelet use whatever they are told: a private tmpfs each.
_PRIVATE_DIRS = ("/run/containerd", "/run/netns", "/var/lib/cni", "/var/log/containers", "/var/log/pods")
_COREDNS_MANIFEST = Path(__file__).parent / "manifests" / "coredns.yaml"


@dataclass(frozen=True)
class NodeLayout:
    """Where everything of one node lives, under its work directory (kept after stop, for logs)."""

    workdir: Path

    @property
    def state_file(self) -> Path:
        return self.workdir / "node-state.json"

    @property
    def images_file(self) -> Path:
        """The image archives to import, one path per line (written by the host side)."""
        return self.workdir / "images.txt"

    @property
    def controlplane(self) -> Path:
        return self.workdir / "controlplane"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def run(self) -> Path:
        """Everything recreated on each start: containerd's store, kubelet's root, CNI state."""
        return self.workdir / "run"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's ``cgroupRoot``: one per work directory, removed by the host side on stop."""
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:10]
        return f"/agentops-node-{digest}"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


class _Failed(Exception):
    pass


class NodeInit:
    """The in-namespace supervisor; one instance per node start."""

    def __init__(self, layout: NodeLayout, binary: Path) -> None:
        self.layout = layout
        self.binary = binary
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_at: dict[str, float] = {}
        self.pki: Pki | None = None
        self.control_plane = ControlPlane(
            layout.controlplane, apiserver_port=API_PORT, with_node=True, progress=self.say
        )

    # --- reporting -----------------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"[node] {message}", file=sys.stderr, flush=True)

    def report(self, phase: str, **details: Any) -> None:
        tmp = self.layout.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"phase": phase, "time": time.time(), **details}))
        tmp.replace(self.layout.state_file)

    # --- steps ---------------------------------------------------------------------------------

    def isolate_mounts(self) -> None:
        _run("mount", "--make-rprivate", "/")
        _run("mount", "-t", "proc", "proc", "/proc")
        for path in _PRIVATE_DIRS:
            Path(path).mkdir(parents=True, exist_ok=True)
            _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)

    def isolate_network(self) -> None:
        _run("ip", "link", "set", "lo", "up")
        # The node's address on loopback (no dummy interface module is needed): pods reach it
        # through the bridge, and it is the address the API server advertises.
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        # With no default route, a connection the node itself opens to a Service address (the
        # API server calling the webhook) would fail the route lookup before kube-proxy's DNAT
        # could rewrite it: give the Service range a route that only exists to be rewritten.
        _run("ip", "route", "add", SERVICE_CLUSTER_IP_RANGE, "dev", "lo")
        for key, value in (
            ("net/ipv4/ip_forward", "1"),
            # Service traffic between two pods on the same bridge must pass kube-proxy's rules.
            ("net/bridge/bridge-nf-call-iptables", "1"),
            ("net/ipv4/conf/all/route_localnet", "1"),
        ):
            Path("/proc/sys", key).write_text(value)
        routes = _run("ip", "-4", "route", "show", "default").strip()
        if routes:
            raise _Failed(f"the node's network namespace has a default route ({routes}); refusing to start")

    def prepare_cgroups(self) -> None:
        for controller in _cgroup_hierarchies():
            (controller / self.layout.cgroup_root.lstrip("/")).mkdir(exist_ok=True)

    def start_control_plane(self) -> Pki:
        self.control_plane.start(timeout=120)
        pki = Pki(self.layout.controlplane / "pki")
        self.pki = pki
        return pki

    def start_containerd(self) -> None:
        run = self.layout.run
        config = run / "containerd" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        cni_conf = run / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-agentops.conflist").write_text(
            json.dumps(_cni_config(run / "cni" / "ipam"), indent=2)
        )
        config.write_text(_containerd_config(run, cni_conf))
        self._spawn("containerd", ["containerd", "--config", str(config)], binary_is_kcp=False)
        _process.wait_until(
            lambda: self.layout.containerd_socket.exists() and self._ctr("version").returncode == 0,
            timeout=60,
            what="containerd",
            alive=lambda: self._exited("containerd"),
        )

    def import_images(self) -> list[str]:
        archives = [Path(p) for p in self.layout.images_file.read_text().split()]
        # Unpacked on first use by the CRI plugin: a faster start, and only what runs is unpacked.
        images.import_images(str(self.layout.containerd_socket), archives, unpack=False)
        listed = self._ctr("images", "list", "--quiet")
        names = sorted(line for line in listed.stdout.splitlines() if line and not line.startswith("sha256:"))
        if SANDBOX_IMAGE not in names:
            raise _Failed(f"the sandbox image {SANDBOX_IMAGE} is not among the imported images: {names}")
        return names

    def start_node_components(self, pki: Pki) -> None:
        node_dir = self.layout.run / "node"
        node_dir.mkdir(parents=True, exist_ok=True)
        server = f"https://127.0.0.1:{API_PORT}"
        kubeconfigs = {
            "kubelet": (f"system:node:{NODE_NAME}", pki.kubelet_cert, pki.kubelet_key),
            "kube-proxy": ("system:kube-proxy", pki.proxy_cert, pki.proxy_key),
            "kube-scheduler": ("system:kube-scheduler", pki.scheduler_cert, pki.scheduler_key),
        }
        paths: dict[str, Path] = {}
        for component, (user, cert, key) in kubeconfigs.items():
            paths[component] = node_dir / f"{component}.kubeconfig"
            write_kubeconfig(paths[component], server, pki, user, cert, key)

        scheduler = paths["kube-scheduler"]
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
                "--leader-elect=false",
            ],
        )

        kubelet_config = node_dir / "kubelet.yaml"
        kubelet_config.write_text(yaml.safe_dump(self._kubelet_config(pki)))
        resolv = node_dir / "resolv.conf"
        # Pods get the cluster DNS only: no search domain or nameserver of the host leaks in.
        resolv.write_text("")
        self._spawn(
            "kubelet",
            [
                "kubelet",
                f"--config={kubelet_config}",
                f"--kubeconfig={paths['kubelet']}",
                f"--container-runtime-endpoint=unix://{self.layout.containerd_socket}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={self.layout.run / 'kubelet'}",
                f"--pod-infra-container-image={SANDBOX_IMAGE}",
            ],
        )

        proxy_config = node_dir / "kube-proxy.yaml"
        proxy_config.write_text(yaml.safe_dump(_proxy_config(paths["kube-proxy"])))
        self._spawn("kube-proxy", ["kube-proxy", f"--config={proxy_config}"])

    def wait_node_ready(self, deadline: float) -> None:
        def ready() -> bool:
            node = json.loads(self._kubectl("get", "node", NODE_NAME, "-o", "json"))
            return any(
                c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
            )

        _process.wait_until(
            ready,
            timeout=max(deadline - time.monotonic(), 1),
            what=f"node {NODE_NAME}",
            alive=self._any_exited,
            interval=0.5,
        )

    def start_dns(self, deadline: float, present: list[str]) -> None:
        if images.COREDNS_IMAGE not in present:
            raise _Failed(f"the CoreDNS image {images.COREDNS_IMAGE} was not imported: {present}")
        manifest = self.layout.run / "node" / "coredns.yaml"
        manifest.write_text(_COREDNS_MANIFEST.read_text().replace("COREDNS_IMAGE", images.COREDNS_IMAGE))
        self._kubectl("apply", "--server-side", "-f", str(manifest))
        self._kubectl(
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            f"--timeout={max(int(deadline - time.monotonic()), 1)}s",
        )

    # --- the kubelet ---------------------------------------------------------------------------

    def _kubelet_config(self, pki: Pki) -> dict[str, Any]:
        run = self.layout.run
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki.kubelet_serving_cert),
            "tlsPrivateKeyFile": str(pki.kubelet_serving_key),
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.layout.cgroup_root,
            "clusterDNS": [CLUSTER_DNS_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(run / "node" / "resolv.conf"),
            "failSwapOn": False,
            "podLogsDir": "/var/log/pods",
            "volumePluginDir": str(run / "volume-plugins"),
            # Every image was built here and imported; none may be collected, since none can be
            # pulled again.  The disk is shared with the host, so eviction waits for a nearly full one.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "serializeImagePulls": False,
            "maxPods": 150,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
        }

    # --- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], *, binary_is_kcp: bool = True) -> None:
        log = self.layout.log(name)
        log.unlink(missing_ok=True)
        full = [str(self.binary), *argv] if binary_is_kcp else list(argv)
        self.started_at[name] = time.time()
        self.procs[name] = _process.spawn(
            full, log=log, pid_file=_process.PidFile(self.layout.run / "pids" / f"{name}.pid")
        )

    def _exited(self, name: str) -> str | None:
        proc = self.procs[name]
        if proc.poll() is None:
            return None
        return f"{name} exited with status {proc.returncode}; the end of {self.layout.log(name)}:\n" + (
            _process.tail(self.layout.log(name), 25)
        )

    def _any_exited(self) -> str | None:
        for name in self.procs:
            if (problem := self._exited(name)) is not None:
                return problem
        return None

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.layout.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def _kubectl(self, *args: str) -> str:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={self.control_plane.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise _Failed(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        # Newest first; whatever is left when PID 1 exits is killed by the kernel.
        for name in reversed(list(self.procs)):
            with contextlib.suppress(ProcessLookupError):
                self.procs[name].terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.1))
        self.control_plane.stop(timeout=5)


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise _Failed(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _reap_orphans(ours: set[int]) -> None:
    """Collect the zombies PID 1 inherits (containerd's shims daemonize), leaving our own
    children to their :class:`subprocess.Popen` objects."""
    for proc in _process.process_table():
        if proc.state == "Z" and proc.parent == 1 and proc.pid not in ours:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)


def _cgroup_hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup: the v1 controllers the node runs on,
    and the v2 hierarchy beside them, where runc also files each container."""
    found: list[Path] = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] in ("cgroup", "cgroup2") and fields[1].startswith("/sys/fs/cgroup"):
            found.append(Path(fields[1]))
    return found


def remove_cgroups(cgroup_root: str) -> list[str]:
    """Remove the node's cgroups depth-first once nothing runs in them; returns what stayed."""
    left: list[str] = []
    for controller in _cgroup_hierarchies():
        top = controller / cgroup_root.lstrip("/")
        if not top.exists():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError:
            left.append(str(top))
    return left


def _cni_config(ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "agentops",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                # A pod reaching itself through its own Service needs its packet back.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR}]],
                    # The pods' default route ends at the bridge: the node itself has none.
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _containerd_config(run: Path, cni_conf: Path) -> str:
    root = run / "containerd" / "root"
    return f"""\
version = 2
root = "{root}"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{run / "containerd.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{run / "containerd" / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  enable_selinux = false
  disable_apparmor = true
  # This machine withholds CAP_SYS_RESOURCE even from root: a negative oom_score_adj (the
  # pause container's -998) would fail runc's init, so scores are clamped at containerd's own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def _proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "0.0.0.0",  # noqa: S104 - inside the node's own network namespace
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # The conntrack table is the host kernel's: the node must not resize it.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m localstack.node", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--binary", type=Path, required=True, help="the kcp binary")
    args = parser.parse_args(argv)
    layout = NodeLayout(args.workdir.resolve())
    init = NodeInit(layout, args.binary)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    started = time.monotonic()
    deadline = started + 600
    try:
        init.report("starting", step="namespaces")
        init.isolate_mounts()
        init.isolate_network()
        init.prepare_cgroups()
        init.report("starting", step="control plane")
        pki = init.start_control_plane()
        init.report("starting", step="containerd")
        init.start_containerd()
        present = init.import_images()
        imported_at = time.time()
        init.report("starting", step="kubelet", images=present, images_imported_at=imported_at)
        init.start_node_components(pki)
        times = {"images_imported_at": imported_at, "kubelet_started_at": init.started_at["kubelet"]}
        init.wait_node_ready(deadline)
        init.report("starting", step="cluster DNS", images=present, **times)
        init.start_dns(deadline, present)
        init.report("ready", images=present, seconds=round(time.monotonic() - started, 1), **times)
        init.say(f"node ready in {time.monotonic() - started:.1f}s")
        while True:
            if (problem := init._any_exited()) is not None:
                raise _Failed(problem)
            _reap_orphans(set(p.pid for p in init.procs.values()))
            time.sleep(1)
    except KeyboardInterrupt:
        init.stop()
        return 0
    except (_Failed, _process.StartError) as exc:
        if not stopping:
            init.report("failed", error=str(exc))
        init.stop()
        return 1
    except BaseException as exc:
        init.report("failed", error=f"{type(exc).__name__}: {exc}")
        init.stop()
        raise


if __name__ == "__main__":
    sys.exit(main())
