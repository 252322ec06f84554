"""The kopf operator: agents into Deployments, prompt revisions, pipelines as DAGs, autoscaling.

Owns: reconciliation of AgentDeployments (Deployment, ConfigMap, Service, status), the
AgentPromptRevision history, AgentPipeline execution over Redis Streams, queue-depth
autoscaling, budget status, why an agent's pods do not start, background policy scans with their
reports and metrics.

May import: :mod:`contracts`, :mod:`policies` and :mod:`kube` (its Kubernetes calls; kopf logs in
through the same :mod:`kube.config` rule).  Never the webhook, certs or the runtime.
"""
