"""The container images of the local cluster, built on this machine with no registry and no Docker engine.

::

    ensure_build_tools()                  # debootstrap, buildah, ctr: say what to install if missing
    archives = ensure_images()            # build what changed, return the cached archives
    import_images("/path/to/containerd.sock", archives)   # into containerd's k8s.io namespace

Owns the recipes of five images and their cache:

* ``localhost/agentops/debian-python:bookworm`` - the base: Debian bookworm from ``debootstrap
  --variant=minbase`` with python3, python3-venv and ca-certificates, security updates applied.
  It stays in buildah's storage; the product and Redis start from it.
* ``docker.io/library/agentops-operator:<version>`` - the product, built from ``deploy/Dockerfile``
  (the same file users build with Docker) with ``BASE_IMAGE`` set to the base.
* ``docker.io/library/redis:7.2`` - Debian's redis-server (7.0) and redis-cli, run as uid 999, under
  the name ``deploy/manifests/redis.yaml`` uses.
* ``docker.io/agentops/coredns:<version>`` - the cluster DNS: CoreDNS built from ``localstack/coredns``
  as a static binary in an image ``FROM scratch``, run as uid 65532.
* ``registry.k8s.io/pause:3.10`` - the pod sandbox image containerd's CRI starts for every pod:
  ``localstack/pause`` built static into an image ``FROM scratch``, run as uid 65535.

Each image the cluster runs is written to ``<cache>/images/<name>-<hash>.tar`` as a docker-archive
(which ``ctr images import`` reads), where the hash covers everything the image is made of: its
recipe, the base's recipe and, for the product, the Dockerfile and every file it copies.  An
unchanged image is not rebuilt, and concurrent callers share one build through a file lock.
buildah keeps its storage under ``<cache>/images/buildah`` rather than in /var/lib/containers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from localstack import _process
from localstack._process import StartError
from localstack.gobuild import GoTool, Progress, cache_dir

__all__ = [
    "APT_PACKAGES",
    "BASE_IMAGE",
    "COREDNS_IMAGE",
    "IMAGE_NAMES",
    "PAUSE_IMAGE",
    "PRODUCT_IMAGE",
    "REDIS_IMAGE",
    "StartError",
    "archive_names",
    "coredns_tool",
    "ensure_build_tools",
    "ensure_images",
    "images_dir",
    "import_images",
    "pause_tool",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
COREDNS_MODULE = Path(__file__).resolve().parent / "coredns"
PAUSE_MODULE = Path(__file__).resolve().parent / "pause"

#: Debian packages that provide the build and import tools, for the install hint.
APT_PACKAGES: tuple[str, ...] = ("debootstrap", "buildah", "containerd", "debian-archive-keyring")
_INSTALL_HINT = f"apt-get install -y {' '.join(APT_PACKAGES)}"
#: debootstrap and ctr live in sbin / bin; a non-login root shell may lack /usr/sbin on PATH.
_TOOL_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
_TOOLS: dict[str, str] = {"debootstrap": "debootstrap", "buildah": "buildah", "ctr": "containerd"}
_DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

_SUITE = "bookworm"
_BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = f"localhost/agentops/debian-python:{_SUITE}"


def _project_version() -> str:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def _coredns_version() -> str:
    match = re.search(
        r"^\s*(?:require\s+)?github\.com/coredns/coredns\s+v(\S+)",
        (COREDNS_MODULE / "go.mod").read_text(),
        re.MULTILINE,
    )
    if match is None:
        raise StartError(f"{COREDNS_MODULE / 'go.mod'} does not require github.com/coredns/coredns")
    return match.group(1)


#: kubelet turns the manifests' ``agentops-operator:0.1.0`` into this name before it looks the image up.
PRODUCT_IMAGE = f"docker.io/library/agentops-operator:{_project_version()}"
REDIS_IMAGE = "docker.io/library/redis:7.2"
COREDNS_IMAGE = f"docker.io/agentops/coredns:{_coredns_version()}"
#: containerd's CRI ``sandbox_image`` must name this image: there is no registry to pull the default from.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
IMAGE_NAMES: tuple[str, ...] = (PRODUCT_IMAGE, REDIS_IMAGE, COREDNS_IMAGE, PAUSE_IMAGE)

#: overlay needs a kernel with overlayfs and a cache on a filesystem that can be an overlay's
#: upper layer (ext4, xfs, btrfs; not overlayfs itself).  vfs works everywhere but copies every
#: layer whole: measured here, it took 40% longer for a cold build and 60% more disk.
_STORAGE_DRIVER = os.environ.get("AGENTOPS_BUILDAH_DRIVER", "overlay")

# The base's recipe, hashed as it stands: changing any of it rebuilds every image.
_BASE_SETUP = """\
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get -y upgrade
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log
"""
_POLICY_RC_D = "#!/bin/sh\n# Packages must not start services while an image is built.\nexit 101\n"
_APT_CONF = 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Languages "none";\n'
_DPKG_NODOC = (
    "# Images carry no documentation; the licences stay.\n"
    "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
    "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n"
)
_BASE_CONFIG: tuple[str, ...] = (
    "--env",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--env",
    "LANG=C.UTF-8",
    "--cmd",
    '["/bin/bash"]',
)

# uid/gid 999 as deploy/manifests/redis.yaml runs it; created before the package, whose
# maintainer script would otherwise pick the next free system uid.
_REDIS_SETUP = """\
set -eu
export DEBIAN_FRONTEND=noninteractive
groupadd --system --gid 999 redis
useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --no-create-home \
  --shell /usr/sbin/nologin redis
