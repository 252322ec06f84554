"""The local stack: the whole system on one machine, started in the background.

``python -m localstack up`` (also ``agentops up`` and ``make up``):

1. checks for what it needs and installs what is missing (``redis-server`` through apt-get
   when run as root; the Go toolchain is only needed for the first control-plane build);
2. starts the control plane (:mod:`localstack.controlplane`) and Redis (:mod:`localstack.redis_server`),
   detached, so they keep running after the command returns;
3. installs the CRDs and the prompt audit trail's admission policy (the same manifest a cluster
   install ships), then starts every registered :data:`COMPONENTS` entry in order, waiting for
   each to be ready;
4. applies ``deploy/samples/`` (policies first, then agents, then pipelines);
5. prints how to point ``kubectl`` at the cluster.

A second ``up`` finds what already runs and starts only what is missing.  ``down`` stops
everything, components first; ``status`` says what runs.  All state - certificates, etcd's
data, Redis' append-only file, logs, pid files - lives under ``./.local/`` in the checkout
(gitignored), or ``$AGENTOPS_STATE_DIR``.

Adding a component (the webhook, the controller, local agents) is one entry in
:data:`COMPONENTS`; nothing else here changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

import kube
import kube.config
from localstack import _process
from localstack._process import PidFile, StartError
from localstack.agents import API_KEY_SECRET
from localstack.controlplane import FIELD_MANAGER, ControlPlane
from localstack.crds import CRD_DIR
from localstack.redis_server import FALLBACK_BINARY, RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "deploy" / "samples"
#: Evaluated by the API server itself: the audit trail holds even while the webhook is stopped.
AUDIT_TRAIL_POLICY = REPO_ROOT / "deploy" / "manifests" / "audit-trail-admission-policy.yaml"
#: Samples are applied in this order of kinds: policies before the agents they govern.
_KIND_ORDER = ("ClusterAgentPolicy", "AgentPolicy", "AgentDeployment", "AgentPipeline")


def default_state_dir() -> Path:
    """``$AGENTOPS_STATE_DIR``, else ``.local/`` in the source checkout, else in the current directory."""
    if explicit := os.environ.get("AGENTOPS_STATE_DIR"):
        return Path(explicit).resolve()
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / ".local"
    return Path.cwd() / ".local"


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """Every object in a YAML file (documents separated by ``---``; empty documents skipped)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            raise ValueError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return cast(list[dict[str, Any]], docs)


def say(message: str) -> None:
    print(f"[agentops] {message}", file=sys.stderr, flush=True)


# --- what a component sees and declares ----------------------------------------------------------


