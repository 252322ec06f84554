"""Tests of the admission webhook and its certificates: unit, HTTP over TLS, end to end through kube-apiserver."""
