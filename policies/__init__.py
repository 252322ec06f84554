"""The admission policy engine: the rules a platform team's policies impose, and nothing else.

Owns: merging ClusterAgentPolicies and AgentPolicies into the effective policy for an object
(``effective``, ``selectors``), the rules each kind must pass (``rules``: limits, ceilings,
models, prompts, pipelines, policies themselves, revisions, scale, exceptions), which
AgentPolicyExceptions excuse what (``exemptions``), the rule results of a stored object that
reports and scans read (``results``) and the name and labels of the metric that counts them
(``metrics_names``, shared by the webhook and the controller), the defaults mutation fills in and
its JSON patch (``patch``), the prompt audit stamps (``stamps``), the sorting of findings into
deny, warn and audit by mode, ratchet and exception (``verdict``), the engine's request and
decision types (``review``) and their AdmissionReview encoding (``admission``), and the same
rules compiled to Kubernetes ValidatingAdmissionPolicies the API server runs in-process
(``native``). ``engine`` is the entry point: ``mutate``, ``validate``, ``effective_policy``.

May import: :mod:`contracts`.  No I/O: no network, no files, no clocks the caller cannot pass in.
"""
