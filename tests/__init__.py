"""The test suites.  A package, so ``tests/policies`` and ``tests/webhook`` import as
``tests.policies`` and ``tests.webhook`` and never shadow the real ``policies`` and ``webhook``."""
