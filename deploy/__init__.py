"""Everything needed to run agentops-operator: CRDs, manifests, and the local stack.

Owns: ``deploy/crds`` (generated from :mod:`policies.crd`), the in-cluster manifests, the
local Kubernetes control plane (``deploy/controlplane``, a Go module built from the official
Kubernetes modules, and :mod:`deploy.controlplane` which starts it) and the local stack
launcher that runs the whole system on one machine.

May import: every package of ours (it assembles them); none of them imports it.
"""
