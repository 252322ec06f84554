"""The pure policy layer: the shared resource model, admission rules, templates, prices.

Owns: the one model of every agentops resource (:mod:`policies.models`), the CRDs generated
from it (:mod:`policies.crd`), the task protocol and the runtime's configuration contract,
the price table, pipeline templates and the admission policy engine.

May import: nothing of ours.  No I/O: no network, no files, no clocks the caller cannot pass in.
Every other package builds on this one.
"""
