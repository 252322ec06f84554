"""Tests of :mod:`kube` against the real control plane: the configuration rule, requests, watches."""
