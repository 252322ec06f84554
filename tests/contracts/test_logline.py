"""One log format for every component: the formatter, and the real processes' stderr read with one schema.

The first tests pin :class:`contracts.logline.JsonLineFormatter` down on records made here.  The
others start each component the way its own suite does (``python -m webhook`` registered with the
session's API server, ``python -m agent_runtime`` against Redis and the fake LLM, ``python -m
controller`` on a test namespace, ``python -m certs ensure`` writing a Secret), make it do real
work, stop it, and parse every line it wrote with :class:`contracts.logline.LogLine`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import redis.asyncio as aioredis

import kube
from contracts.logline import KEYS, JsonLineFormatter, LogLine
from localstack.controlplane import ControlPlane
from tests.controller.conftest import ControllerProcess, controller_argv
from tests.support.fake_llm import FakeLLM
from tests.support.kubectl import Kubectl
from tests.support.runtime import (
    fake_llm_server,
    llm,
    make_settings,
    ns,
    rdb,
    results,
    spawn_worker,
    submit,
)
from tests.support.waiting import eventually, eventually_async
from tests.webhook.conftest import free_port, start_webhook, stop_webhook
from tests.webhook.reviews import agent, review

__all__ = ["fake_llm_server", "llm", "ns", "rdb"]

REPO = Path(__file__).resolve().parents[2]


def lines_of(text: str) -> list[LogLine]:
    """Every line of ``text`` as a :class:`LogLine`; fails naming the first line that is not one."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed.append(LogLine.parse(line))
        except pydantic.ValidationError as exc:
            raise AssertionError(f"line {number} is not a log line ({exc}):\n{line}") from None
    assert parsed, "no log lines at all"
    return parsed


def record(message: str = "hello %s", *args: Any, **attributes: Any) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "test.logger", "levelno": logging.INFO, "levelname": "INFO"})
    made.msg, made.args = message, args or ("world",)
    made.__dict__.update(attributes)
    return made


def formatted(made: logging.LogRecord) -> dict[str, Any]:
    line = JsonLineFormatter().format(made)
    assert "\n" not in line
    LogLine.parse(line)
    entry: dict[str, Any] = json.loads(line)
    return entry


# --- the formatter ----------------------------------------------------------------------------------


def test_a_line_has_the_keys_in_order_and_context_beside_them() -> None:
    entry = formatted(record(task_id="t-1", tokens=12, reasons=["expired"]))
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["level"] == "info"
    assert entry["logger"] == "test.logger"
    assert entry["message"] == "hello world"
    assert entry["time"].endswith("+00:00")
    assert (entry["task_id"], entry["tokens"], entry["reasons"]) == ("t-1", 12, ["expired"])
    assert "exception" not in entry


def test_an_exception_is_its_traceback_under_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record(exc_info=sys.exc_info())
    entry = formatted(made)
    assert entry["exception"].startswith("Traceback")
    assert "ValueError: boom" in entry["exception"]


def test_context_that_would_clash_with_a_key_is_renamed_not_lost() -> None:
    entry = formatted(record(time="yesterday", level=3, logger="other", exception="none"))
    assert entry["level"] == "info"
    assert entry["logger"] == "test.logger"
    assert "exception" not in entry
    assert {k: entry[f"extra_{k}"] for k in ("time", "level", "logger", "exception")} == {
        "time": "yesterday",
        "level": 3,
        "logger": "other",
        "exception": "none",
    }
    assert set(KEYS) == {"time", "level", "logger", "message", "exception"}


def test_numbers_json_cannot_hold_and_objects_are_written_as_text() -> None:
    entry = formatted(record(remaining=float("nan"), limits={"usd": float("inf")}, path=Path("/x")))
    assert (entry["remaining"], entry["limits"], entry["path"]) == ("nan", {"usd": "inf"}, "/x")


