"""kube-controller-manager's garbage collector runs: deleting an owner deletes what it owns.

The controller relies on this for every Deployment, ConfigMap and Secret it creates for an
agent: it sets an ownerReference and never deletes them itself.
"""

from __future__ import annotations

import yaml

from tests.support.kubectl import Kubectl
from tests.support.seed import SEED_AGENT
from tests.support.waiting import eventually


def test_deleting_agent_deletes_owned_configmap(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=SEED_AGENT)
    owner = kubectl.json("get", "agdep", "research-agent")
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "research-agent-prompt",
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"system-prompt": owner["spec"]["systemPrompt"]},
    }
    bystander = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}, "data": {}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([owned, bystander]))

    kubectl("delete", "agdep", "research-agent", "--wait=false")

    eventually(
        "the garbage collector to delete the owned ConfigMap",
        lambda: "(NotFound)" in kubectl("get", "configmap", "research-agent-prompt", check=False).stderr,
        within=60,
        interval=0.2,
    )
    # The collector deleted only what the agent owned.
    assert kubectl("get", "configmap", "unrelated", check=False).returncode == 0