apt-get update
apt-get install -y --no-install-recommends redis-server redis-tools
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
mkdir -p /data
chown redis:redis /data
redis-server --version
"""
# Without a config file Redis listens on every address in protected mode, which refuses clients
# that are not on loopback - every other pod.  The official image patches protected mode out; we
# say it on the command line, before the manifest's args, which become further options.
_REDIS_CONFIG: tuple[str, ...] = (
    "--entrypoint",
    '["redis-server", "--protected-mode", "no"]',
    "--cmd",
    "",
    "--user",
    "999:999",
    "--workingdir",
    "/data",
    "--port",
    "6379/tcp",
)
# A non-root CoreDNS cannot bind port 53: its Corefile listens on a high port behind the Service.
_COREDNS_CONFIG: tuple[str, ...] = (
    "--entrypoint",
    '["/coredns"]',
    "--cmd",
    "",
    "--user",
    "65532:65532",
    "--workingdir",
    "/",
    "--port",
    "1053/udp",
    "--port",
    "1053/tcp",
    "--port",
    "9153/tcp",
)
_PAUSE_CONFIG: tuple[str, ...] = (
    "--entrypoint",
    '["/pause"]',
    "--cmd",
    "",
    "--user",
    "65535:65535",
    "--workingdir",
    "/",
)


def _stderr(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def images_dir() -> Path:
    """Where the archives, build logs and buildah's storage live: ``<cache>/images``."""
    return cache_dir() / "images"


def pause_tool() -> GoTool:
    """The sandbox binary: static and stripped, like CoreDNS."""
    return GoTool(
        name="pause", source_dir=PAUSE_MODULE, ldflags="-s -w", cgo=False, describe="the pod sandbox"
    )


def coredns_tool() -> GoTool:
    """The CoreDNS binary: static (the image has no libc) and stripped (it is only ever run)."""
    return GoTool(
        name="coredns",
        source_dir=COREDNS_MODULE,
        ldflags="-s -w",
        cgo=False,
        describe=f"CoreDNS {_coredns_version()}",
    )


# --- tools ------------------------------------------------------------------------------------


def _which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None:
        found = next((f"{d}/{tool}" for d in _TOOL_DIRS if Path(f"{d}/{tool}").is_file()), None)
    return found


def ensure_build_tools() -> None:
    """Raise :class:`StartError` naming every missing build or import tool and how to install it."""
    missing = [f"{tool} (package {package})" for tool, package in _TOOLS.items() if _which(tool) is None]
    if not _DEBIAN_KEYRING.exists():
        missing.append(f"{_DEBIAN_KEYRING} (package debian-archive-keyring)")
    if missing:
        raise StartError(
            "building the local cluster's images needs " + ", ".join(missing) + f": run `{_INSTALL_HINT}` "
            "as root and try again"
        )
    if os.geteuid() != 0:
        raise StartError(
            "building the local cluster's images needs root (debootstrap creates device nodes and "
            "buildah mounts layers): run the command as root, e.g. with sudo"
        )