def test_kopf_object_records_become_kind_namespace_and_object_name() -> None:
    # What kopf's ObjectLogger puts on each record (kopf/_core/actions/loggers.py).
    ref = {"apiVersion": "v1", "kind": "AgentDeployment", "name": "a", "uid": "u", "namespace": "team-a"}
    entry = formatted(record(k8s_ref=ref, k8s_skip=False, settings=object()))
    assert (entry["kind"], entry["namespace"], entry["object_name"]) == ("AgentDeployment", "team-a", "a")
    assert not {"k8s_ref", "k8s_skip", "settings"} & set(entry)
    cluster_scoped = formatted(record(k8s_ref={**ref, "kind": "ClusterAgentPolicy", "namespace": None}))
    assert "namespace" not in cluster_scoped


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"time": "2026-01-02T03:04:05.678+00:00", "level": "info", "logger": "x"}',
        '{"time": "2026-01-02T03:04:05.678", "level": "info", "logger": "x", "message": "m"}',
        '{"time": "2026-01-02T03:04:05.678+00:00", "level": "INFO", "logger": "x", "message": "m"}',
        '{"time": "2026-01-02T03:04:05.678+00:00", "level": "info", "logger": "x", "message": 1}',
        '{"ts": "2026-01-02T03:04:05.678+00:00", "level": "info", "logger": "x", "msg": "m"}',
    ],
)
def test_the_schema_refuses_what_is_not_a_log_line(line: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        LogLine.parse(line)


def test_warnings_and_uncaught_exceptions_are_log_lines_too(tmp_path: Path) -> None:
    script = (
        "import threading, warnings\n"
        "from contracts import logline\n"
        "logline.configure()\n"
        "warnings.warn('careful')\n"
        "thread = threading.Thread(target=lambda: 1 / 0, name='worker-1')\n"
        "thread.start(); thread.join()\n"
        "raise RuntimeError('fatal')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    lines = lines_of(done.stderr)
    assert [(line.logger, line.level) for line in lines] == [
        ("py.warnings", "warning"),
        ("uncaught", "error"),
        ("uncaught", "critical"),
    ]
    assert "careful" in lines[0].message
    assert "worker-1" in lines[1].message
    assert "ZeroDivisionError" in (lines[1].exception or "")
    assert "RuntimeError: fatal" in (lines[2].exception or "")


# --- every component, as a process ------------------------------------------------------------------


def test_webhook_process_writes_only_log_lines(
    control_plane: ControlPlane, k8s_api: kube.Client, namespace: str, tmp_path: Path
) -> None:
    hook = start_webhook(control_plane, tmp_path, f"agentops-logline-{uuid.uuid4().hex[:8]}")
    try:
        # An agent without limits and no policy to default them: denied, and a denial is logged.
        body = review(agent("unlimited", namespace=namespace))
        with hook.client(timeout=10) as http:
            reply = http.post("/validate", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["response"]["allowed"] is False, reply.text
        uid = body["request"]["uid"]
        eventually("the denial in the webhook's log", lambda: uid in hook.logs(), within=10)
    finally:
        stop_webhook(hook, k8s_api)
    lines = lines_of(hook.logs())
    [decision] = [line for line in lines if (line.model_extra or {}).get("uid") == uid]
    assert (decision.logger, decision.message) == ("webhook.admission", "admission decision")
    assert (decision.model_extra or {})["object_name"] == "unlimited"
    uvicorn = [line for line in lines if line.logger.startswith("uvicorn")]
    assert uvicorn, "uvicorn's records go through ours"
    assert not [line for line in uvicorn if "color_message" in (line.model_extra or {})]
    assert "You help." not in hook.logs()  # the agent's prompt


async def test_runtime_process_writes_only_log_lines(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM, tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(redis_url, ns, llm, http_port=port)
    log = tmp_path / "worker.log"
    proc = spawn_worker(settings, tmp_path / "prompt", log)
    try:
        async with httpx.AsyncClient() as http:

            async def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200

            await eventually_async("the worker ready", ready, within=30, interval=0.05)
        task_id = await submit(rdb, ns, "a prompt that stays out of the logs")
        await results(rdb, ns, 1)
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, log.read_text()
    lines = lines_of(log.read_text())
    [finished] = [line for line in lines if line.message == "task finished"]
    assert (finished.model_extra or {})["task_id"] == task_id
    assert "a prompt that stays out of the logs" not in log.read_text()


def test_controller_process_writes_only_log_lines_with_kopfs_object_as_fields(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    env.pop("ANTHROPIC_API_KEY", None)
    # --verbose: kopf's per-object records (handler runs) are INFO, held back otherwise.
    controller = ControllerProcess(
        controller_argv(namespace, redis_url, "--verbose"), env, tmp_path / "controller.log"
    )
    controller.start()
    try:
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "agentops.agentops.io/v1alpha1",
                    "kind": "AgentDeployment",
                    "metadata": {"name": "logged"},
                    "spec": {
                        "replicas": 1,
                        "model": "claude-sonnet-4-20250514",
                        "systemPrompt": "A prompt kept out of the logs.",
                        "limits": {"maxTokensPerCall": 100, "maxConcurrentTasks": 1, "timeoutSeconds": 30},
                    },
                }
            ),
        )

        def about_the_agent() -> bool:
            for line in controller.output().splitlines():
                extra = json.loads(line)
                if extra.get("logger") == "kopf.objects" and extra.get("object_name") == "logged":
                    return bool(extra.get("namespace") == namespace and extra.get("kind"))
            return False

        eventually("a kopf record about the agent, with its namespace and name", about_the_agent)
    finally:
        controller.stop()
    lines = lines_of(controller.output())
    loggers = {line.logger for line in lines}
    assert "controller" in loggers
    assert any(name.startswith("kopf.") for name in loggers - {"kopf.objects"}), loggers
    assert "A prompt kept out of the logs." not in controller.output()


def test_certs_process_writes_only_log_lines(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "secret", "generic", "webhook-tls")
    argv = [
        sys.executable, "-m", "certs", "ensure",
        "--kubeconfig", str(control_plane.kubeconfig),
        "--cert-dir", str(tmp_path / "certs"),
        "--secret", f"{namespace}/webhook-tls",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = lines_of(done.stderr)
    [renewed] = [line for line in lines if line.message == "certificates renewed"]
    assert (renewed.logger, renewed.level) == ("certs.rotation", "info")
    assert "not_after" in (renewed.model_extra or {})
    assert "PRIVATE KEY" not in done.stderr
