"""Render the shipped install paths: the kustomize base (and the local overlay) and the Helm chart.

Every function runs the real tool (``kubectl kustomize``, the ``helm`` built by
:func:`localstack.helm.ensure_helm`) and returns the parsed objects, or the tool's error message.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.kubectl import kubectl_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "chart"
LOCAL_OVERLAY = REPO / "localstack" / "overlays" / "node"
NAMESPACE = "agentops-system"
RELEASE = "agentops"

Key = tuple[str, str | None, str]


def _run(argv: list[str], *, expect_success: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    if expect_success and result.returncode != 0:
        raise AssertionError(f"`{shlex.join(argv)}` exited {result.returncode}:\n{result.stderr}")
    return result


def parse(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(directory: Path = DEPLOY) -> list[dict[str, Any]]:
    return parse(_run([kubectl_binary(), "kustomize", str(directory)]).stdout)


def set_args(values: dict[str, str]) -> list[str]:
    """``--set key=value`` flags: Helm reads numbers and booleans as such, as from a command line."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def helm_template(
    helm: Path, values: dict[str, str] | None = None, *, namespace: str = NAMESPACE, crds: bool = True
) -> list[dict[str, Any]]:
    argv = [str(helm), "template", RELEASE, str(CHART), "--namespace", namespace]
    if crds:
        argv.append("--include-crds")
    return parse(_run([*argv, *set_args(values or {})]).stdout)


def helm_template_error(helm: Path, values: dict[str, str]) -> str:
    """stderr of a rendering that must fail (an AssertionError if it succeeds)."""
    argv = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(values)]
    result = _run(argv, expect_success=False)
    assert result.returncode != 0, f"`{shlex.join(argv)}` accepted {values}"
    return result.stderr


def helm_lint(helm: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(helm), "lint", "--strict", str(CHART)], expect_success=False)


def key(doc: dict[str, Any]) -> Key:
    meta = doc["metadata"]
    return (doc["kind"], meta.get("namespace"), meta["name"])


def by_key(docs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    keyed = {key(doc): doc for doc in docs}
    assert len(keyed) == len(docs), "the same object is rendered twice"
    return keyed


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (only,) = find(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result
