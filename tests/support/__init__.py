"""Helpers shared by the test suites: running kubectl against the test cluster, waiting."""
