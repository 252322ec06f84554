"""The rules of each kind, one module per kind, each exposing its :class:`~policies.rules.base.Rules`.

``deployments`` (AgentDeployment, also mutated), ``scale`` (``kubectl scale``), ``pipelines``
(AgentPipeline structure and size), ``policies`` (ClusterAgentPolicy and AgentPolicy themselves,
including "a team's policy may not loosen the organisation's"), ``revisions``
(AgentPromptRevision), ``exceptions`` (AgentPolicyException: who may excuse what, for how
long).  :mod:`policies.engine` dispatches to them; :mod:`policies.verdict` decides what their
findings mean.
"""
