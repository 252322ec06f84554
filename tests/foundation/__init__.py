"""Tests of the foundation: the CRDs against a real API server, the control plane, Redis, pure helpers."""
