"""The ``helm`` binary the chart's tests (and anyone installing the chart locally) use.

Nothing is downloaded from a website: ``helm`` is built from its Go module, pinned in
``localstack/helm/go.mod`` (a ``tool`` directive; ``go.sum`` holds the checksums), by
:class:`localstack.gobuild.GoTool` into the shared cache.  The version stamped into the binary is
read from that ``go.mod``, so ``helm version`` always names the release that was built.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from localstack.gobuild import GoTool, Progress

__all__ = ["HELM_MODULE", "SOURCE_DIR", "ensure_helm", "helm_tool", "pinned_version"]

SOURCE_DIR = Path(__file__).resolve().parent / "helm"
HELM_MODULE = "helm.sh/helm/v4"


def _stderr(message: str) -> None:
    print(f"[helm] {message}", file=sys.stderr, flush=True)


def pinned_version() -> str:
    """The Helm release ``localstack/helm/go.mod`` requires, e.g. ``v4.3.2``."""
    go_mod = (SOURCE_DIR / "go.mod").read_text()
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(HELM_MODULE)}\s+(v\S+)", go_mod, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{SOURCE_DIR / 'go.mod'} does not require {HELM_MODULE}")
    return found.group(1)


def helm_tool() -> GoTool:
    version = pinned_version()
    return GoTool(
        name="helm",
        source_dir=SOURCE_DIR,
        package=f"{HELM_MODULE}/cmd/helm",
        # As Helm's own Makefile: a static binary without debug information, stamped with its
        # release (otherwise `helm version` reports only the major.minor compiled in).
        ldflags=f"-s -w -X {HELM_MODULE}/internal/version.version={version}",
        cgo=False,
        describe=f"helm {version}",
    )


def ensure_helm(progress: Progress = _stderr) -> Path:
    """The cached ``helm`` binary, built first (minutes when cold) if the pin changed."""
    return helm_tool().ensure(progress)


if __name__ == "__main__":
    print(ensure_helm())
