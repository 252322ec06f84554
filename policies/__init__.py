"""The admission policy engine: the rules a platform team's policies impose, and nothing else.

Owns: merging ClusterAgentPolicies and AgentPolicies into the effective policy for an object,
the rules each kind must pass (limits, ceilings, models, prompts, pipelines, policies
themselves), the defaults mutation fills in, the prompt audit stamps, and the sorting of
findings into deny, warn and audit by mode and ratchet.

May import: :mod:`contracts`.  No I/O: no network, no files, no clocks the caller cannot pass in.
"""
