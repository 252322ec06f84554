"""The local cluster with a real node, from the host: start, stop, install the product.

:class:`NodeCluster` builds what it needs (the ``kcp`` binary, the images), starts
:mod:`localstack.sandbox` with :mod:`localstack.node` inside it, waits for the node's verdict and
writes a kubeconfig for the host (the API server through the relay on ``127.0.0.1``)::

    cluster = NodeCluster(Path(".local/node"))
    cluster.start()                 # control plane, containerd, kubelet, kube-proxy, CoreDNS
    cluster.install()               # kubectl apply -k localstack/overlays/node (the deploy/ base)
    cluster.stop()                  # nothing left running, mounted or namespaced

``python -m localstack.cluster up|down|status`` does the same from a shell (``make cluster-up``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from localstack import _process
from localstack._process import PidFile, StartError
from localstack.controlplane import ensure_binary
from localstack.node import NodeLayout, remove_cgroups

__all__ = ["NodeCluster", "StartError", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The user's kustomize base (deploy/) with the local node's differences (no storage
#: provisioner: Redis keeps its data on the node's disk).
OVERLAY = Path(__file__).resolve().parent / "overlays" / "node"
SYSTEM_NAMESPACE = "agentops-system"
WORKLOADS = ("statefulset/redis", "deployment/agentops-webhook", "deployment/agentops-controller")
#: Debian packages the node needs, by the command that tells whether each is there.
REQUIRED_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "mount": "mount",
}
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CNI_DIR = Path("/usr/lib/cni")

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


def missing_packages() -> list[str]:
    """Debian packages to install before the node can start (empty when nothing is missing)."""
    missing = {package for tool, package in REQUIRED_TOOLS.items() if shutil.which(tool) is None}
    if any(not (CNI_DIR / plugin).exists() for plugin in CNI_PLUGINS):
        missing.add("containernetworking-plugins")
    return sorted(missing)


class NodeCluster:
    """One local cluster with a real node, in one work directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        api_port: int | None = None,
        die_with_parent: bool = False,
        progress: Progress = _stderr,
    ) -> None:
        self.workdir = workdir.resolve()
        self.layout = NodeLayout(self.workdir)
        self.kubeconfig = self.workdir / "kubeconfig"
        self._requested_port = api_port
        self._die_with_parent = die_with_parent
        self._progress = progress
        self._pid_file = PidFile(self.workdir / "sandbox.pid")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.layout.log("sandbox")

    @property
    def running(self) -> bool:
        return self._pid_file.alive_pid() is not None

    def sandbox_pid(self) -> int | None:
        """The host pid of the process that holds the node's namespaces (its network namespace
        is ``/proc/<pid>/ns/net``), or None when the node is not running."""
        return self._pid_file.alive_pid()

    def state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.layout.state_file.read_text())
            return state
        except (OSError, ValueError):
            return {}

    @property
    def server(self) -> str:
        config = yaml.safe_load(self.kubeconfig.read_text())
        server: str = config["clusters"][0]["cluster"]["server"]
        return server

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 600.0, *, images: Sequence[Path] | None = None) -> None:
        """Build what is missing, start the node and return once it and its DNS are ready."""
        if self.running:
            raise StartError(
                f"a node is already running in {self.workdir}; stop it first "
                "(`python -m localstack.cluster down`)"
            )
        if missing := missing_packages():
            raise StartError(
                "the real node needs Debian packages that are not installed: "
                f"apt-get install -y {' '.join(missing)}"
            )
        binary = ensure_binary(self._progress)
        if images is None:
            from localstack import images as image_builder

            images = image_builder.ensure_images(self._progress)
        self._clean_leftovers()
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        self.layout.images_file.write_text("".join(f"{Path(p).resolve()}\n" for p in images))
        port = self._requested_port or _process.free_port()
        started = time.monotonic()
        self._progress(f"starting the node in {self.workdir} (API server relayed to 127.0.0.1:{port})")
        self._proc = _process.spawn(
            [
                sys.executable,
                "-m",
                "localstack.sandbox",
                f"--listen={port}",
                "--",
                sys.executable,
                "-m",
                "localstack.node",
                f"--workdir={self.workdir}",
                f"--binary={binary}",
            ],
            log=self.log,
            pid_file=self._pid_file,
            cwd=REPO_ROOT,
            die_with_parent=self._die_with_parent,
        )
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        self._write_host_kubeconfig(port)
        self._progress(f"node ready in {time.monotonic() - started:.0f}s; KUBECONFIG={self.kubeconfig}")

    def _wait_ready(self, deadline: float) -> None:
        last_step = ""
        while True:
            state = self.state()
            if state.get("phase") == "ready":
                return
            if state.get("phase") == "failed":
                raise StartError(
                    f"the node failed to start: {state.get('error')}\n(logs: {self.layout.logs})"
                )
            if state.get("step") and state["step"] != last_step:
                last_step = state["step"]
                self._progress(f"node: {last_step}")
            if self._proc is not None and self._proc.poll() is not None:
                raise StartError(
                    f"the node's sandbox exited with status {self._proc.returncode}; the end of "
                    f"{self.log}:\n{_process.tail(self.log, 25)}"
                )
            if time.monotonic() > deadline:
                raise StartError(
                    f"the node was not ready in time (last step: {last_step or 'none'}); "
                    f"logs: {self.layout.logs}"
                )
            time.sleep(0.2)

    def _write_host_kubeconfig(self, port: int) -> None:
        inside = yaml.safe_load((self.layout.controlplane / "kubeconfig").read_text())
        for cluster in inside["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.touch(mode=0o600, exist_ok=True)
        tmp.write_text(yaml.safe_dump(inside, sort_keys=False))
        tmp.replace(self.kubeconfig)

    def _clean_leftovers(self) -> None:
        """What a killed node leaves on the host: empty cgroups and its old runtime files."""
        if left := remove_cgroups(self.layout.cgroup_root):
            raise StartError(f"cgroups of an earlier node are still in use: {left}; is it still running?")
        for stale in (self.layout.run, self.layout.state_file, self.kubeconfig):
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the node; True if one was running.  Safe to call twice or from another process."""
        was_running = _process.stop(self._pid_file, timeout=timeout)
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=5)
            self._proc = None
        deadline = time.monotonic() + 10
        while (left := remove_cgroups(self.layout.cgroup_root)) and time.monotonic() < deadline:
            time.sleep(0.2)  # the kernel frees a cgroup shortly after its last task exits
        if left:
            raise StartError(f"could not remove the node's cgroups {left}")
        return was_running

    # --- the product ---------------------------------------------------------------------------

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def install(self, timeout: float = 300.0) -> None:
        """``kubectl apply -k`` the product and wait until every component is available."""
        self.kubectl("apply", "--server-side", "-k", str(OVERLAY), timeout=timeout)
        for workload in (
            "statefulset/redis",
            "deployment/agentops-webhook",
            "deployment/agentops-controller",
        ):
            self.kubectl(
                "-n",
                SYSTEM_NAMESPACE,
                "rollout",
                "status",
                workload,
                f"--timeout={int(timeout)}s",
                timeout=timeout + 10,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localstack.cluster", description="The local cluster with a real node."
    )
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".local" / "node")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start the node and install agentops-operator into it")
    up.add_argument("--no-install", action="store_true", help="start the node only")
    up.add_argument("--port", type=int, default=None, help="host port for the API server")
    sub.add_parser("down", help="stop the node")
    sub.add_parser("status", help="say whether the node runs")
    args = parser.parse_args(argv)
    cluster = NodeCluster(args.workdir, api_port=getattr(args, "port", None))
    try:
        if args.command == "up":
            cluster.start()
            if not args.no_install:
                cluster.install()
                cluster.kubectl("apply", "-f", str(REPO_ROOT / "deploy" / "samples"))
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            print("stopped" if cluster.stop() else "nothing was running")
        else:
            print(f"running, KUBECONFIG={cluster.kubeconfig}" if cluster.running else "not running")
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
