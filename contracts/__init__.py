"""What the components agree on: the resource model and the wire protocols between them.

Owns: the one model of every agentops resource (:mod:`contracts.resources`) and the CRDs
generated from it (:mod:`contracts.crd`); the task and result messages on Redis Streams
(:mod:`contracts.streams`); every Redis key name (:mod:`contracts.keys`); the budget
arithmetic (:mod:`contracts.budgets`); the runtime's environment (:mod:`contracts.runtime_env`);
the price table (:mod:`contracts.prices`); the pipeline template language
(:mod:`contracts.templates`) and step graph (:mod:`contracts.pipeline_graph`); the log line every
component writes (:mod:`contracts.logline`).

May import: nothing of ours.  No I/O: no network, no files, no clocks the caller cannot pass in;
the one exception is :func:`contracts.logline.configure`, which each ``__main__`` calls once to
send the process's logs to stderr.
Every other package builds on this one; a change here is a change of protocol.
"""
