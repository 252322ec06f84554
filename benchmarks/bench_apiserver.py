"""Create latency of AgentDeployments through the real kube-apiserver: webhook vs CEL vs nothing.

One run, one control plane (:class:`localstack.controlplane.ControlPlane`), three namespaces:

- ``bench-none``: no admission policy of ours at all (the baseline);
- ``bench-vap``: a ValidatingAdmissionPolicy with the same ceilings as the sample
  ``org-defaults`` ClusterAgentPolicy, written in CEL (limits mandatory and bounded, replicas,
  model allow-list, prompt size), bound to this namespace only;
- ``bench-null``: a diagnostic, a mutating + validating webhook that allows everything at once
  (a bare ASGI app on uvicorn over TLS; the mutating call returns the same audit-stamp patch as
  ours): what calling any Python webhook twice costs here;
- ``bench-webhook``: our mutating + validating webhook (``python -m webhook``, one worker, real
  TLS, registered with ``--register-url`` and scoped to this namespace by label), enforcing the
  ``org-defaults`` ClusterAgentPolicy from its watch cache.

The same valid agent is created in each namespace in turn (rotating the order every iteration,
so drift in the machine's load hits all three alike) over one keep-alive HTTPS connection.
Reported: median, p90, p99 per variant and the ratios to the baseline.  The CEL policy can only
validate; the webhook also mutates (fills limits, stamps the prompt audit), so it does strictly
more work per request.

Target (docs/architecture.md): webhook / neither <= 1.3 at the median.

Run: ``.venv/bin/python -m benchmarks.bench_apiserver [--iterations 300]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
GROUP_PATH = "/apis/agentops.agentops.io/v1alpha1"
WEBHOOK_LABEL = ("agentops.agentops.io/bench-webhook", "true")
NULL_LABEL = ("agentops.agentops.io/bench-null", "true")
VAP_LABEL = ("agentops.agentops.io/bench-vap", "true")
VARIANTS = ("neither", "vap", "webhook", "null-hook")
NAMESPACES = {
    "neither": "bench-none",
    "vap": "bench-vap",
    "webhook": "bench-webhook",
    "null-hook": "bench-null",
}

#: The ceilings of deploy/samples/org-defaults.yaml, in CEL.
_ORG = "set by ClusterAgentPolicy/org-defaults"
VAP = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "agentops-bench-ceilings"},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": ["agentops.agentops.io"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["agentdeployments"],
                }
            ]
        },
        "validations": [
            {"expression": "has(object.spec.limits) && has(object.spec.limits.maxTokensPerCall) && "
             "has(object.spec.limits.maxConcurrentTasks) && has(object.spec.limits.timeoutSeconds)",
             "message": "spec.limits: maxTokensPerCall, maxConcurrentTasks, timeoutSeconds are mandatory"},
            {"expression": "object.spec.limits.maxTokensPerCall <= 16000",
             "messageExpression": "'spec.limits.maxTokensPerCall: '"
             " + string(object.spec.limits.maxTokensPerCall)"
             f" + ' exceeds 16000 {_ORG}'"},
            {"expression": "object.spec.limits.maxConcurrentTasks <= 20",
             "message": f"spec.limits.maxConcurrentTasks exceeds 20 {_ORG}"},
            {"expression": "object.spec.limits.timeoutSeconds <= 600",
             "message": f"spec.limits.timeoutSeconds exceeds 600 {_ORG}"},
            {"expression": "object.spec.replicas <= 10",
             "message": f"spec.replicas exceeds 10 {_ORG}"},
            {"expression": "object.spec.model.matches('^(claude-.*|gpt-4o.*|offline-.*)$')",
             "message": "spec.model is not allowed by ClusterAgentPolicy/org-defaults"},
            {"expression": "size(bytes(object.spec.systemPrompt)) <= 20000",
             "message": f"spec.systemPrompt exceeds 20000 bytes {_ORG}"},
            {"expression": "!has(object.spec.livenessProbe) || "
             "object.spec.livenessProbe.type != 'semantic' || "
             "object.spec.livenessProbe.intervalSeconds >= 30",
             "message": f"spec.livenessProbe.intervalSeconds is below 30 {_ORG}"},
        ],
    },
}  # fmt: skip
VAP_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "agentops-bench-ceilings"},
    "spec": {
        "policyName": "agentops-bench-ceilings",
        "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": {"matchLabels": {VAP_LABEL[0]: VAP_LABEL[1]}}},
    },
}


def agent(name: str, tokens: int = 8000) -> dict[str, Any]:
    return {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "labels": {"team": "research"}},
        "spec": {
            "replicas": 3,
            "model": "claude-sonnet-4-20250514",
            "systemPrompt": "You are a research agent. Gather and summarise information accurately.\n",
            "limits": {"maxTokensPerCall": tokens, "maxConcurrentTasks": 5, "timeoutSeconds": 120},
        },
    }


def api_http(kubeconfig: Path) -> httpx.Client:
    """A bare httpx client (not :class:`kube.Client`): the benchmark times raw round trips and
    reads status codes itself."""
    from kube.config import from_kubeconfig

    connection = from_kubeconfig(kubeconfig)
    headers = {"Content-Type": "application/json", "Accept": "application/json", **connection.headers()}
    return httpx.Client(
        base_url=connection.server, verify=connection.ssl_context(), headers=headers, timeout=30
    )


def post(http: httpx.Client, path: str, obj: dict[str, Any]) -> httpx.Response:
    return http.post(path, content=json.dumps(obj))


def must(response: httpx.Response) -> None:
    if response.status_code >= 300 and response.status_code != 409:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )


def wait_until_denied(http: httpx.Client, namespace: str, timeout: float = 60) -> None:
    """Until an over-ceiling agent is refused in ``namespace`` (the policy is in force)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = http.post(
            f"{GROUP_PATH}/namespaces/{namespace}/agentdeployments?dryRun=All",
            content=json.dumps(agent("probe", tokens=50000)),
        )
        if reply.status_code in (400, 403, 422) and "16000" in reply.text:
            return
        time.sleep(0.2)
    raise RuntimeError(f"admission policy for {namespace} not in force after {timeout} s")