def _tool(name: str) -> str:
    found = _which(name)
    if found is None:
        raise StartError(f"{name} is not installed (package {_TOOLS[name]}): run `{_INSTALL_HINT}`")
    return found


# --- Debian mirrors ---------------------------------------------------------------------------


def _apt_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of the host's apt sources, deb822 and one-line style."""
    found: list[tuple[str, list[str]]] = []
    sources_d = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                found.append((uri, fields.get("suites", "").split()))
    lists = [Path("/etc/apt/sources.list"), *sorted(sources_d.glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], [words[2]]))
    return found


def _debian_mirrors() -> tuple[str, str]:
    """The host's Debian archive and security mirrors, else deb.debian.org's.

    Only http(s) URIs whose path names the archive are taken: an Ubuntu host's mirror does not
    carry bookworm, and a local ``file:`` repository is not reachable from a build container.
    """
    main, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    main_found = security_found = False
    for uri, suites in _apt_sources():
        if not uri.startswith(("http://", "https://")):
            continue
        path = uri.rstrip("/")
        if not security_found and path.endswith("/debian-security"):
            security, security_found = path, True
        elif not main_found and path.endswith("/debian") and not any(s.endswith("-security") for s in suites):
            main, main_found = path, True
    return main, security


def _sources_deb822(main: str, security: str) -> str:
    return (
        f"Types: deb\nURIs: {main}\nSuites: {_SUITE} {_SUITE}-updates\nComponents: main\n"
        f"Signed-By: {_DEBIAN_KEYRING}\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {_SUITE}-security\nComponents: main\n"
        f"Signed-By: {_DEBIAN_KEYRING}\n"
    )


# --- running the tools ------------------------------------------------------------------------


def _storage_args() -> list[str]:
    root = images_dir() / "buildah"
    return [
        "--root",
        str(root / "root"),
        "--runroot",
        str(root / "run"),
        "--storage-driver",
        _STORAGE_DRIVER,
    ]


def _buildah(*args: str) -> list[str]:
    return [_tool("buildah"), *_storage_args(), *args]


def _host_trust() -> list[str]:
    """pip sees the host's CA bundle, for a host that reaches PyPI through a TLS proxy.

    Bind-mounted for the build steps only: an image must not trust what the build machine trusts.
    """
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    return ["--volume", f"{bundle}:{bundle}:ro"] if Path(bundle).is_file() else []


def _buildah_run(container: str, script: str) -> list[str]:
    # chroot isolation: the build needs no namespaces of its own, and runc's would add nothing
    # but failure modes on hosts that restrict them.  Host network: apt reaches the mirror.
    # No host CA bundle here: the ca-certificates package rewrites that very file.
    return _buildah(
        "run", "--isolation", "chroot", "--network", "host", container, "--", "/bin/sh", "-c", script
    )


def _capture(argv: Sequence[str], what: str) -> str:
    """Run a short command; its stdout, or a StartError with its stderr."""
    result = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StartError(
            f"{what} failed ({shlex.join(argv)}, exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return result.stdout.strip()


def _succeeds(argv: Sequence[str]) -> bool:
    return subprocess.run(list(argv), capture_output=True, stdin=subprocess.DEVNULL).returncode == 0


def _run_logged(
    argv: Sequence[str], *, log: Path, what: str, progress: Progress, cwd: Path | None = None
) -> None:
    """Run a long command with its output appended to ``log``; say every 30s that it still runs."""
    started = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
            )
        except FileNotFoundError as exc:
            raise StartError(
                f"{what}: cannot run {argv[0]!r}: {exc.strerror}; run `{_INSTALL_HINT}`"
            ) from None
        done = threading.Event()

        def report() -> None:
            while not done.wait(30):
                progress(f"still {what}: {time.monotonic() - started:.0f}s elapsed (log: {log})")

        threading.Thread(target=report, daemon=True).start()
        try:
            status = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
    if status != 0:
        raise StartError(f"{what} failed (exit {status}); see {log}:\n{_process.tail(log, 25)}")


# --- hashing ----------------------------------------------------------------------------------