@dataclass(frozen=True)
class StackInfo:
    """What every component is told about the running stack."""

    state_dir: Path
    kubeconfig: Path
    server: str
    ca_file: Path
    redis_url: str

    def port(self, name: str) -> int:
        """A loopback port reserved for ``name``: chosen once, then the same on every ``up``."""
        ports_file = self.state_dir / "ports.json"
        try:
            ports: dict[str, int] = json.loads(ports_file.read_text())
        except (OSError, ValueError):
            ports = {}
        if name not in ports:
            ports[name] = _process.free_port()
            ports_file.write_text(json.dumps(ports, indent=2))
        return ports[name]

    def env(self) -> dict[str, str]:
        """Environment every component gets, before its own ``env``."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "AGENTOPS_STATE_DIR": str(self.state_dir),
            "AGENTOPS_REDIS_URL": self.redis_url,
            "AGENTOPS_KUBE_CA_FILE": str(self.ca_file),
            # Logs reach the log file as they happen, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
        }


def _no_env(info: StackInfo) -> Mapping[str, str]:
    return {}


@dataclass(frozen=True)
class Component:
    """One background process of the local stack.

    ``argv`` and ``env`` are functions of :class:`StackInfo`, so a component can name the
    kubeconfig, the Redis URL or a port from :meth:`StackInfo.port`.  ``ready`` returns True
    once the component serves; ``up`` waits for it (``ready_timeout`` seconds) before starting
    the next component.  Exceptions inside ``ready`` count as "not yet".
    """

    name: str
    argv: Callable[[StackInfo], list[str]]
    env: Callable[[StackInfo], Mapping[str, str]] = _no_env
    ready: Callable[[StackInfo], bool] | None = None
    ready_timeout: float = 60.0


def http_ready(url: Callable[[StackInfo], str], *, tls: bool = False) -> Callable[[StackInfo], bool]:
    """A readiness check: a GET of ``url(info)`` answers 200 (HTTPS without certificate checks if ``tls``)."""

    def check(info: StackInfo) -> bool:
        ctx = None
        if tls:
            # Loopback only, and the component's own CA may not exist yet when it starts.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(url(info), timeout=2, context=ctx) as response:  # noqa: S310
            return bool(response.status == 200)

    return check


def python_module(module: str, *args: str) -> Callable[[StackInfo], list[str]]:
    """``argv`` for ``python -m module args...`` with this interpreter (the project's venv)."""
    return lambda info: [sys.executable, "-m", module, *args]


def has_api_key() -> bool:
    """With ``ANTHROPIC_API_KEY`` set agents use Claude; without it, the offline provider."""
    return bool(os.environ.get("ANTHROPIC_API_KEY"))


def _webhook_argv(info: StackInfo) -> list[str]:
    url = f"https://127.0.0.1:{info.port('webhook')}"
    return [
        *python_module("webhook")(info),
        *("--kubeconfig", str(info.kubeconfig), "--host", "127.0.0.1", "--port", str(info.port("webhook"))),
        *("--cert-dir", str(info.state_dir / "webhook-certs"), "--register-url", url),
        "--unregister-on-exit",
    ]


def _controller_argv(info: StackInfo) -> list[str]:
    provider = ["--default-api-key-secret", API_KEY_SECRET] if has_api_key() else ["--offline-fallback"]
    return [
        *python_module("controller")(info),
        *("--kubeconfig", str(info.kubeconfig), "--redis-url", info.redis_url, "--standalone"),
        *("--liveness", f"http://127.0.0.1:{info.port('controller')}/healthz"),
        # As the install runs it: the webhook registers the configurations this names by default.
        "--native-admission",
        *provider,
    ]


def _agents_argv(info: StackInfo) -> list[str]:
    return [
        *python_module("localstack.agents")(info),
        *("--kubeconfig", str(info.kubeconfig), "--workdir", str(info.state_dir / "agents")),
    ]


#: The registration point: components started by ``up`` in this order (and stopped in reverse).
#: The webhook comes first so nothing reaches the cluster ungated; local agents last, once the
#: controller writes the Deployments whose pods they run.
COMPONENTS: list[Component] = [
    Component(
        "webhook",
        _webhook_argv,
        ready=http_ready(lambda info: f"https://127.0.0.1:{info.port('webhook')}/readyz", tls=True),
    ),
    Component(
        "controller",
        _controller_argv,
        ready=http_ready(lambda info: f"http://127.0.0.1:{info.port('controller')}/healthz"),
    ),
    Component("agents", _agents_argv),
]


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class LocalStack:
    state_dir: Path = field(default_factory=default_state_dir)
    components: list[Component] = field(default_factory=lambda: COMPONENTS)

    @property
    def control_plane(self) -> ControlPlane:
        return ControlPlane(self.state_dir / "controlplane", progress=say)

    @property
    def redis(self) -> RedisServer:
        return RedisServer(self.state_dir / "redis")

    def _component_pid(self, component: Component) -> PidFile:
        return PidFile(self.state_dir / "pids" / f"{component.name}.pid")

    def component_log(self, component: Component) -> Path:
        return self.state_dir / "logs" / f"{component.name}.log"

    def info(self) -> StackInfo:
        plane, redis = self.control_plane, self.redis
        return StackInfo(self.state_dir, plane.kubeconfig, plane.server, plane.ca_file, redis.url)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up`` or ``down`` at a time per state directory."""
        waiting = "another `up` or `down` is running on this state directory; waiting for it"
        with _process.exclusive_lock(self.state_dir / "stack.lock", lambda: say(waiting)):
            yield

    def status(self) -> dict[str, bool]:
        running = {"control-plane": self.control_plane.running, "redis": self.redis.running}
        for component in self.components:
            running[component.name] = self._component_pid(component).alive_pid() is not None
        return running

    def up(self, *, samples: bool = True) -> StackInfo:
        started = time.monotonic()
        with self._locked():
            before = self.status()
            if all(before.values()):
                say(f"the local stack is already running (state in {self.state_dir})")
                return self.info()
            ensure_redis_installed()
            plane = self.control_plane
            if plane.running:
                say(f"control plane already running at {plane.server}")
            else:
                if any(PidFile(p).alive_pid() for p in (plane.workdir / "pids").glob("*.pid")):
                    say("control plane is only partly running; restarting it")
                    plane.stop()
                plane.start(timeout=120)
            redis = self.redis
            if redis.running:
                say(f"redis already running at {redis.url}")
            else:
                redis.start()
                say(f"redis ready at {redis.url}")
            info = self.info()
            with kube.Client(kube.config.from_kubeconfig(info.kubeconfig)) as api:
                crds = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
                api.install_crds(crds, field_manager=FIELD_MANAGER)
                say(f"installed {len(crds)} CRDs")
                for obj in load_manifests(AUDIT_TRAIL_POLICY):
                    api.apply(obj, field_manager=FIELD_MANAGER)
                say(f"applied {AUDIT_TRAIL_POLICY.relative_to(REPO_ROOT)}")
                for component in self.components:
                    self._start_component(component, info)
                if samples:
                    self._apply_samples(api)
        say(f"up in {time.monotonic() - started:.1f}s")
        return info

    def _start_component(self, component: Component, info: StackInfo) -> None:
        pid_file = self._component_pid(component)
        if pid_file.alive_pid() is not None:
            say(f"{component.name} already running")
            return
        argv = component.argv(info)
        log = self.component_log(component)
        say(f"starting {component.name}: {shlex.join(argv)} (log: {log})")
        proc = _process.spawn(
            argv, log=log, pid_file=pid_file, env={**info.env(), **component.env(info)}, cwd=REPO_ROOT
        )
        if component.ready is None:
            return
        ready = component.ready

        def alive() -> str | None:
            if proc.poll() is None:
                return None
            ending = _process.tail(log)
            return f"{component.name} exited with status {proc.returncode}; the end of {log}:\n{ending}"

        _process.wait_until(
            lambda: ready(info),
            timeout=component.ready_timeout,
            what=component.name,
            alive=alive,
            interval=0.2,
        )
        say(f"{component.name} ready")

    def _apply_samples(self, api: kube.Client) -> None:
        objects = [obj for path in sorted(SAMPLES_DIR.glob("*.yaml")) for obj in load_manifests(path)]
        order = {kind: i for i, kind in enumerate(_KIND_ORDER)}
        objects.sort(key=lambda obj: order.get(obj["kind"], len(order)))
        for obj in objects:
            api.apply(obj, field_manager=FIELD_MANAGER, namespace="default")
            say(f"applied {obj['kind']} {obj['metadata']['name']}")

    def down(self) -> list[str]:
        """Stop everything (components first); returns the names of what was running."""
        stopped = []
        with self._locked():
            for component in reversed(self.components):
                if _process.stop(self._component_pid(component)):
                    stopped.append(component.name)
            redis = self.redis
            if redis.running:
                stopped.append("redis")
            redis.stop()
            plane = self.control_plane
            if any(PidFile(p).alive_pid() for p in (plane.workdir / "pids").glob("*.pid")):
                stopped.append("control-plane")
            plane.stop()
        return stopped


def ensure_redis_installed() -> None:
    """Install Debian's redis-server when it is missing and we may; otherwise say how."""
    if shutil.which("redis-server") or Path(FALLBACK_BINARY).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StartError(
            "redis-server is not installed: run `sudo apt-get install -y redis-server` "
            "(or install Redis >= 6.2 another way and put redis-server on PATH), then run `up` again"
        )
    say("redis-server is missing; installing it with apt-get (needed once)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(install, env=env, check=False).returncode != 0:
            raise StartError("`apt-get install -y redis-server` failed; see its output above")


# --- command line ----------------------------------------------------------------------------------


def cmd_up(stack: LocalStack, samples: bool = True) -> int:
    info = stack.up(samples=samples)
    provider = (
        "Claude (ANTHROPIC_API_KEY is set)"
        if has_api_key()
        else "offline: no ANTHROPIC_API_KEY, so every agent runs on the deterministic offline provider"
    )
    print(
        f"""
The local stack is running (state in {info.state_dir}).

  export KUBECONFIG={info.kubeconfig}
  kubectl get agdep,agpipe,clusteragentpolicies
  kubectl apply -f deploy/samples/research-agent.yaml

  export AGENTOPS_REDIS_URL={info.redis_url}
  agentops task submit research-agent "What is the capital of France?" --wait
  kubectl get agpipe -w

API server: {info.server}
Redis:      {info.redis_url}
Provider:   {provider}
Logs:       {info.state_dir}/controlplane/logs/, {info.state_dir}/logs/
Stop with:  python -m localstack down   (or: agentops down, make down)
"""
    )
    return 0


def cmd_down(stack: LocalStack) -> int:
    stopped = stack.down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(stack: LocalStack) -> int:
    running = stack.status()
    for name, alive in running.items():
        print(f"{name:<16} {'running' if alive else 'stopped'}")
    if running["control-plane"]:
        plane = stack.control_plane
        print(f"\nexport KUBECONFIG={plane.kubeconfig}   # API server {plane.server}")
    if running["redis"]:
        print(f"redis: {stack.redis.url}")
    # Like `systemctl status`: 0 when everything runs, 3 when something does not.
    return 0 if all(running.values()) else 3


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m localstack", description="Run agentops-operator locally."
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="default: .local/ in the checkout")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start the local stack in the background (idempotent)")
    up.add_argument("--no-samples", action="store_true", help="do not apply deploy/samples/")
    sub.add_parser("down", help="stop the local stack; leaves no process behind")
    sub.add_parser("status", help="say what is running")
    args = parser.parse_args(argv)
    stack = LocalStack(args.state_dir.resolve()) if args.state_dir else LocalStack()
    try:
        if args.command == "up":
            return cmd_up(stack, samples=not args.no_samples)
        if args.command == "down":
            return cmd_down(stack)
        return cmd_status(stack)
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run `python -m localstack down` to stop what did start", file=sys.stderr)
        return 130
