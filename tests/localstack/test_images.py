"""The local cluster's images: built here with debootstrap and buildah, cached, imported into a real
containerd, and run there as the manifests run them (non-root, read-only root filesystem).

The first run builds every image (minutes); later runs find them in the cache.  Every container
runs in a throwaway containerd of the test's own, never in the local cluster's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from localstack import _process, images
from localstack._process import PidFile, StartError

# A cold build (Debian bootstrap, the product's dependencies from PyPI, CoreDNS) takes minutes.
pytestmark = pytest.mark.timeout(1800)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("contracts", "kube", "policies", "certs", "webhook", "controller", "agent_runtime", "agentops")


def _progress(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def archives() -> list[Path]:
    images.ensure_build_tools()
    return images.ensure_images(_progress)


def _archive_of(archives: list[Path], name: str) -> Path:
    (found,) = [a for a in archives if name in images.archive_names(a)]
    return found


def _config(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config: dict[str, object] = json.load(tar.extractfile(manifest[0]["Config"]))["config"]  # type: ignore[arg-type]
    return config


def _layer_paths(archive: Path) -> set[str]:
    paths: set[str] = set()
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=tar.extractfile(layer)) as layer_tar:
                paths.update(member.name.removeprefix("./") for member in layer_tar)
    return paths


@dataclass(frozen=True)
class Containerd:
    """A containerd of this test module's own: its socket, and ctr bound to it."""

    address: str

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", self.address, "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def run(self, image: str, *command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` to completion in ``image`` with a read-only root, as the image's user."""
        return self.ctr("run", "--rm", "--read-only", image, f"t-{uuid.uuid4().hex[:8]}", *command)

    def task_status(self, container: str) -> str:
        listed = self.ctr("tasks", "ls").stdout.splitlines()
        return next((line.split()[2] for line in listed if line.split()[:1] == [container]), "")

    def remove(self, container: str) -> None:
        self.ctr("tasks", "kill", "--signal", "SIGKILL", container)
        _process.wait_until(
            lambda: self.task_status(container) in ("STOPPED", ""), timeout=30, what=f"{container} to stop"
        )
        self.ctr("tasks", "delete", container)
        self.ctr("containers", "delete", container)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory, archives: list[Path]) -> Iterator[Containerd]:
    workdir = tmp_path_factory.mktemp("containerd")
    address = str(workdir / "containerd.sock")
    config = workdir / "config.toml"
    # No CRI plugin: this containerd only imports and runs the images, it serves no kubelet.
    config.write_text(
        "version = 2\n"
        f'root = "{workdir}/root"\nstate = "{workdir}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{address}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{workdir}/opt"\n'
    )
    pid_file = PidFile(workdir / "containerd.pid")
    log = workdir / "containerd.log"
    proc = _process.spawn(
        ["containerd", "--config", str(config)], log=log, pid_file=pid_file, die_with_parent=True
    )
    daemon = Containerd(address)
    try:
        _process.wait_until(
            lambda: daemon.ctr("version", timeout=5).returncode == 0,
            timeout=30,
            what="the test's containerd",
            alive=lambda: None if proc.poll() is None else f"containerd exited:\n{_process.tail(log)}",
        )
        yield daemon
    finally:
        # Shims outlive containerd by design: every task goes before the daemon does.
        for container in daemon.ctr("containers", "ls", "-q").stdout.split():
            daemon.remove(container)
        _process.stop(pid_file)
        # The unpacked images: pytest keeps its last few temporary directories, and these are large.
        shutil.rmtree(workdir / "root", ignore_errors=True)


@pytest.fixture(scope="module")
def imported(containerd: Containerd, archives: list[Path]) -> list[str]:
    return images.import_images(containerd.address, archives)


def test_each_archive_holds_the_name_kubelet_asks_for(archives: list[Path]) -> None:
    assert [images.archive_names(a) for a in archives] == [[name] for name in images.IMAGE_NAMES]
    assert images.PRODUCT_IMAGE == "docker.io/library/agentops-operator:0.1.0"
    assert images.REDIS_IMAGE == "docker.io/library/redis:7.2"
    for archive in archives:
        assert archive.parent == images.images_dir()
        assert re.fullmatch(r"[a-z-]+-[0-9a-f]{16}\.tar", archive.name), archive.name


def test_a_second_call_builds_nothing(archives: list[Path]) -> None:
    logs = sorted(images.images_dir().glob("*-build.log"))
    assert logs, "the first build wrote no build log"
    before = {p: p.stat().st_mtime_ns for p in [*archives, *logs]}
    log_sizes = {p: p.stat().st_size for p in logs}
    messages: list[str] = []

    started = time.monotonic()
    again = images.ensure_images(messages.append)

    assert again == archives
    assert time.monotonic() - started < 5
    assert messages == [], "a cached image was built again"
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert {p: p.stat().st_size for p in logs} == log_sizes


def test_product_image_runs_as_10001_with_no_entrypoint(archives: list[Path]) -> None:
    config = _config(_archive_of(archives, images.PRODUCT_IMAGE))
    assert config["User"] == "10001:10001"
    # The webhook's manifest gives the whole command as args: an entrypoint would be prepended.
    assert not config.get("Entrypoint")
    env = config["Env"]
    assert isinstance(env, list)
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert any(e.startswith("PATH=/opt/agentops/bin:") for e in env)


def test_product_image_holds_the_shipped_packages_and_nothing_local(archives: list[Path]) -> None:
    paths = _layer_paths(_archive_of(archives, images.PRODUCT_IMAGE))
    site = "opt/agentops/lib/python3.11/site-packages"
    for package in SHIPPED:
        assert f"{site}/{package}/__init__.py" in paths
    leaked = sorted(
        p
        for p in paths
        if re.match(rf"{site}/(localstack|tests|benchmarks|deploy)(/|$)", p) or p.startswith("src/")
    )
    assert leaked == []
    assert not any(p.startswith("wheels/") for p in paths), (
        "the build stage's wheels reached the runtime image"
    )


def test_containerd_lists_every_imported_image(containerd: Containerd, imported: list[str]) -> None:
    assert imported == list(images.IMAGE_NAMES)
    listed = containerd.ctr("images", "ls", "-q").stdout.split()
    assert set(images.IMAGE_NAMES) <= set(listed)


@pytest.mark.parametrize("component", ["webhook", "controller"])
def test_components_start_from_a_read_only_root(
    containerd: Containerd, imported: list[str], component: str
) -> None:
    result = containerd.run(images.PRODUCT_IMAGE, "python", "-m", component, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {component}")


def test_agent_runtime_starts_and_checks_its_environment(containerd: Containerd, imported: list[str]) -> None:
    # The runtime has no --help: it is configured by the controller through its environment.
    result = containerd.run(images.PRODUCT_IMAGE, "python", "-m", "agent_runtime")
    assert result.returncode == 2
    assert (
        "invalid agent runtime environment: AGENTOPS_NAMESPACE: Field required"
        in result.stdout + result.stderr
    )


def test_product_runs_as_10001(containerd: Containerd, imported: list[str]) -> None:
    result = containerd.run(images.PRODUCT_IMAGE, "id")
    assert result.stdout.strip() == "uid=10001(agentops) gid=10001(agentops) groups=10001(agentops)"


def test_every_module_loads_from_precompiled_bytecode(containerd: Containerd, imported: list[str]) -> None:
    # `python -v` says where each module's code came from: a .pyc, or its source compiled on the
    # spot (which a read-only root would make every process repeat at every start).
    result = containerd.run(
        images.PRODUCT_IMAGE,
        "python",
        "-v",
        "-c",
        "import webhook.app, controller.handlers, agent_runtime.worker",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = re.findall(r"^# code object from '?(\S+?)'?$", result.stderr, re.MULTILINE)
    assert len(loaded) > 100
    assert [path for path in loaded if not path.endswith(".pyc")] == []


def test_redis_answers_ping_with_the_manifests_args(
    containerd: Containerd, imported: list[str], archives: list[Path], tmp_path: Path
) -> None:
    manifest = next(
        d
        for d in yaml.safe_load_all((REPO_ROOT / "deploy/manifests/redis.yaml").read_text())
        if d["kind"] == "StatefulSet"
    )
    pod = manifest["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    # What kubelet runs: the manifest's command, else the image's entrypoint; then the manifest's
    # args, else the image's Cmd.
    config = _config(_archive_of(archives, images.REDIS_IMAGE))
    image_entrypoint, image_cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
    assert isinstance(image_entrypoint, list)
    assert isinstance(image_cmd, list)
    argv = [*(spec.get("command") or image_entrypoint), *(spec.get("args") or image_cmd)]
    assert argv[0] == "redis-server"
    data = tmp_path / "data"
    data.mkdir()
    uid = pod["securityContext"]["runAsUser"]
    data.chmod(0o700)
    os.chown(data, uid, pod["securityContext"]["runAsGroup"])
    container = f"redis-{uuid.uuid4().hex[:8]}"
    started = containerd.ctr(
        "run",
        "--detach",
        "--read-only",
        "--mount",
        f"type=bind,src={data},dst=/data,options=rbind:rw",
        images.REDIS_IMAGE,
        container,
        *argv,
    )
    assert started.returncode == 0, started.stderr
    try:

        def ping() -> bool:
            exec_id = f"ping-{uuid.uuid4().hex[:8]}"
            return (
                containerd.ctr("tasks", "exec", "--exec-id", exec_id, container, "redis-cli", "ping").stdout
                == "PONG\n"
            )

        _process.wait_until(ping, timeout=30, what="redis in its image")
        whoami = containerd.ctr("tasks", "exec", "--exec-id", "id", container, "id", "-u")
        assert whoami.stdout.strip() == str(uid)
        assert (data / "appendonlydir").is_dir(), "--appendonly yes --dir /data wrote nothing to /data"
    finally:
        containerd.remove(container)


def test_coredns_reports_its_version(
    containerd: Containerd, imported: list[str], archives: list[Path]
) -> None:
    version = images.COREDNS_IMAGE.rsplit(":", 1)[1]
    binary = images.coredns_tool().ensure(_progress)
    assert subprocess.run([str(binary), "-version"], capture_output=True, text=True).stdout.startswith(
        f"CoreDNS-{version}\n"
    )
    config = _config(_archive_of(archives, images.COREDNS_IMAGE))
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/coredns"]
    result = containerd.run(images.COREDNS_IMAGE, "/coredns", "-version")
    assert result.stdout.startswith(f"CoreDNS-{version}\n"), result.stderr
    # Only the cluster DNS plugins are in: a cloud back end would mean the build took upstream's list.
    plugins = containerd.run(images.COREDNS_IMAGE, "/coredns", "-plugins").stdout.split()
    assert {"kubernetes", "cache", "health", "ready", "loop", "reload", "errors"} <= set(plugins)
    assert not {"route53", "azure", "clouddns", "etcd"} & set(plugins)


def test_pause_sleeps_until_sigterm(
    containerd: Containerd, imported: list[str], archives: list[Path]
) -> None:
    config = _config(_archive_of(archives, images.PAUSE_IMAGE))
    entrypoint = config["Entrypoint"]
    assert isinstance(entrypoint, list)
    assert config["User"] == "65535:65535"
    container = f"pause-{uuid.uuid4().hex[:8]}"
    started = containerd.ctr("run", "--detach", "--read-only", images.PAUSE_IMAGE, container, *entrypoint)
    assert started.returncode == 0, started.stderr
    try:
        _process.wait_until(lambda: containerd.task_status(container) == "RUNNING", timeout=30, what="pause")
        containerd.ctr("tasks", "kill", "--signal", "SIGTERM", container)
        _process.wait_until(
            lambda: containerd.task_status(container) == "STOPPED",
            timeout=10,
            what="pause to exit on SIGTERM",
        )
    finally:
        containerd.remove(container)


def test_import_without_containerd_says_so(archives: list[Path], tmp_path: Path) -> None:
    with pytest.raises(StartError, match="no containerd listens on"):
        images.import_images(str(tmp_path / "absent.sock"), archives)


def test_a_file_that_is_no_archive_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "redis-0000000000000000.tar"
    bogus.write_text("not a tar")
    with pytest.raises(StartError, match="is not a docker-archive"):
        images.archive_names(bogus)
