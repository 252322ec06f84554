"""The kopf operator: agents into Deployments, prompt revisions, pipelines as DAGs, autoscaling.

Owns: reconciliation of AgentDeployments (Deployment, ConfigMap, Service, status), the
AgentPromptRevision history, AgentPipeline execution over Redis Streams, queue-depth
autoscaling and budget status.

May import: :mod:`policies`.  Never the webhook or the runtime.
"""
