"""``agentops uninstall``: remove every agent and pipeline, and with ``--crds`` the CRDs, even when
no controller is left to finish the job.

The controller (kopf) puts :data:`~contracts.resources.CONTROLLER_FINALIZER` on every agent and
pipeline it runs a timer or daemon for, and only a running controller removes it.  Once the
controller is gone (``helm uninstall`` keeps the CRDs and the users' objects, by Helm's design),
deleting them, or their CRDs, would wait forever.  This command deletes them, gives a controller
``--wait`` seconds to finish them properly (a running one withdraws a deleted pipeline's queued
tasks), then removes the finalizer from what is still held by it, saying which objects it released.
With ``--crds`` it waits for the agents' Deployments, Services and ConfigMaps to be
garbage-collected before deleting the CRDs: once an owner's kind is gone, the garbage collector
can no longer resolve it and leaves its dependents behind.

It never touches another operator's finalizers, nor kopf's peering CRDs while another kopf
operator's peering object still uses them, nor the OpenReports CRD while another tool's report
does (ours, one per namespace, are deleted).

Native admission (``--native-admission`` on the controller, docs/native-admission.md) leaves
cluster-scoped objects no install tool knows of: the generated ValidatingAdmissionPolicies and
bindings, and a routing condition on the webhooks.  ``--crds`` withdraws them last
(:func:`controller.native.withdraw`); ``--native-admission`` does only that, for turning the mode
off without uninstalling.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import kube
from agentops.cluster import api_and_namespace
from contracts import reports
from contracts.resources import (
    API_VERSION,
    CONTROLLER_FINALIZER,
    GROUP,
    LABEL_AGENT,
    RESOURCES,
    AgentDeployment,
    AgentPipeline,
)
from controller import native
from kube.cli import add_kube_arguments
from webhook.registration import DEFAULT_NAME as DEFAULT_CONFIGURATION

#: Deleted in this order: a pipeline names agents, so pipelines go first.
WORKLOADS = (AgentPipeline.PLURAL, AgentDeployment.PLURAL)
KOPF = "kopf.dev/v1"
#: The peering object our controller creates (``--peering`` in deploy/manifests/controller.yaml).
PEERING = "agentops-controller"
POLL_SECONDS = 0.5
#: What the controller creates for each agent (owned by it, garbage-collected with it).
CHILDREN = (("apps/v1", "deployments"), ("v1", "services"), ("v1", "configmaps"))
#: How long, beyond --wait, the garbage collector gets to remove the agents' children.
CHILDREN_SECONDS = 60.0
#: How long kopf's peering CRDs get to go.
CRD_SECONDS = 60.0
#: An annotation whose change makes the API server retry a deleted CRD's stalled cleanup.
CLEANUP_RETRY = f"{GROUP}/cleanup-retry"
CLEANUP_RETRY_SECONDS = 5.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "uninstall",
        help="delete every agent and pipeline (and with --crds the CRDs), also with no controller left",
        description=(
            "Delete every AgentPipeline and AgentDeployment in the cluster; a running controller gets "
            "--wait seconds to finish each, then the controller's finalizer is removed from what is left "
            "(after `helm uninstall`, no controller is left to remove it).  With --crds, then delete "
            "agentops' CRDs, our kopf peering object, and kopf's peering CRDs if no other kopf operator "
            "uses them, and withdraw native admission (the webhooks' routing condition, then the generated "
            "admission policies).  With --native-admission, only that."
        ),
    )
    parser.add_argument(
        "--crds",
        action="store_true",
        help="then delete agentops' CRDs (every object of their kinds goes with them)",
    )
    parser.add_argument(
        "--native-admission",
        action="store_true",
        help="only withdraw native admission, once the controller runs without --native-admission: remove "
        "the webhooks' routing condition, then delete the generated admission policies (done by --crds too)",
    )
    parser.add_argument(
        "--webhook-configuration",
        default=DEFAULT_CONFIGURATION,
        metavar="NAME",
        help=f"the webhook configurations' name (default {DEFAULT_CONFIGURATION})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a running controller gets to finish each deletion before the finalizer is removed "
        "(default 30)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        help="only the agents and pipelines of this namespace (default: every namespace; not with --crds)",
    )
    add_kube_arguments(parser)
    parser.set_defaults(func=_uninstall)


def _paths(api: kube.Client, plural: str, namespace: str | None = None) -> list[str]:
    return [
        kube.path(API_VERSION, plural, item["metadata"]["name"], namespace=item["metadata"]["namespace"])
        for item in api.list_items(kube.path(API_VERSION, plural, namespace=namespace), metadata_only=True)
    ]


def _paths_while_served(api: kube.Client, plural: str) -> list[str]:
    """:func:`_paths` of a kind whose CRD is being deleted: none once the kind is no longer served
    (the API server stops serving it before the CRD object itself is gone)."""
    try:
        return _paths(api, plural)
    except kube.ApiError as exc:
        if exc.status == 404:
            return []
        raise


def _crd_path(name: str) -> str:
    return kube.path("apiextensions.k8s.io/v1", "customresourcedefinitions", name)


def _served(api: kube.Client, crd: str) -> bool:
    return api.get(_crd_path(crd)) is not None


def release(api: kube.Client, path: str) -> bool:
    """Remove our finalizer from the object at ``path``; False when it is gone or does not carry it."""
    obj = api.get(path, metadata_only=True)
    finalizers: list[str] = list(((obj or {}).get("metadata") or {}).get("finalizers") or [])
    if CONTROLLER_FINALIZER not in finalizers:
        return False
    index = finalizers.index(CONTROLLER_FINALIZER)
    # "test" first: if the list changed since it was read, the patch fails instead of removing
    # somebody else's finalizer.
    try:
        api.json_patch(
            path,
            [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": CONTROLLER_FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )
    except kube.ApiError as exc:
        if exc.status in (404, 409, 422):  # gone, or changed under us: the next round looks again
            return False
        raise
    return True


def _delete_all(api: kube.Client, paths: Iterable[str], wait: float) -> list[str]:
    """Delete, wait up to ``wait`` s for a controller, then release what it left; the released."""
    pending = [p for p in paths if api.delete(p)]
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if api.get(p, metadata_only=True) is not None]
        if pending:
            time.sleep(POLL_SECONDS)
    released = [p for p in pending if release(api, p)]
    return released


def _wait_gone(api: kube.Client, paths: list[str], what: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    left = paths
    while left and time.monotonic() < deadline:
        left = [p for p in left if api.get(p, metadata_only=True) is not None]
        if left:
            time.sleep(POLL_SECONDS)
    for path in left:
        print(f"still there after {timeout:.0f}s: {what} {path}", file=sys.stderr)
    return left


def _children(api: kube.Client) -> list[str]:
    """Every object the controller made for an agent (labelled with it), in every namespace."""
    found: list[str] = []
    for api_version, plural in CHILDREN:
        for item in api.list_items(
            kube.path(api_version, plural), label_selector=LABEL_AGENT, metadata_only=True
        ):
            meta = item["metadata"]
            found.append(kube.path(api_version, plural, meta["name"], namespace=meta["namespace"]))
    return found


def _wait_children_gone(api: kube.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = _children(api)
    while left and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        left = _children(api)
    for path in left:
        print(f"still there after {timeout:.0f}s (not garbage-collected yet): {path}", file=sys.stderr)


def _uninstall(args: argparse.Namespace) -> int:
    if args.crds and args.namespace:
        print(
            "agentops uninstall: --crds removes every namespace's objects; drop -n/--namespace",
            file=sys.stderr,
        )
        return 2
    if args.wait < 0:
        print("agentops uninstall: --wait must be 0 or more seconds", file=sys.stderr)
        return 2
    if args.native_admission and (args.crds or args.namespace):
        print(
            "agentops uninstall: --native-admission only withdraws native admission; drop --crds and -n",
            file=sys.stderr,
        )
        return 2
    api, _default = api_and_namespace(args)
    if args.native_admission:
        _withdraw_native_admission(api, args.webhook_configuration)
        return 0
    our_crds = [f"{r.PLURAL}.{GROUP}" for r in RESOURCES]
    if not any(_served(api, crd) for crd in our_crds):
        print("agentops uninstall: no agentops CRD is installed")
        if args.crds:
            _withdraw_native_admission(api, args.webhook_configuration)
        return 0
    deleted: list[str] = []
    for plural in WORKLOADS:
        if not _served(api, f"{plural}.{GROUP}"):
            continue
        paths = _paths(api, plural, args.namespace)
        deleted += paths
        released = _delete_all(api, paths, args.wait)
        where = f" in namespace {args.namespace}" if args.namespace else ""
        print(f"deleted {len(paths)} {plural}{where}")
        for path in released:
            print(f"  no controller finished {path} within {args.wait:.0f}s: removed {CONTROLLER_FINALIZER}")
    if not args.crds:
        return 0
    # The garbage collector removes an agent's Deployment, Service and ConfigMap only while it can
    # still resolve the owner's kind: deleting the CRDs first would strand them for good.
    _wait_gone(api, deleted, "object", timeout=args.wait + CHILDREN_SECONDS)
    _wait_children_gone(api, timeout=args.wait + CHILDREN_SECONDS)
    # A CRD being deleted deletes its objects: release any that a controller put its finalizer on
    # meanwhile (one started during the uninstall, or objects of kinds not listed above).
    left = delete_crds(api, our_crds, timeout=args.wait + 5.0, each_round=lambda: _release_all(api))
    print(f"deleted {len(our_crds) - len(left)} CRDs of {GROUP}")
    _remove_peering(api)
    _remove_reports(api)
    _withdraw_native_admission(api, args.webhook_configuration)
    return 1 if left else 0


def _release_all(api: kube.Client) -> None:
    for plural in WORKLOADS:
        for path in _paths_while_served(api, plural):
            release(api, path)


def cleanup_stalled(crd: dict[str, Any]) -> bool:
    """Whether the API server's cleanup of a deleted CRD failed and may not retry by itself.

    kube-apiserver (1.33 to at least 1.37) deletes a CRD's objects from a cache that is rebuilt
    whenever the CRD changes, deletion included.  When the cleanup lists them before the cache is
    ready it fails ("storage is (re)initializing"), its retry conflicts with that failure's own
    status write, and nothing looks at the CRD again until the API server's five-minute resync:
    ``kubectl delete`` waits that long (operator-framework/operator-controller#1437 reports the
    same)."""
    for condition in (crd.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Terminating":
            return bool(
                condition.get("status") == "True" and condition.get("reason") == "InstanceDeletionFailed"
            )
    return False


def delete_crds(
    api: kube.Client, names: Iterable[str], *, timeout: float, each_round: Callable[[], None] = lambda: None
) -> list[str]:
    """Delete the CRDs ``names`` and wait up to ``timeout`` s for them to go; the names left.

    A CRD whose cleanup stalled (:func:`cleanup_stalled`) gets an annotation: any change beyond
    its status makes the API server retry the cleanup at once, instead of minutes later."""
    left = list(names)
    for name in left:
        api.delete(_crd_path(name))
    deadline = time.monotonic() + timeout
    retries = 0
    next_retry = 0.0
    while left and time.monotonic() < deadline:
        each_round()
        bodies = {name: api.get(_crd_path(name)) for name in left}
        left = [name for name, body in bodies.items() if body is not None]
        stalled = [name for name in left if cleanup_stalled(bodies[name] or {})]
        if stalled and time.monotonic() >= next_retry:
            retries += 1
            next_retry = time.monotonic() + CLEANUP_RETRY_SECONDS
            for name in stalled:
                print(f"CRD {name}: the API server's cleanup stalled; asking it to retry")
                with contextlib.suppress(kube.ApiError):  # gone meanwhile
                    api.merge_patch(
                        _crd_path(name), {"metadata": {"annotations": {CLEANUP_RETRY: str(retries)}}}
                    )
        if left:
            time.sleep(POLL_SECONDS)
    for name in left:
        print(f"still there after {timeout:.0f}s: CRD {name}", file=sys.stderr)
    return left


def _withdraw_native_admission(api: kube.Client, configuration: str) -> None:
    patched, deleted = native.withdraw(api, configuration)
    if patched:
        print(f"removed native admission's routing condition from {patched} webhook configurations")
    if deleted:
        print(f"deleted {len(deleted)} generated admission policies and bindings:")
        for name in deleted:
            print(f"  {name}")
    if not patched and not deleted:
        print("native admission: nothing generated to withdraw")


def _delete_shared_crds(
    api: kube.Client, crds: list[str], used_by: list[str], *, kept: str, deleted: str
) -> None:
    """Delete CRDs we share with other tools unless another's objects (``used_by``) still use them,
    saying which (``kept``, with them named) or that they went (``deleted``)."""
    if used_by:
        shown = ", ".join(sorted(used_by)[:5]) + (", ..." if len(used_by) > 5 else "")
        print(f"{kept} ({shown})")
    elif not delete_crds(api, crds, timeout=CRD_SECONDS):
        print(deleted)


def _remove_reports(api: kube.Client) -> None:
    """Our policy reports, and the OpenReports Report CRD when no other tool's report uses it
    (Policy Reporter or another policy engine may have installed it, or write to it)."""
    if not _served(api, reports.CRD_NAME):
        return
    collection = kube.path(reports.API_VERSION, reports.PLURAL)
    others: list[str] = []
    for item in api.list_items(collection, metadata_only=True):
        meta = item["metadata"]
        if (
            meta["name"] == reports.REPORT_NAME
            and (meta.get("labels") or {}).items() >= reports.LABELS.items()
        ):
            api.delete(
                kube.path(reports.API_VERSION, reports.PLURAL, meta["name"], namespace=meta["namespace"])
            )
        else:
            others.append(f"{meta['namespace']}/{meta['name']}")
    _delete_shared_crds(
        api,
        [reports.CRD_NAME],
        others,
        kept="kept the OpenReports CRD: other tools' reports use it",
        deleted="deleted the OpenReports CRD (no other tool's report uses it)",
    )


def _remove_peering(api: kube.Client) -> None:
    """Our kopf peering object, and kopf's CRDs when no other kopf operator uses them."""
    peerings = "clusterkopfpeerings"
    if not _served(api, f"{peerings}.kopf.dev"):
        return
    api.delete(kube.path(KOPF, peerings, PEERING))
    others = [p["metadata"]["name"] for p in api.list_items(kube.path(KOPF, peerings), metadata_only=True)]
    if _served(api, "kopfpeerings.kopf.dev"):  # a controller limited to namespaces peers in each
        for peering in api.list_items(kube.path(KOPF, "kopfpeerings"), metadata_only=True):
            meta = peering["metadata"]
            if meta["name"] == PEERING:
                api.delete(kube.path(KOPF, "kopfpeerings", PEERING, namespace=meta["namespace"]))
            else:
                others.append(f"{meta['namespace']}/{meta['name']}")
    others = [name for name in others if name != PEERING]
    _delete_shared_crds(
        api,
        [f"{peerings}.kopf.dev", "kopfpeerings.kopf.dev"],
        others,
        kept="kept kopf's peering CRDs: other kopf operators use them",
        deleted="deleted kopf's peering CRDs (no other kopf operator uses them)",
    )
