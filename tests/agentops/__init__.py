"""Tests of the ``agentops`` command line."""
