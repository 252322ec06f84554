"""TLS for the webhook: a CA and serving certificates, their Secret, caBundle injection, rotation.

Owns: key and certificate generation with ``cryptography``, storing them in a Secret, injecting
the CA into the webhook configurations, and rotating before expiry.

May import: :mod:`policies` only.  Talks to the Kubernetes API.
"""
