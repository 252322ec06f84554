"""Tests of the admission webhook and its certificates: unit, HTTPS, end to end via kube-apiserver."""
