"""Tests of the webhook's certificates: generation, storage, caBundle injection, rotation across replicas."""
