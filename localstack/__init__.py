"""The local stack: agentops-operator on one machine, for development, tests and benchmarks.

Owns: the local Kubernetes cluster (``localstack/kcp``, a Go module built from the official
Kubernetes modules, and :mod:`localstack.controlplane` which starts its control plane), the real
node (containerd, runc, CNI, kubelet, kube-proxy and cluster DNS inside network, mount and PID
namespaces of its own), the images built here without a registry, a local Redis, the fast
process mode (agent pods as local processes) and ``python -m localstack.crds``, which writes
``deploy/crds`` from :mod:`contracts.crd`.

Nothing here ships: the wheel, the image and the chart leave this package out.

May import: every package of ours (it assembles them); no production package imports it.
"""
