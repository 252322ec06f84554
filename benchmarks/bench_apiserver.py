"""Admission latency of AgentDeployments through the real kube-apiserver: our webhook, with and
without native admission, against CEL alone, a null webhook and nothing.

One run, one control plane (:class:`localstack.controlplane.ControlPlane`), five namespaces:

- ``bench-none``: no admission policy of ours at all (the baseline);
- ``bench-vap``: ValidatingAdmissionPolicies with the same ceilings as the sample
  ``org-defaults`` ClusterAgentPolicy, written in CEL by hand (limits mandatory and bounded,
  replicas, model allow-list, prompt size; and replicas on the scale subresource), bound to this
  namespace only: the CEL-only baseline;
- ``bench-null``: a diagnostic, a mutating + validating webhook that allows everything at once
  (a bare ASGI app on uvicorn over TLS; on a create the mutating call returns the same
  audit-stamp patch as ours): what calling any Python webhook twice costs here;
- ``bench-webhook``: our mutating + validating webhook (``python -m webhook``, one worker, real
  TLS, registered with ``--register-url`` and scoped to this namespace by label), enforcing the
  ``org-defaults`` ClusterAgentPolicy from its watch cache: today's default mode;
- ``bench-native``: native admission (issue 11, docs/native-admission.md): the
  ValidatingAdmissionPolicies ``policies.native.generate`` compiles ``org-defaults`` to, bound to
  this namespace only, and the same webhook process registered a second time with the
  ``matchConditions`` the generator computes (``mutating_condition``, ``validating_condition``),
  so the API server calls it only for what CEL cannot decide.

Both of ours also get the audit trail's backstop
(``deploy/manifests/audit-trail-admission-policy.yaml``), as every install does, and so does the
null webhook (it stamps as ours does): ours against it is then the handler's own cost alone.

Three operations, each in every namespace in turn (the order rotating every iteration, so drift
in the machine's load hits all variants alike), over one keep-alive HTTPS connection:

- **create** of a valid agent;
- **update** without a prompt change: a merge patch raising ``limits.maxTokensPerCall`` within
  its ceiling;
- **scale**: a merge patch of the ``scale`` subresource to 5 replicas (within the ceiling).

Reported per operation: median, p90, p99 per variant and the median's ratio to no admission, the
CEL-only baseline and the null webhook; then kube-apiserver's own count and mean time of each
webhook's calls (which shows what the ``matchConditions`` spared) and of each ``matchConditions``
list of ours, per operation (where the in-process cost goes).

Targets (issue 11): with native admission, scale and update within 1.1x of no admission, create
within 1.3x; the webhook handler's own cost (ours / null webhook, default mode) at most 1.05x.

Run: ``.venv/bin/python -m benchmarks.bench_apiserver [--iterations 150] [--warmup 15]``
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
NATIVE_LABEL = ("agentops.agentops.io/bench-native", "true")
NULL_LABEL = ("agentops.agentops.io/bench-null", "true")
VAP_LABEL = ("agentops.agentops.io/bench-vap", "true")
#: Namespaces the audit trail's backstop is bound to: ours, as installed, and the null webhook's.
BACKSTOP_LABEL = ("agentops.agentops.io/bench-backstop", "true")
VARIANTS = ("neither", "vap", "null-hook", "webhook", "native")
NAMESPACES = {
    "neither": "bench-none",
    "vap": "bench-vap",
    "null-hook": "bench-null",
    "webhook": "bench-webhook",
    "native": "bench-native",
}
LABELS = {
    "vap": dict([VAP_LABEL]),
    "null-hook": dict([NULL_LABEL, BACKSTOP_LABEL]),
    "webhook": dict([WEBHOOK_LABEL, BACKSTOP_LABEL]),
    "native": dict([NATIVE_LABEL, BACKSTOP_LABEL]),
}
OPERATIONS = ("create", "update", "scale")
#: The ratios the three operations are reported against.
BASELINES = ("neither", "vap", "null-hook")
#: Issue 11's targets for native admission, as a ratio to no admission.
NATIVE_TARGETS = {"create": 1.3, "update": 1.1, "scale": 1.1}
HANDLER_TARGET = 1.05
BACKSTOP = REPO / "deploy" / "manifests" / "audit-trail-admission-policy.yaml"
ORG_DEFAULTS = REPO / "deploy" / "samples" / "org-defaults.yaml"
PROMPT_SHA256 = "agentops.agentops.io/prompt-sha256"
MERGE = "application/merge-patch+json"

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
#: The replica ceiling on the scale subresource, as the generated policies judge it (a Scale to 0
#: arrives without ``spec.replicas``).  A policy of its own: its object is a Scale, not an agent.
VAP_SCALE = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "agentops-bench-scale-ceiling"},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": ["agentops.agentops.io"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["UPDATE"],
                    "resources": ["agentdeployments/scale"],
                }
            ]
        },
        "validations": [
            {
                "expression": "!has(object.spec.replicas) || object.spec.replicas <= 10",
                "message": f"spec.replicas exceeds 10 {_ORG}",
            }
        ],
    },
}
VAP_SCALE_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "agentops-bench-scale-ceiling"},
    "spec": {
        "policyName": "agentops-bench-scale-ceiling",
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


def wait_until_stamped(http: httpx.Client, namespace: str, timeout: float = 60) -> None:
    """Until a valid dry-run create in ``namespace`` comes back stamped (the mutating webhook's
    registration has reached the API server, and nothing refuses a valid agent)."""
    deadline = time.monotonic() + timeout
    reply: httpx.Response | None = None
    while time.monotonic() < deadline:
        reply = http.post(
            f"{GROUP_PATH}/namespaces/{namespace}/agentdeployments?dryRun=All",
            content=json.dumps(agent("probe")),
        )
        if reply.status_code == 201 and PROMPT_SHA256 in reply.json()["metadata"].get("annotations", {}):
            return
        time.sleep(0.2)
    last = f"{reply.status_code} {reply.text[:300]}" if reply is not None else "no answer"
    raise RuntimeError(f"no stamped create in {namespace} after {timeout} s; last: {last}")


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


def _sums_and_counts(text: str, metric: str, *labels: str) -> dict[tuple[str, ...], list[float]]:
    """``[sum, count]`` of a Prometheus histogram in ``text``, added up per value of ``labels``."""
    totals: dict[tuple[str, ...], list[float]] = {}
    for line in text.splitlines():
        for index, suffix in ((0, "_sum{"), (1, "_count{")):
            if line.startswith(metric + suffix):
                key = tuple(line.split(f'{label}="')[1].split('"')[0] for label in labels)
                totals.setdefault(key, [0.0, 0.0])[index] += float(line.rsplit(" ", 1)[1])
    return totals


def apiserver_webhook_view(text: str) -> str:
    """Calls and mean call time per webhook as kube-apiserver measures them (its /metrics ``text``),
    warm-up and probes included: the native variant's count shows what its ``matchConditions``
    spared."""
    totals = {
        name: total
        for (name,), total in _sums_and_counts(
            text, "apiserver_admission_webhook_admission_duration_seconds", "name"
        ).items()
        if name.endswith("agentops.agentops.io") and not name.startswith("cluster-")
    }
    registered = {f"{prefix}{kind}.agentops.agentops.io" for prefix in ("", "null-", "native-")
                  for kind in ("mutate", "validate")}  # fmt: skip
    return "\n".join(
        f"  {name}: {totals[name][1]:.0f} calls, mean {totals[name][0] / totals[name][1] * 1000:.2f} ms"
        if name in totals and totals[name][1]
        else f"  {name}: 0 calls"
        for name in sorted(registered | totals.keys())
    )


def apiserver_condition_view(text: str) -> str:
    """Evaluations and mean time of each ``matchConditions`` list of ours (webhooks and VAPs), per
    operation, as kube-apiserver times them (its /metrics ``text``; wall clock, warm-up included):
    where native admission's in-process cost goes."""
    totals = _sums_and_counts(
        text, "apiserver_admission_match_condition_evaluation_seconds", "name", "operation"
    )
    return "\n".join(
        f"  {name} ({operation}): {count:.0f} evaluations, mean {total / count * 1e6:.0f} us"
        for (name, operation), (total, count) in sorted(totals.items())
        if count and "agentops" in name
    )