def _digest(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def _base_hash() -> str:
    return _digest(
        # The code is part of the recipe: a changed step must not reuse the old base.
        inspect.getsource(_build_base),
        inspect.getsource(_configure_rootfs),
        inspect.getsource(_remove),
        _SUITE,
        *_BASE_PACKAGES,
        _BASE_SETUP,
        _POLICY_RC_D,
        _APT_CONF,
        _DPKG_NODOC,
        *_BASE_CONFIG,
    )


def _dockerfile_sources(dockerfile: Path) -> list[Path]:
    """Every path of the build context that a ``COPY`` (not ``--from`` a stage) reads."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources: list[Path] = []
    for line in joined.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        if any(w.startswith("--from") for w in words[1:]):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        sources.extend(REPO_ROOT / src for src in args[:-1])
    return sources


def _tree_files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise StartError(f"{DOCKERFILE} copies {path}, which does not exist")
    for child in sorted(path.rglob("*")):
        if child.is_file() and "__pycache__" not in child.parts and child.suffix != ".pyc":
            yield child


# --- recipes ----------------------------------------------------------------------------------


_Builder = Callable[["_Image", "str | None", Progress], None]


@dataclass(frozen=True)
class _Image:
    """One image the cluster runs: its archive's name and how it is built."""

    key: str
    name: str
    build: _Builder
    needs_base: bool
    #: What the image is made of besides its builder's code and the base: the hash's other inputs.
    inputs: tuple[str | bytes, ...]

    @property
    def hash(self) -> str:
        base = _base_hash() if self.needs_base else ""
        return _digest(self.key, inspect.getsource(self.build), base, *self.inputs)

    def archive(self) -> Path:
        return images_dir() / f"{self.key}-{self.hash}.tar"

    def log(self) -> Path:
        return images_dir() / f"{self.key}-build.log"


def _product_inputs() -> tuple[bytes, ...]:
    parts = [DOCKERFILE.read_bytes()]
    for source in _dockerfile_sources(DOCKERFILE):
        for file in _tree_files(source):
            parts += [str(file.relative_to(REPO_ROOT)).encode(), file.read_bytes()]
    return tuple(parts)


def _images() -> list[_Image]:
    coredns, pause = coredns_tool(), pause_tool()
    return [
        _Image("agentops-operator", PRODUCT_IMAGE, _build_product, True, _product_inputs()),
        _Image("redis", REDIS_IMAGE, _build_redis, True, (_REDIS_SETUP, *_REDIS_CONFIG)),
        _Image(
            "coredns",
            COREDNS_IMAGE,
            _build_coredns,
            False,
            (coredns.source_hash(), coredns.ldflags, *_COREDNS_CONFIG),
        ),
        _Image(
            "pause", PAUSE_IMAGE, _build_pause, False, (pause.source_hash(), pause.ldflags, *_PAUSE_CONFIG)
        ),
    ]


def _the(base: str | None) -> str:
    if base is None:
        raise AssertionError("an image built from the base was built without it")
    return base


def _base_tag() -> str:
    """The base as built from the current recipe; ``BASE_IMAGE`` names the newest one."""
    return f"{BASE_IMAGE}-{_base_hash()}"


def _build_base(progress: Progress) -> str:
    tag = _base_tag()
    if _succeeds(_buildah("inspect", "--type", "image", tag)):
        return tag
    log = images_dir() / "debian-python-build.log"
    log.write_text("")
    main, security = _debian_mirrors()
    progress(f"building the Debian {_SUITE} base from {main} with debootstrap (a few minutes; log: {log})")
    started = time.monotonic()
    container = _capture(
        _buildah("from", "--name", "agentops-base", "scratch"), "creating the base container"
    )
    rootfs = Path(_capture(_buildah("mount", container), "mounting the base container"))
    try:
        _run_logged(
            [
                _tool("debootstrap"),
                "--variant=minbase",
                f"--include={','.join(_BASE_PACKAGES)}",
                f"--keyring={_DEBIAN_KEYRING}",
                _SUITE,
                str(rootfs),
                main,
            ],
            log=log,
            what="bootstrapping Debian",
            progress=progress,
        )
    finally:
        _unmount_below(rootfs)
    _configure_rootfs(rootfs, main, security)
    _capture(_buildah("umount", container), "unmounting the base container")
    _run_logged(
        _buildah_run(container, _BASE_SETUP),
        log=log,
        what="applying Debian's updates to the base",
        progress=progress,
    )
    _capture(_buildah("config", *_BASE_CONFIG, container), "configuring the base")
    _capture(_buildah("commit", "--quiet", "--rm", container, tag), "committing the base")
    _capture(_buildah("tag", tag, BASE_IMAGE), "tagging the base")
    for old in _capture(_buildah("images", "--format", "{{.Name}}:{{.Tag}}"), "listing images").split():
        if old.startswith(f"{BASE_IMAGE}-") and old != tag:
            _succeeds(_buildah("rmi", old))
    progress(f"built the base {tag} in {time.monotonic() - started:.0f}s")
    return tag


def _configure_rootfs(rootfs: Path, main: str, security: str) -> None:
    """What ``debootstrap`` leaves as the host had it, or that an image should not carry."""
    apt = rootfs / "etc/apt"
    (apt / "sources.list").unlink(missing_ok=True)
    (apt / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list.d/debian.sources").write_text(_sources_deb822(main, security))
    (apt / "apt.conf.d/90agentops").write_text(_APT_CONF)
    (rootfs / "etc/dpkg/dpkg.cfg.d/90agentops-nodoc").write_text(_DPKG_NODOC)
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text(_POLICY_RC_D)
    policy.chmod(0o755)
    # The host's files, copied by debootstrap; container runtimes provide their own.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)
    # Device nodes in a layer make the image impossible to unpack without root; runtimes mount /dev.
    for entry in (rootfs / "dev").iterdir():
        _remove(entry)
    # What the dpkg path-excludes keep out of later installs, removed from the bootstrap's packages.
    for pattern in ("usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"):
        for entry in rootfs.glob(pattern):
            _remove(entry)
    for doc in (rootfs / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            _remove(doc)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _unmount_below(root: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted inside the rootfs (/proc, /sys)."""
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _build_product(image: _Image, base: str | None, progress: Progress) -> None:
    _run_logged(
        _buildah(
            "bud",
            "--isolation",
            "chroot",
            # pip fetches the product's dependencies from PyPI during the build.
            "--network",
            "host",
            "--pull=never",
            *_host_trust(),
            "--build-arg",
            f"BASE_IMAGE={_the(base)}",
            "-f",
            str(DOCKERFILE),
            "-t",
            image.name,
            str(REPO_ROOT),
        ),
        log=image.log(),
        what=f"building {image.name}",
        progress=progress,
        cwd=REPO_ROOT,
    )


def _build_redis(image: _Image, base: str | None, progress: Progress) -> None:
    container = _capture(
        _buildah("from", "--pull=never", "--name", "agentops-redis", _the(base)), "creating redis"
    )
    _run_logged(
        _buildah_run(container, _REDIS_SETUP),
        log=image.log(),
        what=f"installing redis-server into {image.name}",
        progress=progress,
    )
    _capture(_buildah("config", *_REDIS_CONFIG, container), "configuring redis")
    _capture(_buildah("commit", "--quiet", "--rm", container, image.name), "committing redis")


def _scratch_image(image: _Image, what: str, binary: Path, config: Sequence[str]) -> None:
    """An image ``FROM scratch`` holding one static binary at ``/<what>``."""
    container = _capture(_buildah("from", "--name", f"agentops-{what}", "scratch"), f"creating {what}")
    _capture(_buildah("copy", "--chmod", "0755", container, str(binary), f"/{what}"), f"copying {what}")
    _capture(_buildah("config", *config, container), f"configuring {what}")
    _capture(_buildah("commit", "--quiet", "--rm", container, image.name), f"committing {what}")


def _build_coredns(image: _Image, base: str | None, progress: Progress) -> None:
    _scratch_image(image, "coredns", coredns_tool().ensure(progress), _COREDNS_CONFIG)


def _build_pause(image: _Image, base: str | None, progress: Progress) -> None:
    _scratch_image(image, "pause", pause_tool().ensure(progress), _PAUSE_CONFIG)


def _build(image: _Image, base: str | None, progress: Progress) -> None:
    image.log().write_text("")
    progress(f"building {image.name} (log: {image.log()})")
    started = time.monotonic()
    image.build(image, base, progress)
    target = image.archive()
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    # docker-archive: the format `docker save` writes, which every containerd's `ctr images
    # import` reads; the reference inside is the exact name kubelet will ask containerd for.
    _run_logged(
        _buildah("push", "--quiet", image.name, f"docker-archive:{partial}:{image.name}"),
        log=image.log(),
        what=f"writing the archive of {image.name}",
        progress=progress,
    )
    partial.replace(target)
    # The previous archive stays until the next build: a caller that was handed its path a moment
    # ago (a cluster start importing it) must still find it.
    older = sorted(
        (p for p in images_dir().glob(f"{image.key}-*.tar") if p != target), key=lambda p: p.stat().st_mtime
    )
    for old in older[:-1]:
        old.unlink(missing_ok=True)
    size = target.stat().st_size / 2**20
    progress(f"built {image.name} in {time.monotonic() - started:.0f}s: {target.name}, {size:.0f} MiB")


def _remove_leftover_containers() -> None:
    """Working containers of a build that was killed: every container in our storage is one."""
    root = images_dir() / "buildah" / "root"
    if root.exists():
        _unmount_below(root)
        _succeeds(_buildah("rm", "--all"))


def ensure_images(progress: Progress = _stderr) -> list[Path]:
    """The docker-archives of every image the local cluster runs, building those that changed.

    In the order of :data:`IMAGE_NAMES`.  Concurrent callers share one build.
    """
    images = _images()
    if all(image.archive().exists() for image in images):
        return [image.archive() for image in images]
    ensure_build_tools()
    directory = images_dir()
    directory.mkdir(parents=True, exist_ok=True)
    waiting = "another process is building the cluster's images; waiting for it"
    with _process.exclusive_lock(directory / "images.lock", lambda: progress(waiting)):
        missing = [image for image in images if not image.archive().exists()]
        if missing:
            _remove_leftover_containers()
            base = _build_base(progress) if any(image.needs_base for image in missing) else None
            for image in missing:
                _build(image, base, progress)
            # Images whose tag moved to a new build; their layers are never used again.
            _succeeds(_buildah("rmi", "--prune"))
    return [image.archive() for image in images]


# --- archives and containerd ------------------------------------------------------------------


def archive_names(archive: Path) -> list[str]:
    """The image names a docker-archive holds (its ``manifest.json`` ``RepoTags``)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest = json.load(member)
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as exc:
        raise StartError(f"{archive} is not a docker-archive ({exc}); delete it and build again") from None
    return [tag for entry in manifest for tag in entry.get("RepoTags") or []]


def _ctr(address: str, namespace: str, *args: str) -> list[str]:
    return [_tool("ctr"), "--address", address, "--namespace", namespace, *args]


def import_images(
    containerd_address: str,
    archives: Sequence[Path],
    *,
    namespace: str = "k8s.io",
    snapshotter: str | None = None,
    unpack: bool = True,
) -> list[str]:
    """Import ``archives`` into containerd and return the image names, each checked to be there.

    ``k8s.io`` is the namespace containerd's CRI (and so kubelet) looks in.  The images are
    unpacked into ``snapshotter`` (containerd's default when None), which must be the CRI's;
    ``unpack=False`` leaves that to the CRI at the first container start.
    """
    if not Path(containerd_address).exists():
        raise StartError(f"no containerd listens on {containerd_address}: start it before importing images")
    expected: list[str] = []
    for archive in archives:
        names = archive_names(archive)
        if not names:
            raise StartError(f"{archive} names no image; delete it and build again")
        argv = _ctr(containerd_address, namespace, "images", "import")
        if snapshotter:
            argv += ["--snapshotter", snapshotter]
        if not unpack:
            argv.append("--no-unpack")
        _capture([*argv, str(archive)], f"importing {archive.name} into containerd")
        expected += names
    listed = set(
        _capture(_ctr(containerd_address, namespace, "images", "ls", "-q"), "listing images").split()
    )
    absent = [name for name in expected if name not in listed]
    if absent:
        raise StartError(
            f"containerd at {containerd_address} (namespace {namespace}) does not list {absent} after "
            f"importing them; it lists {sorted(listed)}"
        )
    return expected
