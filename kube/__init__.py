"""The one way this project reaches the Kubernetes API outside kopf's handlers.

Owns: where credentials come from (an explicit kubeconfig, else the in-cluster service account,
never silently ``~/.kube/config``), raw requests, server-side apply, reads, status and scale
subresources, Events, and list+watch (including ``PartialObjectMetadata``).

May import: nothing of ours.
"""
