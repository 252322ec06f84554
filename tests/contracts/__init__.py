"""Tests of :mod:`contracts`: the model against the real API server's CRDs, keys, prices, templates."""