async def _null_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A webhook that allows every request at once: the floor of any Python webhook.

    On a create's ``/mutate`` it answers with the same kind of JSONPatch ours sends for a new agent
    (the five prompt audit annotations), so kube-apiserver's cost of decoding and applying a patch
    is in the floor too: the difference to ours is then our policy work and framework, nothing
    else.  Ours sends no patch for an update that changes neither the prompt nor a limit's
    presence, nor for a scale, and neither does this one.
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
    if scope["path"] == "/mutate" and request["operation"] == "CREATE":
        user = request["userInfo"]
        prompt = request["object"]["spec"].get("systemPrompt", "")
        stamps = {
            "agentops.agentops.io/prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "agentops.agentops.io/prompt-changed-by": user["username"],
            "agentops.agentops.io/prompt-changed-by-uid": user.get("uid", ""),
            "agentops.agentops.io/prompt-changed-by-groups": ",".join(user.get("groups") or []),
            "agentops.agentops.io/prompt-changed-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        stamps = {k: v for k, v in stamps.items() if v}  # as ours: no uid or groups, no stamp
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


def register_hook(
    kubeconfig: Path,
    port: int,
    cert_dir: Path,
    *,
    name: str,
    label: tuple[str, str],
    prefix: str,
    conditions: tuple[str, str] | None = None,
) -> None:
    """Register webhook configurations for ``https://127.0.0.1:port`` scoped to ``label``, each
    webhook named ``prefix-...`` (so kube-apiserver's per-webhook metrics tell them apart), with
    ``conditions`` (mutating, validating CEL) as the ``matchConditions`` of those that match
    AgentDeployments, as the controller's native admission sets them."""
    import kube
    from policies.native import WEBHOOK_CONDITION_NAME
    from webhook.registration import ClientConfig, configurations, register

    deadline = time.monotonic() + 60
    while not (cert_dir / "ca.crt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    config = ClientConfig(url=f"https://127.0.0.1:{port}", ca_bundle=(cert_dir / "ca.crt").read_bytes())
    configs = configurations(config, name=name, scope_label=label)
    for item, condition in zip(configs, conditions or (None, None), strict=True):
        for hook in item["webhooks"]:
            hook["name"] = f"{prefix}-{hook['name']}"
            agents = any("agentdeployments" in rule["resources"] for rule in hook["rules"])
            if condition is not None and agents:
                hook["matchConditions"] = [{"name": WEBHOOK_CONDITION_NAME, "expression": condition}]
    with kube.Client(kube.config.from_kubeconfig(kubeconfig)) as admission:
        register(admission, configs)


def native_admission(namespace: str) -> tuple[list[dict[str, Any]], tuple[str, str]]:
    """What the controller's ``--native-admission`` maintains for ``org-defaults`` alone, with its
    bindings limited to ``namespace``: the generated VAPs and bindings, and the two webhooks'
    conditions (mutating, validating)."""
    from datetime import UTC, datetime

    from contracts.resources import ClusterAgentPolicy
    from policies.native import Options, generate
    from policies.review import PolicySet

    policy = ClusterAgentPolicy.model_validate(yaml.safe_load(ORG_DEFAULTS.read_text()))
    native = generate(
        PolicySet(cluster=(policy,)), now=datetime.now(UTC), options=Options(namespaces=(namespace,))
    )
    return native.objects(), (native.mutating_condition, native.validating_condition)


def backstop_objects() -> list[dict[str, Any]]:
    """The shipped audit-trail policy, its binding narrowed to :data:`BACKSTOP_LABEL`."""
    policy, binding = (doc for doc in yaml.safe_load_all(BACKSTOP.read_text()) if doc)
    binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] = dict([BACKSTOP_LABEL])
    return [policy, binding]


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after 60 s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def operation(http: httpx.Client, op: str, variant: str, i: int) -> httpx.Response:
    """One measured request: ``op`` on agent ``agent-<i>`` in ``variant``'s namespace."""
    path = f"{GROUP_PATH}/namespaces/{NAMESPACES[variant]}/agentdeployments"
    if op == "create":
        return http.post(path, content=json.dumps(agent(f"agent-{i}")))
    merge = {"Content-Type": MERGE}
    if op == "update":  # no prompt change: a limit raised within its ceiling
        raised = {"spec": {"limits": {"maxTokensPerCall": 9000}}}
        return http.patch(f"{path}/agent-{i}", content=json.dumps(raised), headers=merge)
    scaled = {"spec": {"replicas": 5}}
    return http.patch(f"{path}/agent-{i}/scale", content=json.dumps(scaled), headers=merge)


def report(latencies: dict[str, dict[str, list[float]]], iterations: int) -> dict[str, dict[str, float]]:
    """Print one table per operation; returns the medians (operation -> variant -> seconds)."""
    medians = {op: {v: statistics.median(latencies[op][v]) for v in VARIANTS} for op in OPERATIONS}
    ratio_heads = "".join(f"{'/' + base:>11}" for base in BASELINES)
    for op in OPERATIONS:
        print(f"\n{op}: {iterations} per variant")
        print(f"{'variant':>10} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8}{ratio_heads}")
        for variant in VARIANTS:
            values = latencies[op][variant]
            ratios = "".join(f"{medians[op][variant] / medians[op][base]:>11.2f}" for base in BASELINES)
            print(
                f"{variant:>10} {medians[op][variant] * 1000:>10.2f} {pct(values, 0.9) * 1000:>8.2f}"
                f" {pct(values, 0.99) * 1000:>8.2f}{ratios}"
            )
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=150, help="measured requests per operation and variant"
    )
    parser.add_argument(
        "--warmup", type=int, default=15, help="requests per operation and variant not measured"
    )
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
                namespace = {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns, "labels": LABELS.get(variant, {})},
                }
                must(post(http, "/api/v1/namespaces", namespace))
            policy = yaml.safe_load(ORG_DEFAULTS.read_text())
            must(post(http, f"{GROUP_PATH}/clusteragentpolicies", policy))
            base = "/apis/admissionregistration.k8s.io/v1"
            generated, conditions = native_admission(NAMESPACES["native"])
            for obj in [VAP, VAP_SCALE, VAP_BINDING, VAP_SCALE_BINDING, *backstop_objects(), *generated]:
                plural = "validatingadmissionpolicies"
                if obj["kind"] == "ValidatingAdmissionPolicyBinding":
                    plural = "validatingadmissionpolicybindings"
                must(post(http, f"{base}/{plural}", obj))

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
            certs = workdir / "certs"
            register_hook(plane.kubeconfig, null_port, certs, name="agentops-bench-null", label=NULL_LABEL,
                          prefix="null")  # fmt: skip
            wait_for_port(null_port)
            # The same webhook process, registered a second time as native admission narrows it.
            register_hook(plane.kubeconfig, port, certs, name="agentops-bench-native", label=NATIVE_LABEL,
                          prefix="native", conditions=conditions)  # fmt: skip
            for variant in ("vap", "webhook", "native"):
                wait_until_denied(http, NAMESPACES[variant])
            for variant in ("null-hook", "webhook", "native"):
                wait_until_stamped(http, NAMESPACES[variant])
            print("policies in force; measuring", file=sys.stderr)

            latencies: dict[str, dict[str, list[float]]] = {
                op: {v: [] for v in VARIANTS} for op in OPERATIONS
            }
            expected = {"create": 201, "update": 200, "scale": 200}
            for i in range(args.warmup + args.iterations):
                for op in OPERATIONS:
                    order = VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]
                    for variant in order:
                        started = time.perf_counter()
                        reply = operation(http, op, variant, i)
                        elapsed = time.perf_counter() - started
                        if reply.status_code != expected[op]:
                            raise RuntimeError(
                                f"{op} in {variant} failed: {reply.status_code} {reply.text[:300]}"
                            )
                        if i >= args.warmup:
                            latencies[op][variant].append(elapsed)
            for variant in ("webhook", "native"):
                stored = http.get(
                    f"{GROUP_PATH}/namespaces/{NAMESPACES[variant]}/agentdeployments/agent-0"
                ).json()
                assert stored["metadata"]["annotations"][PROMPT_SHA256], f"{variant}: not stamped"
                assert stored["spec"]["replicas"] == 5, f"{variant}: not scaled"

            print(
                "\nAgentDeployment admission through kube-apiserver, one run; ratios are of medians."
                "\nnative: policies.native.generate(org-defaults) VAPs, webhooks narrowed by its"
                " mutating_condition and validating_condition; null-hook, webhook and native also"
                " carry the audit-trail backstop VAP"
            )
            medians = report(latencies, args.iterations)
            print(
                f"\nwebhook's own handling time (its /metrics; webhook and native share the process): "
                f"{webhook_handling(port, certs)}"
            )
            apiserver_metrics = http.get("/metrics").text  # read once: both views below
            print(
                "webhook calls as kube-apiserver counts and times them (its /metrics):\n"
                + apiserver_webhook_view(apiserver_metrics)
            )
            print(
                "matchConditions as kube-apiserver times them (its /metrics):\n"
                + apiserver_condition_view(apiserver_metrics)
            )

            print("\ntargets (issue 11):")
            for op, target in NATIVE_TARGETS.items():
                ratio = medians[op]["native"] / medians[op]["neither"]
                verdict = "met" if ratio <= target else "NOT met"
                print(f"  native {op} / neither = {ratio:.2f} (<= {target}: {verdict})")
            handler = medians["create"]["webhook"] / medians["create"]["null-hook"]
            verdict = "met" if handler <= HANDLER_TARGET else "NOT met"
            print(f"  webhook create / null-hook create = {handler:.2f} (<= {HANDLER_TARGET}: {verdict})")
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
