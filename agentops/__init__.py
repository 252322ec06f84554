"""The ``agentops`` command line, also installed as the kubectl plugin ``kubectl-agentops``.

Owns: user-facing commands (``policy test``, ``task submit``, ``history``, ``rollback``,
``pipeline watch``, ``up``/``down`` of the local stack).  A thin face over the other packages.

May import: every package of ours.
"""