def webhook_handling(port: int, cert_dir: Path) -> str:
    """Time inside the webhook per endpoint, from its Prometheus histogram: mean and median bucket."""
    ctx = ssl.create_default_context(cafile=cert_dir / "ca.crt")
    text = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=ctx).text
    sums: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    name = "agentops_webhook_request_duration_seconds"
    for line in text.splitlines():
        if line.startswith(f"{name}_sum{{"):
            sums[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_bucket{{"):
            endpoint = line.split('endpoint="')[1].split('"')[0]
            bound = line.split('le="')[1].split('"')[0]
            buckets.setdefault(endpoint, []).append((float(bound), float(line.rsplit(" ", 1)[1])))
    parts = []
    for endpoint, series in sorted(buckets.items()):
        count = series[-1][1]
        if not count:
            continue
        median_bound = next(bound for bound, cumulative in series if cumulative >= count / 2)
        parts.append(
            f"{endpoint}: mean {sums[endpoint] / count * 1000:.2f} ms, median <= {median_bound * 1000:g} ms"
            f" ({count:.0f} requests)"
        )
    handshakes = next(
        (
            line.rsplit(" ", 1)[1]
            for line in text.splitlines()
            if line.startswith("agentops_webhook_tls_handshakes_total")
        ),
        "nan",
    )
    return "; ".join(parts) + f"; TLS handshakes: {float(handshakes):.0f}"


def apiserver_webhook_view(http: httpx.Client) -> str:
    """Mean webhook call time as kube-apiserver measures it (its own admission metrics)."""
    text = http.get("/metrics").text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, target in (("_sum{", sums), ("_count{", counts)):
            if line.startswith("apiserver_admission_webhook_admission_duration_seconds" + suffix):
                name = line.split('name="')[1].split('"')[0]
                if name.endswith("agentops.agentops.io") and not name.startswith("cluster-"):
                    target[name] = target.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return "; ".join(
        f"{name}: mean {sums[name] / counts[name] * 1000:.2f} ms" for name in sorted(sums) if counts.get(name)
    )


async def _null_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A webhook that allows every request at once: the floor of any Python webhook.

    On ``/mutate`` it answers with the same kind of JSONPatch ours sends for a new agent (the five
    prompt audit annotations), so kube-apiserver's cost of decoding and applying a patch is in the
    floor too: the difference to ours is then our policy work and framework, nothing else.
    """
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request = json.loads(body)["request"]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    if scope["path"] == "/mutate":
        user = request["userInfo"]
        prompt = request["object"]["spec"].get("systemPrompt", "")
        stamps = {
            "agentops.agentops.io/prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "agentops.agentops.io/prompt-changed-by": user["username"],
            "agentops.agentops.io/prompt-changed-by-uid": user.get("uid", ""),
            "agentops.agentops.io/prompt-changed-by-groups": ",".join(user.get("groups") or []),
            "agentops.agentops.io/prompt-changed-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        patch = [{"op": "add", "path": "/metadata/annotations", "value": stamps}]
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    answer = json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def serve_null_hook(port: int, cert_dir: Path) -> None:
    import uvicorn

    deadline = time.monotonic() + 60
    while not (cert_dir / "tls.crt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the real webhook creates the certificates; share them
    config = uvicorn.Config(
        _null_app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert_dir / "tls.crt"),
        ssl_keyfile=str(cert_dir / "tls.key"),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run()


def register_null_hook(kubeconfig: Path, port: int, cert_dir: Path) -> None:
    import kube
    from webhook.registration import ClientConfig, configurations, register

    deadline = time.monotonic() + 60
    while not (cert_dir / "ca.crt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    config = ClientConfig(url=f"https://127.0.0.1:{port}", ca_bundle=(cert_dir / "ca.crt").read_bytes())
    admission = kube.Client(kube.config.from_kubeconfig(kubeconfig))
    configs = configurations(config, name="agentops-bench-null", scope_label=NULL_LABEL)
    for item in configs:
        for hook in item["webhooks"]:
            # Own names, so kube-apiserver's per-webhook metrics tell the two apart.
            hook["name"] = f"null-{hook['name']}"
    register(admission, configs)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("null webhook did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="creates per variant")
    parser.add_argument("--warmup", type=int, default=30, help="creates per variant not measured")
    parser.add_argument("--null-serve", type=int, help=argparse.SUPPRESS)  # internal: the null webhook
    parser.add_argument("--cert-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.null_serve:
        serve_null_hook(args.null_serve, args.cert_dir)
        return 0

    from localstack.controlplane import ControlPlane
    from localstack.crds import CRD_DIR

    with tempfile.TemporaryDirectory(prefix="bench-apiserver-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlane(workdir / "cp", die_with_parent=True)
        crds = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
        print("starting the control plane ...", file=sys.stderr)
        plane.start(timeout=180, crds=crds)
        webhook: subprocess.Popen[bytes] | None = None
        null_hook: subprocess.Popen[bytes] | None = None
        try:
            http = api_http(plane.kubeconfig)
            for variant, ns in NAMESPACES.items():
                by_variant = {
                    "webhook": dict([WEBHOOK_LABEL]),
                    "vap": dict([VAP_LABEL]),
                    "null-hook": dict([NULL_LABEL]),
                }
                namespace = {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns, "labels": by_variant.get(variant, {})},
                }
                must(post(http, "/api/v1/namespaces", namespace))
            policy = yaml.safe_load((REPO / "deploy" / "samples" / "org-defaults.yaml").read_text())
            must(post(http, f"{GROUP_PATH}/clusteragentpolicies", policy))
            base = "/apis/admissionregistration.k8s.io/v1"
            must(post(http, f"{base}/validatingadmissionpolicies", VAP))
            must(post(http, f"{base}/validatingadmissionpolicybindings", VAP_BINDING))

            port = free_port()
            log_file = (workdir / "webhook.log").open("wb")
            webhook = subprocess.Popen(
                [sys.executable, "-m", "webhook", "--kubeconfig", str(plane.kubeconfig), "--port", str(port),
                 "--cert-dir", str(workdir / "certs"), "--register-url", f"https://127.0.0.1:{port}",
                 "--registration-name", "agentops-bench", "--scope-label", "=".join(WEBHOOK_LABEL),
                 "--log-level", "WARNING"],
                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
            null_port = free_port()
            null_hook = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_apiserver", "--null-serve", str(null_port),
                 "--cert-dir", str(workdir / "certs")],
                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
            register_null_hook(plane.kubeconfig, null_port, workdir / "certs")
            wait_until_denied(http, NAMESPACES["vap"])
            wait_until_denied(http, NAMESPACES["webhook"])
            print("policies in force; measuring", file=sys.stderr)

            latencies: dict[str, list[float]] = {v: [] for v in VARIANTS}
            total = args.warmup + args.iterations
            for i in range(total):
                order = VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]
                for variant in order:
                    path = f"{GROUP_PATH}/namespaces/{NAMESPACES[variant]}/agentdeployments"
                    body = json.dumps(agent(f"agent-{i}"))
                    started = time.perf_counter()
                    reply = http.post(path, content=body)
                    elapsed = time.perf_counter() - started
                    if reply.status_code != 201:
                        raise RuntimeError(
                            f"create in {variant} failed: {reply.status_code} {reply.text[:300]}"
                        )
                    if i >= args.warmup:
                        latencies[variant].append(elapsed)
            stored = http.get(
                f"{GROUP_PATH}/namespaces/{NAMESPACES['webhook']}/agentdeployments/agent-0"
            ).json()
            assert stored["metadata"]["annotations"]["agentops.agentops.io/prompt-sha256"]

            base_median = statistics.median(latencies["neither"])
            print(f"\ncreate latency of an AgentDeployment, {args.iterations} creates per variant, one run\n")
            print(f"{'variant':>10} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'median/neither':>15}")
            for variant in VARIANTS:
                values = latencies[variant]
                median = statistics.median(values)
                print(
                    f"{variant:>10} {median * 1000:>10.2f} {pct(values, 0.9) * 1000:>8.2f}"
                    f" {pct(values, 0.99) * 1000:>8.2f} {median / base_median:>15.2f}"
                )
            print(
                f"\nwebhook's own handling time (its /metrics): {webhook_handling(port, workdir / 'certs')}"
            )
            print(
                f"webhook calls as kube-apiserver times them (its /metrics): {apiserver_webhook_view(http)}"
            )
            ratio = statistics.median(latencies["webhook"]) / base_median
            vap_ratio = statistics.median(latencies["vap"]) / base_median
            null_ratio = statistics.median(latencies["null-hook"]) / base_median
            print(
                f"\nnull-hook/neither = {null_ratio:.2f}: the cost of any two Python webhook calls on this"
                " machine (a uvicorn app that allows everything at once, with the same patch),"
                " our policy work excluded"
            )
            print(f"\nwebhook/neither = {ratio:.2f} (target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'}); "
                  f"vap/neither = {vap_ratio:.2f}; webhook/vap = {ratio / vap_ratio:.2f}")  # fmt: skip
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"(machine: {os.cpu_count()} CPUs shared with whatever else runs; load average now {load})")
            return 0
        finally:
            for process in (webhook, null_hook):
                if process is None:
                    continue
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            plane.stop()


if __name__ == "__main__":
    sys.exit(main())
