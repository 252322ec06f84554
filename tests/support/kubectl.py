"""Run the machine's real ``kubectl`` against the test cluster.

A :class:`Kubectl` is bound to a kubeconfig and, optionally, a namespace::

    kubectl("apply", "-f", "-", input=manifest)          # CompletedProcess[str]
    kubectl("get", "agdep", check=False).returncode      # no assertion on failure
    kubectl.json("get", "agdep", "research-agent")       # parsed `-o json`
    kubectl("create", "configmap", "x", as_user="alice", as_groups=["team-a"])

A non-zero exit raises ``AssertionError`` quoting the command, stdout and stderr, so a
failing test shows kubectl's own message.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 60.0


def kubectl_binary() -> str:
    """``$KUBECTL`` if set (e.g. a pinned ``kubectl.1.32``), else ``kubectl`` from PATH."""
    chosen = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not chosen:
        raise RuntimeError("kubectl is not on PATH; install it or set KUBECTL to its path")
    return chosen


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path
    namespace: str | None = None
    binary: str | None = None

    def in_namespace(self, namespace: str | None) -> Kubectl:
        """The same client bound to another namespace (None: no ``--namespace`` flag)."""
        return replace(self, namespace=namespace)

    def argv(
        self,
        *args: str,
        as_user: str | None = None,
        as_groups: list[str] | None = None,
        namespace: str | None = None,
    ) -> list[str]:
        cmd = [self.binary or kubectl_binary(), f"--kubeconfig={self.kubeconfig}"]
        ns = namespace if namespace is not None else self.namespace
        if ns:
            cmd.append(f"--namespace={ns}")
        if as_user is not None:
            cmd.append(f"--as={as_user}")
        for group in as_groups or ():
            cmd.append(f"--as-group={group}")
        return [*cmd, *args]

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        as_user: str | None = None,
        as_groups: list[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.argv(*args, as_user=as_user, as_groups=as_groups, namespace=namespace)
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{shlex.join(cmd)}` exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    def json(
        self,
        *args: str,
        as_user: str | None = None,
        as_groups: list[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Parsed ``-o json`` output of a command that succeeds."""
        result = self(
            *args,
            "-o",
            "json",
            as_user=as_user,
            as_groups=as_groups,
            namespace=namespace,
            timeout=timeout,
        )
        return json.loads(result.stdout)
